"""Shared by the benchmark scripts."""
from __future__ import annotations

import os
from typing import List, Optional


def finish_loaders(trainer, unlabeled=None) -> None:
    """Stop the augmentation workers of a trainer built for measuring (nnU-Net's ``on_train_end`` would also
    write a final checkpoint): its labeled and validation loaders and its unlabeled one (``unlabeled`` when the
    caller replaced ``trainer.dataloader_unlabeled``)."""
    if unlabeled is None:
        unlabeled = getattr(trainer, "dataloader_unlabeled", None)
    for dl in (trainer.dataloader_train, trainer.dataloader_val, unlabeled):
        finish = getattr(dl, "_finish", None)
        if finish:
            finish()


def write_report(lines: List[str], out: Optional[str]) -> None:
    """Print a Markdown report (lines) and, unless ``out`` is None, write it to ``out``."""
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out + ".tmp", "w") as f:
            f.write("\n".join(lines))
        os.replace(out + ".tmp", out)
    print("\n".join(lines))
