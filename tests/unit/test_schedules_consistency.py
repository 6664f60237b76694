import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_ssl.losses.consistency import cross_pseudo_supervision, hard_pseudo_labels, softmax_mse
from nnunet_ssl.schedules import sigmoid_rampup


def test_sigmoid_rampup_values():
    # w(t) = w_max exp(-5 (1 - t/T)^2)
    assert sigmoid_rampup(0, 100, 0.1) == pytest.approx(0.1 * math.exp(-5))
    assert sigmoid_rampup(50, 100, 0.1) == pytest.approx(0.1 * math.exp(-1.25))
    assert sigmoid_rampup(100, 100, 0.1) == pytest.approx(0.1)
    assert sigmoid_rampup(500, 100, 0.1) == pytest.approx(0.1)
    assert sigmoid_rampup(3, 0, 0.7) == 0.7  # no ramp-up


def test_softmax_mse_hand_computed():
    # two classes, one voxel: logits (0, 0) -> p = (.5, .5); (log 3, 0) -> p = (.75, .25)
    s = torch.zeros(1, 2, 1)
    t = torch.tensor([[[math.log(3.0)], [0.0]]])
    # mean over 2 elements of (0.25^2, 0.25^2) = 0.0625
    assert softmax_mse(s, t).item() == pytest.approx(0.0625)
    assert softmax_mse(t, t).item() == pytest.approx(0.0)
    with pytest.raises(ValueError):
        softmax_mse(s, torch.zeros(1, 3, 1))


def test_softmax_mse_gradient_only_to_student():
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, requires_grad=True)
    softmax_mse(s, t).backward()
    assert s.grad is not None and t.grad is None


def test_cps_hand_computed():
    # A predicts class 0 confidently, B predicts class 1: each is pushed towards the other's argmax
    a = torch.tensor([[[2.0], [0.0]]])  # (B=1, C=2, 1 voxel)
    b = torch.tensor([[[0.0], [1.0]]])
    expected = (F.cross_entropy(a, torch.tensor([[1]])) + F.cross_entropy(b, torch.tensor([[0]])))
    # CE(a, 1) = log(1 + e^2) ; CE(b, 0) = log(1 + e^1)
    assert expected.item() == pytest.approx(math.log(1 + math.e ** 2) + math.log(1 + math.e))
    assert cross_pseudo_supervision(a, b).item() == pytest.approx(expected.item())
    assert torch.equal(hard_pseudo_labels(a), torch.tensor([[0]]))


def test_cps_custom_ce_and_no_grad_through_targets():
    a = torch.randn(2, 3, 5, requires_grad=True)
    b = torch.randn(2, 3, 5, requires_grad=True)
    calls = []

    def ce(logits, labels):
        calls.append(labels.requires_grad)
        return F.cross_entropy(logits, labels)

    cross_pseudo_supervision(a, b, ce).backward()
    assert calls == [False, False]
    assert a.grad is not None and b.grad is not None
