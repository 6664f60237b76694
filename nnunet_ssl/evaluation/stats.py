"""Summaries and paired tests of per-case metrics.

Pairing for a trainer against the baseline at one labeled fraction: a case counts when both
have a finite value for it at the same seed; a case present at several seeds contributes the
mean of its per-seed values for each side (one pair per case, so repeated seeds of the same
test case do not inflate the number of pairs). The test is the two-sided Wilcoxon
signed-rank test (``scipy.stats.wilcoxon``, zero differences dropped as in Wilcoxon's
original method), uncorrected for multiple comparisons.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

MIN_PAIRS = 5
"""Fewest pairs tested: with 5 pairs the smallest two-sided exact p is 2/2**5 = 0.0625."""


def describe(values: Iterable[float]) -> dict[str, float]:
    """``mean``, ``std`` (sample, ddof=1; NaN for fewer than 2 values), ``median``, ``n`` and
    ``n_undefined`` of ``values``, where NaN values are undefined: left out and counted."""
    arr = np.asarray(list(values), dtype=np.float64)
    finite = arr[~np.isnan(arr)]
    n = int(finite.size)
    return {
        "mean": float(finite.mean()) if n else math.nan,
        "std": float(finite.std(ddof=1)) if n > 1 else math.nan,
        "median": float(np.median(finite)) if n else math.nan,
        "n": n,
        "n_undefined": int(arr.size - n),
    }


def nanmean(values: Iterable[float]) -> float:
    """Mean of the non-NaN ``values``; NaN when there are none (no warning)."""
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def mean_over_classes(rows: Iterable[Mapping], metric: str,
                      key: Callable[[Mapping], Hashable] = lambda r: r["case"]) -> dict[Hashable, float]:
    """Per-case value of ``metric`` from per-class rows: for each ``key(row)`` (default the case id)
    the mean over its rows, NaN values left out (NaN when all are NaN). Keys keep first-seen order."""
    groups: dict[Hashable, list[float]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(float(r[metric]))
    return {k: nanmean(v) for k, v in groups.items()}



def presence_split(rows: Iterable[Mapping]) -> dict[str, dict[str, float]]:
    """Per class, the mean Dice where the class is present and the false-positive rate where it is absent.

    ``rows``: per-case, per-class rows with ``class``, ``dice``, ``n_pred`` and ``n_ref`` (voxels of the
    class in the prediction and in the reference), e.g. from :func:`~nnunet_ssl.evaluation.metrics.case_metrics`;
    rows with a ``status`` other than ``"ok"`` are left out. For each class, over its cases:

    - ``dice_present``: mean Dice over the cases whose reference contains the class (``n_ref > 0``);
    - ``false_positive_rate``: the fraction of the cases without the class in the reference
      (``n_ref == 0``) whose prediction contains it (``n_pred > 0``);
    - ``n_present``, ``n_absent``: the numbers of such cases (a rate over none is NaN).

    The mean Dice over all cases mixes the two: an absent class scores 1 when it is not predicted
    and 0 when it is (:mod:`~nnunet_ssl.evaluation.metrics`' empty-mask convention).
    """
    groups: dict[str, list[Mapping]] = {}
    for r in rows:
        if r.get("status", "ok") == "ok":
            groups.setdefault(r["class"], []).append(r)
    out = {}
    for name, rs in groups.items():
        present = [float(r["dice"]) for r in rs if r["n_ref"] > 0]
        absent = [r["n_pred"] > 0 for r in rs if r["n_ref"] == 0]
        out[name] = {"dice_present": nanmean(present), "n_present": len(present),
                     "false_positive_rate": sum(absent) / len(absent) if absent else math.nan,
                     "n_absent": len(absent)}
    return out

@dataclass(frozen=True)
class WilcoxonResult:
    """A paired test of ``x`` against ``y``: ``p_value`` NaN (with ``reason``) when not testable."""

    p_value: float
    statistic: float
    n_pairs: int
    mean_difference: float
    median_difference: float
    reason: str = ""

    @property
    def tested(self) -> bool:
        return not math.isnan(self.p_value)


def paired_wilcoxon(x: Mapping[Hashable, float], y: Mapping[Hashable, float], *,
                    min_pairs: int = MIN_PAIRS) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of ``x[k] - y[k]`` over the keys both share.

    Pairs with a NaN on either side are dropped. Returns a NaN p-value and a reason when fewer
    than ``min_pairs`` pairs remain or every difference is zero.
    """
    from scipy.stats import wilcoxon

    keys = [k for k in x if k in y and not (math.isnan(x[k]) or math.isnan(y[k]))]
    diff = np.asarray([x[k] - y[k] for k in keys], dtype=np.float64)
    n = int(diff.size)
    mean_d = float(diff.mean()) if n else math.nan
    median_d = float(np.median(diff)) if n else math.nan
    if n < min_pairs:
        return WilcoxonResult(math.nan, math.nan, n, mean_d, median_d,
                              f"only {n} paired case(s), need at least {min_pairs}")
    if not np.any(diff != 0):
        return WilcoxonResult(math.nan, math.nan, n, mean_d, median_d, "all paired differences are zero")
    res = wilcoxon(diff, zero_method="wilcox", alternative="two-sided")
    return WilcoxonResult(float(res.pvalue), float(res.statistic), n, mean_d, median_d)


def seed_averaged_pairs(x: Mapping[tuple[Hashable, Hashable], float], y: Mapping[tuple[Hashable, Hashable], float]
                        ) -> tuple[dict[Hashable, float], dict[Hashable, float]]:
    """Match ``(seed, case) -> value`` maps on equal keys with finite values on both sides and
    average each side over seeds per case. Returns two ``case -> value`` maps with equal keys."""
    sums: dict[Hashable, list[float]] = {}
    for key, xv in x.items():
        yv = y.get(key, math.nan)
        if math.isnan(xv) or math.isnan(yv):
            continue
        acc = sums.setdefault(key[1], [0.0, 0.0, 0])
        acc[0] += xv
        acc[1] += yv
        acc[2] += 1
    return ({c: s[0] / s[2] for c, s in sums.items()}, {c: s[1] / s[2] for c, s in sums.items()})
