"""Two-sample statistics for distribution shift between labeled and unlabeled feature vectors.

Samples are ``(n, F)`` arrays, one row per case. The formulas (each tested by hand on tiny samples):

- Pooled standardisation: every dimension centred and scaled by the mean and standard deviation of
  both samples together. It does not depend on which case is in which sample, so permutation tests
  on standardised features stay exact.
- RBF kernel ``k(a, b) = exp(-||a - b||² / (2 σ²))`` with the median heuristic ``σ = median of the
  pairwise Euclidean distances`` of the pooled sample (Gretton et al., JMLR 2012, sec. 8).
- Unbiased MMD² (Gretton et al. 2012, eq. 3)::

      MMD²_u = 1/(n(n-1)) Σ_{i≠i'} k(x_i, x_i') + 1/(m(m-1)) Σ_{j≠j'} k(y_j, y_j') - 2/(nm) Σ_{i,j} k(x_i, y_j)

- Permutation test of MMD²_u with σ fixed on the pooled sample: every split of the pooled cases into
  sizes n and m when there are at most ``n_permutations`` of them (exact p = share of splits with a
  statistic >= the observed one, the observed split included), otherwise ``n_permutations`` random
  splits with ``p = (1 + #{MMD²_b >= MMD²_obs}) / (1 + B)`` (Phipson & Smyth 2010).
- Standardised mean difference per dimension (Cohen's d with the pooled within-sample SD)::

      d_j = (mean(y_j) - mean(x_j)) / sqrt(((n-1) var(x_j) + (m-1) var(y_j)) / (n + m - 2))     (var with ddof=1)

- Cases beyond the labeled range: an unlabeled case whose distance to its nearest labeled case exceeds
  the largest leave-one-out nearest-neighbour distance among the labeled cases.
- PCA to two components by SVD of the centred pooled sample.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np


def _as_2d(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"expected samples of shape (n, F), got shape {a.shape}")
    return a


def pooled_standardize(x, y) -> Tuple[np.ndarray, np.ndarray]:
    """``x`` ``(n, F)`` and ``y`` ``(m, F)`` centred and scaled per dimension by the pooled mean and
    (population) std; dimensions constant over both samples become 0."""
    x, y = _as_2d(x), _as_2d(y)
    z = np.concatenate([x, y])
    mu, sd = z.mean(0), z.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return (x - mu) / sd, (y - mu) / sd


def pairwise_sq_distances(a, b) -> np.ndarray:
    """``(n, m)`` squared Euclidean distances between the rows of ``a`` and ``b`` (clipped at 0)."""
    a, b = _as_2d(a), _as_2d(b)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def median_heuristic(z) -> float:
    """Median of the pairwise Euclidean distances between distinct rows of ``z`` (1.0 if that is 0)."""
    z = _as_2d(z)
    if len(z) < 2:
        raise ValueError("the median heuristic needs at least two samples")
    d = np.sqrt(pairwise_sq_distances(z, z)[np.triu_indices(len(z), k=1)])
    med = float(np.median(d))
    return med if med > 0 else 1.0


def rbf_kernel(a, b, bandwidth: float) -> np.ndarray:
    """``exp(-||a_i - b_j||² / (2 σ²))``, shape ``(n, m)``."""
    return np.exp(-pairwise_sq_distances(a, b) / (2.0 * float(bandwidth) ** 2))


def _mmd2_from_kernel(k: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> float:
    n, m = len(ix), len(iy)
    kxx, kyy, kxy = k[np.ix_(ix, ix)], k[np.ix_(iy, iy)], k[np.ix_(ix, iy)]
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2.0 * kxy.mean())


def mmd2_unbiased(x, y, bandwidth: float) -> float:
    """Unbiased MMD² with the RBF kernel of ``bandwidth`` (see module doc); needs n, m >= 2."""
    x, y = _as_2d(x), _as_2d(y)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"the unbiased MMD² needs at least 2 cases per sample, got {len(x)} and {len(y)}")
    z = np.concatenate([x, y])
    k = rbf_kernel(z, z, bandwidth)
    return _mmd2_from_kernel(k, np.arange(len(x)), np.arange(len(x), len(z)))


@dataclass
class MMDTest:
    mmd2: float               # observed unbiased MMD²
    p_value: float
    bandwidth: float          # σ of the RBF kernel
    permutations: int         # splits evaluated (all of them when exact)
    exact: bool               # every split enumerated
    null_q95: float           # 95th percentile of MMD² over the splits: the critical value at alpha = 0.05


def mmd_permutation_test(x, y, n_permutations: int = 1000, seed: int = 0, bandwidth: float = None) -> MMDTest:
    """Permutation test of the unbiased RBF MMD² between ``x`` ``(n, F)`` and ``y`` ``(m, F)``.

    ``bandwidth`` defaults to the median heuristic on the pooled sample. Exact (all splits) when there
    are at most ``n_permutations`` splits, else ``n_permutations`` seeded random splits.
    """
    x, y = _as_2d(x), _as_2d(y)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"a two-sample test needs at least 2 cases per sample, got {n} and {m}")
    z = np.concatenate([x, y])
    sigma = float(bandwidth) if bandwidth is not None else median_heuristic(z)
    k = rbf_kernel(z, z, sigma)
    everything = np.arange(n + m)
    observed = _mmd2_from_kernel(k, everything[:n], everything[n:])
    exact = math.comb(n + m, n) <= n_permutations
    if exact:
        stats = []
        for chosen in itertools.combinations(range(n + m), n):
            ix = np.array(chosen)
            stats.append(_mmd2_from_kernel(k, ix, np.setdiff1d(everything, ix)))
    else:
        rng = np.random.default_rng(seed)
        stats = []
        for _ in range(n_permutations):
            perm = rng.permutation(n + m)
            stats.append(_mmd2_from_kernel(k, perm[:n], perm[n:]))
    stats = np.asarray(stats)
    at_least = int((stats >= observed - 1e-12 * max(1.0, abs(observed))).sum())  # ties (mirror splits) count
    p = at_least / len(stats) if exact else (1 + at_least) / (1 + len(stats))
    return MMDTest(observed, float(p), sigma, int(len(stats)), exact, float(np.quantile(stats, 0.95)))


def standardized_mean_difference(x, y) -> np.ndarray:
    """Cohen's d per dimension, ``(mean(y) - mean(x)) / pooled SD`` (see module doc); 0 where the pooled
    SD is 0. Needs n + m >= 3."""
    x, y = _as_2d(x), _as_2d(y)
    n, m = len(x), len(y)
    if n + m < 3:
        raise ValueError("the pooled SD needs at least 3 cases in total")
    vx = x.var(0, ddof=1) if n > 1 else np.zeros(x.shape[1])
    vy = y.var(0, ddof=1) if m > 1 else np.zeros(y.shape[1])
    sd = np.sqrt(((n - 1) * vx + (m - 1) * vy) / (n + m - 2))
    diff = y.mean(0) - x.mean(0)
    return np.where(sd > 0, diff / np.where(sd > 0, sd, 1.0), 0.0)


def beyond_labeled_range(x, y) -> Tuple[np.ndarray, float]:
    """(boolean per row of ``y``, threshold): rows of ``y`` whose nearest row of ``x`` is farther than the
    largest leave-one-out nearest-neighbour distance within ``x`` (the threshold). Needs n >= 2."""
    x, y = _as_2d(x), _as_2d(y)
    if len(x) < 2:
        raise ValueError("the labeled range needs at least 2 labeled cases")
    dxx = np.sqrt(pairwise_sq_distances(x, x))
    np.fill_diagonal(dxx, np.inf)
    threshold = float(dxx.min(1).max())
    nearest = np.sqrt(pairwise_sq_distances(y, x)).min(1)
    return nearest > threshold, threshold


def pca_2d(z) -> Tuple[np.ndarray, List[float]]:
    """Coordinates ``(N, 2)`` of the rows of ``z`` on the first two principal components of the centred
    ``z``, and the share of variance each explains (zeros where ``z`` has fewer components)."""
    z = _as_2d(z)
    c = z - z.mean(0)
    u, s, _ = np.linalg.svd(c, full_matrices=False)
    coords = np.zeros((len(z), 2))
    r = min(2, len(s))
    coords[:, :r] = u[:, :r] * s[:r]
    total = float((s ** 2).sum())
    ratio = [float(s[i] ** 2 / total) if total > 0 and i < len(s) else 0.0 for i in range(2)]
    return coords, ratio
