"""Distribution-shift statistics, checked against values computed by hand on tiny samples."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nnunet_ssl.evaluation.shift import (beyond_labeled_range, median_heuristic, mmd2_unbiased, mmd_permutation_test,
                                         pca_2d, pooled_standardize, rbf_kernel, standardized_mean_difference)

X = np.array([[0.0], [1.0]])
Y = np.array([[3.0], [4.0]])


def test_rbf_kernel_and_median_heuristic_by_hand():
    # k(0, 3) with sigma 1: exp(-9 / 2) = 0.011109
    assert rbf_kernel([[0.0]], [[3.0]], 1.0)[0, 0] == pytest.approx(0.0111090, abs=1e-7)
    # pooled {0, 1, 3, 4}: pairwise distances 1, 3, 4, 2, 3, 1 -> sorted 1 1 2 3 3 4 -> median (2 + 3) / 2 = 2.5
    assert median_heuristic(np.concatenate([X, Y])) == 2.5


def test_mmd2_unbiased_by_hand():
    # sigma = 1, k(d) = exp(-d²/2)
    # within x: one pair, d = 1 -> 0.6065307 (mean over i != i' is the same number); within y: the same
    # across: d(0,3) = 3 -> 0.0111090, d(0,4) = 4 -> 0.0003355, d(1,3) = 2 -> 0.1353353, d(1,4) = 3 -> 0.0111090
    #         mean = 0.1578888 / 4 = 0.0394722
    # MMD²_u = 0.6065307 + 0.6065307 - 2 * 0.0394722 = 1.1341169
    assert mmd2_unbiased(X, Y, 1.0) == pytest.approx(1.1341169, abs=1e-6)
    # identical samples: within terms equal the across term only off the diagonal -> here 2 * 0.6065307 - 2 * mean
    # of k over the 2x2 across block (1, 0.6065, 0.6065, 1 -> 0.8032653) = 1.2130613 - 1.6065307 = -0.3934693
    assert mmd2_unbiased(X, X, 1.0) == pytest.approx(-0.3934693, abs=1e-6)


def test_exact_permutation_p_value_by_hand():
    # the 6 splits of {0, 1, 3, 4} into two pairs (sigma = 1):
    #   {0,1}|{3,4} and {3,4}|{0,1}: 1.1341169 (the observed split and its mirror)
    #   {0,3}|{1,4}, {1,4}|{0,3}: within 0.0111090 + 0.0111090, across (0.6065+0.0003+0.1353+0.6065)/4 = 0.3371832
    #                             -> 0.0222180 - 0.6743664 = -0.6521484
    #   {0,4}|{1,3}, {1,3}|{0,4}: within 0.0003355 + 0.1353353, across (0.6065+0.0111+0.0111+0.6065)/4 = 0.3088198
    #                             -> 0.1356708 - 0.6176396 = -0.4819688
    # two of six splits are >= the observed -> p = 2/6 = 1/3
    t = mmd_permutation_test(X, Y, n_permutations=1000, bandwidth=1.0)
    assert t.exact and t.permutations == 6
    assert t.mmd2 == pytest.approx(1.1341169, abs=1e-6) and t.p_value == pytest.approx(1 / 3)
    # 95th percentile of the six values (sorted -0.652, -0.652, -0.482, -0.482, 1.134, 1.134) is 1.134
    assert t.null_q95 == pytest.approx(1.1341169, abs=1e-6)


def test_random_permutation_p_value_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(12, 3)) + 3.0
    t = mmd_permutation_test(x, y, n_permutations=199, seed=1)
    assert not t.exact and t.permutations == 199  # C(24, 12) = 2,704,156 splits > 199
    # a 3-sigma shift with 12 + 12 cases: no random split reaches it -> p = (1 + 0) / (1 + 199) = 0.005
    assert t.p_value == pytest.approx(1 / 200)
    same = mmd_permutation_test(x, rng.normal(size=(12, 3)), n_permutations=199, seed=1)
    assert same.p_value > 0.05 and same.mmd2 < t.null_q95


def test_standardized_mean_difference_by_hand():
    # x = 1, 2, 3: mean 2, var 1;  y = 4, 5, 6, 7: mean 5.5, var (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    # pooled var = (2 * 1 + 3 * 5/3) / (3 + 4 - 2) = 7/5 = 1.4 -> SD 1.1832160;  d = 3.5 / 1.1832160 = 2.9580399
    x = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    y = np.array([[4.0, 0.0], [5.0, 0.0], [6.0, 0.0], [7.0, 0.0]])
    np.testing.assert_allclose(standardized_mean_difference(x, y), [2.9580399, 0.0], atol=1e-6)


def test_beyond_labeled_range_by_hand():
    # labeled 0, 1, 3: nearest other labeled 1, 1, 2 -> threshold 2;  unlabeled 2 -> nearest 1 (<= 2), 6 -> 3 (> 2)
    flags, threshold = beyond_labeled_range([[0.0], [1.0], [3.0]], [[2.0], [6.0]])
    assert threshold == 2.0 and flags.tolist() == [False, True]


def test_pooled_standardize_is_split_invariant():
    # pooled {0, 2, 4, 6}: mean 3, population SD sqrt((9 + 1 + 1 + 9) / 4) = sqrt(5) = 2.2360680
    xs, ys = pooled_standardize([[0.0, 5.0], [2.0, 5.0]], [[4.0, 5.0], [6.0, 5.0]])
    np.testing.assert_allclose(xs[:, 0], [-3 / math.sqrt(5), -1 / math.sqrt(5)])
    np.testing.assert_allclose(ys[:, 0], [1 / math.sqrt(5), 3 / math.sqrt(5)])
    assert (xs[:, 1] == 0).all() and (ys[:, 1] == 0).all()  # a constant dimension carries nothing


def test_pca_2d_by_hand():
    # points on the diagonal: (1,1), (-1,-1), (2,2), (-2,-2); centred already; all variance on the first component;
    # coordinates are the signed distances along (1,1)/sqrt(2): ±sqrt(2), ±2 sqrt(2)
    coords, ratio = pca_2d([[1, 1], [-1, -1], [2, 2], [-2, -2]])
    np.testing.assert_allclose(np.abs(coords[:, 0]), [math.sqrt(2), math.sqrt(2), 2 * math.sqrt(2), 2 * math.sqrt(2)])
    np.testing.assert_allclose(coords[:, 1], 0, atol=1e-12)
    assert ratio[0] == pytest.approx(1.0) and ratio[1] == pytest.approx(0.0, abs=1e-12)


def test_refusals():
    with pytest.raises(ValueError, match="at least 2 cases per sample"):
        mmd_permutation_test([[0.0]], [[1.0], [2.0]])
    with pytest.raises(ValueError, match="shape"):
        mmd2_unbiased(np.zeros((2, 2, 2)), np.zeros((2, 2)), 1.0)
