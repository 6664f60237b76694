"""Copy the small, final records of an ``nnunet-ssl benchmark`` study from one folder to another: its
``study.json``, its ``report/``, and per run ``run.json``, ``evaluation/`` and ``train.log`` (no
predictions, no models). Used both ways:

- **record**: from a study's work folder into ``benchmarks/results/<name>/``, to commit what finished;
- **restore**: from ``benchmarks/results/<name>/`` into a new work folder, so that the same
  ``nnunet-ssl benchmark`` command there continues the study: a run whose ``run.json`` says ``ok`` is never
  redone (see :mod:`nnunet_ssl.benchmark.study`), the others are trained from scratch.

    python benchmarks/record_study.py /work/hippo_study benchmarks/results/hippocampus_study_10pct
    python benchmarks/record_study.py benchmarks/results/hippocampus_study_10pct /work/hippo_study

Runs without a manifest (unfinished) are not copied. Files already at the destination are overwritten.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import List

RUN_FILES = ("run.json", "train.log")
RUN_FOLDERS = ("evaluation",)
STUDY_FILES = ("study.json",)
STUDY_FOLDERS = ("report",)


def record(src: Path, dst: Path) -> List[Path]:
    """Copy the study's records from ``src`` to ``dst``; return the run folders copied (relative)."""
    if not (src / "study.json").is_file():
        raise SystemExit(f"{src} holds no study.json: not an nnunet-ssl benchmark study")
    dst.mkdir(parents=True, exist_ok=True)
    for name in STUDY_FILES:
        shutil.copy2(src / name, dst / name)
    for name in STUDY_FOLDERS:
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name, dirs_exist_ok=True)
    runs = []
    for manifest in sorted(src.glob("runs/*/*/*/run.json")):
        run = manifest.parent
        rel = run.relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            if (run / name).is_file():
                shutil.copy2(run / name, dst / rel / name)
        for name in RUN_FOLDERS:
            if (run / name).is_dir():
                shutil.copytree(run / name, dst / rel / name, dirs_exist_ok=True)
        runs.append(rel)
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    args = p.parse_args(argv)
    runs = record(args.src.resolve(), args.dst.resolve())
    print(f"{len(runs)} finished run(s) copied to {args.dst}: " + ", ".join(str(r) for r in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
