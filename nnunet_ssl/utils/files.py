"""File helpers shared by commands, data preparation and benchmarks."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator, Union


def write_json_atomic(path: Union[str, Path], data) -> None:
    """Write ``data`` as JSON to ``path`` through a uniquely named temporary file beside it, so a
    crash or a concurrent writer never leaves a truncated file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def link_or_copy(src: str, dst: str) -> None:
    """Hard-link ``src`` to ``dst`` where the file system allows, else copy it (with its metadata)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def output_to_log(path: Union[str, Path]) -> Iterator[None]:
    """Append everything printed to stdout and stderr inside the block to ``path`` (nnU-Net's console
    output of planning, preprocessing and prediction steps run in this process)."""
    with open(path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        yield
