"""Which pseudo-labeled cases a self-training round accepts: teacher consensus and stability across rounds.

- **Consensus** (seed FLARE22 pipeline): several teachers predict a case; their class probabilities are
  averaged into the aggregated pseudo-label; the case's score is the mean, over teachers, of the Dice
  between the teacher's mask and the aggregated one. Cases scoring at least a threshold are accepted.
- **Stability** (FLARE22 winner): the Dice between a case's pseudo-label of this round and of the
  previous one; the least stable fraction of the cases is dropped.

Dice between two label maps here is the mean over the foreground classes of the per-class Dice, where a
class absent from both maps agrees perfectly (1): two empty predictions agree, which is what a filter
about agreement must say.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import numpy as np


def aggregate_probabilities(probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of K teachers' class probabilities ``(C, *spatial)`` → ``(C, *spatial)`` float32."""
    if not probabilities:
        raise ValueError("aggregate_probabilities needs at least one teacher")
    shapes = {p.shape for p in probabilities}
    if len(shapes) != 1:
        raise ValueError(f"teachers' probabilities differ in shape: {sorted(shapes)}")
    out = np.zeros(probabilities[0].shape, dtype=np.float32)
    for p in probabilities:
        out += p.astype(np.float32, copy=False)
    return out / len(probabilities)


def label_agreement(a: np.ndarray, b: np.ndarray, labels: Sequence[int]) -> float:
    """Mean over ``labels`` (foreground classes) of ``2|A_c ∩ B_c| / (|A_c| + |B_c|)``, 1 for a class absent
    from both maps."""
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    if not len(labels):
        raise ValueError("label_agreement needs at least one foreground label")
    scores = []
    for c in labels:
        in_a, in_b = a == c, b == c
        total = int(in_a.sum()) + int(in_b.sum())
        scores.append(1.0 if total == 0 else 2.0 * int(np.logical_and(in_a, in_b).sum()) / total)
    return float(np.mean(scores))


def consensus_score(masks: Sequence[np.ndarray], aggregated: np.ndarray, labels: Sequence[int]) -> float:
    """Mean over teachers of :func:`label_agreement` (teacher mask, aggregated mask)."""
    if not masks:
        raise ValueError("consensus_score needs at least one teacher mask")
    return float(np.mean([label_agreement(m, aggregated, labels) for m in masks]))


def accept_by_threshold(scores: Mapping[str, float], threshold: float) -> Dict[str, bool]:
    """Case → accepted, for ``score >= threshold``."""
    return {case: bool(s >= threshold) for case, s in scores.items()}


def accept_most_stable(scores: Mapping[str, float], drop_fraction: float) -> Dict[str, bool]:
    """Case → accepted, dropping the ``round(drop_fraction · n)`` lowest-scoring cases (ties: case name)."""
    if not 0.0 <= drop_fraction < 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
    ranked = sorted(scores, key=lambda c: (scores[c], c))
    dropped = set(ranked[:int(round(drop_fraction * len(ranked)))])
    return {case: case not in dropped for case in scores}
