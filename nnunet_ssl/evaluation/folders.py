"""Evaluate a folder of predicted label maps against a folder of reference label maps.

Files are paired by case id (the file name without ``file_ending``) and read with nnU-Net's
reader-writers, so spacing comes from the files. A reference case without a prediction is an
error (:class:`MissingPredictions`, raised before anything is evaluated or written) unless
``allow_missing``: then it gets rows with status ``"missing"`` that score Dice = IoU = NSD = 0 for
every class, with HD95 and ASD undefined (NaN: left out of the means and counted as
``n_undefined``, as for a prediction that misses a present class), so the means are over every
reference case; the summary lists and counts the missing cases. Predictions without a reference
are listed as ``unmatched`` and not evaluated. Metrics and the empty-mask convention:
:mod:`nnunet_ssl.evaluation.metrics`.

Outputs, in ``output_dir``: ``metrics_per_case.csv`` (one row per case and class) and
``metrics_summary.json`` (per class and overall mean/std/median over cases, counts).
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_ssl.errors import UserError
from nnunet_ssl.evaluation.metrics import (HIGHER_IS_BETTER, METRICS, LabelValue, case_metrics,
                                           class_tolerances, foreground_classes)
from nnunet_ssl.evaluation.stats import describe, mean_over_classes

PER_CASE_CSV = "metrics_per_case.csv"
SUMMARY_JSON = "metrics_summary.json"
PER_CASE_FIELDS: tuple[str, ...] = ("case", "class", "status", *METRICS, "tolerance_mm", "n_pred", "n_ref")
SPACING_RTOL = 1e-3


class MissingPredictions(UserError):
    """Reference cases without a prediction (``missing``, of ``n_reference``) in ``pred_dir``."""

    def __init__(self, missing: Sequence[str], n_reference: int, pred_dir: str | os.PathLike):
        self.missing, self.n_reference, self.pred_dir = list(missing), n_reference, pred_dir
        shown = ", ".join(self.missing[:10]) + (f" and {len(self.missing) - 10} more" if len(self.missing) > 10 else "")
        super().__init__(f"{len(self.missing)} of {n_reference} reference cases have no prediction in {pred_dir}: "
                         f"{shown}")


@dataclass
class FolderEvaluation:
    """What :func:`evaluate_folders` computed and where it wrote it."""

    rows: list[dict]
    summary: dict
    missing: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    per_case_csv: Path | None = None
    summary_json: Path | None = None


def list_cases(folder: str | os.PathLike, file_ending: str) -> dict[str, Path]:
    """``case id -> file`` for the files of ``folder`` whose names end with ``file_ending``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"folder {folder} does not exist")
    return {p.name[: -len(file_ending)]: p for p in sorted(folder.iterdir())
            if p.is_file() and p.name.endswith(file_ending) and len(p.name) > len(file_ending)}


def reader_class(file_ending: str, example_file: str | os.PathLike):
    """nnU-Net's reader-writer class for ``file_ending``: SimpleITKIO for NIfTI, otherwise nnU-Net's choice."""
    if file_ending in (".nii.gz", ".nii"):
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
        return SimpleITKIO
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending
    try:
        return determine_reader_writer_from_file_ending(file_ending, str(example_file),
                                                        allow_nonmatching_filename=True, verbose=False)
    except RuntimeError as e:
        raise UserError(f"nnU-Net has no reader for files ending in {file_ending!r} ({example_file}): {e}") from e


def _read_seg(reader, path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    seg, props = reader.read_seg(str(path))
    return np.rint(seg[0]).astype(np.int32), tuple(float(s) for s in props["spacing"])


def evaluate_case(case: str, pred_file: Path, ref_file: Path, reader_cls, labels: Mapping[str, LabelValue],
                  tolerances: Mapping[str, float], surface: bool = True) -> list[dict]:
    """Per-class rows (:data:`PER_CASE_FIELDS`) of one case; raises UserError on a geometry mismatch."""
    reader = reader_cls()
    pred, pred_spacing = _read_seg(reader, pred_file)
    ref, spacing = _read_seg(reader, ref_file)
    if pred.shape != ref.shape:
        raise UserError(f"case {case}: prediction {pred_file} has shape {pred.shape} but the reference "
                        f"{ref_file} has {ref.shape}; are the folders of the same dataset?")
    if not np.allclose(pred_spacing, spacing, rtol=SPACING_RTOL):
        raise UserError(f"case {case}: prediction spacing {pred_spacing} differs from the reference spacing "
                        f"{spacing}; predictions must be in the reference geometry")
    per_class = case_metrics(pred, ref, spacing, labels, dict(tolerances), surface=surface)
    return [{"case": case, "class": name, "status": "ok", **values, "tolerance_mm": tolerances[name]}
            for name, values in per_class.items()]


def _evaluate_case_star(args: tuple) -> list[dict]:
    return evaluate_case(*args)


MISSING_SCORES: dict[str, float] = {m: 0.0 if HIGHER_IS_BETTER[m] else math.nan for m in METRICS}
"""What a reference case without a prediction scores: 0 for the overlap metrics, distances undefined."""


def missing_rows(case: str, tolerances: Mapping[str, float]) -> list[dict]:
    """Rows of a reference case that has no prediction: status ``"missing"``, :data:`MISSING_SCORES`."""
    return [{"case": case, "class": name, "status": "missing", **MISSING_SCORES,
             "tolerance_mm": tol, "n_pred": None, "n_ref": None} for name, tol in tolerances.items()]


def summarize(rows: Sequence[dict]) -> dict:
    """Per class and overall :func:`~nnunet_ssl.evaluation.stats.describe` of every metric over all
    rows (missing cases with their :data:`MISSING_SCORES`). Overall: per case the mean over classes
    (undefined distances left out), then described over cases."""
    classes = list(dict.fromkeys(r["class"] for r in rows))
    per_class = {c: {m: describe(r[m] for r in rows if r["class"] == c) for m in METRICS} for c in classes}
    overall = {m: describe(mean_over_classes(rows, m).values()) for m in METRICS}
    return {"per_class": per_class, "overall": overall}


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_per_case_csv(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write rows with :data:`PER_CASE_FIELDS` (NaN written as ``nan``)."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=PER_CASE_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def evaluate_folders(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike, labels: Mapping[str, LabelValue],
                     file_ending: str = ".nii.gz", tolerance_mm: float | Mapping[str, float] = 1.0,
                     num_processes: int = 1, output_dir: str | os.PathLike | None = None,
                     surface: bool = True, progress: bool | None = None,
                     allow_missing: bool = False) -> FolderEvaluation:
    """Evaluate every reference case of ``ref_dir`` against its prediction in ``pred_dir``.

    ``labels``: ``dataset.json``-style ``name -> value(s)`` (background and ``"ignore"`` are
    not evaluated; ``"ignore"`` masks voxels). ``tolerance_mm``: NSD tolerance, one number or
    ``class name -> mm``. Writes :data:`PER_CASE_CSV` and :data:`SUMMARY_JSON` into
    ``output_dir`` (default ``pred_dir``). ``progress=None`` shows a bar on a terminal only.
    ``allow_missing``: score reference cases without a prediction as described in the module
    docstring instead of raising :class:`MissingPredictions`.
    Raises :class:`~nnunet_ssl.errors.UserError` for a missing folder, no reference case, no
    matching prediction, a missing prediction, unknown labels or mismatched geometry.
    """
    from tqdm import tqdm

    try:
        classes = foreground_classes(labels)
        tolerances = class_tolerances(tolerance_mm, list(classes))
    except ValueError as e:
        raise UserError(str(e)) from e
    if int(num_processes) < 1:
        raise UserError(f"the number of processes must be >= 1, got {num_processes}")
    refs = list_cases(ref_dir, file_ending)
    preds = list_cases(pred_dir, file_ending)
    if not refs:
        raise UserError(f"no reference files ending in {file_ending!r} in {ref_dir}")
    matched = [c for c in refs if c in preds]
    if not matched:
        raise UserError(f"none of the {len(refs)} reference cases in {ref_dir} has a prediction ending in "
                        f"{file_ending!r} in {pred_dir} (cases are paired by file name)")
    missing = [c for c in refs if c not in preds]
    if missing and not allow_missing:
        raise MissingPredictions(missing, len(refs), pred_dir)
    unmatched = [c for c in preds if c not in refs]

    reader_cls = reader_class(file_ending, refs[matched[0]])
    tasks = [(c, preds[c], refs[c], reader_cls, dict(labels), tolerances, surface) for c in matched]
    bar = dict(total=len(tasks), desc="evaluating", unit="case", disable=(None if progress is None else not progress))
    if num_processes == 1 or len(tasks) == 1:
        results = [evaluate_case(*t) for t in tqdm(tasks, **bar)]
    else:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(int(num_processes), len(tasks))) as pool:
            results = list(tqdm(pool.imap(_evaluate_case_star, tasks), **bar))
    by_case = dict(zip(matched, results))
    rows = [r for c in refs for r in (by_case[c] if c in by_case else missing_rows(c, tolerances))]

    summary = {
        "pred_dir": str(pred_dir), "ref_dir": str(ref_dir), "file_ending": file_ending,
        "classes": {name: list(values) for name, values in classes.items()}, "tolerance_mm": tolerances,
        "n_reference_cases": len(refs), "n_evaluated": len(matched), "n_missing": len(missing),
        "missing_predictions": missing, "unmatched_predictions": unmatched,
        "convention": "both masks empty: dice=iou=nsd=1, hd95=asd=0; exactly one empty: dice=iou=nsd=0, "
                      "hd95=asd undefined (left out of means, counted as n_undefined); a reference case "
                      "without prediction (allowed missing): dice=iou=nsd=0 for every class, hd95=asd undefined",
        **summarize(rows),
    }
    out = Path(output_dir) if output_dir is not None else Path(pred_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_per_case_csv(rows, out / PER_CASE_CSV)
    json_path = out / SUMMARY_JSON
    json_path.write_text(json.dumps(_json_safe(summary), indent=2))
    return FolderEvaluation(rows, summary, missing, unmatched, csv_path, json_path)
