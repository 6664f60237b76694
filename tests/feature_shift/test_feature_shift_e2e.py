"""feature-shift end to end: a model trained for one short epoch on the tiny 3D dataset; its unlabeled
pool compared with the labeled cases as it is (close), and a pool from "another site" (far).

The other site's 12 scans come from the same generator with larger structures, a bright background
and three times the noise. A pure intensity scaling would not do: the tiny dataset's channel is
'MRI', which nnU-Net z-scores per image, so scaling is normalised away before the network sees it.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import CPU_PLANS, E2E_BUDGET
from nnunet_ssl import cli

PLANS = "nnUNetPlans_cpuShift"  # a copy of the test plans under its own name: its own results folder


@pytest.fixture(scope="module")
def trained(tiny_3d):
    import torch

    from nnunet_ssl.data.unlabeled import preprocess_unlabeled
    from nnunet_ssl.runner import train

    pre = tiny_3d["preprocessed"]
    plans = json.load(open(os.path.join(pre, CPU_PLANS + ".json")))
    plans["plans_name"] = PLANS
    with open(os.path.join(pre, PLANS + ".json"), "w") as f:
        json.dump(plans, f)
    torch.manual_seed(0)  # the network's initialisation; augmentation runs in this process (nnUNet_n_proc_DA=0)
    np.random.seed(0)
    train(tiny_3d["id"], "3d_fullres", 0, "nnUNetTrainer", plans=PLANS, budget=E2E_BUDGET, validate=False)
    preprocess_unlabeled(tiny_3d["id"], "3d_fullres", PLANS, num_processes=1, progress=False)
    return tiny_3d


def _other_site(folder: str) -> str:
    from nnunet_ssl.data.synthetic import SyntheticSpec, generate_dataset

    spec = SyntheticSpec(num_labeled=1, num_unlabeled=12, num_test=0, shape=(20, 20, 20), seed=7,
                         radii=(0.45, 0.2, 0.1), intensities=(1.0, 0.0, 1.6, 2.2), noise=1.0)
    generate_dataset(folder, spec)
    return os.path.join(folder, "imagesUnlabeled")


@pytest.mark.e2e
def test_feature_shift_separates_shifted_from_unshifted_pool(trained, tmp_path, capsys):
    from nnunet_ssl.evaluation.feature_shift import feature_shift

    raw_unlabeled = os.path.join(trained["raw"], "imagesUnlabeled")
    common = dict(dataset=trained["id"], configuration="3d_fullres", trainer="nnUNetTrainer", plans=PLANS, fold=0,
                  progress=False)

    # the pool as it is: the preprocessed unlabeled folder (6 cases) against the 4 labeled cases
    close = feature_shift(out_folder=str(tmp_path / "close"), **common)
    # the same raw images preprocessed by feature-shift itself: the same features as the preprocessed folder
    again = feature_shift(out_folder=str(tmp_path / "raw"), images=raw_unlabeled, **common)
    f1, f2 = np.load(tmp_path / "close" / "features.npz"), np.load(tmp_path / "raw" / "features.npz")
    assert f1["unlabeled_ids"].tolist() == f2["unlabeled_ids"].tolist()
    np.testing.assert_allclose(f1["unlabeled"], f2["unlabeled"], rtol=1e-4, atol=1e-5)
    assert again["mmd"]["mmd2"] == pytest.approx(close["mmd"]["mmd2"], rel=1e-3, abs=1e-6)

    # scans of another site, through the command line
    shifted = _other_site(str(tmp_path / "other_site"))
    argv = ["feature-shift", "-d", str(trained["id"]), "-c", "3d_fullres", "-tr", "nnUNetTrainer", "-p", PLANS,
            "-f", "0", "-o", str(tmp_path / "far"), "--images", shifted, "-device", "cpu"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    far = json.load(open(tmp_path / "far" / "feature_shift.json"))

    # 4 labeled vs 6 unlabeled cases: C(10, 4) = 210 splits, all enumerated; 4 vs 12: C(16, 4) = 1820 > 1000 random
    assert close["mmd"]["exact"] and close["mmd"]["permutations"] == 210
    assert not far["mmd"]["exact"] and far["mmd"]["permutations"] == 1000
    assert far["verdict"] == "far" and far["mmd"]["p_value"] < 0.05
    assert close["verdict"] == "close" and close["mmd"]["p_value"] >= 0.05
    assert far["mmd"]["mmd2"] > far["mmd"]["null_q95"] > 0 and far["mmd"]["mmd2"] > 3 * max(close["mmd"]["mmd2"], 0)
    assert "lies FAR from the labeled cases (4)" in printed and "The unlabeled pool (12 cases)" in printed
    assert "CLOSE" in close["sentence"]
    # 16 channels at the deepest stage: pooled output, pre-norm mean, pre-norm std
    assert far["features"]["module"] == "encoder.stages.2" and far["feature_dimensions"] == 48
    kinds = {t["name"].split(",")[0] for t in far["top_dimensions"]}
    assert kinds <= {"pooled output", "pre-norm mean", "pre-norm std"}
    assert len(far["top_dimensions"]) == 6
    for name in ("feature_shift_pca.png", "feature_shift_kde.png", "features.npz"):
        assert os.path.getsize(tmp_path / "far" / name) > 1000
    print(f"measured: close MMD2 {close['mmd']['mmd2']:.4f} p {close['mmd']['p_value']:.3f}; "
          f"far MMD2 {far['mmd']['mmd2']:.4f} p {far['mmd']['p_value']:.4f}")


@pytest.mark.e2e
def test_feature_shift_refusals(trained, tmp_path, capsys):
    base = ["feature-shift", "-d", str(trained["id"]), "-c", "3d_fullres", "-p", PLANS, "-o", str(tmp_path / "o")]
    assert cli.main(base + ["-tr", "nnUNetTrainerNotTrained"]) == 2
    assert "no trained model in" in capsys.readouterr().err
    assert cli.main(base + ["-tr", "nnUNetTrainer", "-f", "3"]) == 2
    assert "fold_3/checkpoint_final.pth not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(base + ["-tr", "nnUNetTrainer", "--images", str(empty)]) == 2
    assert "holds no images" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")
