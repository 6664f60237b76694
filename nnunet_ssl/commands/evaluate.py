"""``nnunet-ssl evaluate``: per-case, per-class metrics of a prediction folder against references.

Labels and file ending come from a dataset's ``dataset.json`` (``-d``, looked up in nnUNet_raw,
or ``--labels-json``). Writes ``metrics_per_case.csv`` and ``metrics_summary.json`` (see
:mod:`nnunet_ssl.evaluation.folders`) and prints the per-class means. A reference case without a
prediction stops the command (nothing written) unless ``--allow-missing``, which scores it Dice 0
for every class and says how many cases were missing.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from nnunet_ssl.commands import arguments
from nnunet_ssl.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-pred", required=True, metavar="DIR", help="folder of predicted label maps")
    parser.add_argument("-ref", required=True, metavar="DIR", help="folder of reference label maps (e.g. labelsTr)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("-d", dest="dataset", metavar="DATASET",
                     help="dataset name or id in nnUNet_raw whose dataset.json gives labels and file ending")
    src.add_argument("--labels-json", metavar="FILE",
                     help="a dataset.json, or a JSON file {class name: label value}")
    parser.add_argument("--file-ending", default=None,
                        help="file ending of the label maps (default: from dataset.json, else .nii.gz)")
    parser.add_argument("--tolerance", default="1.0", metavar="MM",
                        help="NSD tolerance in mm: a number, or per class as JSON text or a .json file "
                             "({class name: mm}); default 1.0")
    parser.add_argument("-np", dest="num_processes", type=arguments.count, default=None, metavar="N",
                        help="worker processes (default: nnU-Net's default_num_processes, at most the CPU count)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="evaluate even if reference cases have no prediction: each missing case scores "
                             "Dice = IoU = NSD = 0 for every class, HD95/ASD undefined (default: refuse)")
    parser.add_argument("-o", dest="output", default=None, metavar="DIR",
                        help="where to write the CSV and JSON (default: the prediction folder)")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _labels_and_ending(args) -> tuple[dict, str | None]:
    if args.dataset is not None:
        from nnunetv2.paths import nnUNet_raw
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

        if not nnUNet_raw.is_set():
            raise UserError("-d needs the nnUNet_raw environment variable; set it or pass --labels-json")
        try:
            name = maybe_convert_to_dataset_name(args.dataset)
        except (RuntimeError, ValueError) as e:
            raise UserError(f"dataset {args.dataset!r} not found in nnUNet_raw ({nnUNet_raw.get()}): {e}") from None
        path = Path(nnUNet_raw.get()) / name / "dataset.json"
    else:
        path = Path(args.labels_json)
    data = _read_json(path)
    if "labels" in data:
        return data["labels"], data.get("file_ending")
    return data, None


def _tolerance(text: str) -> float | dict:
    try:
        return float(text)
    except ValueError:
        pass
    path = Path(text)
    if text.endswith(".json") or path.is_file():
        return _read_json(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise UserError(f"--tolerance must be a number of mm, JSON text or a .json file, got {text!r}") from None
    if not isinstance(value, dict):
        raise UserError(f"per-class --tolerance must be a JSON object {{class: mm}}, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    import os

    from nnunet_ssl.evaluation.folders import MissingPredictions, evaluate_folders

    labels, ending = _labels_and_ending(args)
    file_ending = args.file_ending or ending or ".nii.gz"
    num_processes = args.num_processes
    if num_processes is None:
        from nnunetv2.configuration import default_num_processes
        num_processes = max(1, min(default_num_processes, os.cpu_count() or 1))
    try:
        result = evaluate_folders(args.pred, args.ref, labels, file_ending=file_ending,
                                  tolerance_mm=_tolerance(args.tolerance), num_processes=num_processes,
                                  output_dir=args.output, allow_missing=args.allow_missing)
    except MissingPredictions as e:
        raise UserError(f"{e}; predict them, or pass --allow-missing to count each missing case as Dice 0") from None

    def cell(d: dict, digits: int) -> str:
        return "-" if math.isnan(d["mean"]) else f"{d['mean']:.{digits}f}"

    per_class = result.summary["per_class"]
    print(f"{'class':<20} {'Dice':>7} {'IoU':>7} {'NSD':>7} {'HD95':>9} {'ASD':>9}")
    for name, m in [*per_class.items(), ("mean over classes", result.summary["overall"])]:
        print(f"{name:<20} {cell(m['dice'], 4):>7} {cell(m['iou'], 4):>7} {cell(m['nsd'], 4):>7} "
              f"{cell(m['hd95'], 2):>9} {cell(m['asd'], 2):>9}")
    print(f"{result.summary['n_evaluated']} of {result.summary['n_reference_cases']} reference cases evaluated; "
          f"per case: {result.per_case_csv}; summary: {result.summary_json}")
    if result.missing:
        print(f"{len(result.missing)} of {result.summary['n_reference_cases']} cases missing (no prediction, counted "
              f"as Dice 0): {', '.join(result.missing)}")
    if result.unmatched:
        print(f"note: {len(result.unmatched)} prediction(s) have no reference and were not evaluated: "
              f"{', '.join(result.unmatched)}")
    return 0
