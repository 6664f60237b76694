import json
import os

import pytest

from nnunet_ssl.data.split import choose_split, make_split, parse_amount
from nnunet_ssl.errors import UserError


def _fake_raw(folder, cases, ending=".nii.gz"):
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for c in cases:
        open(os.path.join(folder, "imagesTr", f"{c}_0000{ending}"), "w").write(f"img {c}")
        open(os.path.join(folder, "labelsTr", f"{c}{ending}"), "w").write(f"lab {c}")
    json.dump({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1}, "numTraining": len(cases),
               "file_ending": ending}, open(os.path.join(folder, "dataset.json"), "w"))


def test_parse_amount():
    assert parse_amount("10%", 70, "x") == 7
    assert parse_amount("1%", 20, "x") == 1  # at least one case for a positive fraction
    assert parse_amount("0%", 20, "x") == 0
    assert parse_amount(3, 20, "x") == 3
    with pytest.raises(UserError, match="count like 7 or a percentage"):
        parse_amount("ten", 20, "x")


def test_choose_split_groups_and_seed():
    cases = [f"patient{p:03d}_frame{f:02d}" for p in range(10) for f in (1, 2)]
    s = choose_split(cases, "20%", test="10%", seed=3, group_regex=r"(patient\d+)")
    assert len(s["labeled"]) == 4 and len(s["test"]) == 2 and len(s["unlabeled"]) == 14  # 2, 1, 7 patients
    patients = lambda cs: {c.split("_")[0] for c in cs}  # noqa: E731
    assert not patients(s["labeled"]) & patients(s["unlabeled"])
    assert not patients(s["test"]) & (patients(s["labeled"]) | patients(s["unlabeled"]))
    assert s == choose_split(cases, "20%", test="10%", seed=3, group_regex=r"(patient\d+)")
    assert s != choose_split(cases, "20%", test="10%", seed=4, group_regex=r"(patient\d+)")


def test_make_split_writes_new_dataset_and_keeps_source(tmp_path):
    src, dst = tmp_path / "Dataset004_X", tmp_path / "Dataset504_Y"
    cases = [f"c{i}" for i in range(10)]
    _fake_raw(src, cases)
    before = sorted(os.listdir(src / "imagesTr"))
    rec = make_split(str(src), str(dst), "30%", seed=0, test=2)
    assert sorted(os.listdir(src / "imagesTr")) == before  # source untouched
    assert len(rec["labeled"]) == 3 and len(rec["test"]) == 2 and len(rec["unlabeled"]) == 5
    assert sorted(os.listdir(dst / "imagesTr")) == sorted(f"{c}_0000.nii.gz" for c in rec["labeled"])
    assert sorted(os.listdir(dst / "labelsTr")) == sorted(f"{c}.nii.gz" for c in rec["labeled"])
    assert sorted(os.listdir(dst / "imagesUnlabeled")) == sorted(f"{c}_0000.nii.gz" for c in rec["unlabeled"])
    assert sorted(os.listdir(dst / "labelsTs")) == sorted(f"{c}.nii.gz" for c in rec["test"])
    dj = json.load(open(dst / "dataset.json"))
    assert dj["numTraining"] == 3
    assert json.load(open(dst / "nnunet_ssl_split.json"))["unlabeled"] == rec["unlabeled"]
    # same split again: no-op; a different one: refused, nothing overwritten
    assert make_split(str(src), str(dst), "30%", seed=0, test=2)["labeled"] == rec["labeled"]
    with pytest.raises(UserError, match="already exists"):
        make_split(str(src), str(dst), "50%", seed=0)
    assert json.load(open(dst / "nnunet_ssl_split.json"))["labeled"] == rec["labeled"]


def test_split_errors(tmp_path):
    src = tmp_path / "Dataset004_X"
    _fake_raw(src, ["a", "b", "c"])
    with pytest.raises(UserError, match="exceed the 3 cases"):
        make_split(str(src), str(tmp_path / "out"), 3, test=1)
    os.remove(src / "labelsTr" / "b.nii.gz")
    with pytest.raises(UserError, match="have no label"):
        make_split(str(src), str(tmp_path / "out"), 1)
    assert not (tmp_path / "out").exists()
