"""benchmarks/member_networks.py: which saved networks are scored, and the largest-component Dice by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import load_benchmark

mn = load_benchmark("member_networks")


def test_saved_networks_lists_students_and_teachers():
    a, b, t = {"w": torch.zeros(1)}, {"w": torch.ones(1)}, {"w": torch.full((1,), 2.0)}
    ckpt = {"network_weights": a, "nnunet_ssl": {"networks": {"network": a, "network_b": b}, "teachers": {"ema": t}}}
    assert list(mn.saved_networks(ckpt)) == ["network", "network_b", "teacher ema"]
    assert mn.saved_networks(ckpt)["teacher ema"] is t
    assert mn.saved_networks({"network_weights": a}) == {"network": a}  # nnU-Net's own checkpoint


def test_only_networks_of_the_exported_architecture_fit():
    from nnunet_ssl.networks.ensemble import SoftmaxEnsemble

    net = torch.nn.Conv3d(1, 2, 3)
    assert mn.fits(net, torch.nn.Conv3d(1, 2, 3).state_dict())
    assert not mn.fits(net, torch.nn.Conv3d(1, 3, 3).state_dict())  # other shape
    assert not mn.fits(net, torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3)).state_dict())  # other names
    ensemble = SoftmaxEnsemble([net, torch.nn.Conv3d(1, 2, 3)])
    assert mn.member_template(ensemble) is net and mn.member_template(net) is net


def _write(path, arr):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(img, str(path))


def test_largest_component_dice_hand_checked(tmp_path):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred_dir.mkdir(), ref_dir.mkdir()
    ref = np.zeros((6, 10, 10), np.uint8)
    ref[1:3, 1:3, 1:3] = 1  # 8 voxels of class 1
    ref[4:6, 6:9, 6:9] = 2  # 18 voxels of class 2
    pred = ref.copy()
    pred[0, 8, 0] = 1  # a far one-voxel island of class 1: plain Dice 16/17, largest component 1
    pred[4:6, 6:9, 8] = 0  # class 2 loses 6 voxels, one component: Dice 24/30 either way
    _write(ref_dir / "c0.nii.gz", ref)
    _write(pred_dir / "c0.nii.gz", pred)
    only_bg = np.zeros_like(ref)  # a second case where both are empty for class 2 and class 1 is missed
    only_bg_ref = np.zeros_like(ref)
    only_bg_ref[0, 0, 0] = 1
    _write(ref_dir / "c1.nii.gz", only_bg_ref)
    _write(pred_dir / "c1.nii.gz", only_bg)
    scores = mn.largest_component_dice(str(pred_dir), str(ref_dir), {"a": 1, "b": 2}, ".nii.gz")
    assert scores["a"] == pytest.approx((1.0 + 0.0) / 2)  # island removed; missed case scores 0
    assert scores["b"] == pytest.approx((24 / 30 + 1.0) / 2)  # both empty in c1: Dice 1


def test_volume_ratio_sums_over_cases_and_classes():
    rows = [{"n_pred": 30, "n_ref": 20}, {"n_pred": 10, "n_ref": 20}, {"n_pred": None, "n_ref": None}]
    assert mn.volume_ratio(rows) == pytest.approx(40 / 40)
    assert mn.volume_ratio([{"n_pred": 12, "n_ref": 10}]) == pytest.approx(1.2)  # 20% over-segmented
    assert math.isnan(mn.volume_ratio([{"n_pred": 5, "n_ref": 0}]))  # no reference foreground
