
import pytest
import torch
from torch import nn

from nnunet_ssl.teachers.ema import EMATeacher, ema_decay, ema_update_


def _net(value: float):
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)
        net[1].running_mean.fill_(value)
    return net


def test_decay_schedule():
    # a = min(1 - 1/(t+1), 0.99): t=0 -> 0, t=1 -> 0.5, t=3 -> 0.75, t=1000 -> 0.99
    assert ema_decay(0) == 0.0
    assert ema_decay(1) == 0.5
    assert ema_decay(3) == 0.75
    assert ema_decay(1000) == 0.99


def test_update_hand_computed():
    teacher, student = _net(1.0), _net(3.0)
    t = EMATeacher(teacher)
    a = t.update(student, step=1)  # a = 0.5 -> 0.5*1 + 0.5*3 = 2
    assert a == 0.5
    for p in t.module.parameters():
        assert torch.allclose(p, torch.full_like(p, 2.0))
    # buffers are copied, not averaged
    assert torch.equal(t.module[1].running_mean, torch.full((2,), 3.0))


def test_decay_zero_copies_student_and_weights_zero_keep_teacher():
    t = EMATeacher(_net(1.0))
    student = _net(5.0)
    t.update(student, step=0)  # a = 0: copy
    assert all(torch.equal(p, torch.full_like(p, 5.0)) for p in t.module.parameters())
    before = {k: v.clone() for k, v in t.module.state_dict().items()}
    ema_update_(t.module, [_net(9.0), _net(7.0)], [0.0, 0.0])  # alpha = beta = 0 keeps the teacher
    assert all(torch.equal(before[k], v) for k, v in t.module.state_dict().items())


def test_multi_student_weighted():
    teacher, s1, s2 = _net(1.0), _net(2.0), _net(4.0)
    ema_update_(teacher, [s1, s2], [0.25, 0.5])  # 0.25*1 + 0.25*2 + 0.5*4 = 2.75
    assert all(torch.allclose(p, torch.full_like(p, 2.75)) for p in teacher.parameters())
    with pytest.raises(ValueError, match="sum to"):
        ema_update_(teacher, [s1, s2], [0.7, 0.5])


def test_teacher_has_no_grad_and_stays_eval():
    t = EMATeacher(_net(1.0))
    t.train()
    assert not t.training and not t.module.training
    assert not any(p.requires_grad for p in t.parameters())


def test_wrapped_student_is_unwrapped():
    class Compiled(nn.Module):  # stands in for torch.compile's OptimizedModule
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    t = EMATeacher(Compiled(_net(1.0)))
    assert isinstance(t.module, nn.Sequential)
    t.update(Compiled(_net(3.0)), step=1)
    assert all(torch.allclose(p, torch.full_like(p, 2.0)) for p in t.module.parameters())
