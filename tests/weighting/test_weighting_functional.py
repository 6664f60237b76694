"""Hand-computed values of the class-imbalance formulas (nnunet_ssl.weighting.functional)."""
import math

import pytest
import torch

from nnunet_ssl.weighting.functional import (
    class_counts,
    confidence_from_stats,
    confidence_scaled_weights,
    confidence_scores,
    correct_counts,
    dice_from_stats,
    dice_per_class_hard,
    difficulty_step,
    difficulty_weights,
    distribution_weights,
    floored_weights,
    hard_dice_stats,
    information_scores,
    kt_weights,
    learning_speed_increments,
    one_hot,
    to_label_map,
)

LN2 = math.log(2.0)


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol, rtol=tol)


# --- label maps ---------------------------------------------------------------------------------


def test_to_label_map_accepts_both_layouts_and_float():
    t = torch.tensor([[[[0.0, 1.0], [2.0, 1.0]]]])  # (B=1, 1, 2, 2) float, like nnU-Net's loaders
    labels, valid = to_label_map(t, 3, (2, 2))
    assert labels.dtype == torch.long and labels.shape == (1, 2, 2) and valid is None
    labels2, _ = to_label_map(t[:, 0].long(), 3, (2, 2))
    assert torch.equal(labels, labels2)


def test_to_label_map_ignore_and_errors():
    t = torch.tensor([[0, 5, 2]])  # (B=1, 3); 5 is the ignore label
    labels, valid = to_label_map(t, 3, (3,), ignore_index=5)
    assert labels.tolist() == [[0, 0, 2]] and valid.tolist() == [[True, False, True]]
    with pytest.raises(ValueError, match="outside the 3 classes"):
        to_label_map(t, 3, (3,))
    with pytest.raises(ValueError, match="spatial"):
        to_label_map(t, 3, (4,))
    with pytest.raises(ValueError, match="one-hot"):
        to_label_map(torch.zeros(1, 3, 3), 3, (3,))  # (B, C, *spatial) one-hot is not a label map


def test_one_hot_and_counts_respect_ignored_voxels():
    labels = torch.tensor([[0, 1, 1, 2]])
    valid = torch.tensor([[True, True, False, True]])
    oh = one_hot(labels, 3, valid)
    assert oh.shape == (1, 3, 4) and oh.sum().item() == 3
    assert class_counts(labels, 3).tolist() == [1, 2, 1]
    assert class_counts(labels, 3, valid).tolist() == [1, 1, 1]


# --- DisW ---------------------------------------------------------------------------------------


def test_distribution_weights_hand_values():
    # counts + 1 = [100, 10, 1]; r = [1, 10, 100]; log r = [0, ln10, 2 ln10]; / max = [0, .5, 1]; × C=3
    w = distribution_weights(torch.tensor([99.0, 9.0, 0.0]))
    assert close(w, [0.0, 1.5, 3.0])
    assert w.dtype == torch.float32 and not w.requires_grad


def test_distribution_weights_floor_equal_counts_and_valid_mask():
    assert close(distribution_weights(torch.tensor([99.0, 9.0, 0.0]), floor=0.5), [0.5, 1.5, 3.0])
    # all counts equal: max log r = 0 -> all 1 before the ×C scale -> C
    assert close(distribution_weights(torch.tensor([4.0, 4.0, 4.0])), [3.0, 3.0, 3.0])
    # class 2 left out: max over valid = 100; log r = [0, ln10]; / ln10 -> [0, 1]; × 3; invalid -> 0
    w = distribution_weights(torch.tensor([99.0, 9.0, 0.0]), valid=torch.tensor([True, True, False]))
    assert close(w, [0.0, 3.0, 0.0])
    assert close(distribution_weights(torch.tensor([1.0, 2.0]), valid=torch.tensor([False, False])), [0.0, 0.0])


def test_distribution_weights_rejects_zero_count_without_smoothing():
    with pytest.raises(ValueError, match="smoothing"):
        distribution_weights(torch.tensor([3.0, 0.0]), smoothing=0.0)


def test_kt_weights_hand_values():
    # correct + 1 = [10, 4, 1]; r = [1, 2.5, 10]; w = 3·[0, ln2.5/ln10, 1] = [0, 1.19382, 3]
    assert close(kt_weights(torch.tensor([9.0, 3.0, 0.0])), [0.0, 3 * math.log(2.5) / math.log(10), 3.0])


def test_correct_counts():
    pred = torch.tensor([[0, 0, 0, 1, 2, 2]])
    target = torch.tensor([[0, 0, 1, 1, 2, 0]])
    # class 0 right at voxels 0, 1; class 1 at 3; class 2 at 4
    assert correct_counts(pred, target, 3).tolist() == [2.0, 1.0, 1.0]


# --- hard Dice ----------------------------------------------------------------------------------


def test_dice_per_class_hard_with_absent_class():
    pred = torch.tensor([[0, 1, 1, 2]])
    target = torch.tensor([[0, 1, 2, 2]])
    dice, valid = dice_per_class_hard(pred, target, 4)
    # c0: 2·1/(1+1) = 1; c1: 2·1/(2+1) = 2/3; c2: 2·1/(1+2) = 2/3; c3 absent everywhere -> invalid, 0
    assert close(dice, [1.0, 2 / 3, 2 / 3, 0.0])
    assert valid.tolist() == [True, True, True, False]
    inter, ps, ts = hard_dice_stats(pred, target, 4)
    assert inter.tolist() == [1, 1, 1, 0] and ps.tolist() == [1, 2, 1, 0] and ts.tolist() == [1, 1, 2, 0]
    assert close(dice_from_stats(inter, ps, ts)[0], dice)


def test_dice_predicted_only_class_is_valid_zero():
    dice, valid = dice_per_class_hard(torch.tensor([[1, 1]]), torch.tensor([[0, 0]]), 2)
    assert dice.tolist() == [0.0, 0.0] and valid.tolist() == [True, True]


# --- DifW ---------------------------------------------------------------------------------------


def test_learning_speed_increments_paper_and_reference():
    prev = torch.tensor([0.5, 0.5, 0.2])
    cur = torch.tensor([1.0, 0.25, 0.2])
    # Δ = [0.5, -0.25, 0]; ln(d/d0) = [ln2, -ln2, 0]
    l, u = learning_speed_increments(prev, cur, "paper")
    assert close(l, [LN2, 0, 0]) and close(u, [0, LN2, 0])
    l, u = learning_speed_increments(prev, cur, "reference")
    # reference multiplies by Δ: learned 0.5·ln2; un-learned (-0.25)·(-ln2)
    assert close(l, [0.5 * LN2, 0, 0]) and close(u, [0, 0.25 * LN2, 0])
    with pytest.raises(ValueError, match="form"):
        learning_speed_increments(prev, cur, "other")


def test_learning_speed_increments_zero_dice_is_finite():
    l, u = learning_speed_increments(torch.tensor([0.5, 0.0]), torch.tensor([0.0, 0.0]))
    # ln(1e-8 / 0.5) = -17.7275 -> un-learned 17.7275; 0 -> 0: ln(1) = 0
    assert torch.isfinite(l).all() and torch.isfinite(u).all()
    assert close(u, [-math.log(1e-8 / 0.5), 0.0])


def test_difficulty_weights_hand_values():
    # s = (u/l)^0.2 = [1, 32^0.2 = 2]; w = (1 - d̄)·s = [0.5, 1.0]; C·w/max = [1, 2]
    w = difficulty_weights(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 32.0]), torch.tensor([0.5, 0.5]))
    assert close(w, [1.0, 2.0])
    # w = [0.5·1, 0.25·2] equal -> [2, 2]
    assert close(difficulty_weights(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 32.0]), torch.tensor([0.5, 0.75])), [2.0, 2.0])
    # every class perfect: all w = 0 -> all equal C
    assert close(difficulty_weights(torch.zeros(3), torch.zeros(3), torch.ones(3)), [3.0, 3.0, 3.0])


def test_difficulty_step_hand_values():
    z = torch.zeros(2)
    st = difficulty_step(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.25]), z, z, z, momentum=0.5)
    # increments (paper) l = [ln2, 0], u = [0, ln2]; EMA m = .5 -> learned [ln2/2, 0], unlearned [0, ln2/2]
    # d̄ = .5·[1, .25] = [.5, .125]
    h = LN2 / 2
    assert close(st.learned, [h, 0]) and close(st.unlearned, [0, h]) and close(st.mean_dice, [0.5, 0.125])
    # s = [(1e-8/(h+1e-8))^.2, ((h+1e-8)/1e-8)^.2]; w = [.5·s0, .875·s1]; C·w/max(w)
    s0, s1 = (1e-8 / (h + 1e-8)) ** 0.2, ((h + 1e-8) / 1e-8) ** 0.2
    assert close(st.weights, [2 * 0.5 * s0 / (0.875 * s1), 2.0])


def test_difficulty_step_masks_keep_state():
    learned, unlearned, mean = torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.4]), torch.tensor([0.5, 0.6])
    st = difficulty_step(
        torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]), learned, unlearned, mean,
        valid=torch.tensor([True, False]), has_prev=torch.tensor([False, True]), momentum=0.5,
    )
    # class 0: valid but no previous Dice -> speeds kept, d̄ = .5·.5 + .5·1 = .75; class 1 invalid -> all kept
    assert close(st.learned, learned) and close(st.unlearned, unlearned) and close(st.mean_dice, [0.75, 0.6])


# --- confidence / information -------------------------------------------------------------------


def test_confidence_scores_hand_values():
    # (B=1, C=3, 4 voxels); target [0, 0, 1, 1]; class 2 absent
    probs = torch.tensor([[[0.8, 0.6, 0.3, 0.5], [0.1, 0.2, 0.5, 0.3], [0.1, 0.2, 0.2, 0.2]]])
    target = torch.tensor([[0, 0, 1, 1]])
    r, valid = confidence_scores(probs, target, 3)
    # r0 = (0.8 + 0.6)/2 = 0.7; r1 = (0.5 + 0.3)/2 = 0.4; r2 undefined -> 0, invalid
    assert close(r, [0.7, 0.4, 0.0]) and valid.tolist() == [True, True, False]
    r2, _ = confidence_from_stats(torch.tensor([1.4, 0.8, 0.0]), torch.tensor([2.0, 2.0, 0.0]))
    assert close(r2, r)


def test_information_scores_hand_values():
    r = torch.tensor([0.7, 0.4, 0.9])
    # 1 - r = [.3, .6, .1]; / .6 = [.5, 1, 1/6]
    assert close(information_scores(r), [0.5, 1.0, 1 / 6])
    # smooth .1: [.4, .7, .2] / .7
    assert close(information_scores(r, smooth=0.1), [4 / 7, 1.0, 2 / 7])
    assert close(information_scores(torch.ones(3)), [1.0, 1.0, 1.0])  # all perfectly confident


def test_confidence_scaled_weights_hand_values():
    # i^0.2 = [1, (1/32)^.2 = .5, 0]; × [2, 3, 4]
    w = confidence_scaled_weights(torch.tensor([2.0, 3.0, 4.0]), torch.tensor([1.0, 1 / 32, 0.0]), beta=0.2)
    assert close(w, [2.0, 1.5, 0.0])


def test_floored_weights_hand_values():
    # DisW of 3 classes with background weight 0: [0, 1.5, 3], mean 1.5 -> w/mean = [0, 1, 2]
    w = torch.tensor([0.0, 1.5, 3.0])
    assert close(floored_weights(w, 1.0), [1.0, 2.0, 3.0])  # the "1 + w/mean(w)" form
    assert close(floored_weights(w, 0.5), [0.5, 1.5, 2.5])
    assert close(floored_weights(w, 0.0), [0.0, 1.0, 2.0])  # the pure ratios (losses are scale-free)
    # scale-free: 10·w gives the same weights
    assert close(floored_weights(10 * w, 1.0), [1.0, 2.0, 3.0])
    # all weights 0 (nothing to weigh): every class gets the floor
    assert close(floored_weights(torch.zeros(3), 1.0), [1.0, 1.0, 1.0])
    out = floored_weights(w.requires_grad_(True), 1.0)
    assert not out.requires_grad and out.dtype == torch.float32
    with pytest.raises(ValueError, match="floor"):
        floored_weights(w, -1.0)
