"""CT windows with nnU-Net's readers on a real CT scan, and nnU-Net planning the converted dataset
with no further normalisation."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from ct_phantoms import make_ct_dataset
from nnunet_ssl.data.ct_windows import PRESETS, RECORD_KEY, apply_window, convert_dataset, convert_folder

RAW = os.environ["nnUNet_raw"]
REAL_CT = os.environ.get("NNUNET_SSL_REAL_CT", "")
"""A real CT scan (one HU channel, NIfTI) to check the windows on, e.g. the small example CT in the
TotalSegmentator repository's tests; not shipped here (nothing fetched is committed), so the check is skipped
without it. The generated phantoms of test_ct_windows.py cover the same code in every run."""
WINDOWS = [PRESETS[n] for n in ("abdomen", "chest", "bone")]


@pytest.mark.skipif(not os.path.isfile(REAL_CT), reason="set NNUNET_SSL_REAL_CT to a real CT scan (.nii.gz)")
@pytest.mark.parametrize("reader", ["SimpleITKIO", "SimpleITKIOWithReorient", "NibabelIO", "NibabelIOWithReorient"])
def test_real_ct_geometry_and_windows(tmp_path, reader):
    """Each nnU-Net reader a CT dataset may use: the written channels carry the source header's geometry
    exactly (this scan's direction flips x and y) and the formula's values, voxel for voxel."""
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(REAL_CT, scans / "real_0000.nii.gz")
    converted = {"file_ending": ".nii.gz", "overwrite_image_reader_writer": reader,
                 "channel_names": {"0": "noNorm", "1": "noNorm", "2": "noNorm"},
                 RECORD_KEY: {"source": "X", "windows": [w.to_json() for w in WINDOWS]}}
    convert_folder(str(scans), str(tmp_path / "out"), converted, "Dataset9_X", progress=False)
    src = sitk.ReadImage(REAL_CT)
    hu = sitk.GetArrayFromImage(src).astype(np.float32)
    assert src.GetDirection() != (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    channels = []
    for k, w in enumerate(WINDOWS):
        out = sitk.ReadImage(str(tmp_path / "out" / f"real_{k:04d}.nii.gz"))
        assert (out.GetSize(), out.GetSpacing(), out.GetOrigin(), out.GetDirection()) == \
               (src.GetSize(), src.GetSpacing(), src.GetOrigin(), src.GetDirection())
        channels.append(sitk.GetArrayFromImage(out))
        np.testing.assert_array_equal(channels[-1], apply_window(hu, w))
    abdomen, chest, bone = channels
    air, dense = hu <= -950, hu >= 700  # the scan has both (about a quarter of it is air outside the body)
    assert air.mean() > 0.1 and dense.sum() > 50
    assert abdomen[air].max() == 0 and chest[air].max() <= (-950 + 1350) / 1500 + 1e-6  # 400/1500 = 0.2667
    assert abdomen[dense].min() == 1 and bone[dense].min() >= (700 + 500) / 1800 - 1e-6  # 1200/1800 = 0.6667
    # bone keeps its contrast only in the bone window: spread of the dense voxels
    assert np.ptp(abdomen[dense]) == 0 and np.ptp(bone[dense]) > 0.1


@pytest.mark.e2e
def test_nnunet_plans_the_converted_dataset_without_normalisation(capsys, monkeypatch):
    """nnU-Net's own fingerprint, planner and preprocessor (in this process: no worker start-up) on the
    converted dataset: no normalisation scheme touches the windows."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset)
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    monkeypatch.setenv("nnUNet_n_proc_DA", "1")  # the planner sets torch threads to it (0 crashes)
    make_ct_dataset(os.path.join(RAW, "Dataset742_PhantomPlan"), train=(0, 1, 2), unlabeled=(), test=())
    target = os.path.join(RAW, "Dataset743_PhantomPlanWindows")
    convert_dataset(os.path.join(RAW, "Dataset742_PhantomPlan"), target, WINDOWS, progress=False)
    extract_fingerprint_dataset(743, num_processes=1, verbose=False, show_progress_bar=False)
    plans, _ = plan_experiment_dataset(743)
    capsys.readouterr()
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["NoNormalization"] * 3
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    dataset_json = json.load(open(os.path.join(target, "dataset.json")))
    files = [os.path.join(target, "imagesTr", f"ph_001_{k:04d}.nii.gz") for k in range(3)]
    data, seg, _ = cm.preprocessor_class(verbose=False).run_case(
        files, os.path.join(target, "labelsTr", "ph_001.nii.gz"), pm, cm, dataset_json)
    assert data.shape[0] == 3 and data.min() >= 0.0 and data.max() <= 1.0  # the windows reach the network as written
    assert sorted(np.unique(data[0]).round(4)) == [0.0, 0.15, 0.5, 1.0]  # abdomen: air+lung, fat, soft tissue, bone
