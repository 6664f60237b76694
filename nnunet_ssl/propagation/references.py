"""Which slices the reference model segments, and which of them seed the propagation.

Slices are indices along the first axis of nnU-Net's preprocessed volume, the axis a 2d nnU-Net model
slices along (after ``transpose_forward``: the axis of lowest resolution, axial for CT).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["uniform_slices", "largest_area_slices", "reference_ranges"]


def uniform_slices(num_slices: int, count: int) -> List[int]:
    """``count`` slice indices, one at the centre of each of ``count`` equal bins of ``num_slices`` slices:
    ``floor((i + ½)·Z / count)``; every slice when ``count >= Z``."""
    if num_slices < 1 or count < 1:
        raise ValueError(f"need num_slices >= 1 and count >= 1, got {num_slices}, {count}")
    if count >= num_slices:
        return list(range(num_slices))
    return [int((i + 0.5) * num_slices / count) for i in range(count)]


def largest_area_slices(label_slices: np.ndarray, slice_indices: Sequence[int], labels: Sequence[int],
                        per_organ: int) -> Dict[int, List[int]]:
    """For each label, the (at most) ``per_organ`` slices of ``slice_indices`` where it covers the most pixels,
    in increasing slice order; labels absent from every slice are left out. Ties go to the lower slice.

    ``label_slices`` ``(S, *in-plane)``: the label maps of the slices ``slice_indices`` (in that order)."""
    if len(label_slices) != len(slice_indices):
        raise ValueError(f"{len(label_slices)} label maps for {len(slice_indices)} slice indices")
    if per_organ < 1:
        raise ValueError(f"per_organ must be >= 1, got {per_organ}")
    chosen = {}
    flat = np.asarray(label_slices).reshape(len(slice_indices), -1)
    for label in labels:
        areas = (flat == label).sum(1)
        order = sorted((i for i in range(len(areas)) if areas[i] > 0), key=lambda i: (-areas[i], slice_indices[i]))
        if order:
            chosen[int(label)] = sorted(int(slice_indices[i]) for i in order[:per_organ])
    return chosen


def reference_ranges(reference_slices: Sequence[int], num_slices: int) -> List[Tuple[int, int, int]]:
    """``(reference, first, last)`` per reference slice: the slices it is propagated to (inclusive). The
    volume is split at the midpoints between neighbouring references: ``r_a < r_b`` meet at
    ``m = floor((r_a + r_b)/2)``, ``r_a`` covers up to ``m``, ``r_b`` from ``m + 1``; the outermost
    references reach the volume's ends."""
    refs = sorted(set(int(r) for r in reference_slices))
    if not refs or refs[0] < 0 or refs[-1] >= num_slices:
        raise ValueError(f"reference slices {list(reference_slices)} must be within 0..{num_slices - 1}")
    ranges = []
    for i, r in enumerate(refs):
        first = 0 if i == 0 else (refs[i - 1] + r) // 2 + 1
        last = num_slices - 1 if i == len(refs) - 1 else (r + refs[i + 1]) // 2
        ranges.append((r, first, last))
    return ranges


def reference_masks(label_slices: np.ndarray, slice_indices: Sequence[int], labels: Sequence[int],
                    per_organ: int) -> Dict[int, Dict[int, np.ndarray]]:
    """label -> {slice index -> binary mask (float32)} of the slices :func:`largest_area_slices` keeps.

    ``label_slices`` ``(S, *in-plane)``: label maps of the slices ``slice_indices`` (a reference model's
    prediction, or the ground truth in validation)."""
    label_slices = np.asarray(label_slices)
    position = {int(z): i for i, z in enumerate(slice_indices)}
    chosen = largest_area_slices(label_slices, slice_indices, labels, per_organ)
    return {label: {z: (label_slices[position[z]] == label).astype(np.float32) for z in zs}
            for label, zs in chosen.items()}
