"""Generalised Dice and focal loss: hand values, invariants, absent classes."""
import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_ssl.losses.segmentation import GeneralisedDiceFocalLoss, focal_loss, generalised_dice_loss


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol, rtol=tol)


def test_gdl_hand_value():
    # B=1, C=2, 4 voxels, target [0,0,0,1]; p1 = [0, 0, .5, 1], p0 = 1 - p1
    probs = torch.tensor([[[1.0, 1.0, 0.5, 0.0], [0.0, 0.0, 0.5, 1.0]]])
    target = torch.tensor([[[0.0, 0.0, 0.0, 1.0]]])
    # Σy = [3, 1] -> w = [1/9, 1] -> normalised [.1, .9]
    # tp = [2.5, 1]; Σp = [2.5, 1.5]
    # num = 2(.1·2.5 + .9·1) = 2.3; den = .1(2.5 + 3) + .9(1.5 + 1) = 2.8; loss = 1 - 2.3/2.8 = .5/2.8
    got = generalised_dice_loss(probs, target, softmax=False, smooth=0.0)
    assert close(got, 0.5 / 2.8)


def test_gdl_perfect_absent_class_and_gradients():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 2, (2, 1, 4, 4, 4), generator=g).float()  # class 2 of 3 absent
    perfect = 50.0 * F.one_hot(target[:, 0].long(), 3).movedim(-1, 1).float()
    assert generalised_dice_loss(perfect, target) < 1e-5
    logits = torch.randn(2, 3, 4, 4, 4, generator=g, requires_grad=True)
    for batch_dice in (True, False):
        loss = generalised_dice_loss(logits, target, batch_dice=batch_dice)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_focal_hand_values_and_ce_limit():
    # one voxel, logits [0, ln3], target 0 -> p_t = 1/4
    logits = torch.tensor([[[0.0], [math.log(3.0)]]])
    target = torch.tensor([[[0.0]]])
    # -(1 - 1/4)^2 · ln(1/4) = .5625 · ln 4
    assert close(focal_loss(logits, target), 0.5625 * math.log(4.0))
    assert close(focal_loss(logits, target, alpha=[0.25, 1.0]), 0.25 * 0.5625 * math.log(4.0))
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 5, 5, generator=g)
    target = torch.randint(0, 4, (2, 5, 5), generator=g)
    assert close(focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target))
    assert focal_loss(logits, target) < focal_loss(logits, target, gamma=0.0)  # easy voxels down-weighted


def test_focal_ignore_index_and_errors():
    logits = torch.tensor([[[0.0, 3.0], [math.log(3.0), -2.0]]])
    target = torch.tensor([[0, 255]])
    assert close(focal_loss(logits, target, ignore_index=255), 0.5625 * math.log(4.0))
    with pytest.raises(ValueError, match="2 entries"):
        focal_loss(logits, target, alpha=[1.0], ignore_index=255)


def test_gdl_focal_module_sums_terms():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 3, 6, 6, generator=g)
    target = torch.randint(0, 3, (1, 1, 6, 6), generator=g).float()
    m = GeneralisedDiceFocalLoss(focal_weight=2.0)
    assert close(m(logits, target), generalised_dice_loss(logits, target) + 2 * focal_loss(logits, target))
