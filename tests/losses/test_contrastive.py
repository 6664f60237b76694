import math

import pytest
import torch

from nnunet_ssl.losses.contrastive import (
    multiscale_supcon_loss,
    positive_pair_mask,
    simclr_positive_mask,
    supcon_chance,
    supcon_loss,
)

# Three unit embeddings; with tau = 0.5 the logits z_i.z_j / tau are
#   l12 = 0.6 / 0.5 = 1.2,   l13 = 0 / 0.5 = 0,   l23 = 0.8 / 0.5 = 1.6
Z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])


def test_supcon_hand_computed_one_positive_each():
    # Images 1 and 2 share a category set, image 3 has no positive (excluded as an anchor).
    # anchor 1: P={2}, A={2,3}: -log(e^1.2 / (e^1.2 + e^0))   = log(1 + e^-1.2) = log(1.3011942) = 0.2632825
    # anchor 2: P={1}, A={1,3}: -log(e^1.2 / (e^1.2 + e^1.6)) = log(1 + e^0.4)  = log(2.4918247) = 0.9130153
    # mean over the two anchors: (0.2632825 + 0.9130153) / 2 = 0.5881489
    pos = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    assert supcon_loss(Z, pos, temperature=0.5).item() == pytest.approx(0.5881489, abs=1e-6)


def test_supcon_hand_computed_two_positives_each():
    # All three share a category set: each anchor averages log-probabilities over 2 positives.
    # log denominators: d1 = log(e^1.2 + e^0) = 1.4632825, d2 = log(e^1.2 + e^1.6) = 2.1130153,
    #                   d3 = log(e^0 + e^1.6) = 1.7839007
    # l1 = -((1.2 - d1) + (0 - d1)) / 2 = 0.8632825
    # l2 = -((1.2 - d2) + (1.6 - d2)) / 2 = 0.7130153
    # l3 = -((0 - d3) + (1.6 - d3)) / 2 = 0.9839007
    # mean: (0.8632825 + 0.7130153 + 0.9839007) / 3 = 0.8533995
    pos = torch.ones(3, 3, dtype=torch.bool)  # the diagonal is ignored
    assert supcon_loss(Z, pos, temperature=0.5).item() == pytest.approx(0.8533995, abs=1e-6)


def test_supcon_no_positives_is_zero_with_graph():
    z = torch.nn.functional.normalize(torch.randn(4, 3), dim=1).requires_grad_(True)
    loss = supcon_loss(z, torch.zeros(4, 4, dtype=torch.bool))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    one = supcon_loss(z[:1], torch.ones(1, 1, dtype=torch.bool))  # a single image has no positive
    assert one.item() == 0.0 and one.requires_grad


def test_supcon_finite_at_low_temperature_and_half_precision():
    z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]), dim=1)
    # tau = 0.001: logits +-1000. anchor 1: -log(e^1000 / (e^1000 + e^-1000)) ~ 0; anchor 2 likewise
    pos = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    loss = supcon_loss(z.half().requires_grad_(True), pos, temperature=0.001)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)


def test_supcon_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"positive_mask must be \(3, 3\)"):
        supcon_loss(Z, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="embeddings must be"):
        supcon_loss(Z[0], torch.ones(3, 3, dtype=torch.bool))


def test_multiscale_sums_scales():
    pos = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    assert multiscale_supcon_loss([Z, Z], pos, 0.5).item() == pytest.approx(2 * 0.5881489, abs=1e-6)


def test_positive_mask_identical_and_different_sets():
    v = torch.tensor([[1, 0, 1],   # {1, 3}
                      [1, 0, 1],   # {1, 3}: same set as 0
                      [1, 0, 0],   # {1}: a subset of 0's set is a different set
                      [0, 0, 0],   # {} (no foreground class)
                      [0, 0, 0]])  # {}: same as 3
    expected = torch.tensor([[0, 1, 0, 0, 0],
                             [1, 0, 0, 0, 0],
                             [0, 0, 0, 0, 0],
                             [0, 0, 0, 0, 1],
                             [0, 0, 0, 1, 0]], dtype=torch.bool)
    assert torch.equal(positive_pair_mask(v.float()), expected)


def test_positive_mask_with_stages():
    v = torch.tensor([[1.0, 1.0]] * 4)  # all four share one category set
    stages = ["dissection", "dissection", "clipping", None]
    # 0-1 same stage: positive; 2 differs from 0 and 1; 3 has no stage: matches any stage
    expected = torch.tensor([[0, 1, 0, 1],
                             [1, 0, 0, 1],
                             [0, 0, 0, 1],
                             [1, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(positive_pair_mask(v, stages), expected)
    with pytest.raises(ValueError, match="got 3 stages for a batch of 4"):
        positive_pair_mask(v, stages[:3])


def test_simclr_mask():
    expected = torch.tensor([[0, 0, 1, 0],
                             [0, 0, 0, 1],
                             [1, 0, 0, 0],
                             [0, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(simclr_positive_mask(2), expected)
    m = simclr_positive_mask(3)
    assert torch.equal(m, m.t()) and m.sum().item() == 6 and not m.diagonal().any()


def test_simclr_identical_views_beat_swapped_views():
    # Two orthogonal images, each view equal to its image: every anchor's positive is its closest
    # point, so the loss is lower than when the second views are swapped.
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mask = simclr_positive_mask(2)
    aligned = supcon_loss(torch.stack([a, b, a, b]), mask, temperature=0.5)
    swapped = supcon_loss(torch.stack([a, b, b, a]), mask, temperature=0.5)
    # aligned anchor: -log(e^2 / (e^2 + 2 e^0)) = log(1 + 2 e^-2)
    assert aligned.item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), abs=1e-6)
    assert aligned < swapped


def test_supcon_chance_is_the_loss_of_indistinguishable_embeddings():
    # 8 images, 3 scales: a uniform softmax over the 7 others gives 3 ln 7 = 5.8377 for any positive mask
    pos = torch.zeros(8, 8, dtype=torch.bool)
    pos[0, 1] = pos[1, 0] = pos[2, 5] = pos[5, 2] = True
    assert supcon_chance(pos, num_scales=3) == pytest.approx(3 * math.log(7))
    assert 3 * math.log(7) == pytest.approx(5.8377, abs=1e-4)
    same = [torch.nn.functional.normalize(torch.ones(8, 4), dim=1)] * 3  # every similarity equal
    assert multiscale_supcon_loss(same, pos).item() == pytest.approx(supcon_chance(pos, 3), abs=1e-5)
    # no positive pair (or a single image): the loss is 0, and so is its chance level
    assert supcon_chance(torch.zeros(8, 8, dtype=torch.bool), 3) == 0.0
    assert supcon_chance(torch.ones(1, 1, dtype=torch.bool)) == 0.0
