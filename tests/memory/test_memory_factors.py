"""Every shipped trainer declares its activation factor (what ``nnunet-ssl plan`` divides nnU-Net's GPU
memory target by); generated from the registry, so a new trainer is checked without anyone remembering to."""
from __future__ import annotations

import pytest

from nnunet_ssl.catalog import shipped_trainers
from nnunet_ssl.trainers.semisupervised import nnUNetTrainerSemiSupervised

TRAINERS = shipped_trainers()


@pytest.mark.parametrize("name", list(TRAINERS))
def test_trainer_declares_activation_factor(name):
    cls = TRAINERS[name]
    declared_by = [k for k in cls.__mro__ if "activation_factor" in vars(k)]
    assert declared_by[0] is not nnUNetTrainerSemiSupervised, f"{name} keeps the base's factor 1"
    factor = cls.activation_factor
    assert float(factor) == int(factor) and factor >= 2, "a whole number >= 2 (labeled + unlabeled batch at least)"
    # at least the graphs the design holds at once for backward: networks x batches (cost_model's held, else
    # its backward passes)
    assert factor >= cls.cost_model.get("held", cls.cost_model.get("backward", 1))
    assert "activation_factor" not in cls.hyperparameter_names()  # structure, not a per-run setting
