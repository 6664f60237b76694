"""Shared by the benchmark scripts."""
from __future__ import annotations

import os
from typing import List


def write_report(lines: List[str], out: str) -> None:
    """Write a Markdown report (lines) to ``out`` and print it."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(out + ".tmp", out)
    print("\n".join(lines))
