"""Reference model alone on every slice vs reference slices + mask propagation, on held-out test cases.

Both rows use the same 2d reference model: once as ``nnUNetv2_predict`` runs it (every slice), once as
the reference stage of ``nnunet-ssl propagate`` (``--slices`` uniformly sampled slices, the ``--per-organ``
largest per organ seeding the propagator). Per-class test Dice (``nnunet-ssl evaluate``'s metrics) goes
to a Markdown table with the command that reproduces it.

ACDC (Dataset927_ACDCDev) has no test split and 6-18 slices per volume; a study on it, end to end
(the reference and the propagator trained on the same CPU plans)::

    nnunet-ssl split -d 927 --labeled 80% --test 20% --seed 0 --id 937 --group-regex '(patient\\d+)'
    nnUNetv2_plan_and_preprocess -d 937 -c 2d
    nnunet-ssl shrink-plans -d 937 -c 2d --patch 128,128 --features 16,32,64,128 --batch-size 4  # cpu-2d sizes
    nnunet-ssl train 937 2d 0 -tr nnUNetTrainer -p nnUNetPlans_cpu --epochs 80 --iters 50
    nnunet-ssl train 937 2d 0 -tr nnUNetTrainerMaskPropagation -p nnUNetPlans_cpu --epochs 30 --iters 25 --val-iters 5
    python benchmarks/propagation_quality.py -d 937 \\
        --reference $nnUNet_results/Dataset937_*/nnUNetTrainer__nnUNetPlans_cpu__2d \\
        --propagator $nnUNet_results/Dataset937_*/nnUNetTrainerMaskPropagation__nnUNetPlans_cpu__2d \\
        -f 0 --slices 3 5 --per-organ 1 --out benchmarks/results/propagation_quality_acdc.md

The propagator's step (5-slice sequences of 128×128, batch 4) costs far more than the reference's: an epoch of
25 iterations + 5 validation iterations took about 60 s on 2 CPU cores with nothing else running (the reference's
epoch of 50 iterations: about 43 s while sharing the cores with one other training run), so it gets a smaller budget (750 iterations, about 30 min) than the reference
(4000 iterations, which would take the propagator about 2.7 h). With 10 mm slices, few sampled slices
(``--slices 3``) are what makes the propagation do the work; ``--slices`` >= the slice count reduces it to
the reference model on every slice.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import write_report  # noqa: E402


def _evaluate(pred: str, ref: str, labels: dict, ending: str) -> dict:
    from nnunet_ssl.evaluation.folders import evaluate_folders

    result = evaluate_folders(pred, ref, labels, file_ending=ending, num_processes=1, progress=False)
    per_class = {name: m["dice"]["mean"] for name, m in result.summary["per_class"].items()}
    return {"per_class": per_class, "mean": result.summary["overall"]["dice"]["mean"]}


def table_lines(rows) -> list:
    """Markdown table of ``(label, {"per_class": {...}, "mean": m}, seconds per case)`` rows: per-class Dice,
    mean Dice and wall time per case (prediction, plus propagation where there is one; evaluation excluded)."""
    classes = list(rows[0][1]["per_class"])
    lines = ["| prediction | " + " | ".join(classes) + " | mean | s per case |", "|---" * (len(classes) + 3) + "|"]
    for label, r, seconds in rows:
        lines.append(f"| {label} | " + " | ".join(f"{r['per_class'][c]:.3f}" for c in classes) +
                     f" | {r['mean']:.3f} | {seconds:.1f} |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-d", dest="dataset", required=True, help="dataset id or name in nnUNet_raw, with imagesTs/labelsTs")
    p.add_argument("--reference", required=True, help="model folder of a 2d nnU-Net model")
    p.add_argument("--propagator", required=True, help="model folder of nnUNetTrainerMaskPropagation")
    p.add_argument("-f", dest="folds", nargs="+", default=["0"])
    p.add_argument("--slices", type=int, nargs="+", default=[3, 5], help="sampled slices, one row each")
    p.add_argument("--per-organ", type=int, nargs="+", default=[1], help="reference slices per organ, one row each")
    p.add_argument("-device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--workdir", default=None, help="where predictions go (default: next to --out)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "propagation_quality.md"))
    args = p.parse_args()

    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_ssl.pipeline import predict_folder
    from nnunet_ssl.propagation.inference import propagate_folder

    name = maybe_convert_to_dataset_name(args.dataset)
    raw = os.path.join(nnUNet_raw.get(), name)
    images, refs = os.path.join(raw, "imagesTs"), os.path.join(raw, "labelsTs")
    with open(os.path.join(raw, "dataset.json")) as f:
        dataset_json = json.load(f)
    labels, ending = dataset_json["labels"], dataset_json["file_ending"]
    work = args.workdir or os.path.splitext(os.path.abspath(args.out))[0] + "_predictions"

    cases = len(os.listdir(refs))
    rows = []
    start = time.time()
    alone = os.path.join(work, "reference_every_slice")
    t0 = time.time()
    predict_folder(args.reference, images, alone, folds=args.folds, device=args.device, num_processes=1)
    seconds = (time.time() - t0) / cases
    rows.append(("reference model on every slice", _evaluate(alone, refs, labels, ending), seconds))
    for n in args.slices:
        for k in args.per_organ:
            out = os.path.join(work, f"propagation_slices{n}_per_organ{k}")
            t0 = time.time()
            propagate_folder(images, out, args.reference, args.propagator, folds=args.folds, device=args.device,
                             num_slices=n, references_per_organ=k, overwrite=True)
            seconds = (time.time() - t0) / cases
            rows.append((f"{n} sampled slices, {k} reference(s) per organ + propagation",
                         _evaluate(out, refs, labels, ending), seconds))

    lines = [f"# Mask propagation on {name}: reference model alone vs reference slices + propagation", "",
             f"Reference: `{args.reference}`; propagator: `{args.propagator}`; folds {' '.join(args.folds)}; "
             f"{cases} test cases (labelsTs); device {args.device}; {time.time() - start:.0f} s.", ""]
    lines += table_lines(rows)
    lines += ["", "Command: `python " + " ".join(sys.argv) + "`"]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
