"""Consensus and stability filters of self-training, hand-checked."""
import numpy as np
import pytest

from nnunet_ssl.pseudo.consensus import (accept_by_threshold, accept_most_stable, aggregate_probabilities,
                                         consensus_score, label_agreement)


def test_label_agreement_hand_checked():
    a = np.array([0, 1, 1, 2, 2, 0])
    b = np.array([0, 1, 0, 2, 2, 2])
    # class 1: |A|=2, |B|=1, overlap 1 -> 2/3; class 2: |A|=2, |B|=3, overlap 2 -> 4/5; mean = (2/3 + 4/5)/2
    assert label_agreement(a, b, [1, 2]) == pytest.approx((2 / 3 + 0.8) / 2)
    # class 3 absent from both agrees perfectly: (2/3 + 4/5 + 1)/3
    assert label_agreement(a, b, [1, 2, 3]) == pytest.approx((2 / 3 + 0.8 + 1) / 3)
    assert label_agreement(np.zeros(4), np.zeros(4), [1]) == 1.0  # two empty masks agree
    assert label_agreement(np.array([1, 0]), np.array([0, 1]), [1]) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        label_agreement(np.zeros(3), np.zeros(4), [1])


def test_aggregate_and_consensus_hand_checked():
    # two teachers, 2 classes, 3 voxels; probabilities of class 1: t1 (.9, .6, .2), t2 (.7, .2, .4)
    t1 = np.array([[.1, .4, .8], [.9, .6, .2]])
    t2 = np.array([[.3, .8, .6], [.7, .2, .4]])
    mean = aggregate_probabilities([t1, t2])
    np.testing.assert_allclose(mean[1], [.8, .4, .3])
    label = mean.argmax(0)  # (1, 0, 0)
    masks = [t1.argmax(0), t2.argmax(0)]  # (1, 1, 0) and (1, 0, 0)
    # teacher 1 vs label: |A|=2, |B|=1, overlap 1 -> 2/3; teacher 2: identical -> 1; mean 5/6
    assert consensus_score(masks, label, [1]) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="differ in shape"):
        aggregate_probabilities([t1, t1[:, :2]])


def test_acceptance_rules():
    scores = {"a": 0.9, "b": 0.5, "c": 0.8, "d": 0.1, "e": 0.8}
    assert accept_by_threshold(scores, 0.8) == {"a": True, "b": False, "c": True, "d": False, "e": True}
    # drop round(0.4 * 5) = 2 lowest: d (0.1), b (0.5)
    assert accept_most_stable(scores, 0.4) == {"a": True, "b": False, "c": True, "d": False, "e": True}
    # drop round(0.34 * 3) = 1 case; c and e tie at 0.8, broken by name: c goes
    assert accept_most_stable({"c": 0.8, "e": 0.8, "z": 0.9}, 0.34) == {"c": False, "e": True, "z": True}
    assert all(accept_most_stable(scores, 0.0).values())
    with pytest.raises(ValueError):
        accept_most_stable(scores, 1.0)
