"""``--c`` restores every network, teacher, optimizer, tracker, step counter and RNG state exactly."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from conftest import CPU_PLANS

BUDGET = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}


def _state(t):
    from nnunet_ssl.utils.modules import unwrap

    s = {f"net/{n}/{k}": v.clone() for n, m in t.trainable_networks().items() for k, v in unwrap(m).state_dict().items()}
    s.update({f"teacher/{n}/{k}": v.clone() for n, m in t.teachers.items()
              for k, v in unwrap(m.module).state_dict().items()})
    return s


def _assert_same_optimizer(a, b):
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        for name, v in sa["state"][k].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb["state"][k][name]))


@pytest.mark.e2e
@pytest.mark.parametrize("trainer", ["nnUNetTrainerMeanTeacher", "nnUNetTrainerCPS"])
def test_resume_restores_everything(trainer, tiny_3d):
    from nnunet_ssl.runner import build_trainer, train
    from nnunetv2.run.run_training import maybe_load_checkpoint

    t1 = train(tiny_3d["id"], "3d_fullres", 0, trainer, CPU_PLANS, "cpu", validate=False, budget=BUDGET)
    final = os.path.join(t1.output_folder, "checkpoint_final.pth")
    assert os.path.isfile(final)

    t2 = build_trainer(tiny_3d["id"], "3d_fullres", 0, trainer, CPU_PLANS, "cpu", continue_training=True,
                       budget={**BUDGET, "num_epochs": 2})
    maybe_load_checkpoint(t2, True, False, None)
    s1, s2 = _state(t1), _state(t2)
    assert s1.keys() == s2.keys() and len(s1) > 0
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    _assert_same_optimizer(t1, t2)
    assert t2.global_step == t1.global_step == 2
    assert t2.current_epoch == 1
    assert torch.equal(t1.generator.get_state(), t2.generator.get_state())
    for name in t1.trackers:
        a, b = t1.trackers[name].state_dict(), t2.trackers[name].state_dict()
        assert a.keys() == b.keys()
    # the logger continues: one value per finished epoch
    assert len(t2.logger.get_value("train_losses", step=None)) == 1
    assert all(np.isfinite(t2.logger.get_value("train_losses", step=None)))
    # inference weights are the student's (as the reference code); the teacher follows it by EMA
    if t1.teachers:
        from nnunet_ssl.utils.modules import unwrap

        ckpt = torch.load(final, map_location="cpu", weights_only=False)
        student = unwrap(t1.network).state_dict()
        assert all(torch.equal(ckpt["network_weights"][k], student[k]) for k in student)
        teacher = t1.teachers["teacher"].module.state_dict()
        assert not all(torch.equal(teacher[k], student[k]) for k in student)
