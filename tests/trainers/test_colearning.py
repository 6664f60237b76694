"""Co-learning: one EMA teacher per student and their share-weighted prediction, hybrid crops with an
ignore label."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nnunet_ssl.mixing.mixes import one_hot
from nnunet_ssl.teachers.ema import EMATeacher
from nnunet_ssl.trainers.colearning import colearning_teacher_shares, nnUNetTrainerCoLearning


def test_teacher_shares():
    assert colearning_teacher_shares(0.005, 0.005) == pytest.approx((0.5, 0.5))
    assert colearning_teacher_shares(0.01, 0.03) == pytest.approx((0.25, 0.75))
    assert colearning_teacher_shares(0.0, 0.0) == (0.5, 0.5)
    for a, b in ((-0.1, 0.1), (0.6, 0.5)):
        with pytest.raises(ValueError, match="alpha, beta >= 0"):
            colearning_teacher_shares(a, b)


def _net(value):
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)
        net[1].running_mean.fill_(value)
    return net


def _trainer(alpha, beta, step):
    s1, s2 = _net(1.0), _net(3.0)
    return SimpleNamespace(network=s1, extra_networks={"network_b": s2},
                           teachers={"teacher_1": EMATeacher(_net(10.0)), "teacher_2": EMATeacher(_net(20.0))},
                           teacher_sources=nnUNetTrainerCoLearning.teacher_sources,
                           trainable_networks=lambda: {"network": s1, "network_b": s2},
                           ema_alpha=alpha, ema_beta=beta, global_step=step)


def test_after_optimizer_step_alpha_beta_zero_keeps_the_teachers():
    fake = _trainer(0.0, 0.0, step=0)
    before = {n: {k: v.clone() for k, v in t.module.state_dict().items()} for n, t in fake.teachers.items()}
    nnUNetTrainerCoLearning.after_optimizer_step(fake)
    for n, t in fake.teachers.items():
        assert all(torch.equal(before[n][k], v) for k, v in t.module.state_dict().items())


def test_each_teacher_follows_its_own_student():
    fake = _trainer(0.005, 0.015, step=10_000)  # warmed up: decay 1 - 0.02 = 0.98
    nnUNetTrainerCoLearning.after_optimizer_step(fake)
    # teacher 1: 0.98·10 + 0.02·1 = 9.82; teacher 2: 0.98·20 + 0.02·3 = 19.66
    for name, value, student in (("teacher_1", 9.82, 1.0), ("teacher_2", 19.66, 3.0)):
        teacher = fake.teachers[name].module
        assert all(torch.allclose(p, torch.full_like(p, value)) for p in teacher.parameters())
        assert teacher[1].running_mean[0].item() == student  # buffers are copied from its student
    fake = _trainer(0.005, 0.015, step=0)  # step 0: decay 0, the teachers become copies of their students
    nnUNetTrainerCoLearning.after_optimizer_step(fake)
    assert all(torch.allclose(p, torch.full_like(p, 3.0)) for p in fake.teachers["teacher_2"].module.parameters())


def test_teacher_prediction_is_the_share_weighted_mean_of_both_teachers():
    fake = _trainer(0.01, 0.03, step=0)
    x = torch.randn(1, 1, 3, 3)
    p1, p2 = (torch.softmax(fake.teachers[n](x), 1) for n in ("teacher_1", "teacher_2"))
    logits = nnUNetTrainerCoLearning.teacher_logits(fake, x)
    assert torch.allclose(torch.softmax(logits, 1), 0.25 * p1 + 0.75 * p2, atol=1e-6)


def test_defaults_predict_with_a_student():
    from nnunet_ssl.trainers.colearning import nnUNetTrainerCoLearning_TeacherInference

    assert nnUNetTrainerCoLearning.inference_model == "network"
    assert nnUNetTrainerCoLearning_TeacherInference.inference_model == ("teacher_1", "teacher_2")
    assert "ema_decay" not in nnUNetTrainerCoLearning.hyperparameter_names()


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
