"""Commands answering bad input (issue 13, items 4 and 9): one sentence, non-zero exit, nothing written.

Every call runs in-process through ``nnunet_ssl.cli.main``. Bad numbers are refused by argparse
(exit 2; its usage line, then one ``error:`` line); bad combinations by a UserError (exit 2, one line).
Inputs tried and the sentence the user now gets (``<prog>: error: ...``):

``nnunet-ssl evaluate`` (item 4)
  - a reference case without a prediction: ``1 of 3 reference cases have no prediction in <pred>: c3;
    predict them, or pass --allow-missing to count each missing case as Dice 0`` (nothing written);
  - the same with ``--allow-missing``: exit 0, the missing case scores Dice = IoU = NSD = 0 for every
    class (HD95/ASD undefined: left out of the means, counted as undefined), mean Dice 2/3 instead of
    1.0, and the output says ``1 of 3 cases missing (no prediction, counted as Dice 0): c3``;
  - ``-np 0``: ``argument -np: must be a whole number >= 1, got '0'``; ``-np abc``: ``... got 'abc'``.

``nnunet-ssl demo`` (item 9; the workdir is neither created nor changed)
  - ``--labeled 0`` / ``--labeled -1`` / ``--unlabeled 0`` / ``--test 0`` / ``--epochs 0`` /
    ``--iters 0`` / ``--epochs abc``: ``argument --labeled: must be a whole number >= 1, got '0'``
    (and likewise for each);
  - ``--unlabeled -1``: ``argument --unlabeled: must be a whole number >= 1, got '-1'``;
  - ``--seed -1``: ``argument --seed: must be a whole number from 0 to 4294967295, got '-1'``.

``nnunet-ssl split`` (item 9; nothing appears in nnUNet_raw)
  - ``--labeled 0`` / ``0%``: ``--labeled must select at least one case, got '0'`` (``'0%'``);
  - ``--labeled -1``: ``--labeled must not be negative, got '-1'``;
  - ``--labeled 150%``: ``--labeled must be a percentage from 0% to 100%, got '150%'``;
  - ``--labeled abc``: ``--labeled must be a count like 7 or a percentage like 10%, got 'abc'``;
  - ``--test -1`` / ``--test 150%`` / ``--test abc``: the same sentences for --test;
  - ``--labeled 8 --test 3`` of 10 cases: ``--labeled (8) plus --test (3) exceed the 10 cases of the dataset``;
  - ``--seed -1``: ``argument --seed: must be a whole number from 0 to 4294967295, got '-1'``;
  - ``--labeled 100%`` is not refused: it makes a fully labeled copy (what the benchmark's 100%
    baseline and its test-set split use) and now prints a next step without
    ``preprocess-unlabeled``: ``next: nnUNetv2_plan_and_preprocess -d <id> (every case is labeled:
    for supervised trainers such as nnUNetTrainer; semi-supervised trainers need unlabeled cases,
    i.e. a smaller --labeled)``.

``nnunet-ssl benchmark`` (item 9; the study folder is not created)
  - ``--fractions 0%`` / ``150%``: ``a labeled fraction must be in (0, 1] or (0%, 100%], got '0%'``;
    ``--fractions abc``: ``a labeled fraction must look like 10% or 0.1, got 'abc'``;
  - ``--test 0`` / ``--test 150%`` / ``--test abc`` (source of 5 cases): ``--test must leave at least one of
    the 5 cases for training and hold at least one, got '0' (0)``, ``--test must be a percentage from 0%
    to 100%, got '150%'``, ``--test must be a count like 7 or a percentage like 10%, got 'abc'``;
  - ``--seeds -1`` / ``--test-seed -1``: ``... must be a whole number from 0 to 4294967295, got '-1'``;
  - ``--epochs 0`` / ``--iters 0`` / ``-np 0``: ``... must be a whole number >= 1, got '0'``;
  - ``--tolerance -1``: ``argument --tolerance: must be a finite number of mm >= 0, got '-1'``.

``nnunet-ssl train`` (no trainer is built)
  - ``--epochs 0`` / ``--iters 0`` / ``--val-iters 0`` / ``--save-every 0``: ``... must be a whole number >= 1, got '0'``.
"""
import json
import os

import numpy as np
import pytest

from nnunet_ssl import cli
from nnunet_ssl.commands import demo

SEED_RANGE = "must be a whole number from 0 to 4294967295"


def refused(argv, capsys) -> str:
    """Run the CLI expecting a refusal; return the one error line (checked: exit 2, no traceback)."""
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's refusal
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert "Traceback" not in err + out
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    return errors[0]


def tree(folder) -> list:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs + [""])


# --------------------------------------------------------------------------------------- evaluate (4)
@pytest.fixture
def eval_folders(tmp_path):
    """Three reference cases with classes a and b; perfect predictions of c1 and c2, none of c3."""
    sitk = pytest.importorskip("SimpleITK")
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    for i, case in enumerate(("c1", "c2", "c3")):
        seg = np.zeros((6, 5, 4), np.uint8)
        seg[1:3, 1:3, 1:3] = 1
        seg[4, 1 + i % 2:3, 1:3] = 2
        img = sitk.GetImageFromArray(seg)
        sitk.WriteImage(img, str(ref / f"{case}.nii.gz"))
        if case != "c3":
            sitk.WriteImage(img, str(pred / f"{case}.nii.gz"))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"background": 0, "a": 1, "b": 2}))
    return pred, ref, labels


def test_evaluate_refuses_a_missing_prediction_unless_allowed(eval_folders, tmp_path, capsys):
    pred, ref, labels = eval_folders
    before = tree(pred)
    out = tmp_path / "eval"
    base = ["evaluate", "-pred", str(pred), "-ref", str(ref), "--labels-json", str(labels), "-np", "1"]
    line = refused([*base, "-o", str(out)], capsys)
    assert line == (f"nnunet-ssl evaluate: error: 1 of 3 reference cases have no prediction in {pred}: c3; "
                    f"predict them, or pass --allow-missing to count each missing case as Dice 0")
    assert not out.exists() and tree(pred) == before

    assert "must be a whole number >= 1, got '0'" in refused([*base[:-1], "0"], capsys)
    assert "must be a whole number >= 1, got 'abc'" in refused([*base[:-1], "abc"], capsys)
    assert not out.exists() and tree(pred) == before

    pytest.importorskip("monai")  # surface metrics
    assert cli.main([*base, "-o", str(out), "--allow-missing"]) == 0
    printed = capsys.readouterr().out
    assert "1 of 3 cases missing (no prediction, counted as Dice 0): c3" in printed
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["n_missing"] == 1 and summary["missing_predictions"] == ["c3"]
    for name in ("a", "b"):  # c1, c2 perfect, c3 missing -> 0
        assert summary["per_class"][name]["dice"]["mean"] == pytest.approx(2 / 3)
        assert summary["per_class"][name]["hd95"] == {"mean": 0.0, "std": 0.0, "median": 0.0, "n": 2,
                                                      "n_undefined": 1}
    assert summary["overall"]["dice"]["mean"] == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------- demo (9)
DEMO_REFUSALS = [
    (["--labeled", "0"], "argument --labeled: must be a whole number >= 1, got '0'"),
    (["--labeled", "-1"], "argument --labeled: must be a whole number >= 1, got '-1'"),
    (["--unlabeled", "0"], "argument --unlabeled: must be a whole number >= 1, got '0'"),
    (["--unlabeled", "-1"], "argument --unlabeled: must be a whole number >= 1, got '-1'"),
    (["--test", "0"], "argument --test: must be a whole number >= 1, got '0'"),
    (["--epochs", "0"], "argument --epochs: must be a whole number >= 1, got '0'"),
    (["--epochs", "abc"], "argument --epochs: must be a whole number >= 1, got 'abc'"),
    (["--iters", "0"], "argument --iters: must be a whole number >= 1, got '0'"),
    (["--seed", "-1"], f"argument --seed: {SEED_RANGE}, got '-1'"),
]


@pytest.fixture
def no_demo_run(monkeypatch):
    """The demo must refuse before it sets nnU-Net's paths (its first step, which creates the workdir)."""
    def reached(workdir):
        raise AssertionError(f"the demo started working in {workdir}: the bad call was not refused first")
    monkeypatch.setattr(demo, "_set_paths", reached)


@pytest.mark.parametrize("bad, message", DEMO_REFUSALS, ids=[" ".join(b) for b, _ in DEMO_REFUSALS])
def test_demo_refuses_bad_numbers_before_touching_the_workdir(bad, message, tmp_path, capsys, no_demo_run):
    fresh = tmp_path / "fresh"
    assert refused(["demo", "--workdir", str(fresh), *bad], capsys) == f"nnunet-ssl demo: error: {message}"
    assert not fresh.exists()
    # a workdir made with the defaults is left as it was and still accepts the defaults
    used = tmp_path / "used"
    defaults = {"dim": 3, "labeled": 4, "unlabeled": 24, "test": 8, "seed": 0}
    demo.check_settings(str(used), defaults)
    before = tree(used)
    refused(["demo", "--workdir", str(used), *bad], capsys)
    assert tree(used) == before
    demo.check_settings(str(used), defaults)  # raises if the settings were changed


# ------------------------------------------------------------------------------------------ split (9)
SPLIT_SOURCE_ID = 840


@pytest.fixture(scope="module")
def split_source():
    """Dataset840: 10 labeled cases (placeholder files: split never reads images)."""
    raw = os.path.join(os.environ["nnUNet_raw"], f"Dataset{SPLIT_SOURCE_ID}_Inputs")
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(raw, sub), exist_ok=True)
    for i in range(10):
        open(os.path.join(raw, "imagesTr", f"c{i}_0000.nii.gz"), "w").write("img")
        open(os.path.join(raw, "labelsTr", f"c{i}.nii.gz"), "w").write("lab")
    with open(os.path.join(raw, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1}, "numTraining": 10,
                   "file_ending": ".nii.gz"}, f)
    return raw


SPLIT_REFUSALS = [
    (["--labeled", "0"], "--labeled must select at least one case, got '0'"),
    (["--labeled", "0%"], "--labeled must select at least one case, got '0%'"),
    (["--labeled", "-1"], "--labeled must not be negative, got '-1'"),
    (["--labeled", "150%"], "--labeled must be a percentage from 0% to 100%, got '150%'"),
    (["--labeled", "abc"], "--labeled must be a count like 7 or a percentage like 10%, got 'abc'"),
    (["--labeled", "2", "--test", "-1"], "--test must not be negative, got '-1'"),
    (["--labeled", "2", "--test", "150%"], "--test must be a percentage from 0% to 100%, got '150%'"),
    (["--labeled", "2", "--test", "abc"], "--test must be a count like 7 or a percentage like 10%, got 'abc'"),
    (["--labeled", "8", "--test", "3"], "--labeled (8) plus --test (3) exceed the 10 cases of the dataset"),
    (["--labeled", "2", "--seed", "-1"], f"argument --seed: {SEED_RANGE}, got '-1'"),
]


@pytest.mark.parametrize("bad, message", SPLIT_REFUSALS, ids=[" ".join(b) for b, _ in SPLIT_REFUSALS])
def test_split_refuses_bad_amounts_and_writes_nothing(bad, message, split_source, capsys):
    raw = os.environ["nnUNet_raw"]
    before = sorted(os.listdir(raw))
    line = refused(["split", "-d", str(SPLIT_SOURCE_ID), "--id", "841", *bad], capsys)
    assert line == f"nnunet-ssl split: error: {message}"
    assert sorted(os.listdir(raw)) == before


def test_split_of_every_case_prints_a_next_step_without_unlabeled_preprocessing(split_source, capsys):
    assert cli.main(["split", "-d", str(SPLIT_SOURCE_ID), "--labeled", "100%", "--id", "842"]) == 0
    out = capsys.readouterr().out
    assert "Dataset842_InputsL100pcts0: 10 labeled, 0 unlabeled, 0 test cases" in out
    assert ("next: nnUNetv2_plan_and_preprocess -d 842 (every case is labeled: for supervised trainers such as "
            "nnUNetTrainer; semi-supervised trainers need unlabeled cases, i.e. a smaller --labeled)") in out
    assert "preprocess-unlabeled" not in out
    # a split that leaves unlabeled cases still names their preprocessing
    assert cli.main(["split", "-d", str(SPLIT_SOURCE_ID), "--labeled", "3", "--id", "843"]) == 0
    assert ("next: nnUNetv2_plan_and_preprocess -d 843 && nnunet-ssl preprocess-unlabeled -d 843 -c 3d_fullres"
            in capsys.readouterr().out)


# -------------------------------------------------------------------------------------- benchmark (9)
BENCH_REFUSALS = [
    (["--fractions", "0%"], "a labeled fraction must be in (0, 1] or (0%, 100%], got '0%'"),
    (["--fractions", "150%"], "a labeled fraction must be in (0, 1] or (0%, 100%], got '150%'"),
    (["--fractions", "abc"], "a labeled fraction must look like 10% or 0.1, got 'abc'"),
    (["--test", "0"], "--test must leave at least one of the 5 cases for training and hold at least one, "
                      "got '0' (0)"),
    (["--test", "150%"], "--test must be a percentage from 0% to 100%, got '150%'"),
    (["--test", "abc"], "--test must be a count like 7 or a percentage like 10%, got 'abc'"),
    (["--seeds", "-1"], f"argument --seeds: {SEED_RANGE}, got '-1'"),
    (["--seeds", "abc"], f"argument --seeds: {SEED_RANGE}, got 'abc'"),
    (["--test-seed", "-1"], f"argument --test-seed: {SEED_RANGE}, got '-1'"),
    (["--epochs", "0"], "argument --epochs: must be a whole number >= 1, got '0'"),
    (["--iters", "0"], "argument --iters: must be a whole number >= 1, got '0'"),
    (["-np", "0"], "argument -np: must be a whole number >= 1, got '0'"),
    (["--tolerance", "-1"], "argument --tolerance: must be a finite number of mm >= 0, got '-1'"),
]


@pytest.mark.parametrize("bad, message", BENCH_REFUSALS, ids=[" ".join(b) for b, _ in BENCH_REFUSALS])
def test_benchmark_refuses_bad_numbers_before_creating_the_study(bad, message, tmp_path, capsys):
    source = tmp_path / "Dataset001_Src"  # a raw dataset folder of 5 cases (placeholder files)
    for sub in ("imagesTr", "labelsTr"):
        (source / sub).mkdir(parents=True)
    for i in range(5):
        (source / "imagesTr" / f"c{i}_0000.nii.gz").write_text("img")
        (source / "labelsTr" / f"c{i}.nii.gz").write_text("lab")
    (source / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0,
                                                     "a": 1}, "numTraining": 5, "file_ending": ".nii.gz"}))
    study = tmp_path / "study"
    line = refused(["benchmark", "-d", str(source), "-o", str(study), "--preset", "cpu-quick", *bad], capsys)
    assert line == f"nnunet-ssl benchmark: error: {message}"
    assert not study.exists()


@pytest.mark.parametrize("flag", ["--epochs", "--iters", "--val-iters", "--save-every"])
def test_train_refuses_a_budget_below_one_before_building_a_trainer(flag, capsys):
    line = refused(["train", "1", "3d_fullres", "0", flag, "0"], capsys)
    assert line == f"nnunet-ssl train: error: argument {flag}: must be a whole number >= 1, got '0'"
