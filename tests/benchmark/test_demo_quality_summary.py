"""The multi-seed summary of benchmarks/demo_quality.py: mean ± std, wins and the pooled paired test."""
from __future__ import annotations

import pytest

from conftest import load_benchmark


def _result(base, other, cases):
    return {"dice": {"nnUNetTrainer": {"organ": base, "mean": base}, "X": {"organ": other, "mean": other}},
            "per_case": {"nnUNetTrainer": {c: base for c in cases}, "X": {c: other + 0.01 * i for i, c in enumerate(cases)}}}


def test_summary_over_seeds():
    cases = [f"c{i}" for i in range(4)]
    per_seed = {0: _result(0.5, 0.7, cases), 1: _result(0.6, 0.5, cases), 2: _result(0.4, 0.6, cases)}
    rows = {r[0]: r for r in load_benchmark("demo_quality").summarise(per_seed, "nnUNetTrainer")}
    trainer, stats, wins, test = rows["X"]
    # X: 0.7, 0.5, 0.6 -> mean 0.6, population std sqrt(((.1)^2 + (.1)^2 + 0) / 3) = 0.08165
    assert stats["mean"] == pytest.approx((0.6, 0.0816497), abs=1e-6)
    assert wins == 2  # beats the baseline on seeds 0 and 2
    assert test.n_pairs == 12  # 3 seeds x 4 cases, pooled
    assert rows["nnUNetTrainer"][3] is None  # the baseline is not tested against itself


def test_finished_demo_is_reused_only_with_the_same_settings(tmp_path):
    import json

    dq = load_benchmark("demo_quality")
    settings = {"dim": 3, "labeled": 4, "unlabeled": 24, "test": 16, "seed": 1}
    results = {"dice": {"nnUNetTrainer": {"mean": 0.5}, "X": {"mean": 0.6}}, "epochs": 20, "iterations_per_epoch": 25}
    (tmp_path / "demo_settings.json").write_text(json.dumps(settings))
    (tmp_path / "demo_results.json").write_text(json.dumps(results))
    same = dict(trainers=["nnUNetTrainer", "X"], epochs=20, iters=25, labeled=4, unlabeled=24, test=16, seed=1, dim=3)
    assert dq.finished_demo(str(tmp_path), **same) == results
    for change in ({"seed": 2}, {"epochs": 40}, {"trainers": ["nnUNetTrainer"]}, {"labeled": 8}):
        assert dq.finished_demo(str(tmp_path), **{**same, **change}) is None, change
    assert dq.finished_demo(str(tmp_path / "missing"), **same) is None


def test_contrastive_rows_average_first_last_and_chance_over_seeds():
    dq = load_benchmark("demo_quality")
    # seed 0: first 6.0, last five epochs 5.0 4.0 3.0 2.0 1.0 -> 3.0; seed 1: first 5.0, last five all 4.0
    terms = {0: {"loss_dcl": [6.0, 5.0, 4.0, 3.0, 2.0, 1.0], "loss_dcl_chance": [5.8] * 6},
             1: {"loss_dcl": [5.0, 4.0, 4.0, 4.0, 4.0, 4.0], "loss_dcl_chance": [5.6] * 6},
             2: {}}  # nnUNetTrainer-like run without the term: left out
    first, end, chance = dq.contrastive_rows(terms)
    assert (first, end, chance) == pytest.approx((5.5, 3.5, 5.7))
    assert dq.contrastive_rows({0: {}, 1: {}}) is None


def test_presence_table_only_when_some_case_lacks_a_class():
    dq = load_benchmark("demo_quality")
    every_case_has_every_class = {"X": {"organ": {"dice_present": 0.9, "false_positive_rate": float("nan")}}}
    some_absent = {"X": {"organ": {"dice_present": 0.9, "false_positive_rate": 0.2}}}
    assert not dq.any_absent_class([(4, 24, {0: {"presence": every_case_has_every_class}})])
    assert dq.any_absent_class([(4, 24, {0: {"presence": every_case_has_every_class}, 1: {"presence": some_absent}})])
