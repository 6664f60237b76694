"""Metrics against hand-computed values on tiny masks (empty masks, anisotropic spacing)."""
import math

import numpy as np
import pytest

from nnunet_ssl.evaluation.metrics import (binary_metrics, case_metrics, class_tolerances, foreground_classes,
                                           overlap_metrics, surface_metrics)


def slab(shape, axis, index):
    """A one-voxel-thick slab perpendicular to ``axis`` at ``index``."""
    m = np.zeros(shape, bool)
    sl = [slice(None)] * len(shape)
    sl[axis] = index
    m[tuple(sl)] = True
    return m


def test_overlap_hand_values():
    ref = np.zeros((4, 4), bool)
    ref[0, :] = True                       # 4 voxels
    pred = np.zeros((4, 4), bool)
    pred[0, 1:] = True                     # 3 of them ...
    pred[1, :3] = True                     # ... plus 3 outside: |P| = 6, |P∩R| = 3, |P∪R| = 7
    dice, iou = overlap_metrics(pred, ref)
    assert dice == pytest.approx(2 * 3 / (6 + 4))
    assert iou == pytest.approx(3 / 7)


@pytest.mark.parametrize("pred_empty, ref_empty, expected", [
    (True, True, (1.0, 1.0, 1.0, 0.0, 0.0)),
    (True, False, (0.0, 0.0, 0.0, math.nan, math.nan)),
    (False, True, (0.0, 0.0, 0.0, math.nan, math.nan)),
])
def test_empty_mask_convention(pred_empty, ref_empty, expected):
    full = slab((3, 4, 4), 0, 1)
    empty = np.zeros_like(full)
    pred = empty if pred_empty else full
    ref = empty if ref_empty else full
    m = binary_metrics(pred, ref, (2.0, 1.0, 1.0), tolerance_mm=1.0)
    got = (m["dice"], m["iou"], m["nsd"], m["hd95"], m["asd"])
    np.testing.assert_allclose(got, expected)  # NaN == NaN here
    assert (m["n_pred"], m["n_ref"]) == (int(pred.sum()), int(ref.sum()))


def test_overlap_only_needs_no_surface():
    m = binary_metrics(slab((3, 4, 4), 0, 0), slab((3, 4, 4), 0, 0), (1, 1, 1), 1.0, surface=False)
    assert m["dice"] == 1.0 and math.isnan(m["nsd"]) and math.isnan(m["hd95"])


# ---------------------------------------------------------------- surface metrics (MONAI distances)
@pytest.mark.parametrize("axis, spacing, expected_mm", [
    # slabs 2 voxels apart along axis 0 of spacing 3.0 mm -> 6.0 mm
    (0, (3.0, 0.5, 0.5), 6.0),
    # the same offset along axis 2 of spacing 0.5 mm -> 1.0 mm: spacing is read in array-axis order
    (2, (3.0, 0.5, 0.5), 1.0),
    (1, (1.0, 0.7, 2.0), 1.4),
])
def test_offset_slabs_distance_is_k_times_spacing(axis, spacing, expected_mm):
    pytest.importorskip("monai")
    shape = (6, 6, 6)
    pred, ref = slab(shape, axis, 3), slab(shape, axis, 1)
    # every boundary voxel's nearest voxel on the other slab is straight across: d = 2 * spacing[axis]
    nsd, hd95, asd = surface_metrics(pred, ref, spacing, tolerance_mm=expected_mm)
    assert hd95 == pytest.approx(expected_mm)
    assert asd == pytest.approx(expected_mm)
    assert nsd == 1.0                                   # d <= tolerance
    nsd_below, _, _ = surface_metrics(pred, ref, spacing, tolerance_mm=expected_mm * 0.99)
    assert nsd_below == 0.0
    assert overlap_metrics(pred, ref) == (0.0, 0.0)


def test_outlier_voxel_hand_values():
    pytest.importorskip("monai")
    # reference: slab z=0 of a (8, 4, 4) volume, 16 boundary voxels; prediction: the same slab plus one
    # voxel at z=5, spacing 2 mm along z.
    ref = slab((8, 4, 4), 0, 0)
    pred = ref.copy()
    pred[5, 1, 1] = True
    spacing = (2.0, 1.0, 1.0)
    # d_pred->ref: 16 zeros and 10 mm (5 voxels * 2 mm); d_ref->pred: 16 zeros.
    # q95 of 17 sorted values (linear): position 0.95 * 16 = 15.2 -> 0 + 0.2 * (10 - 0) = 2.0 mm
    # ASD: 10 / (17 + 16) mm; NSD at 1 mm: (16 + 16) / 33; Dice 2*16/33; IoU 16/17.
    m = binary_metrics(pred, ref, spacing, tolerance_mm=1.0)
    assert m["hd95"] == pytest.approx(2.0)
    assert m["asd"] == pytest.approx(10 / 33)
    assert m["nsd"] == pytest.approx(32 / 33)
    assert m["dice"] == pytest.approx(32 / 33)
    assert m["iou"] == pytest.approx(16 / 17)
    assert surface_metrics(pred, ref, spacing, tolerance_mm=10.0)[0] == 1.0


def test_2d_and_single_slice_volume():
    pytest.importorskip("monai")
    # 2D: rows 1 and 3 of a (6, 5) image, spacing 0.8 mm along rows -> 2 * 0.8 = 1.6 mm
    nsd, hd95, asd = surface_metrics(slab((6, 5), 0, 3), slab((6, 5), 0, 1), (0.8, 1.5), tolerance_mm=1.6)
    assert (nsd, hd95, asd) == pytest.approx((1.0, 1.6, 1.6))
    # nnU-Net stores 2D images as (1, H, W) with a dummy spacing: the same numbers as the 2D arrays
    ref2d = np.zeros((7, 9), bool)
    ref2d[2:5, 2:6] = True
    pred2d = np.zeros((7, 9), bool)
    pred2d[3:6, 2:7] = True
    spacing = (0.8, 1.5)
    a = binary_metrics(pred2d, ref2d, spacing, 1.0)
    b = binary_metrics(pred2d[None], ref2d[None], (999.0, *spacing), 1.0)
    assert a == pytest.approx(b)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own internal deprecation warning
def test_agrees_with_monai_public_functions():
    pytest.importorskip("monai")
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:10, :14, :12]
    ref = (z - 5) ** 2 / 16 + (y - 7) ** 2 / 25 + (x - 6) ** 2 / 16 < 1
    pred = ((z - 4.5) ** 2 / 12 + (y - 8) ** 2 / 30 + (x - 6) ** 2 / 20 < 1) | (rng.random(ref.shape) > 0.97)
    spacing = [2.5, 0.75, 1.25]
    nsd, hd95, asd = surface_metrics(pred, ref, spacing, tolerance_mm=1.5)
    t = lambda m: torch.from_numpy(m[None, None].astype(np.float32))  # noqa: E731
    kw = dict(include_background=True, spacing=spacing)
    assert hd95 == pytest.approx(compute_hausdorff_distance(t(pred), t(ref), percentile=95, **kw).item(), rel=1e-5)
    assert asd == pytest.approx(compute_average_surface_distance(t(pred), t(ref), symmetric=True, **kw).item(),
                                rel=1e-5)
    assert nsd == pytest.approx(compute_surface_dice(t(pred), t(ref), [1.5], **kw).item(), rel=1e-5)


# ---------------------------------------------------------------------------------- label maps
def test_case_metrics_regions_ignore_and_tolerances():
    pytest.importorskip("monai")
    ref = np.array([[0, 1, 1, 2],
                    [0, 1, 1, 2],
                    [9, 9, 0, 0]])
    pred = np.array([[0, 1, 2, 2],
                     [0, 1, 1, 0],
                     [1, 1, 0, 0]])
    labels = {"background": 0, "a": 1, "b": 2, "ab": [1, 2], "ignore": 9}
    out = case_metrics(pred, ref, (1.0, 1.0), labels, tolerance_mm={"a": 1.0, "b": 0.0, "ab": 1.0})
    assert list(out) == ["a", "b", "ab"]
    # a: the pred's 1s in the ignored row (ref == 9) are removed -> P = {(0,1),(1,1),(1,2)}, R = 4 voxels
    assert out["a"]["n_pred"] == 3 and out["a"]["n_ref"] == 4
    assert out["a"]["dice"] == pytest.approx(2 * 3 / 7)
    # b: P = {(0,2),(0,3)}, R = {(0,3),(1,3)} -> Dice 2*1/4, IoU 1/3
    assert out["b"]["dice"] == pytest.approx(0.5) and out["b"]["iou"] == pytest.approx(1 / 3)
    # ab = union: P = 5 voxels, R = 6 voxels, overlap 5 -> Dice 10/11
    assert out["ab"]["dice"] == pytest.approx(10 / 11)
    assert out["b"]["nsd"] < 1.0


def test_foreground_classes_and_tolerances():
    assert foreground_classes({"background": 0, "liver": 1, "tumor": 2, "ignore": 3}) == {"liver": (1,), "tumor": (2,)}
    assert class_tolerances(2.0, ["a", "b"]) == {"a": 2.0, "b": 2.0}
    assert class_tolerances({"b": 1, "a": 3}, ["a", "b"]) == {"a": 3.0, "b": 1.0}
    with pytest.raises(ValueError, match="unknown: \\['c'\\], missing: \\['b'\\]"):
        class_tolerances({"a": 1, "c": 2}, ["a", "b"])
    with pytest.raises(ValueError, match="mm >= 0"):
        class_tolerances(-1.0, ["a"])
    with pytest.raises(ValueError, match="no foreground class"):
        foreground_classes({"background": 0})
    with pytest.raises(ValueError, match="int or a list of ints"):
        foreground_classes({"a": "one"})


def test_input_errors():
    a = np.zeros((3, 3), bool)
    with pytest.raises(ValueError, match="same shape"):
        overlap_metrics(a, np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="spacing must be 2 positive"):
        surface_metrics(a, a, (1.0, 1.0, 1.0), 1.0)
    with pytest.raises(ValueError, match="spacing must be 2 positive"):
        surface_metrics(a, a, (1.0, 0.0), 1.0)
    with pytest.raises(ValueError, match="same shape"):
        case_metrics(np.zeros((2, 2)), np.zeros((2, 3)), (1, 1), {"a": 1})
