"""File helpers shared by commands, data preparation and benchmarks."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Union


def write_json_atomic(path: Union[str, Path], data) -> None:
    """Write ``data`` as JSON to ``path`` through a uniquely named temporary file beside it, so a
    crash or a concurrent writer never leaves a truncated file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
