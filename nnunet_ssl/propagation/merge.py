"""Per-organ binary probabilities to one label map.

Each organ is propagated on its own, so the organs' probabilities are independent and may overlap.
A voxel is background where no organ's probability exceeds 0.5, else the organ of highest probability.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

__all__ = ["merge_organ_probabilities", "export_scores"]

BACKGROUND_SCORE = 0.5
"""The background's score in :func:`export_scores`: an organ wins a voxel only above it."""


def merge_organ_probabilities(probabilities: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Label map (uint8 or uint16) from ``probabilities`` ``(K, *spatial)`` of the organs ``labels`` (K values):
    ``labels[argmax_k p_k]`` where ``max_k p_k > 0.5``, else 0. Ties go to the first organ."""
    probabilities = np.asarray(probabilities)
    if len(probabilities) != len(labels):
        raise ValueError(f"{len(probabilities)} probability maps for {len(labels)} labels")
    dtype = np.uint8 if max(labels, default=0) < 256 else np.uint16
    if len(labels) == 0:
        return np.zeros(probabilities.shape[1:], dtype=dtype)
    best = probabilities.argmax(0)
    out = np.asarray(labels, dtype=dtype)[best]
    out[probabilities.max(0) <= BACKGROUND_SCORE] = 0
    return out


def export_scores(probabilities: Dict[int, np.ndarray], num_classes: int, shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """Scores ``(num_classes, *spatial)`` float32 whose argmax over channels is :func:`merge_organ_probabilities`:
    channel 0 (background) is 0.5 everywhere, channel ``c`` the probability of label ``c`` (0 where it was not
    propagated). nnU-Net's export resamples these like logits and takes the argmax, so the merge happens in the
    original geometry; nnU-Net's labels are consecutive, channel ``c`` is label ``c``. ``shape`` is needed only
    when no organ was propagated (then every voxel is background)."""
    if probabilities:
        shape = next(iter(probabilities.values())).shape
    elif shape is None:
        raise ValueError("no organ probabilities and no shape given")
    scores = np.zeros((num_classes, *shape), dtype=np.float32)
    scores[0] = BACKGROUND_SCORE
    for label, p in probabilities.items():
        if not 0 < label < num_classes:
            raise ValueError(f"label {label} is not a foreground class of {num_classes} classes")
        scores[label] = p
    return scores
