"""evaluate_folders and the `nnunet-ssl evaluate` command on tiny anisotropic NIfTI files."""
import csv
import json
import math

import numpy as np
import pytest

from nnunet_ssl import cli
from nnunet_ssl.errors import UserError
from nnunet_ssl.evaluation.folders import PER_CASE_CSV, SUMMARY_JSON, MissingPredictions, evaluate_folders

sitk = pytest.importorskip("SimpleITK")

LABELS = {"background": 0, "a": 1, "b": 2}
SHAPE = (6, 5, 4)               # numpy (z, y, x)
SITK_SPACING = (0.5, 0.5, 3.0)  # SimpleITK (x, y, z): 3 mm between slices


def write_seg(path, arr, spacing=SITK_SPACING):
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


@pytest.fixture
def folders(tmp_path):
    """c1: class a is a slab at z=1 (ref) vs z=3 (pred) -> 2 slices * 3 mm = 6 mm; class b empty in both.
    c2: class a identical; class b in the reference only.  c3: no prediction.  x9: no reference."""
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    c1_ref, c1_pred = np.zeros(SHAPE), np.zeros(SHAPE)
    c1_ref[1], c1_pred[3] = 1, 1
    c2_ref = np.zeros(SHAPE)
    c2_ref[1:3, 1:3, 1:3] = 1
    c2_ref[4, 2:4, 1:3] = 2
    c2_pred = np.where(c2_ref == 1, 1, 0)
    write_seg(ref / "c1.nii.gz", c1_ref)
    write_seg(pred / "c1.nii.gz", c1_pred)
    write_seg(ref / "c2.nii.gz", c2_ref)
    write_seg(pred / "c2.nii.gz", c2_pred)
    write_seg(ref / "c3.nii.gz", c2_ref)
    write_seg(pred / "x9.nii.gz", c2_pred)
    (pred / "notes.txt").write_text("not a case")
    return pred, ref


def test_evaluate_folders_hand_values(folders, tmp_path):
    pytest.importorskip("monai")  # surface metrics
    pred, ref = folders
    out = tmp_path / "eval"
    res = evaluate_folders(pred, ref, LABELS, ".nii.gz", tolerance_mm={"a": 6.0, "b": 1.0}, output_dir=out,
                           progress=False, allow_missing=True)
    assert res.missing == ["c3"] and res.unmatched == ["x9"]
    rows = {(r["case"], r["class"]): r for r in res.rows}
    assert list(rows) == [("c1", "a"), ("c1", "b"), ("c2", "a"), ("c2", "b"), ("c3", "a"), ("c3", "b")]
    c1a = rows[("c1", "a")]
    assert (c1a["dice"], c1a["iou"]) == (0.0, 0.0)
    assert c1a["hd95"] == pytest.approx(6.0) and c1a["asd"] == pytest.approx(6.0)  # spacing from the file
    assert c1a["nsd"] == 1.0                                                         # 6 mm <= tolerance 6 mm
    assert (rows[("c1", "b")]["dice"], rows[("c1", "b")]["hd95"]) == (1.0, 0.0)      # both empty
    assert (rows[("c2", "a")]["dice"], rows[("c2", "a")]["hd95"]) == (1.0, 0.0)
    c2b = rows[("c2", "b")]
    assert (c2b["dice"], c2b["nsd"], c2b["n_pred"], c2b["n_ref"]) == (0.0, 0.0, 0, 4) and math.isnan(c2b["hd95"])
    # c3 has no prediction: Dice = IoU = NSD = 0 for every class, distances undefined
    c3a = rows[("c3", "a")]
    assert c3a["status"] == "missing" and (c3a["dice"], c3a["iou"], c3a["nsd"]) == (0.0, 0.0, 0.0)
    assert math.isnan(c3a["hd95"]) and math.isnan(c3a["asd"])

    s = json.loads((out / SUMMARY_JSON).read_text())
    assert s["n_reference_cases"] == 3 and s["n_evaluated"] == 2 and s["missing_predictions"] == ["c3"]
    assert s["n_missing"] == 1
    assert s["per_class"]["a"]["dice"]["mean"] == pytest.approx(1 / 3)   # c1 0, c2 1, c3 missing 0
    assert s["per_class"]["b"]["hd95"] == {"mean": 0.0, "std": None, "median": 0.0, "n": 1, "n_undefined": 2}
    # overall: per case mean over classes, c1: (0 + 1) / 2, c2: (1 + 0) / 2, c3: 0;
    # HD95 c1: (6 + 0) / 2, c2: 0 (b undefined), c3 undefined
    assert s["overall"]["dice"]["mean"] == pytest.approx(1 / 3)
    assert s["overall"]["dice"]["std"] == pytest.approx(math.sqrt(1 / 12))
    assert s["overall"]["hd95"]["mean"] == pytest.approx(1.5) and s["overall"]["hd95"]["n_undefined"] == 1
    with open(out / PER_CASE_CSV) as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 6 and csv_rows[0]["case"] == "c1" and float(csv_rows[0]["hd95"]) == pytest.approx(6.0)
    assert csv_rows[4]["status"] == "missing" and csv_rows[4]["dice"] == "0.0" and csv_rows[4]["hd95"] == "nan"


def test_evaluate_folders_errors(folders, tmp_path):
    pred, ref = folders
    with pytest.raises(UserError, match="does not exist"):
        evaluate_folders(tmp_path / "nope", ref, LABELS)
    with pytest.raises(UserError, match="no reference files ending in '.nrrd'"):
        evaluate_folders(pred, ref, LABELS, file_ending=".nrrd")
    with pytest.raises(UserError, match="unknown: \\['c'\\]"):
        evaluate_folders(pred, ref, LABELS, tolerance_mm={"a": 1, "b": 1, "c": 1})
    other = tmp_path / "other"
    other.mkdir()
    write_seg(other / "zz.nii.gz", np.zeros(SHAPE))
    with pytest.raises(UserError, match="none of the 1 reference cases"):
        evaluate_folders(pred, other, LABELS)
    write_seg(other / "c1.nii.gz", np.zeros((2, 2, 2)))
    with pytest.raises(MissingPredictions, match="1 of 2 reference cases have no prediction in .*pred: zz$"):
        evaluate_folders(pred, other, LABELS, output_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()   # refused before anything was evaluated or written
    with pytest.raises(UserError, match="case c1: prediction .* has shape"):
        evaluate_folders(pred, other, LABELS, output_dir=tmp_path / "o", allow_missing=True)


def _main(argv, monkeypatch):
    # only this subcommand: the test must not depend on other subcommand modules
    monkeypatch.setattr(cli, "COMMANDS", {"evaluate": cli.COMMANDS["evaluate"]})
    return cli.main(["evaluate", *argv])


def test_worker_processes_give_the_serial_result(folders, tmp_path):
    pred, ref = folders
    # overlap metrics only, so the spawned workers need not import MONAI/torch (keeps the test fast)
    serial = evaluate_folders(pred, ref, LABELS, output_dir=tmp_path / "s", surface=False, progress=False,
                              allow_missing=True)
    pooled = evaluate_folders(pred, ref, LABELS, num_processes=2, output_dir=tmp_path / "p", surface=False,
                              progress=False, allow_missing=True)
    assert [(r["case"], r["class"], r["dice"], r["iou"]) for r in pooled.rows] == \
        [(r["case"], r["class"], r["dice"], r["iou"]) for r in serial.rows]
    assert pooled.rows[1]["dice"] == 1.0 and math.isnan(pooled.rows[0]["hd95"])


def test_cli_labels_json(folders, tmp_path, monkeypatch, capsys):
    pytest.importorskip("monai")  # surface metrics
    pred, ref = folders
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz"}))
    (tmp_path / "tol.json").write_text(json.dumps({"a": 1.0, "b": 1.0}))
    out = tmp_path / "cli_out"
    code = _main(["-pred", str(pred), "-ref", str(ref), "--labels-json", str(tmp_path / "dataset.json"),
                  "--tolerance", str(tmp_path / "tol.json"), "-np", "1", "-o", str(out), "--allow-missing"],
                 monkeypatch)
    assert code == 0
    printed = capsys.readouterr().out
    assert "2 of 3 reference cases evaluated" in printed
    assert "1 of 3 cases missing (no prediction, counted as Dice 0): c3" in printed
    s = json.loads((out / SUMMARY_JSON).read_text())
    assert s["tolerance_mm"] == {"a": 1.0, "b": 1.0}
    assert s["per_class"]["a"]["nsd"]["mean"] == pytest.approx(1 / 3)  # c1: 6 mm > 1 mm -> 0; c2: 1; c3 missing: 0


def test_cli_dataset_from_nnunet_raw(folders, tmp_path, monkeypatch, capsys):
    pytest.importorskip("monai")  # surface metrics
    pred, ref = folders
    raw = tmp_path / "raw"
    (raw / "Dataset777_Tiny").mkdir(parents=True)
    (raw / "Dataset777_Tiny" / "dataset.json").write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz"}))
    monkeypatch.setenv("nnUNet_raw", str(raw))
    assert _main(["-pred", str(pred), "-ref", str(ref), "-d", "777", "--tolerance", '{"a": 6, "b": 1}',
                  "-np", "1", "--allow-missing"],
                 monkeypatch) == 0
    assert (pred / PER_CASE_CSV).is_file()       # default output: the prediction folder
    # c1: 6 mm <= 6 mm -> 1; c2: identical -> 1; c3 missing: 0
    assert json.loads((pred / SUMMARY_JSON).read_text())["per_class"]["a"]["nsd"]["mean"] == pytest.approx(2 / 3)


def test_cli_user_errors(folders, tmp_path, monkeypatch, capsys):
    pred, ref = folders
    (tmp_path / "labels.json").write_text(json.dumps({"background": 0}))
    assert _main(["-pred", str(pred), "-ref", str(ref), "--labels-json", str(tmp_path / "labels.json")],
                 monkeypatch) == 2
    assert "no foreground class" in capsys.readouterr().err
    assert _main(["-pred", str(tmp_path / "missing"), "-ref", str(ref), "--labels-json",
                  str(tmp_path / "nope.json")], monkeypatch) == 2
    assert "nope.json does not exist" in capsys.readouterr().err
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    assert _main(["-pred", str(pred), "-ref", str(ref), "--labels-json", str(tmp_path / "labels.json"),
                  "--tolerance", "wide"], monkeypatch) == 2
    assert "--tolerance must be a number" in capsys.readouterr().err
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert _main(["-pred", str(pred), "-ref", str(ref), "-d", "5"], monkeypatch) == 2
    assert "nnUNet_raw" in capsys.readouterr().err
