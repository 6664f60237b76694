"""Summaries and the paired Wilcoxon path (hand-computed exact p-values)."""
import math

import pytest

from nnunet_ssl.evaluation.stats import (describe, mean_over_classes, nanmean, paired_wilcoxon,
                                         seed_averaged_pairs)


def test_describe_leaves_out_and_counts_nan():
    d = describe([1.0, math.nan, 3.0, 2.0])
    assert d == {"mean": 2.0, "std": 1.0, "median": 2.0, "n": 3, "n_undefined": 1}  # std: sqrt((1+0+1)/2)
    one = describe([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["std"]) and one["n"] == 1
    none = describe([math.nan])
    assert math.isnan(none["mean"]) and none["n"] == 0 and none["n_undefined"] == 1
    assert math.isnan(nanmean([])) and nanmean([math.nan, 4.0]) == 4.0


def test_mean_over_classes():
    rows = [{"case": "a", "dice": 0.2}, {"case": "a", "dice": 0.6}, {"case": "b", "dice": math.nan},
            {"case": "b", "dice": 1.0}, {"case": "c", "dice": math.nan}]
    out = mean_over_classes(rows, "dice")
    assert list(out) == ["a", "b", "c"]
    assert out["a"] == pytest.approx(0.4) and out["b"] == 1.0 and math.isnan(out["c"])


def test_all_positive_differences_exact_p():
    # 6 pairs, every difference positive and distinct: W- = 0, exact two-sided p = 2 / 2**6
    x = {f"c{i}": 0.5 + 0.01 * i for i in range(6)}
    y = {f"c{i}": 0.4 for i in range(6)}
    r = paired_wilcoxon(x, y)
    assert r.p_value == pytest.approx(2 / 64)
    assert r.statistic == 0.0 and r.n_pairs == 6 and r.tested and r.reason == ""
    assert r.mean_difference == pytest.approx(0.125) and r.median_difference == pytest.approx(0.125)


def test_mixed_signs_exact_p():
    # differences 1, 2, -3, 4, 5, 6: ranks = |d|; W- = 3, W+ = 18, statistic min(W+, W-) = 3.
    # Subsets of {1..6} with rank sum <= 3: {}, {1}, {2}, {3}, {1,2} -> p = 2 * 5 / 64
    diffs = [1, 2, -3, 4, 5, 6]
    x = {i: float(d) for i, d in enumerate(diffs)}
    y = {i: 0.0 for i in range(6)}
    r = paired_wilcoxon(x, y)
    assert r.statistic == 3.0
    assert r.p_value == pytest.approx(10 / 64)


def test_pairs_only_shared_finite_keys():
    x = {"a": 1.0, "b": 2.0, "c": math.nan, "d": 4.0}
    y = {"a": 0.0, "b": 0.0, "c": 0.0, "e": 0.0}
    r = paired_wilcoxon(x, y, min_pairs=2)
    assert r.n_pairs == 2 and r.mean_difference == 1.5


def test_too_few_pairs_and_all_zero_differences():
    r = paired_wilcoxon({"a": 1.0, "b": 2.0}, {"a": 0.0, "b": 1.0})
    assert math.isnan(r.p_value) and not r.tested and r.reason == "only 2 paired case(s), need at least 5"
    same = {f"c{i}": 0.8 for i in range(8)}
    r = paired_wilcoxon(same, dict(same))
    assert math.isnan(r.p_value) and r.reason == "all paired differences are zero" and r.n_pairs == 8
    r = paired_wilcoxon({}, {})
    assert r.n_pairs == 0 and math.isnan(r.mean_difference)


def test_seed_averaged_pairs():
    # case p at seeds 0 and 1 in both; case q: seed 1 only in x -> unmatched; case r: NaN on one side
    x = {(0, "p"): 0.8, (1, "p"): 0.6, (1, "q"): 0.9, (0, "r"): math.nan}
    y = {(0, "p"): 0.5, (1, "p"): 0.7, (0, "q"): 0.9, (0, "r"): 0.3}
    xa, ya = seed_averaged_pairs(x, y)
    assert xa == pytest.approx({"p": 0.7}) and ya == pytest.approx({"p": 0.6})


def test_presence_split_hand_computed():
    from nnunet_ssl.evaluation.stats import presence_split

    rows = [  # organ: present in a, b (Dice 0.8, 0.4), absent in c (predicted: a false positive) and d (not)
        {"case": "a", "class": "organ", "dice": 0.8, "n_pred": 10, "n_ref": 12},
        {"case": "b", "class": "organ", "dice": 0.4, "n_pred": 3, "n_ref": 7},
        {"case": "c", "class": "organ", "dice": 0.0, "n_pred": 5, "n_ref": 0},
        {"case": "d", "class": "organ", "dice": 1.0, "n_pred": 0, "n_ref": 0},
        # lesion: never present; predicted in 1 of 3 frames. A missing case is left out.
        {"case": "a", "class": "lesion", "dice": 1.0, "n_pred": 0, "n_ref": 0},
        {"case": "b", "class": "lesion", "dice": 0.0, "n_pred": 2, "n_ref": 0},
        {"case": "c", "class": "lesion", "dice": 1.0, "n_pred": 0, "n_ref": 0},
        {"case": "e", "class": "lesion", "status": "missing", "dice": math.nan, "n_pred": None, "n_ref": None},
    ]
    out = presence_split(rows)
    assert list(out) == ["organ", "lesion"]
    assert out["organ"]["dice_present"] == pytest.approx(0.6)  # (0.8 + 0.4) / 2; all-case mean would be 0.55
    assert out["organ"]["false_positive_rate"] == 0.5 and (out["organ"]["n_present"], out["organ"]["n_absent"]) == (2, 2)
    assert math.isnan(out["lesion"]["dice_present"]) and out["lesion"]["n_present"] == 0
    assert out["lesion"]["false_positive_rate"] == pytest.approx(1 / 3) and out["lesion"]["n_absent"] == 3
    always = presence_split([{"class": "x", "dice": 0.5, "n_pred": 1, "n_ref": 1}])
    assert math.isnan(always["x"]["false_positive_rate"]) and always["x"]["n_absent"] == 0
