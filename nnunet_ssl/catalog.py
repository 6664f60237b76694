"""The trainers this package ships, found by walking ``nnunet_ssl/trainers`` (what nnU-Net sees).

Used by the registry-driven tests and by the benchmarks, so a new trainer is covered by both
without anyone remembering to add it.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil


def shipped_trainers() -> dict:
    """name -> class of every concrete ``nnUNetTrainer<...>`` subclass defined in nnunet_ssl.trainers
    (the base ``nnUNetTrainerSemiSupervised`` excluded), sorted by name."""
    import nnunet_ssl.trainers as pkg
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    found = {}
    for mod in pkgutil.iter_modules(pkg.__path__):
        m = importlib.import_module(f"nnunet_ssl.trainers.{mod.name}")
        for name, obj in vars(m).items():
            if (inspect.isclass(obj) and issubclass(obj, nnUNetTrainer) and obj.__module__ == m.__name__
                    and name.startswith("nnUNetTrainer") and name != "nnUNetTrainerSemiSupervised"):
                found[name] = obj
    return dict(sorted(found.items()))


def is_ablation(name: str) -> bool:
    """Ablations are named nnUNetTrainer<Method>_<Variant> (STYLE habit 1)."""
    return "_" in name[len("nnUNetTrainer"):]
