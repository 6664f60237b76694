"""Per-case, per-class segmentation metrics from label maps and voxel spacing.

Metrics (one class = one binary mask; ``spacing`` in mm, in the array's axis order):

- ``dice`` = 2|P∩R| / (|P|+|R|) and ``iou`` = |P∩R| / |P∪R|, counted in voxels.
- ``nsd``: normalised surface Dice at a tolerance τ in mm (Nikolov et al. 2021,
  arXiv:2111.05408): the fraction of boundary voxels of P and R lying within τ of the
  other boundary, ``(#{d_PR <= τ} + #{d_RP <= τ}) / (#d_PR + #d_RP)`` (τ with a relative
  slack of :data:`NSD_RTOL` against rounding).
- ``hd95``: 95th percentile Hausdorff distance in mm, ``max(q95(d_PR), q95(d_RP))``
  (linear interpolation between order statistics).
- ``asd``: average symmetric surface distance in mm, the mean of ``d_PR`` and ``d_RP`` pooled.

``d_PR`` are the distances from each boundary voxel of P to the nearest boundary voxel of R
and vice versa. Boundaries and distances come from MONAI (``monai.metrics.get_mask_edges``
and ``get_surface_distance``, Euclidean, honouring the per-axis spacing); the three surface
metrics are computed from one pair of distance sets, with the same definitions as MONAI's
``compute_surface_dice``, ``compute_hausdorff_distance(percentile=95)`` and
``compute_average_surface_distance(symmetric=True)`` (tests check they agree). Boundary
voxels are the voxels of a mask removed by a binary erosion, so a mask touching the image
border has a boundary there. Axes of length 1 (2D images stored as one-slice volumes) are
dropped before the surface metrics, so their boundary is the 2D contour.

Empty-mask convention (a class absent from the prediction and/or the reference):

================  =====  =====  =====  ======  ======
case              dice   iou    nsd    hd95    asd
================  =====  =====  =====  ======  ======
both empty        1      1      1      0       0
exactly one empty 0      0      0      NaN     NaN
================  =====  =====  =====  ======  ======

Both empty is a correct "absent" call and scores as perfect. When exactly one mask is empty
a surface distance does not exist: HD95 and ASD are NaN ("undefined"), are left out of
means and are counted (``n_undefined`` in summaries), while Dice, IoU and NSD already score
the miss as 0. No penalty distance is invented, so distance means of methods that miss
whole structures must be read together with their undefined counts.

Ignore label (nnU-Net's ``"ignore"``): voxels the reference marks as ignore are removed
from both masks before any metric is computed.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

METRICS: tuple[str, ...] = ("dice", "iou", "nsd", "hd95", "asd")
"""Metric names, in the order they appear in tables and CSV files."""

HIGHER_IS_BETTER: dict[str, bool] = {"dice": True, "iou": True, "nsd": True, "hd95": False, "asd": False}

HD_PERCENTILE = 95.0
NSD_RTOL = 1e-6
"""Relative slack of the NSD test ``d <= τ``: a distance equal to τ up to floating-point rounding
(e.g. ``3 * 0.8 - 1 * 0.8 = 1.6000000000000003`` mm against τ = 1.6 mm) counts as within."""


def _as_bool_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction and reference masks must have the same shape, got {pred.shape} and {ref.shape}")
    return pred, ref


def overlap_metrics(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two binary masks of equal shape ``(*spatial)``.

    Both empty gives ``(1.0, 1.0)``; exactly one empty gives ``(0.0, 0.0)`` (module docstring).
    """
    pred, ref = _as_bool_pair(pred, ref)
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    if n_pred == 0 and n_ref == 0:
        return 1.0, 1.0
    inter = int(np.logical_and(pred, ref).sum())
    return 2.0 * inter / (n_pred + n_ref), inter / (n_pred + n_ref - inter)


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing must be {ndim} positive finite numbers (one per array axis), got {spacing}")
    return spacing


def _check_tolerance(tolerance_mm: float) -> float:
    tolerance_mm = float(tolerance_mm)
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"the NSD tolerance must be a finite number of mm >= 0, got {tolerance_mm}")
    return tolerance_mm


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Boundary-to-boundary distances in mm of two non-empty binary masks, by MONAI.

    ``pred``, ``ref``: ``(*spatial)`` with 2 or 3 axes longer than 1 (length-1 axes are dropped
    with their spacing). Returns ``(d_pred_to_ref, d_ref_to_pred)``, one distance per boundary
    voxel of the first mask.
    """
    pred, ref = _as_bool_pair(pred, ref)
    spacing = _check_spacing(spacing, pred.ndim)
    if not (pred.any() and ref.any()):
        raise ValueError("surface distances need two non-empty masks; handle empty masks by the documented convention")
    keep = tuple(i for i, n in enumerate(pred.shape) if n > 1)
    if len(keep) not in (2, 3):
        raise ValueError(f"surface metrics need 2 or 3 axes longer than 1, got a mask of shape {pred.shape}")
    if len(keep) != pred.ndim:
        drop = tuple(i for i in range(pred.ndim) if i not in keep)
        pred, ref = pred.squeeze(drop), ref.squeeze(drop)
        spacing = tuple(spacing[i] for i in keep)
    try:
        from monai.metrics import get_mask_edges, get_surface_distance
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("surface metrics (NSD, HD95, ASD) need MONAI, a dependency of nnunet_ssl: reinstall it "
                          "(pip install nnunet_ssl) or pip install monai") from e
    edges_pred, edges_ref = get_mask_edges(pred, ref, crop=True)
    d_pr = get_surface_distance(edges_pred, edges_ref, distance_metric="euclidean", spacing=list(spacing))
    d_rp = get_surface_distance(edges_ref, edges_pred, distance_metric="euclidean", spacing=list(spacing))
    return np.asarray(d_pr, dtype=np.float64), np.asarray(d_rp, dtype=np.float64)


def surface_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                    tolerance_mm: float) -> tuple[float, float, float]:
    """``(nsd, hd95, asd)`` of two binary masks ``(*spatial)`` with voxel ``spacing`` in mm.

    Definitions and the empty-mask convention are in the module docstring.
    """
    pred, ref = _as_bool_pair(pred, ref)
    tolerance_mm = _check_tolerance(tolerance_mm)
    _check_spacing(spacing, pred.ndim)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return 1.0, 0.0, 0.0
    if has_pred != has_ref:
        return 0.0, math.nan, math.nan
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    tau = tolerance_mm * (1 + NSD_RTOL)
    nsd = (np.count_nonzero(d_pr <= tau) + np.count_nonzero(d_rp <= tau)) / (d_pr.size + d_rp.size)
    hd95 = max(np.percentile(d_pr, HD_PERCENTILE), np.percentile(d_rp, HD_PERCENTILE))
    asd = np.concatenate([d_pr, d_rp]).mean()
    return float(nsd), float(hd95), float(asd)


def binary_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance_mm: float,
                   surface: bool = True) -> dict[str, float]:
    """All of :data:`METRICS` for one binary mask pair, plus ``n_pred``/``n_ref`` voxel counts.

    With ``surface=False`` the surface metrics are NaN (no MONAI needed).
    """
    pred, ref = _as_bool_pair(pred, ref)
    dice, iou = overlap_metrics(pred, ref)
    if surface:
        nsd, hd95, asd = surface_metrics(pred, ref, spacing, tolerance_mm)
    else:
        nsd = hd95 = asd = math.nan
    return {"dice": dice, "iou": iou, "nsd": nsd, "hd95": hd95, "asd": asd,
            "n_pred": int(pred.sum()), "n_ref": int(ref.sum())}


LabelValue = int | Sequence[int]


def foreground_classes(labels: Mapping[str, LabelValue]) -> dict[str, tuple[int, ...]]:
    """The classes to evaluate from an nnU-Net ``dataset.json`` ``labels`` mapping.

    ``labels`` maps a name to a label value or, for region-based datasets, a list of values whose
    union is the region. Background (value 0) and ``"ignore"`` are left out. Returns
    ``name -> tuple of values``.
    """
    if not isinstance(labels, Mapping):
        raise ValueError(f"labels must be a mapping name -> label value(s), got {type(labels).__name__}")
    classes: dict[str, tuple[int, ...]] = {}
    for name, value in labels.items():
        values = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
        if not values or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            raise ValueError(f"label {name!r} must be an int or a list of ints, got {value!r}")
        if name == "ignore" or values == (0,):
            continue
        classes[str(name)] = tuple(int(v) for v in values)
    if not classes:
        raise ValueError(f"labels name no foreground class (only background/ignore): {dict(labels)}")
    return classes


def ignore_value(labels: Mapping[str, LabelValue]) -> int | None:
    """The value of nnU-Net's ``"ignore"`` label in ``labels``, or None."""
    value = labels.get("ignore")
    if value is None:
        return None
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ValueError(f"the 'ignore' label must be a single int, got {value!r}")
    return int(value)


def class_tolerances(tolerance_mm: float | Mapping[str, float], class_names: Sequence[str]) -> dict[str, float]:
    """One NSD tolerance (mm) per class from a single number or a ``name -> mm`` mapping.

    A mapping must name every class and no other.
    """
    if isinstance(tolerance_mm, Mapping):
        unknown = sorted(set(tolerance_mm) - set(class_names))
        absent = [c for c in class_names if c not in tolerance_mm]
        if unknown or absent:
            raise ValueError(f"per-class tolerances must name exactly the classes {list(class_names)}; "
                             f"unknown: {unknown}, missing: {absent}")
        return {c: _check_tolerance(tolerance_mm[c]) for c in class_names}
    return {c: _check_tolerance(tolerance_mm) for c in class_names}


def case_metrics(pred_seg: np.ndarray, ref_seg: np.ndarray, spacing: Sequence[float],
                 labels: Mapping[str, LabelValue], tolerance_mm: float | Mapping[str, float] = 1.0,
                 surface: bool = True) -> dict[str, dict[str, float]]:
    """Per-class metrics of one case from two label maps ``(*spatial)`` (2D or 3D) in mm ``spacing``.

    ``labels`` is a ``dataset.json``-style mapping (see :func:`foreground_classes`); an
    ``"ignore"`` entry removes the voxels the reference marks as ignore from both masks.
    Returns ``class name -> {metric: value, n_pred, n_ref}``.
    """
    pred_seg, ref_seg = np.asarray(pred_seg), np.asarray(ref_seg)
    if pred_seg.shape != ref_seg.shape:
        raise ValueError(f"prediction and reference must have the same shape, got {pred_seg.shape} and {ref_seg.shape}")
    classes = foreground_classes(labels)
    tolerances = class_tolerances(tolerance_mm, list(classes))
    ignore = ignore_value(labels)
    valid = None if ignore is None else ref_seg != ignore
    out: dict[str, dict[str, float]] = {}
    for name, values in classes.items():
        pred, ref = np.isin(pred_seg, values), np.isin(ref_seg, values)
        if valid is not None:
            pred, ref = pred & valid, ref & valid
        out[name] = binary_metrics(pred, ref, spacing, tolerances[name], surface=surface)
    return out
