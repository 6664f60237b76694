"""Benchmark studies: fraction parsing, presets, the commands script, and a tiny end-to-end study
(2 fractions x 3 trainers, one of them nonexistent) with resume on generated data."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from nnunet_ssl.benchmark import study as st
from nnunet_ssl.benchmark.presets import PRESETS, Preset, get_preset
from nnunet_ssl.data.synthetic import SyntheticSpec, generate_dataset
from nnunet_ssl.errors import UserError

SOURCE_ID = 880
SOURCE_NAME = f"Dataset{SOURCE_ID}_BenchSrc"
TRAINERS = ["nnUNetTrainer", "nnUNetTrainerMeanTeacher", "nnUNetTrainerDoesNotExist"]
TINY = Preset(name="test-tiny", description="16^3 patch, 1 epoch of 2 iterations", plans="nnUNetPlans_benchtest",
              shrink={3: dict(patch_size=(16, 16, 16), features_per_stage=(4, 8, 16), batch_size=2)},
              budget={"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1},
              device="cpu", use_mirroring=False, num_processes=1)


@pytest.fixture(scope="module")
def source():
    """6 fully labeled 20^3 volumes; --test 2 leaves a pool of 4 (50% = 2 labeled + 2 unlabeled)."""
    raw = os.path.join(os.environ["nnUNet_raw"], SOURCE_NAME)
    if not os.path.isdir(raw):
        generate_dataset(raw, SyntheticSpec(num_labeled=6, num_unlabeled=0, num_test=0, shape=(20, 20, 20), seed=3))
    return raw


# ------------------------------------------------------------------------------------------ units
def test_parse_fraction():
    assert st.parse_fraction("10%") == pytest.approx(0.1)
    assert st.parse_fraction("0.25") == 0.25 and st.parse_fraction(1) == 1.0 and st.parse_fraction("100%") == 1.0
    for bad, message in (("10", "did you mean 10%"), ("150%", "(0, 1]"), ("0%", "(0, 1]"), ("ten", "10% or 0.1")):
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace("]", r"\]")):
            st.parse_fraction(bad)


def test_fraction_names():
    assert st.fraction_percent(0.1) == "10%" and st.fraction_tag(0.1) == "10pct"
    assert st.fraction_percent(0.025) == "2.5%" and st.fraction_tag(0.025) == "2p5pct"
    assert st.Run(0.05, 1, "nnUNetTrainer").relative_dir == "runs/5pct/seed1/nnUNetTrainer"


def test_presets():
    quick = get_preset("cpu-quick")
    assert get_preset(quick) is quick and set(PRESETS) == {"default", "cpu-quick", "cpu-3d", "cpu-2d"}
    # the patch must be divisible by the downsampling of the kept stages (stride 2 from the second stage on)
    for kwargs in [*quick.shrink.values(), *PRESETS["cpu-3d"].shrink.values(), *PRESETS["cpu-2d"].shrink.values()]:
        factor = 2 ** (len(kwargs["features_per_stage"]) - 1)
        assert all(p % factor == 0 for p in kwargs["patch_size"])
    assert quick.shrink_for("2d")["patch_size"] == (64, 64) and quick.shrink_for("3d_lowres")["batch_size"] == 2
    with pytest.raises(UserError, match="preset 'cpu-2d' has no plan sizes for 3D"):
        PRESETS["cpu-2d"].shrink_for("3d_fullres")
    with pytest.raises(UserError, match="preset 'cpu-3d' has no plan sizes for 2D"):
        PRESETS["cpu-3d"].shrink_for("2d")
    assert PRESETS["cpu-3d"].shrink_for("3d_fullres")["features_per_stage"] == (8, 16, 32, 64)
    assert PRESETS["cpu-3d"].train_flags()[:4] == ["--epochs", "80", "--iters", "25"]
    assert PRESETS["default"].shrink_for("3d_fullres") is None and PRESETS["default"].train_flags() == []
    longer = quick.with_budget(num_epochs=7, num_iterations_per_epoch=None)
    assert longer.budget["num_epochs"] == 7 and longer.budget["num_iterations_per_epoch"] == 25
    assert quick.with_budget(num_epochs=None) is quick and quick.budget["num_epochs"] == 40
    assert longer.train_flags()[:2] == ["--epochs", "7"] and "--save-every" in longer.train_flags()
    with pytest.raises(ValueError, match="unknown budget key"):
        Preset("x", "", budget={"epochs": 3})
    with pytest.raises(ValueError, match="integers >= 1"):
        Preset("x", "", budget={"num_epochs": 0})
    with pytest.raises(ValueError, match="own plans identifier"):
        Preset("x", "", shrink={3: {}})
    with pytest.raises(UserError, match="unknown preset 'fast'; known: default, cpu-quick, cpu-3d, cpu-2d"):
        get_preset("fast")


def test_failure_reason_and_quoting():
    tail = ["Epoch 0\n", "Traceback (most recent call last):\n", '  File "x.py", line 3\n',
            "RuntimeError: Could not find requested nnunet trainer X\n", "\n"]
    reason = st._failure_reason(tail, 1, Path("/r/train.log"))
    assert reason == "RuntimeError: Could not find requested nnunet trainer X (exit code 1; log: /r/train.log)"
    assert st._failure_reason([], -9, Path("l")) == "(no output) (killed by signal 9; log: l)"
    assert st._q("$nnUNet_raw/Dataset600_X/imagesTs") == '"$nnUNet_raw/Dataset600_X/imagesTs"'
    assert st._q("a b") == "'a b'" and st._q("$(rm -rf x)") == "'$(rm -rf x)'"


def test_run_training_records_output_and_interrupts(tmp_path):
    import sys

    log = tmp_path / "train.log"
    seen = []
    code = "import sys; print('Epoch 0'); print('ValueError: bad input'); sys.exit(3)"
    rc, reason = st.run_logged([sys.executable, "-c", code], dict(os.environ), log, seen.append)
    assert rc == 3 and reason == f"ValueError: bad input (exit code 3; log: {log})"
    assert seen == ["Epoch 0\n", "ValueError: bad input\n"]
    text = log.read_text()
    assert text.startswith("\n# ") and text.endswith("Epoch 0\nValueError: bad input\n")
    assert st.run_logged([sys.executable, "-c", "print('fine')"], dict(os.environ), log) == (0, "")
    with pytest.raises(KeyboardInterrupt):  # a child stopped by Ctrl-C stops the study, recording nothing
        st.run_logged([sys.executable, "-c", "import sys; sys.exit(130)"], dict(os.environ), log)


# ---------------------------------------------------------------------------------- commands file
def _commands(source, tmp_path, preset, name):
    cmds = tmp_path / f"{name}.sh"
    res = st.run_study(SOURCE_ID, tmp_path / name, fractions=["50%", "100%"], seeds=[0], trainers=TRAINERS[:2],
                       test="2", id_base=890, preset=preset, write_commands=cmds, progress=False)
    assert res.commands_file == cmds and res.report is None
    assert [o.status for o in res.outcomes] == ["planned"] * 4
    subprocess.run(["bash", "-n", str(cmds)], check=True)  # valid shell
    return cmds.read_text().splitlines()


def test_write_commands(source, tmp_path):
    lines = _commands(source, tmp_path, TINY, "dry")
    text = "\n".join(lines)
    pool = "Dataset890_BenchSrcTest2s0"
    assert f"nnunet-ssl split -d {SOURCE_NAME} --labeled 4 --test 2 --seed 0 --id 890 --name BenchSrcTest2s0" in lines
    assert "nnunet-ssl split -d 890 --labeled 50% --seed 0 --id 891 --name BenchSrcL50pcts0" in lines
    assert "nnunet-ssl split -d 890 --labeled 100% --seed 0 --id 892 --name BenchSrcL100pcts0" in lines
    assert "nnUNetv2_plan_and_preprocess -d 891 -c 3d_fullres -np 1 --verify_dataset_integrity" in lines
    assert ("nnunet-ssl shrink-plans -d 892 -c 3d_fullres -o nnUNetPlans_benchtest --patch 16,16,16 --features "
            "4,8,16 --batch-size 2") in lines
    # unlabeled preprocessing only where the split has unlabeled cases; Mean Teacher skipped at 100%
    assert [ln for ln in lines if "preprocess-unlabeled" in ln] == [
        "nnunet-ssl preprocess-unlabeled -d 891 -c 3d_fullres -p nnUNetPlans_benchtest -np 1"]
    assert "# nnUNetTrainerMeanTeacher: skipped: no unlabeled data (every case of the split is labeled)" in lines
    train = [ln for ln in lines if " train " in ln]
    assert len(train) == 3 and all(ln.startswith('[ -f "$nnUNet_results/Dataset89') for ln in train)
    assert train[1].endswith("|| nnunet-ssl train 891 3d_fullres all -tr nnUNetTrainerMeanTeacher -p "
                              "nnUNetPlans_benchtest -device cpu --epochs 1 --iters 2 --val-iters 1 --c --no-val")
    predict = [ln for ln in lines if ln.startswith("nnUNetv2_predict")]
    assert len(predict) == 3 and all(f'-i "$nnUNet_raw/{pool}/imagesTs"' in ln and ln.endswith("--disable_tta")
                                     for ln in predict)
    assert ('-o "$STUDY/runs/50pct/seed0/nnUNetTrainer/predictions" -d 891 -c 3d_fullres -tr nnUNetTrainer '
            '-p nnUNetPlans_benchtest -f all -chk checkpoint_final.pth') in predict[0]
    assert sum(ln.startswith("nnunet-ssl evaluate") and f'-ref "$nnUNet_raw/{pool}/labelsTs"' in ln
               for ln in lines) == 3
    assert f"STUDY={tmp_path / 'dry'}" in lines and "set -euo pipefail" in text
    # nothing ran: no dataset was written, only the study record
    assert not [d for d in os.listdir(os.environ["nnUNet_raw"]) if d.startswith("Dataset89")]
    record = json.loads((tmp_path / "dry" / "study.json").read_text())
    assert [s["id"] for s in record["splits"]] == [891, 892] and len(record["test_cases"]) == 2

    # nnU-Net's own plans and budget: plain nnUNetv2_train, no shrinking, mirroring on
    lines = _commands(source, tmp_path, Preset("gpu", "", device="cuda"), "dry_default")
    assert any(ln.endswith("|| nnUNetv2_train 891 3d_fullres all -tr nnUNetTrainer -p nnUNetPlans -device cuda --c")
               for ln in lines)
    assert not any("shrink-plans" in ln or "--disable_tta" in ln for ln in lines)


def test_study_errors(source, tmp_path):
    kw = dict(fractions=["50%"], trainers=["nnUNetTrainer"], id_base=893, preset=TINY, progress=False)
    with pytest.raises(UserError, match="--test must leave"):
        st.run_study(SOURCE_ID, tmp_path / "a", test="6", write_commands=tmp_path / "a.sh", **kw)
    with pytest.raises(UserError, match="not found"):
        st.run_study(879, tmp_path / "b", test="2", **kw)
    with pytest.raises(UserError, match="already used by Dataset880_BenchSrc"):
        st.run_study(SOURCE_ID, tmp_path / "c", test="2", write_commands=tmp_path / "c.sh",
                     **{**kw, "id_base": SOURCE_ID - 1})
    st.run_study(SOURCE_ID, tmp_path / "d", test="2", write_commands=tmp_path / "d.sh", **kw)
    with pytest.raises(UserError, match="test_seed: study has 0, now 1"):
        st.run_study(SOURCE_ID, tmp_path / "d", test="2", test_seed=1, write_commands=tmp_path / "d.sh", **kw)


def test_a_missing_prediction_fails_the_run(source, tmp_path, monkeypatch):
    """A predictor that leaves a test case out makes the run failed (named case), not a mean over fewer
    cases; with every case predicted the same run is ok. Training is skipped: a checkpoint is faked."""
    import shutil

    import nnunet_ssl.pipeline as pipeline

    left_out = []

    def predict(model_dir, input_dir, output_dir, **kw):  # "predictions": the reference label maps
        os.makedirs(output_dir, exist_ok=True)
        refs = sorted(Path(input_dir).parent.joinpath("labelsTs").iterdir())
        for ref in refs[: len(refs) - len(left_out)]:
            shutil.copy(ref, Path(output_dir) / ref.name)
        left_out[:] = [ref.name for ref in refs[len(refs) - len(left_out):]]
        return output_dir

    monkeypatch.setattr(pipeline, "predict_folder", predict)
    ckpt = Path(pipeline.model_folder("Dataset886_BenchSrcL50pcts0", "nnUNetTrainer", TINY.plans, "3d_fullres", "all"))
    ckpt.mkdir(parents=True)
    (ckpt / "checkpoint_final.pth").write_bytes(b"")
    kw = dict(fractions=["50%"], trainers=["nnUNetTrainer"], test="2", id_base=885, preset=TINY, progress=False)

    left_out.append("one case")
    res = st.run_study(SOURCE_ID, tmp_path / "study", **kw)
    [outcome] = res.outcomes
    missing_case = left_out[0][: -len(".nii.gz")]
    assert outcome.status == "failed" and not outcome.trained
    assert "1 of 2 reference cases have no prediction in " in outcome.reason and outcome.reason.endswith(missing_case)
    manifest = json.loads((tmp_path / "study" / outcome.run.relative_dir / "run.json").read_text())
    assert manifest["status"] == "failed" and manifest["reason"] == outcome.reason
    assert "| **nnUNetTrainer** | 0/1 ok; seed 0 failed | failed |" in res.report.read_text()

    left_out.clear()
    res = st.run_study(SOURCE_ID, tmp_path / "study", retry_failed=True, **kw)
    assert [o.status for o in res.outcomes] == ["ok"]
    assert "| **nnUNetTrainer** | 1/1 ok | 1.000 ± 0.000 |" in res.report.read_text()


# ------------------------------------------------------------------------------------- end to end
@pytest.mark.e2e
def test_study_end_to_end(source, tmp_path):
    out = tmp_path / "study"
    kw = dict(fractions=["50%", "100%"], seeds=[0], trainers=TRAINERS, test="2", id_base=881, preset=TINY,
              progress=False)
    res = st.run_study(SOURCE_ID, out, **kw)
    status = {(o.run.fraction, o.run.trainer): o.status for o in res.outcomes}
    assert status == {(0.5, "nnUNetTrainer"): "ok", (0.5, "nnUNetTrainerMeanTeacher"): "ok",
                      (0.5, "nnUNetTrainerDoesNotExist"): "failed", (1.0, "nnUNetTrainer"): "ok",
                      (1.0, "nnUNetTrainerMeanTeacher"): "skipped", (1.0, "nnUNetTrainerDoesNotExist"): "failed"}
    assert all("Could not find requested nnunet trainer" in o.reason for o in res.failed)
    assert sum(o.trained for o in res.outcomes) == 5  # 3 trainings + 2 failed attempts

    # one test set for every split; splits hold the pool only
    raw = Path(os.environ["nnUNet_raw"])
    assert sorted(os.listdir(raw / "Dataset881_BenchSrcTest2s0" / "labelsTs")) == sorted(
        c + ".nii.gz" for c in json.loads((out / "study.json").read_text())["test_cases"])
    assert len(os.listdir(raw / "Dataset882_BenchSrcL50pcts0" / "imagesUnlabeled")) == 2
    assert len(os.listdir(raw / "Dataset883_BenchSrcL100pcts0" / "labelsTr")) == 4
    for run in ("50pct/seed0/nnUNetTrainer", "50pct/seed0/nnUNetTrainerMeanTeacher", "100pct/seed0/nnUNetTrainer"):
        lines = (out / "runs" / run / "evaluation" / "metrics_per_case.csv").read_text().splitlines()
        assert len(lines) == 1 + 2 * 3  # header + 2 test cases x 3 classes

    report = out / "report" / "report.md"
    assert res.report == report
    for f in ("report.md", "label_efficiency.png", "boxplot_fraction_50.png", "all_metrics.csv", "summary.csv",
              "runs.csv"):
        assert (out / "report" / f).is_file(), f
    md = report.read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert any(ln.startswith("| **nnUNetTrainer** | 1/1 ok") for ln in rows)
    assert any(ln.startswith("| nnUNetTrainerMeanTeacher | 1/1 ok") for ln in rows)
    assert any(ln.startswith("| nnUNetTrainerDoesNotExist |") and "failed" in ln for ln in rows)
    assert "nnUNetTrainerDoesNotExist, seed 0: RuntimeError: Could not find requested nnunet trainer" in md
    assert "nnUNetTrainerMeanTeacher, seed 0: skipped: no unlabeled data" in md

    # rerun: nothing is trained again, failed runs are kept as failed
    ckpt = Path(os.environ["nnUNet_results"]) / "Dataset882_BenchSrcL50pcts0" / \
        "nnUNetTrainerMeanTeacher__nnUNetPlans_benchtest__3d_fullres" / "fold_all" / "checkpoint_final.pth"
    stamp = ckpt.stat().st_mtime_ns
    bogus_log = out / "runs" / "50pct" / "seed0" / "nnUNetTrainerDoesNotExist" / "train.log"
    log_size = bogus_log.stat().st_size
    res2 = st.run_study(SOURCE_ID, out, **kw)
    assert not any(o.trained for o in res2.outcomes)
    assert {(o.run.fraction, o.run.trainer): o.status for o in res2.outcomes} == status
    assert ckpt.stat().st_mtime_ns == stamp and bogus_log.stat().st_size == log_size

    # a run interrupted after training (no manifest, no predictions) is finished without retraining
    run_dir = out / "runs" / "50pct" / "seed0" / "nnUNetTrainerMeanTeacher"
    (run_dir / "run.json").unlink()
    for sub in ("predictions", "evaluation"):
        subprocess.run(["rm", "-r", str(run_dir / sub)], check=True)
    res3 = st.run_study(SOURCE_ID, out, **{**kw, "trainers": TRAINERS[:2]})
    assert [o.status for o in res3.outcomes] == ["ok", "ok", "ok", "skipped"]
    assert not any(o.trained for o in res3.outcomes) and ckpt.stat().st_mtime_ns == stamp
    assert json.loads((run_dir / "run.json").read_text())["status"] == "ok"
    assert "nnUNetTrainerDoesNotExist" not in (out / "report" / "report.md").read_text()

    # another study folder cannot take over these datasets (checked before anything is written)
    with pytest.raises(UserError, match="belongs to the study in"):
        st.run_study(SOURCE_ID, tmp_path / "other", **kw)
    assert not (tmp_path / "other" / "study.json").exists()

    # the report alone, from the manifests
    res4 = st.run_study(SOURCE_ID, out, **{**kw, "report_only": True})
    assert [o.status for o in res4.outcomes] == [o.status for o in res.outcomes]
