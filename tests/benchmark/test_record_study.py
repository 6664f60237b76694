"""benchmarks/record_study.py copies a study's final records (manifests, evaluations, logs, report), not its
predictions, models or unfinished runs, and a restored copy lets the study resume without redoing them."""
from __future__ import annotations

import json

import pytest

from conftest import load_benchmark


def _study(root):
    (root / "report").mkdir(parents=True)
    (root / "study.json").write_text(json.dumps({"settings": {}}))
    (root / "report" / "report.md").write_text("# report")
    done = root / "runs" / "10pct" / "seed0" / "nnUNetTrainer"
    (done / "evaluation").mkdir(parents=True)
    (done / "predictions").mkdir()
    (done / "run.json").write_text(json.dumps({"status": "ok"}))
    (done / "train.log").write_text("epoch 0")
    (done / "evaluation" / "metrics_per_case.csv").write_text("case,dice\n")
    (done / "predictions" / "case_000.nii.gz").write_bytes(b"\0")
    unfinished = root / "runs" / "10pct" / "seed0" / "nnUNetTrainerCPS"
    unfinished.mkdir(parents=True)
    (unfinished / "train.log").write_text("epoch 3")


def test_record_copies_final_records_only(tmp_path):
    src, dst = tmp_path / "study", tmp_path / "results"
    _study(src)
    runs = load_benchmark("record_study").record(src, dst)
    assert [str(r) for r in runs] == ["runs/10pct/seed0/nnUNetTrainer"]
    copied = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert copied == ["report/report.md", "runs/10pct/seed0/nnUNetTrainer/evaluation/metrics_per_case.csv",
                      "runs/10pct/seed0/nnUNetTrainer/run.json", "runs/10pct/seed0/nnUNetTrainer/train.log",
                      "study.json"]
    # restoring into a new work folder gives the study what it needs to skip the finished run
    work = tmp_path / "work"
    load_benchmark("record_study").record(dst, work)
    assert json.loads((work / "runs/10pct/seed0/nnUNetTrainer/run.json").read_text())["status"] == "ok"


def test_record_refuses_a_folder_that_is_not_a_study(tmp_path):
    with pytest.raises(SystemExit, match="not an nnunet-ssl benchmark study"):
        load_benchmark("record_study").record(tmp_path, tmp_path / "out")
