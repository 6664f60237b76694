"""Benchmark report: tables, label-efficiency curves and paired tests from per-case metrics.

Input is a list of plain records (dicts), one per case and class of a run, plus one record
per run that failed or produced nothing. A run is one ``(fraction, seed, trainer)``. Fields
(:data:`RECORD_FIELDS`):

- ``fraction`` (labeled fraction, float), ``seed``, ``trainer``;
- ``status``: ``"ok"`` (a case evaluated), ``"missing"`` (a case without a prediction, or with
  ``case`` empty: a run that produced nothing), ``"failed"`` (``case`` empty: the run failed);
- ``case``, ``class`` and the metric values of :data:`~nnunet_ssl.evaluation.metrics.METRICS`
  (NaN where undefined), ``reason`` (free text, for failed/missing runs).

A failed run wins over any case rows of the same run. A run with a case row of status
``"missing"`` (a test case without a prediction) counts as failed: its mean would otherwise be
over fewer cases than the other runs'. Failed and missing runs stay in the tables, never silently
dropped.

How numbers are aggregated:

- per case and run, the "mean" (overall) of a metric is the mean over classes, undefined
  distances left out (:func:`~nnunet_ssl.evaluation.stats.mean_over_classes`);
- table cells are mean ± sample std over cases, each case first averaged over the trainer's
  successful seeds;
- label-efficiency points are the mean over seeds of each seed's mean overall Dice, with
  error bars the std over seeds;
- p-values: paired Wilcoxon of each trainer against the baseline at the same fraction
  (:mod:`nnunet_ssl.evaluation.stats`).

Results folders (:func:`collect_results`): every run writes a ``run.json`` manifest
(:func:`write_run_manifest`) naming its trainer, fraction, seed, status and the folder holding
the ``metrics_per_case.csv`` written by :func:`~nnunet_ssl.evaluation.folders.evaluate_folders`.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nnunet_ssl.evaluation.folders import PER_CASE_CSV
from nnunet_ssl.evaluation.metrics import HIGHER_IS_BETTER, METRICS
from nnunet_ssl.evaluation.stats import (WilcoxonResult, describe, mean_over_classes, nanmean, paired_wilcoxon,
                                         seed_averaged_pairs)

RECORD_FIELDS: tuple[str, ...] = ("fraction", "seed", "trainer", "status", "case", "class", *METRICS, "reason")
STATUSES = ("ok", "failed", "missing")
RUN_MANIFEST = "run.json"
OVERALL = "mean"
"""Name of the per-case mean over classes in summaries (the table's "mean" columns)."""
TABLE_METRICS = ("nsd", "hd95")
"""Metrics shown (overall) in the report tables besides Dice; every metric is in the CSV files."""


# ----------------------------------------------------------------------------------------- records
def _seed(value) -> int | str:
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value)


def _seed_key(seed) -> tuple:
    return (0, seed, "") if isinstance(seed, int) else (1, 0, str(seed))


def _float(value) -> float:
    return math.nan if value is None or value == "" else float(value)


def normalize_record(record: Mapping) -> dict:
    """A record with every :data:`RECORD_FIELDS` key, typed (fraction float, seed int where it
    can be, metrics float with NaN for blanks); raises ValueError on a malformed record."""
    for key in ("fraction", "seed", "trainer", "status"):
        if record.get(key) in (None, ""):
            raise ValueError(f"result record needs {key!r}, got {dict(record)}")
    status = record["status"]
    if status not in STATUSES:
        raise ValueError(f"result record status must be one of {STATUSES}, got {status!r}")
    case = record.get("case") or None
    if status == "ok" and (case is None or not record.get("class")):
        raise ValueError(f"an 'ok' result record needs 'case' and 'class', got {dict(record)}")
    fraction = float(record["fraction"])
    if not 0 < fraction <= 1:
        raise ValueError(f"labeled fraction must be in (0, 1], got {fraction}")
    return {"fraction": fraction, "seed": _seed(record["seed"]), "trainer": str(record["trainer"]),
            "status": status, "case": case, "class": record.get("class") or None,
            **{m: _float(record.get(m)) for m in METRICS}, "reason": record.get("reason") or ""}


def run_record(fraction: float, seed, trainer: str, status: str, reason: str = "") -> dict:
    """The record of a whole run that has no case rows (``status`` ``"failed"`` or ``"missing"``)."""
    if status not in ("failed", "missing"):
        raise ValueError(f"a run record's status is 'failed' or 'missing', got {status!r}")
    return normalize_record({"fraction": fraction, "seed": seed, "trainer": trainer, "status": status,
                             "reason": reason})


def records_from_evaluation(per_case_csv: str | os.PathLike, fraction: float, seed, trainer: str) -> list[dict]:
    """Records of one run from the ``metrics_per_case.csv`` of ``evaluate_folders`` (a file or its folder)."""
    path = Path(per_case_csv)
    if path.is_dir():
        path = path / PER_CASE_CSV
    with open(path, newline="") as f:
        return [normalize_record({**row, "fraction": fraction, "seed": seed, "trainer": trainer})
                for row in csv.DictReader(f)]


def write_records_csv(records: Iterable[Mapping], path: str | os.PathLike) -> Path:
    """Write records with :data:`RECORD_FIELDS` columns (NaN as ``nan``, None as blank)."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RECORD_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(normalize_record(r) for r in records)
    return path


def read_records_csv(path: str | os.PathLike) -> list[dict]:
    """Records back from :func:`write_records_csv` (e.g. ``all_metrics.csv``)."""
    with open(path, newline="") as f:
        return [normalize_record(row) for row in csv.DictReader(f)]


def write_run_manifest(run_dir: str | os.PathLike, *, trainer: str, fraction: float, seed, status: str,
                       evaluation_dir: str | os.PathLike | None = None, reason: str = "") -> Path:
    """Write ``run_dir/run.json`` for :func:`collect_results`. ``status`` is ``"ok"`` (then
    ``evaluation_dir``, absolute or relative to ``run_dir``, holds ``metrics_per_case.csv``) or
    ``"failed"`` (with a ``reason``)."""
    if status not in ("ok", "failed"):
        raise ValueError(f"a run manifest's status is 'ok' or 'failed', got {status!r}")
    if status == "ok" and evaluation_dir is None:
        raise ValueError("an 'ok' run manifest needs evaluation_dir (the folder with metrics_per_case.csv)")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"trainer": trainer, "fraction": float(fraction), "seed": seed, "status": status,
                "evaluation": None if evaluation_dir is None else str(evaluation_dir), "reason": reason}
    path = run_dir / RUN_MANIFEST
    path.write_text(json.dumps(manifest, indent=2))
    return path


def collect_results(root: str | os.PathLike, expected: Iterable[tuple[float, object, str]] = ()) -> list[dict]:
    """Records of every run below ``root`` that has a ``run.json`` manifest.

    A run whose manifest says ok but whose per-case CSV is absent becomes a ``"missing"`` run;
    every ``(fraction, seed, trainer)`` of ``expected`` without a manifest too.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"results folder {root} does not exist")
    records: list[dict] = []
    seen = set()
    for manifest_path in sorted(root.rglob(RUN_MANIFEST)):
        m = json.loads(manifest_path.read_text())
        try:
            run = (float(m["fraction"]), _seed(m["seed"]), str(m["trainer"]))
            status = m["status"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{manifest_path} is not a run manifest (needs trainer, fraction, seed, status)") from e
        seen.add(run)
        if status == "failed":
            records.append(run_record(*run, "failed", m.get("reason") or ""))
            continue
        evaluation = Path(m.get("evaluation") or "")
        evaluation = evaluation if evaluation.is_absolute() else manifest_path.parent / evaluation
        csv_path = evaluation if evaluation.suffix == ".csv" else evaluation / PER_CASE_CSV
        if status != "ok" or not csv_path.is_file():
            records.append(run_record(*run, "missing", f"no {PER_CASE_CSV} at {csv_path}"
                                      if status == "ok" else f"manifest status {status!r}"))
            continue
        records.extend(records_from_evaluation(csv_path, *run))
    for fraction, seed, trainer in expected:
        if (float(fraction), _seed(seed), str(trainer)) not in seen:
            records.append(run_record(fraction, seed, trainer, "missing", "no run.json manifest"))
    return records


# ------------------------------------------------------------------------------------- aggregation
@dataclass
class TrainerResult:
    """One trainer at one fraction, aggregated over its runs (seeds)."""

    trainer: str
    fraction: float
    seeds_ok: list = field(default_factory=list)
    seeds_failed: dict = field(default_factory=dict)   # seed -> reason
    seeds_missing: dict = field(default_factory=dict)  # seed -> reason
    values: dict = field(default_factory=dict)         # (metric, class or OVERALL) -> {(seed, case): value}

    @property
    def n_runs(self) -> int:
        return len(self.seeds_ok) + len(self.seeds_failed) + len(self.seeds_missing)

    @property
    def ok(self) -> bool:
        return bool(self.seeds_ok)

    def case_values(self, metric: str, cls: str = OVERALL) -> dict:
        """``case -> value`` averaged over seeds (undefined values left out)."""
        per_case: dict = {}
        for (_, case), v in self.values.get((metric, cls), {}).items():
            per_case.setdefault(case, []).append(v)
        return {c: nanmean(v) for c, v in per_case.items()}

    def seed_means(self, metric: str, cls: str = OVERALL) -> dict:
        """``seed -> mean over cases`` of ``metric``."""
        per_seed: dict = {}
        for (seed, _), v in self.values.get((metric, cls), {}).items():
            per_seed.setdefault(seed, []).append(v)
        return {s: nanmean(v) for s, v in per_seed.items()}

    def describe(self, metric: str, cls: str = OVERALL) -> dict:
        return describe(self.case_values(metric, cls).values())

    def n_undefined(self, metric: str) -> int:
        """Undefined (NaN) per-class values of ``metric`` over all seeds, cases and classes."""
        return sum(math.isnan(v) for (m, c), vals in self.values.items() if m == metric and c != OVERALL
                   for v in vals.values())


def aggregate(records: Iterable[Mapping]) -> tuple[dict, list[str]]:
    """``{fraction: {trainer: TrainerResult}}`` and the class names in first-seen order."""
    runs: dict = {}
    classes: list[str] = []
    for r in map(normalize_record, records):
        run = runs.setdefault((r["fraction"], r["trainer"], r["seed"]), {"failed": None, "missing": None,
                                                                          "ok": [], "missing_cases": []})
        if r["case"] is None:
            run[r["status"]] = r["reason"]
        elif r["status"] == "ok":
            run["ok"].append(r)
            if r["class"] not in classes:
                classes.append(r["class"])
        else:
            run["missing_cases"].append(r["case"])
    results: dict = {}
    for (fraction, trainer, seed), run in sorted(runs.items(), key=lambda kv: (kv[0][0], _seed_key(kv[0][2]))):
        res = results.setdefault(fraction, {}).setdefault(trainer, TrainerResult(trainer, fraction))
        if run["failed"] is not None:
            res.seeds_failed[seed] = run["failed"]
            continue
        missing = list(dict.fromkeys(run["missing_cases"]))
        if missing:
            n_cases = len(missing) + len({r["case"] for r in run["ok"]})
            res.seeds_failed[seed] = (f"no prediction for {len(missing)} of {n_cases} test cases: "
                                      f"{', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
            continue
        if not run["ok"]:
            res.seeds_missing[seed] = run["missing"] or "no case was evaluated"
            continue
        res.seeds_ok.append(seed)
        for m in METRICS:
            for r in run["ok"]:
                res.values.setdefault((m, r["class"]), {})[(seed, r["case"])] = r[m]
            res.values[(m, OVERALL)] = {**res.values.get((m, OVERALL), {}),
                                        **{(seed, case): v for case, v in mean_over_classes(run["ok"], m).items()}}
    return results, classes


def _ordered_trainers(names: Iterable[str], baseline: str) -> list[str]:
    names = list(dict.fromkeys(names))
    return ([baseline] if baseline in names else []) + [n for n in names if n != baseline]


def compare_to_baseline(res: TrainerResult, base: TrainerResult | None, metric: str = "dice",
                        cls: str = OVERALL, seed=None) -> WilcoxonResult:
    """Paired Wilcoxon of ``res`` against ``base`` on ``metric`` of ``cls`` (same fraction, seeds matched;
    pooled over seeds, or on ``seed`` alone when given)."""
    if base is None or not base.ok:
        why = "no baseline run" if base is None else "baseline failed"
        return WilcoxonResult(math.nan, math.nan, 0, math.nan, math.nan, why)
    if not res.ok:
        return WilcoxonResult(math.nan, math.nan, 0, math.nan, math.nan, "run failed")
    x = res.values.get((metric, cls), {})
    y = base.values.get((metric, cls), {})
    if seed is not None:
        x = {key: v for key, v in x.items() if key[0] == seed}
    return paired_wilcoxon(*seed_averaged_pairs(x, y))


# ------------------------------------------------------------------------------------------ output
def fraction_label(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def _fraction_slug(fraction: float) -> str:
    return f"{100 * fraction:g}".replace(".", "p")


def _fmt(value: float, digits: int) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}f}"


def _mean_std(d: Mapping, digits: int) -> str:
    if d["n"] == 0:
        return "–"
    return _fmt(d["mean"], digits) + ("" if math.isnan(d["std"]) else f" ± {_fmt(d['std'], digits)}")


def format_p(result: WilcoxonResult) -> str:
    if not result.tested:
        return f"n/a ({result.reason})"
    return "<0.001" if result.p_value < 0.001 else f"{result.p_value:.3f}"


def _runs_cell(res: TrainerResult) -> str:
    parts = [f"{len(res.seeds_ok)}/{res.n_runs} ok"]
    parts += [f"seed {s} failed" for s in res.seeds_failed]
    parts += [f"seed {s} missing" for s in res.seeds_missing]
    return "; ".join(parts)


_DIGITS = {"dice": 3, "iou": 3, "nsd": 3, "hd95": 2, "asd": 2}
_TITLES = {"dice": "Dice", "iou": "IoU", "nsd": "NSD", "hd95": "HD95 (mm)", "asd": "ASD (mm)"}


def _table(results: Mapping[str, TrainerResult], classes: Sequence[str], baseline: str) -> list[str]:
    trainers = _ordered_trainers(results, baseline)
    columns = [("dice", c) for c in classes] + [("dice", OVERALL)] + [(m, OVERALL) for m in TABLE_METRICS]
    heads = ["Trainer", "Runs"] + [f"Dice {c}" if m == "dice" and c != OVERALL else f"{_TITLES[m]} mean"
                                   for m, c in columns] + [f"Δ Dice vs {baseline}", "p (Wilcoxon)"]
    best = {}
    for m, c in columns:
        means = [results[t].describe(m, c)["mean"] for t in trainers if results[t].ok]
        means = [v for v in means if not math.isnan(v)]
        if len(means) > 1:
            best[(m, c)] = max(means) if HIGHER_IS_BETTER[m] else min(means)
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(heads) - 2)) + "|"]
    base = results.get(baseline)
    for t in trainers:
        res = results[t]
        row = [f"**{t}**" if t == baseline else t, _runs_cell(res)]
        if not res.ok:
            word = "failed" if res.seeds_failed else "missing"
            row += [word] * (len(columns) + 2)
        else:
            for m, c in columns:
                d = res.describe(m, c)
                cell = _mean_std(d, _DIGITS[m])
                if best.get((m, c)) is not None and d["mean"] == best[(m, c)]:
                    cell = f"**{cell}**"
                if m in ("hd95", "asd") and res.n_undefined(m):
                    cell += f" [{res.n_undefined(m)} undef.]"
                row.append(cell)
            if t == baseline:
                row += ["–", "baseline"]
            else:
                w = compare_to_baseline(res, base)
                row += ["–" if math.isnan(w.mean_difference) else f"{w.mean_difference:+.3f}", format_p(w)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _seed_table(results: Mapping[str, TrainerResult], baseline: str, seeds: Sequence) -> list[str]:
    """Mean Dice over cases per seed, its mean ± sample std over seeds, on how many seeds the trainer's mean
    is above the baseline's (seeds where both ran), and each seed's paired difference with its own Wilcoxon p
    (a pooled test can be carried by one seed; this column shows whether it is); empty for a single seed."""
    if len(seeds) < 2:
        return []
    base = results.get(baseline)
    base_means = base.seed_means("dice") if base is not None and base.ok else {}
    sep = " / "
    lines = [f"| Trainer | mean Dice per seed ({sep.join(map(str, seeds))}) | mean ± std over seeds "
             f"| seeds above {baseline} | Δ Dice per seed (p) |", "|---|---|---:|---:|---|"]
    for t in _ordered_trainers(results, baseline):
        means = results[t].seed_means("dice")
        per_seed = sep.join(_fmt(means.get(s, math.nan), 3) for s in seeds)
        both = [s for s in seeds if s in means and s in base_means]
        wins = "–" if t == baseline or not both else f"{sum(means[s] > base_means[s] for s in both)}/{len(both)}"
        deltas = "–"
        if t != baseline and both:
            tests = [compare_to_baseline(results[t], base, seed=s) if s in both else None for s in seeds]
            deltas = sep.join("–" if w is None else f"{w.mean_difference:+.3f} ({format_p(w)})" for w in tests)
        lines.append(f"| {t} | {per_seed} | {_mean_std(describe(means.values()), 3)} | {wins} | {deltas} |")
    return lines


def _summary_rows(results: Mapping, classes: Sequence[str], baseline: str) -> list[dict]:
    rows = []
    for fraction, by_trainer in results.items():
        base = by_trainer.get(baseline)
        for t in _ordered_trainers(by_trainer, baseline):
            res = by_trainer[t]
            status = "ok" if res.ok else ("failed" if res.seeds_failed else "missing")
            for cls in [*classes, OVERALL]:
                for m in METRICS:
                    d = res.describe(m, cls)
                    seeds = describe(res.seed_means(m, cls).values())
                    w = (WilcoxonResult(math.nan, math.nan, 0, math.nan, math.nan, "baseline")
                         if t == baseline else compare_to_baseline(res, base, m, cls))
                    rows.append({"fraction": fraction, "trainer": t, "status": status, "class": cls, "metric": m,
                                 "mean": d["mean"], "std": d["std"], "median": d["median"], "n_cases": d["n"],
                                 "n_undefined": d["n_undefined"], "seed_mean": seeds["mean"],
                                 "seed_std": seeds["std"], "seeds_ok": len(res.seeds_ok),
                                 "seeds_failed": len(res.seeds_failed), "seeds_missing": len(res.seeds_missing),
                                 "baseline": baseline,
                                 "n_pairs": w.n_pairs, "mean_difference": w.mean_difference,
                                 "median_difference": w.median_difference, "wilcoxon_statistic": w.statistic,
                                 "p_value": w.p_value, "test_note": w.reason})
    return rows


def _write_dicts(rows: Sequence[Mapping], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["fraction"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_label_efficiency(results: Mapping, path: Path, baseline: str, metric: str = "dice") -> Path:
    """Mean overall ``metric`` vs labeled fraction per trainer, error bars = std over seeds."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    fractions = sorted(results)
    trainers = _ordered_trainers((t for f in fractions for t in results[f]), baseline)
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for i, t in enumerate(trainers):
        xs, ys, es, failed = [], [], [], []
        for f in fractions:
            res = results[f].get(t)
            if res is None:
                continue
            if not res.ok:
                failed.append(fraction_label(f))
                continue
            d = describe(res.seed_means(metric).values())
            xs.append(f)
            ys.append(d["mean"])
            es.append(0.0 if math.isnan(d["std"]) else d["std"])
        label = t + (f" (failed at {', '.join(failed)})" if failed else "")
        style = dict(color="black", linestyle="--", marker="s") if t == baseline else dict(marker="o")
        ax.errorbar(xs, ys, yerr=es, capsize=3, label=label, **style)
    if len(fractions) > 1 and fractions[-1] / fractions[0] >= 8:
        ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(fractions))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([fraction_label(f) for f in fractions])
    ax.set_xlabel("labeled fraction")
    ax.set_ylabel(f"mean {_TITLES[metric]} over classes")
    ax.set_title("Label efficiency (error bars: std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return path


def plot_fraction_boxplot(results: Mapping[str, TrainerResult], fraction: float, path: Path, baseline: str,
                          metric: str = "dice") -> Path:
    """Per-case overall ``metric`` (averaged over seeds) of every trainer at one fraction."""
    from matplotlib.figure import Figure

    trainers = _ordered_trainers(results, baseline)
    fig = Figure(figsize=(max(4.0, 1.3 * len(trainers) + 1.5), 4.5), layout="constrained")
    ax = fig.add_subplot()
    data = [[v for v in results[t].case_values(metric).values() if not math.isnan(v)] for t in trainers]
    positions = [i + 1 for i, d in enumerate(data) if d]
    if positions:
        ax.boxplot([d for d in data if d], positions=positions, widths=0.6)
    for i, (t, d) in enumerate(zip(trainers, data)):
        if not d:
            ax.text(i + 1, 0.5, "failed" if results[t].seeds_failed else "missing", ha="center",
                    va="center", transform=ax.get_xaxis_transform(), color="tab:red")
    ax.set_xlim(0.5, len(trainers) + 0.5)
    ax.set_xticks(range(1, len(trainers) + 1))
    ax.set_xticklabels(trainers, rotation=20, ha="right")
    ax.set_ylabel(f"{_TITLES[metric]} per case (mean over classes)")
    ax.set_title(f"Labeled fraction {fraction_label(fraction)}")
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=120)
    return path


def build_report(results_table: Iterable[Mapping], out_dir: str | os.PathLike, baseline: str = "nnUNetTrainer",
                 title: str = "nnunet_ssl benchmark") -> Path:
    """Write ``report.md``, ``all_metrics.csv``, ``summary.csv``, ``label_efficiency.png`` and one
    ``boxplot_fraction_<pct>.png`` per fraction into ``out_dir``; returns the path of ``report.md``.

    ``results_table``: records as described in the module docstring.
    """
    records = [normalize_record(r) for r in results_table]
    if not records:
        raise ValueError("no result records to report on")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, classes = aggregate(records)
    write_records_csv(records, out / "all_metrics.csv")
    _write_dicts(_summary_rows(results, classes, baseline), out / "summary.csv")
    plot_label_efficiency(results, out / "label_efficiency.png", baseline)

    trainers = _ordered_trainers((t for f in results for t in results[f]), baseline)
    seeds = sorted({r["seed"] for r in records}, key=_seed_key)
    md = [f"# {title}", "",
          f"Trainers: {', '.join(trainers)}. Baseline: `{baseline}`. "
          f"Labeled fractions: {', '.join(fraction_label(f) for f in sorted(results))}. "
          f"Seeds: {', '.join(map(str, seeds))}. Classes: {', '.join(classes) or '–'}.", "",
          "![Dice vs labeled fraction](label_efficiency.png)", ""]
    for fraction in sorted(results):
        slug = _fraction_slug(fraction)
        plot_fraction_boxplot(results[fraction], fraction, out / f"boxplot_fraction_{slug}.png", baseline)
        md += [f"## Labeled fraction {fraction_label(fraction)}", "", *_table(results[fraction], classes, baseline),
               ""]
        by_seed = _seed_table(results[fraction], baseline, seeds)
        md += [*by_seed, ""] if by_seed else []
        md += [f"![per-case Dice at {fraction_label(fraction)}](boxplot_fraction_{slug}.png)", ""]
        reasons = [f"- {t}, seed {s}: {why}" for t, res in results[fraction].items()
                   for s, why in {**res.seeds_failed, **res.seeds_missing}.items() if why]
        if reasons:
            md += ["Runs that failed or produced nothing:", "", *reasons, ""]
    md += ["## How to read this", "",
           "- Cells are mean ± sample std over test cases; a case is first averaged over the trainer's "
           "successful seeds. \"mean\" columns average over classes per case first.",
           "- Dice/NSD: higher is better; HD95: lower is better, in mm. The best value of a column is bold.",
           "- With several seeds, a second table gives each seed's mean Dice (over cases and classes), the mean ± "
           "sample std of those over seeds, and on how many seeds it is above the baseline's.",
           "- Empty masks: both empty scores Dice = NSD = 1, HD95 = 0; exactly one empty scores Dice = NSD = 0 "
           "and an undefined HD95/ASD, which is left out of the means and counted as \"undef.\".",
           f"- Δ Dice and p: paired over cases (same case id, same seed, then averaged over seeds) against "
           f"`{baseline}` at the same fraction; two-sided Wilcoxon signed-rank test, not corrected for "
           "multiple comparisons. n/a says why no test was made.",
           "- A run that failed stays in the table as \"failed\"; a run that left a test case without a "
           "prediction counts as failed (its mean would be over fewer cases).",
           "- Every number: `all_metrics.csv` (per case, class and run) and `summary.csv` (aggregates, all "
           "metrics, per class, with tests).", ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
