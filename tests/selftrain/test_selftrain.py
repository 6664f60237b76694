"""``nnunet-ssl selftrain``: the round dataset writer, and two rounds end to end on generated data with an
unreadable unlabeled case."""
from __future__ import annotations

import json
import os

import pytest

from nnunet_ssl.errors import UserError
from nnunet_ssl.selftrain.dataset import (OWNER_FILE, PSEUDO_FILE, splits_with_pseudo_labels,
                                          write_round_dataset)


def _touch(path, text="x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def test_round_dataset_layout_and_ownership(tmp_path):
    src = tmp_path / "Dataset500_Src"
    labeled = {"l1": [_touch(src / "imagesTr" / "l1_0000.nii.gz")]}
    _touch(src / "labelsTr" / "l1.nii.gz", "label")
    unlabeled = {c: [_touch(src / "imagesUnlabeled" / f"{c}_0000.nii.gz")] for c in ("u1", "u2")}
    _touch(src / "imagesTs" / "t1_0000.nii.gz")
    pseudo = {"u1": _touch(tmp_path / "pseudo" / "u1.nii.gz", "pseudo")}
    info = {"u1": {"round": 1, "score": 0.9, "teachers": ["a", "b"]}}
    dataset_json = {"file_ending": ".nii.gz", "labels": {"background": 0, "x": 1}, "numTraining": 1,
                    "channel_names": {"0": "MRI"}}
    target = tmp_path / "Dataset701_SrcST1"
    owner = {"workdir": "/w", "round": 1}
    write_round_dataset(str(src), str(target), owner, labeled, unlabeled, pseudo, info, dataset_json)
    assert sorted(os.listdir(target / "imagesTr")) == ["l1_0000.nii.gz", "u1_0000.nii.gz"]
    assert sorted(os.listdir(target / "labelsTr")) == ["l1.nii.gz", "u1.nii.gz"]
    assert (target / "labelsTr" / "u1.nii.gz").read_text() == "pseudo"
    assert os.listdir(target / "imagesUnlabeled") == ["u2_0000.nii.gz"]  # rejected: still unlabeled
    assert os.listdir(target / "imagesTs") == ["t1_0000.nii.gz"]
    assert json.loads((target / "dataset.json").read_text())["numTraining"] == 2
    assert json.loads((target / PSEUDO_FILE).read_text()) == info
    assert json.loads((target / OWNER_FILE).read_text()) == owner
    # the same owner rewrites it; anyone else is refused and nothing is touched
    write_round_dataset(str(src), str(target), owner, labeled, unlabeled, {}, {}, dataset_json)
    assert sorted(os.listdir(target / "imagesUnlabeled")) == ["u1_0000.nii.gz", "u2_0000.nii.gz"]
    with pytest.raises(UserError, match="was not written by this self-training run"):
        write_round_dataset(str(src), str(target), {"workdir": "/other", "round": 1}, labeled, unlabeled, pseudo,
                            info, dataset_json)
    assert sorted(os.listdir(target / "imagesUnlabeled")) == ["u1_0000.nii.gz", "u2_0000.nii.gz"]


def test_pseudo_cases_join_every_training_part_never_validation():
    splits = [{"train": ["a", "b"], "val": ["c"]}, {"train": ["a", "c"], "val": ["b"]}]
    assert splits_with_pseudo_labels(splits, ["u2", "u1"]) == [
        {"train": ["a", "b", "u1", "u2"], "val": ["c"]}, {"train": ["a", "c", "u1", "u2"], "val": ["b"]}]


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path):
    from conftest import run_cmd

    for args, message in ((["--threshold", "1.5"], "--threshold: must be a number from 0 to 1"),
                          (["--drop", "1"], "--drop: must be below 1"),
                          (["--teachers", "Unet"], "expected a trainer class name"),
                          (["--filter", "vote"], "invalid choice: 'vote'")):
        p = run_cmd(["nnunet-ssl", "selftrain", "-d", "999", "-o", str(tmp_path / "wd"), *args], check=False)
        assert p.returncode == 2 and message in p.stderr, p.stderr
    assert not (tmp_path / "wd").exists()


@pytest.mark.e2e
def test_two_rounds_with_a_bad_unlabeled_case(tmp_path):
    from conftest import CPU_PLANS, _prepare, run_cmd
    from nnunet_ssl.data.synthetic import SyntheticSpec

    ds = _prepare(994, "Dataset994_SSLSelfTrain",
                  SyntheticSpec(num_labeled=4, num_unlabeled=4, num_test=2, shape=(20, 20, 20), seed=4),
                  ("3d_fullres",))
    bad = os.path.join(ds["raw"], "imagesUnlabeled", "broken_0000.nii.gz")
    good = sorted(os.listdir(os.path.join(ds["raw"], "imagesUnlabeled")))[0]
    data = open(os.path.join(ds["raw"], "imagesUnlabeled", good), "rb").read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2])  # a truncated copy
    wd = tmp_path / "st"
    cmd = ["nnunet-ssl", "selftrain", "-d", "994", "-c", "3d_fullres", "-p", CPU_PLANS, "-o", str(wd),
           "--teachers", "nnUNetTrainer", "nnUNetTrainer:0", "--rounds", "2", "--threshold", "0.5",
           "--epochs", "1", "--iters", "2", "-device", "cpu", "--id-base", "711"]
    p = run_cmd(cmd)
    assert "unlabeled case broken is left out" in p.stdout and "truncated" in p.stdout
    report = (wd / "report.md").read_text()
    for r in (0, 1, 2):
        assert f"\n| {r} | " in report
    rows = [ln.split(",") for ln in (wd / "rounds.csv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["0", "1", "2"]
    assert all(0.0 <= float(r[6]) <= 1.0 for r in rows)  # test Dice of every round
    for r, dataset in ((1, "Dataset711_SSLSelfTrainST1"), (2, "Dataset712_SSLSelfTrainST2")):
        scores = json.loads((wd / f"round_{r}" / "scores.json").read_text())
        assert sorted(scores) == sorted(ds["summary"]["unlabeled"])  # the broken case is never scored
        assert (wd / f"round_{r}" / "agreement.png").is_file()
        raw = os.path.join(os.environ["nnUNet_raw"], dataset)
        pseudo = json.load(open(os.path.join(raw, PSEUDO_FILE)))
        accepted = sorted(c for c, v in scores.items() if v["accepted"])
        assert sorted(pseudo) == accepted
        assert all(v["score"] >= 0.5 and v["round"] == r for v in pseudo.values())
        images = sorted(os.listdir(os.path.join(raw, "imagesTr")))
        assert len(images) == 4 + len(accepted) and "broken_0000.nii.gz" not in images
        splits = json.load(open(os.path.join(os.environ["nnUNet_preprocessed"], dataset, "splits_final.json")))
        assert not set(accepted) & set(splits[0]["val"])  # validation on real labels only
    # round 2's teachers: the two teachers and round 1's student
    preds = sorted(os.listdir(wd / "round_2" / "predictions"))
    assert len(preds) == 3 and any(p.startswith("Dataset711_SSLSelfTrainST1__nnUNetTrainer") for p in preds)
    # a rerun finishes at once (nothing retrained) and prints the same report
    p2 = run_cmd(cmd)
    assert "training nnUNetTrainer" not in p2.stdout and (wd / "report.md").read_text() == report
    # other settings are refused
    p3 = run_cmd([{"0.5": "0.9"}.get(a, a) for a in cmd], check=False)
    assert p3.returncode == 2 and "threshold: 0.5 -> 0.9" in p3.stderr
