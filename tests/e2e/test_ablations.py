"""Ablation trainers (nnUNetTrainer<Method>_<Variant>) are few-line subclasses of a method trainer
that has the full end-to-end test; each runs one in-process epoch of two steps here."""
from __future__ import annotations

import math

import pytest

from conftest import CPU_PLANS
from nnunet_ssl.catalog import is_ablation, shipped_trainers

ABLATIONS = [n for n in shipped_trainers() if is_ablation(n)]


@pytest.mark.e2e
@pytest.mark.parametrize("trainer", ABLATIONS or [pytest.param("none", marks=pytest.mark.skip("no ablations yet"))])
def test_ablation_trains(trainer, tiny_3d, tiny_2d_rgb):
    from nnunet_ssl.runner import train

    cls = shipped_trainers()[trainer]
    ds, cfg = (tiny_2d_rgb, "2d") if getattr(cls, "requires_category_labels", False) else (tiny_3d, "3d_fullres")
    t = train(ds["id"], cfg, 0, trainer, CPU_PLANS, "cpu", validate=False,
              budget={"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1})
    losses = t.logger.get_value("train_losses", step=None)
    assert len(losses) == 1 and math.isfinite(losses[0])
