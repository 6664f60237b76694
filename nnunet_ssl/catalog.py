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
    (the base ``nnUNetTrainerSemiSupervised`` excluded), sorted by name. Trainers whose checkpoints
    ``nnUNetv2_predict`` cannot run (class attribute ``nnunet_predict_compatible = False``, e.g. the mask
    propagator) are left out: the registry lists segmentation trainers."""
    import nnunet_ssl.trainers as pkg
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    found = {}
    for mod in pkgutil.iter_modules(pkg.__path__):
        m = importlib.import_module(f"nnunet_ssl.trainers.{mod.name}")
        for name, obj in vars(m).items():
            if (inspect.isclass(obj) and issubclass(obj, nnUNetTrainer) and obj.__module__ == m.__name__
                    and name.startswith("nnUNetTrainer") and name != "nnUNetTrainerSemiSupervised"
                    and getattr(obj, "nnunet_predict_compatible", True)):
                found[name] = obj
    return dict(sorted(found.items()))


def is_ablation(name: str) -> bool:
    """Ablations are named nnUNetTrainer<Method>_<Variant> (STYLE habit 1)."""
    return "_" in name[len("nnUNetTrainer"):]
