"""OHEM cross-entropy, its keep schedule and the Lovász hinge against hand-computed values."""
import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_ssl.losses.lovasz import lovasz_grad, lovasz_hinge
from nnunet_ssl.losses.ohem import ohem_binary_cross_entropy, ohem_keep_fraction
from nnunet_ssl.propagation.loss import PropagationLoss

LN2 = math.log(2.0)


def softplus(x):
    return math.log1p(math.exp(x))


def test_ohem_hand_values():
    # logits [0, 0, 2, -2], target [1, 0, 0, 0]: per-pixel BCE = softplus(-z) for y=1, softplus(z) for y=0
    #   = [ln 2, ln 2, softplus(2) = 2.1269, softplus(-2) = 0.1269]
    logits = torch.tensor([0.0, 0.0, 2.0, -2.0])
    target = torch.tensor([1.0, 0.0, 0.0, 0.0])
    all_pixels = (2 * LN2 + softplus(2) + softplus(-2)) / 4  # 0.9100
    assert ohem_binary_cross_entropy(logits, target, 1.0).item() == pytest.approx(all_pixels, abs=1e-6)
    # keep 0.5 -> k = 2 hardest: softplus(2) and ln 2 -> (2.1269 + 0.6931) / 2 = 1.4100
    assert ohem_binary_cross_entropy(logits, target, 0.5).item() == pytest.approx((softplus(2) + LN2) / 2, abs=1e-6)
    # keep 0.1 -> k = max(1, floor(0.4)) = 1: the single hardest pixel
    assert ohem_binary_cross_entropy(logits, target, 0.1).item() == pytest.approx(softplus(2), abs=1e-6)
    # keep 1 is plain BCE with logits
    assert ohem_binary_cross_entropy(logits, target).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, target).item(), abs=1e-7)


def test_ohem_rejects_bad_input_and_has_gradients():
    with pytest.raises(ValueError, match="one shape"):
        ohem_binary_cross_entropy(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="keep_fraction"):
        ohem_binary_cross_entropy(torch.zeros(3), torch.zeros(3), 0.0)
    logits = torch.tensor([0.0, 3.0, -1.0], requires_grad=True)
    ohem_binary_cross_entropy(logits, torch.tensor([1.0, 0.0, 0.0]), 0.34).backward()
    # k = 1: only the hardest pixel (logit 3, y = 0) gets a gradient, sigmoid(3) - 0 = 0.9526
    assert logits.grad.tolist() == pytest.approx([0.0, 1 / (1 + math.exp(-3)), 0.0], abs=1e-6)


def test_ohem_schedule():
    # warm-up from step 10 to 50, top_p 0.2: 1 before 10, 0.2 from 50 on,
    # step 30: 0.2 + 0.8 * (50 - 30) / 40 = 0.6
    assert ohem_keep_fraction(0, 10, 50, 0.2) == 1.0
    assert ohem_keep_fraction(9, 10, 50, 0.2) == 1.0
    assert ohem_keep_fraction(10, 10, 50, 0.2) == pytest.approx(1.0)
    assert ohem_keep_fraction(30, 10, 50, 0.2) == pytest.approx(0.6)
    assert ohem_keep_fraction(50, 10, 50, 0.2) == pytest.approx(0.2)
    assert ohem_keep_fraction(10 ** 6, 10, 50, 0.2) == pytest.approx(0.2)
    assert ohem_keep_fraction(5, 5, 5, 0.15) == pytest.approx(0.15)  # no warm-up window: a step


def test_lovasz_grad_hand_values():
    # gt sorted [0, 0, 1]: G = 1; intersection = 1 - cumsum(g) = [1, 1, 0]; union = 1 + cumsum(1 - g) = [2, 3, 3]
    # J = 1 - I/U = [1/2, 2/3, 1]; gradient = [1/2, 2/3 - 1/2, 1 - 2/3] = [1/2, 1/6, 1/3]
    assert lovasz_grad(torch.tensor([0.0, 0.0, 1.0])).tolist() == pytest.approx([0.5, 1 / 6, 1 / 3])


def test_lovasz_hinge_hand_values():
    # image 1: logits [2, -1, 0.5], labels [1, 0, 0]; signs [1, -1, -1]; errors 1 - z·s = [-1, 0, 1.5]
    #   sorted descending: 1.5 (gt 0), 0 (gt 0), -1 (gt 1) -> gradient [1/2, 1/6, 1/3] (above)
    #   loss = relu([1.5, 0, -1]) · [1/2, 1/6, 1/3] = 0.75
    # image 2: logits [3, -3, -2], labels [1, 0, 0]; errors [-2, -2, -1], all <= 0 -> loss 0
    logits = torch.tensor([[2.0, -1.0, 0.5], [3.0, -3.0, -2.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert lovasz_hinge(logits[:1], labels[:1]).item() == pytest.approx(0.75)
    assert lovasz_hinge(logits[1:], labels[1:]).item() == pytest.approx(0.0)
    assert lovasz_hinge(logits, labels).item() == pytest.approx(0.375)  # per-image mean


def test_lovasz_hinge_whole_batch_and_empty_mask():
    # per_image=False: one image of 6 pixels, logits [2, -1, .5, 3, -3, -2], labels [1, 0, 0, 1, 0, 0]
    # errors [-1, 0, 1.5, -2, -2, -1]; sorted: 1.5 (g0), 0 (g0), -1, -1, -2, -2; only the first two count:
    # G = 2; after 1: I = 2, U = 3 -> J1 = 1/3; after 2: I = 2, U = 4 -> J2 = 1/2
    # loss = 1.5 · 1/3 + 0 · (1/2 - 1/3) = 0.5
    logits = torch.tensor([[2.0, -1.0, 0.5], [3.0, -3.0, -2.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert lovasz_hinge(logits, labels, per_image=False).item() == pytest.approx(0.5)
    # empty mask: G = 0, J = [1, 1, ...] -> gradient [1, 0, 0]: the largest error only
    # logits [0.5, -2]: errors 1 + z = [1.5, -1] -> 1.5
    assert lovasz_hinge(torch.tensor([[0.5, -2.0]]), torch.tensor([[0.0, 0.0]])).item() == pytest.approx(1.5)


def test_propagation_loss_composes_the_two():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 1, 4, 4, generator=g)
    target = (torch.rand(2, 2, 1, 4, 4, generator=g) > 0.5).float()
    total, ce, lov = PropagationLoss(lovasz_weight=0.5)(logits, target, 0.3)
    assert ce.item() == pytest.approx(ohem_binary_cross_entropy(logits, target, 0.3).item())
    assert lov.item() == pytest.approx(lovasz_hinge(logits.flatten(0, 2), target.flatten(0, 2)).item())
    assert total.item() == pytest.approx(ce.item() + 0.5 * lov.item())
