"""CPS's schedule: the consistency weight ramps up to 1 over the whole run, as the reference code's does."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from nnunet_ssl.trainers.cps import (nnUNetTrainerCPS, nnUNetTrainerCPS_Ensemble, nnUNetTrainerCPS_Rampup40,
                                     nnUNetTrainerCPS_Weight0p1, nnUNetTrainerCPSHetero)


def _weight(cls, step, total=1000):
    fake = SimpleNamespace(global_step=step, num_epochs=total // 25, num_iterations_per_epoch=25,
                           consistency_weight=cls.consistency_weight, rampup_fraction=cls.rampup_fraction)
    fake.total_iterations = cls.total_iterations.fget(fake)
    return cls.rampup_weight(fake)


@pytest.mark.parametrize("cls", [nnUNetTrainerCPS, nnUNetTrainerCPS_Ensemble, nnUNetTrainerCPSHetero])
def test_weight_ramps_to_one_over_the_whole_run(cls):
    # T = 1000 steps: w(400) = exp(-5 * 0.6^2) = 0.1653; full weight 1 only at the last step
    assert _weight(cls, 0) == pytest.approx(math.exp(-5))
    assert _weight(cls, 400) == pytest.approx(math.exp(-1.8))
    assert _weight(cls, 999) < 1.0 == _weight(cls, 1000)


def test_rampup40_variant_keeps_the_former_schedule():
    # T = 400 steps: w(200) = 0.1 exp(-5 * 0.5^2); full from step 400 on
    assert _weight(nnUNetTrainerCPS_Rampup40, 200) == pytest.approx(0.1 * math.exp(-1.25))
    assert _weight(nnUNetTrainerCPS_Rampup40, 400) == _weight(nnUNetTrainerCPS_Rampup40, 700) == 0.1


def test_weight0p1_variant_keeps_the_former_weight():
    assert _weight(nnUNetTrainerCPS_Weight0p1, 400) == pytest.approx(0.1 * math.exp(-1.8))
    assert _weight(nnUNetTrainerCPS_Weight0p1, 1000) == 0.1
