"""Unlabeled discovery and preprocessing: nnU-Net's preprocessor, idempotent, clear errors."""
import os
import shutil

import numpy as np
import pytest

from conftest import CPU_PLANS, run_cmd, subprocess_env
from nnunet_ssl.data.unlabeled import find_unlabeled_cases, preprocess_unlabeled, unlabeled_case_ids
from nnunet_ssl.errors import UserError

DJ = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz"}


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()


def test_find_errors(tmp_path):
    raw = tmp_path / "raw"
    _touch(raw / "imagesTr" / "a_0000.nii.gz")
    with pytest.raises(UserError, match="does not exist"):
        find_unlabeled_cases(str(raw), DJ)
    _touch(raw / "imagesUnlabeled" / "u1_0000.nii.gz")
    assert list(find_unlabeled_cases(str(raw), DJ)) == ["u1"]
    _touch(raw / "imagesUnlabeled" / "u2_0000.nii")
    with pytest.raises(UserError, match="do not match"):
        find_unlabeled_cases(str(raw), DJ)
    os.remove(raw / "imagesUnlabeled" / "u2_0000.nii")
    _touch(raw / "imagesUnlabeled" / "u3_0001.nii.gz")
    with pytest.raises(UserError, match="channel files"):
        find_unlabeled_cases(str(raw), DJ)
    os.remove(raw / "imagesUnlabeled" / "u3_0001.nii.gz")
    _touch(raw / "imagesUnlabeled" / "a_0000.nii.gz")
    with pytest.raises(UserError, match="both imagesTr"):
        find_unlabeled_cases(str(raw), DJ)


@pytest.mark.e2e
def test_preprocess_idempotent_and_bad_file(tiny_3d):
    res = preprocess_unlabeled(tiny_3d["id"], "3d_fullres", CPU_PLANS, num_processes=1, progress=False)
    assert sorted(res.written + res.skipped) == sorted(tiny_3d["summary"]["unlabeled"])
    assert unlabeled_case_ids(res.output_folder) == sorted(tiny_3d["summary"]["unlabeled"])
    again = preprocess_unlabeled(tiny_3d["id"], "3d_fullres", CPU_PLANS, num_processes=1, progress=False)
    assert again.written == [] and len(again.skipped) == len(tiny_3d["summary"]["unlabeled"])
    # what nnU-Net's dataset class reads back: normalised image, no class locations
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    data, seg, _, props = nnUNetDatasetBlosc2(res.output_folder).load_case(res.written[0] if res.written else again.skipped[0])
    assert props["class_locations"] == {} and abs(float(np.mean(data[:]))) < 0.5

    # an unreadable file: the other cases are kept, the message names the case and the fix
    raw_u = os.path.join(tiny_3d["raw"], "imagesUnlabeled")
    bad = os.path.join(raw_u, "zz_broken_0000.nii.gz")
    open(bad, "w").write("not an image")
    try:
        with pytest.raises(UserError, match="zz_broken"):
            preprocess_unlabeled(tiny_3d["id"], "3d_fullres", CPU_PLANS, num_processes=1, progress=False)
        assert len(unlabeled_case_ids(res.output_folder)) == len(tiny_3d["summary"]["unlabeled"])
        assert not [f for f in os.listdir(res.output_folder) if f.startswith(".tmp")]
    finally:
        os.remove(bad)


@pytest.mark.e2e
def test_preprocess_command_errors(tiny_3d):
    p = run_cmd(["nnunet-ssl", "preprocess-unlabeled", "-d", str(tiny_3d["id"]), "-c", "3d_fullres", "-p", "NoSuchPlans"],
                check=False)
    assert p.returncode == 2 and "plans file" in p.stderr and "Traceback" not in p.stderr
    p = run_cmd(["nnunet-ssl", "preprocess-unlabeled", "-d", str(tiny_3d["id"]), "-c", "3d_lowres", "-p", CPU_PLANS],
                check=False)
    assert p.returncode == 2 and "configuration" in p.stderr


@pytest.mark.e2e
def test_trainer_without_unlabeled_images_fails_clearly(tiny_3d, tmp_path):
    """A semi-supervised trainer on a dataset with no imagesUnlabeled: one sentence, no traceback."""
    import json

    raw_u = os.path.join(tiny_3d["raw"], "imagesUnlabeled")
    pre_u = os.path.join(tiny_3d["preprocessed"], "nnUNetPlans_2d_unlabeled")
    hidden = str(tmp_path / "hidden")
    shutil.move(raw_u, hidden)
    moved_pre = os.path.isdir(pre_u)
    if moved_pre:
        shutil.move(pre_u, str(tmp_path / "hidden_pre"))
    try:
        env = subprocess_env(nnUNet_ssl_overrides=json.dumps({"num_epochs": 1, "num_iterations_per_epoch": 1}))
        p = run_cmd(["nnUNetv2_train", str(tiny_3d["id"]), "2d", "0", "-tr", "nnUNetTrainerMeanTeacher", "-p",
                     CPU_PLANS, "-device", "cpu"], env, check=False)
        assert p.returncode != 0
        assert "needs unlabeled images" in p.stderr and "Traceback" not in p.stderr
    finally:
        shutil.move(hidden, raw_u)
        if moved_pre:
            shutil.move(str(tmp_path / "hidden_pre"), pre_u)
