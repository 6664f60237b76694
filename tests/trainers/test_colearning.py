"""Co-learning: weighted multi-student EMA weights and update, hybrid crops with an ignore label."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nnunet_ssl.mixing.mixes import one_hot
from nnunet_ssl.teachers.ema import EMATeacher
from nnunet_ssl.trainers.colearning import colearning_ema_weights, nnUNetTrainerCoLearning


def test_ema_weights_warm_up_then_alpha_beta():
    assert colearning_ema_weights(0, 0.005, 0.005) == pytest.approx((0.5, 0.5))      # a_0 = 0
    assert colearning_ema_weights(1, 0.005, 0.005) == pytest.approx((0.25, 0.25))    # a_1 = 1/2
    assert colearning_ema_weights(9, 0.01, 0.03) == pytest.approx((0.025, 0.075))   # a_9 = 0.9 < 0.96
    assert colearning_ema_weights(1000, 0.005, 0.005) == pytest.approx((0.005, 0.005))
    assert colearning_ema_weights(0, 0.01, 0.03) == pytest.approx((0.25, 0.75))
    assert colearning_ema_weights(0, 0.0, 0.0) == (0.0, 0.0)
    assert colearning_ema_weights(7, 0.0, 0.02) == pytest.approx((0.0, 1 / 8))       # a_7 = 7/8
    for a, b in ((-0.1, 0.1), (0.6, 0.5)):
        with pytest.raises(ValueError, match="alpha, beta >= 0"):
            colearning_ema_weights(0, a, b)


def _net(value):
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)
        net[1].running_mean.fill_(value)
    return net


def _trainer(alpha, beta, step):
    s1, s2 = _net(1.0), _net(3.0)
    return SimpleNamespace(network=s1, extra_networks={"network_b": s2}, teachers={"teacher": EMATeacher(_net(10.0))},
                           ema_alpha=alpha, ema_beta=beta, global_step=step)


def test_after_optimizer_step_alpha_beta_zero_keeps_the_teacher():
    fake = _trainer(0.0, 0.0, step=0)
    before = {k: v.clone() for k, v in fake.teachers["teacher"].module.state_dict().items()}
    nnUNetTrainerCoLearning.after_optimizer_step(fake)
    after = fake.teachers["teacher"].module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # parameters and norm statistics


def test_after_optimizer_step_weighted_average_of_both_students():
    fake = _trainer(0.005, 0.015, step=10_000)  # warmed up: α_t = .005, β_t = .015
    nnUNetTrainerCoLearning.after_optimizer_step(fake)
    teacher = fake.teachers["teacher"].module
    # 0.98·10 + 0.005·1 + 0.015·3 = 9.85
    assert all(torch.allclose(p, torch.full_like(p, 9.85)) for p in teacher.parameters())
    assert teacher[1].running_mean.item() == 1.0  # buffers are copied from student 1
    fake = _trainer(0.005, 0.015, step=0)       # step 0: (1·.25 + 3·.75) = 2.5
    nnUNetTrainerCoLearning.after_optimizer_step(fake)
    assert all(torch.allclose(p, torch.full_like(p, 2.5)) for p in fake.teachers["teacher"].module.parameters())


def test_hybrid_crops_mix_labels_and_drop_ignored_voxels():
    g = torch.Generator().manual_seed(0)
    x_l, x_u = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    y_l = torch.randint(0, 3, (2, 1, 4, 4), generator=g)
    y_l[0, 0, 0, :] = 3  # the ignore label on one row
    probs = torch.softmax(torch.randn(2, 3, 4, 4, generator=g), 1)
    fake = SimpleNamespace(hybrid_crop_beta=0.5, generator=g, label_manager=SimpleNamespace(ignore_label=3))
    mix1, mix2, valid1, valid2 = nnUNetTrainerCoLearning.hybrid_crops(fake, x_l, y_l, x_u, probs)
    m = mix1.mask  # (2, 1, 4, 4): 1 outside the 2x2 box
    assert m.sum().item() == 2 * 12 and torch.equal(mix2.mask, m)
    target_l = one_hot(torch.where(y_l == 3, 0, y_l), 3, 2)
    # the mixed soft label is the same mix of the labels: ground truth where M = 1 (mix1) / 0 (mix2)
    assert torch.allclose(mix1.label, target_l * m + probs * (1 - m))
    assert torch.allclose(mix2.label, probs * m + target_l * (1 - m))
    assert torch.allclose(mix1.image, x_l * m + x_u * (1 - m))
    ignored = (y_l == 3).float()
    assert torch.equal(valid1, 1 - ignored * m) and torch.equal(valid2, 1 - ignored * (1 - m))
    fake.label_manager.ignore_label = None
    *_, v1, v2 = nnUNetTrainerCoLearning.hybrid_crops(fake, x_l, y_l.clamp(max=2), x_u, probs)
    assert v1 is None and v2 is None
