"""Report generation from fabricated result folders (hand-chosen metric values)."""
import csv
import math

import pytest

from nnunet_ssl.evaluation.folders import missing_rows, write_per_case_csv
from nnunet_ssl.evaluation.report import (aggregate, build_report, collect_results, normalize_record,
                                          read_records_csv, run_record, write_run_manifest)

BASE, MT, BAD = "nnUNetTrainer", "nnUNetTrainerMeanTeacher", "nnUNetTrainerBroken"
CASES = [f"c{i}" for i in range(6)]


def rows_for(dice_a, dice_b, hd95_b=2.0, skip=()):
    """Per-case rows: class a Dice dice_a(i), class b Dice dice_b(i); other metrics derived."""
    rows = []
    for i, case in enumerate(CASES):
        if case in skip:
            rows += missing_rows(case, {"a": 1.0, "b": 1.0})
            continue
        for cls, dice, hd in (("a", dice_a(i), 4.0), ("b", dice_b(i), hd95_b)):
            rows.append({"case": case, "class": cls, "status": "ok", "dice": dice, "iou": dice / (2 - dice),
                         "nsd": dice, "hd95": hd, "asd": hd / 2, "tolerance_mm": 1.0, "n_pred": 10, "n_ref": 10})
    return rows


def fabricate(root):
    """Baseline: Dice a = 0.5, b = 0.7 (per-case mean 0.6). Mean Teacher: a = 0.6 + 0.04 i, b = 0.7
    (per-case mean 0.65 + 0.02 i, mean 0.70, differences to the baseline all positive and distinct).
    Broken: at 10 % seed 0 failed, seed 1 ok; at 50 % both seeds failed. Mean Teacher at 50 %,
    seed 1 has no prediction for c5 (which makes that run a failed one)."""
    def run(trainer, fraction, seed, rows=None, reason=""):
        d = root / trainer / f"fraction_{fraction}" / f"seed_{seed}"
        if rows is None:
            write_run_manifest(d, trainer=trainer, fraction=fraction, seed=seed, status="failed", reason=reason)
            return
        write_per_case_csv(rows, (d / "eval").mkdir(parents=True) or d / "eval" / "metrics_per_case.csv")
        write_run_manifest(d, trainer=trainer, fraction=fraction, seed=seed, status="ok", evaluation_dir="eval")

    for fraction in (0.1, 0.5):
        for seed in (0, 1):
            # baseline seed 1: class b HD95 undefined in every case
            run(BASE, fraction, seed, rows_for(lambda i: 0.5, lambda i: 0.7, hd95_b=math.nan if seed else 2.0))
            skip = ("c5",) if (fraction, seed) == (0.5, 1) else ()
            run(MT, fraction, seed, rows_for(lambda i: 0.6 + 0.04 * i, lambda i: 0.7, skip=skip))
    run(BAD, 0.1, 0, reason="CUDA out of memory")
    run(BAD, 0.1, 1, rows_for(lambda i: 0.1, lambda i: 0.1))
    run(BAD, 0.5, 0, reason="diverged")
    run(BAD, 0.5, 1, reason="diverged")


def test_collect_and_aggregate(tmp_path):
    fabricate(tmp_path)
    records = collect_results(tmp_path, expected=[(0.5, 2, MT), (0.1, 0, BASE)])
    # 2 fractions * 2 seeds * 6 cases * 2 classes for BASE and MT, 12 rows for BAD's ok run,
    # 3 failed runs and 1 expected-but-absent run
    assert len(records) == 2 * 2 * 6 * 2 * 2 + 12 + 3 + 1
    results, classes = aggregate(records)
    assert classes == ["a", "b"] and sorted(results) == [0.1, 0.5]
    bad10, bad50, mt50 = results[0.1][BAD], results[0.5][BAD], results[0.5][MT]
    assert bad10.seeds_ok == [1] and bad10.seeds_failed == {0: "CUDA out of memory"} and bad10.ok
    assert not bad50.ok and sorted(bad50.seeds_failed) == [0, 1]
    # a run with a case without prediction is a failed run, not averaged over its other cases
    assert mt50.seeds_ok == [0] and mt50.seeds_failed == {1: "no prediction for 1 of 6 test cases: c5"}
    assert mt50.seeds_missing == {2: "no run.json manifest"}
    # per case averaged over the successful seeds: only seed 0 here
    assert mt50.case_values("dice")["c5"] == pytest.approx(0.75)
    assert mt50.seed_means("dice") == {0: pytest.approx(0.70)}   # seed 1 is not averaged over its 5 cases
    assert results[0.1][MT].describe("dice")["mean"] == pytest.approx(0.70)
    assert results[0.1][BASE].describe("dice", "a") == pytest.approx(
        {"mean": 0.5, "std": 0.0, "median": 0.5, "n": 6, "n_undefined": 0})
    assert results[0.1][BASE].n_undefined("hd95") == 6


def test_failed_run_wins_and_record_validation():
    rec = [normalize_record({"fraction": 0.2, "seed": 0, "trainer": "T", "status": "ok", "case": "c",
                             "class": "a", "dice": "0.5"}),
           run_record(0.2, 0, "T", "failed", "killed")]
    results, _ = aggregate(rec)
    assert not results[0.2]["T"].ok and results[0.2]["T"].seeds_failed == {0: "killed"}
    with pytest.raises(ValueError, match="status must be one of"):
        normalize_record({"fraction": 0.2, "seed": 0, "trainer": "T", "status": "done"})
    with pytest.raises(ValueError, match="needs 'trainer'"):
        normalize_record({"fraction": 0.2, "seed": 0, "status": "ok"})
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        run_record(2.0, 0, "T", "failed")


def test_build_report(tmp_path):
    fabricate(tmp_path / "runs")
    out = tmp_path / "report"
    md_path = build_report(collect_results(tmp_path / "runs"), out)
    md = md_path.read_text()
    for name in ("all_metrics.csv", "summary.csv", "label_efficiency.png", "boxplot_fraction_10.png",
                 "boxplot_fraction_50.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "label_efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Labeled fraction 10%" in md and "## Labeled fraction 50%" in md

    def table_row(section, trainer):
        block = md.split(f"## Labeled fraction {section}")[1].split("##")[0]
        return next(line for line in block.splitlines() if line.startswith(f"| {trainer} |")
                    or line.startswith(f"| **{trainer}** |"))

    mt = table_row("10%", MT)
    # Dice a: mean 0.7, sample std of 0.6..0.8 step 0.04 = 0.04 * sqrt(3.5) = 0.0748; mean Dice 0.70 ± 0.037;
    # difference to the baseline +0.100, 6 positive distinct differences -> exact p = 2/64 = 0.031
    assert "| 2/2 ok |" in mt and "0.700 ± 0.075" in mt and "0.700 ± 0.037" in mt
    assert "+0.100" in mt and "| 0.031 |" in mt
    assert "**0.700 ± 0.037**" in mt                       # best overall Dice at 10 % is bold
    base = table_row("10%", BASE)
    assert "baseline" in base and "[6 undef.]" in base     # seed 1: class b HD95 undefined in 6 cases
    bad10 = table_row("10%", BAD)
    assert "1/2 ok; seed 0 failed" in bad10 and "-0.500" in bad10
    bad50 = table_row("50%", BAD)
    assert bad50.count("| failed") == 7   # 5 metric columns, Δ and p
    assert "0/2 ok; seed 0 failed; seed 1 failed" in bad50
    assert "1/2 ok; seed 1 failed" in table_row("50%", MT)
    assert "- nnUNetTrainerMeanTeacher, seed 1: no prediction for 1 of 6 test cases: c5" in md
    assert "- nnUNetTrainerBroken, seed 0: CUDA out of memory" in md
    # per seed (10 %): baseline 0.600 on both seeds; Mean Teacher 0.700 on both (mean over cases of
    # 0.65 + 0.02 i), above on 2 of 2; Broken ran seed 1 only (0.100), below on 1 of 1
    seeds10 = md.split("## Labeled fraction 10%")[1].split("##")[0]
    # per-seed paired test: Mean Teacher's 6 differences per seed are all positive and distinct -> p = 2/64;
    # Broken's seed 1: every difference -0.5 (ties) -> Wilcoxon's exact p for 6 equal signs, also 0.031
    assert ("| Trainer | mean Dice per seed (0 / 1) | mean ± std over seeds | seeds above nnUNetTrainer "
            "| Δ Dice per seed (p) |") in seeds10
    assert f"| {BASE} | 0.600 / 0.600 | 0.600 ± 0.000 | – | – |" in seeds10
    assert f"| {MT} | 0.700 / 0.700 | 0.700 ± 0.000 | 2/2 | +0.100 (0.031) / +0.100 (0.031) |" in seeds10
    assert f"| {BAD} | – / 0.100 | 0.100 | 0/1 | – / -0.500 (0.031) |" in seeds10

    records = read_records_csv(out / "all_metrics.csv")
    assert sum(r["status"] == "failed" for r in records) == 3
    assert sum(r["status"] == "missing" for r in records) == 2       # c5 at 50 %, seed 1, classes a and b
    with open(out / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    row = next(r for r in summary if r["fraction"] == "0.1" and r["trainer"] == MT and r["class"] == "mean"
               and r["metric"] == "dice")
    assert float(row["p_value"]) == pytest.approx(2 / 64) and row["n_pairs"] == "6"
    assert float(row["seed_mean"]) == pytest.approx(0.7) and float(row["seed_std"]) == pytest.approx(0.0)
    failed = [r for r in summary if r["fraction"] == "0.5" and r["trainer"] == BAD]
    assert failed and all(r["status"] == "failed" and r["test_note"] == "run failed" for r in failed)


def test_report_without_baseline_and_single_seed(tmp_path):
    recs = [{"fraction": 0.25, "seed": 0, "trainer": "A", "status": "ok", "case": c, "class": "x",
             "dice": d, "iou": d, "nsd": d, "hd95": 1.0, "asd": 1.0} for c, d in (("p", 0.5), ("q", 0.7))]
    md = build_report(recs, tmp_path, baseline="nnUNetTrainer").read_text()
    assert "n/a (no baseline run)" in md and "| 0.600 ± 0.141 |" in md
    assert "mean Dice per seed" not in md  # one seed: no per-seed table
    with pytest.raises(ValueError, match="no result records"):
        build_report([], tmp_path)
