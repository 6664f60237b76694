"""Test-set quality of every network a multi-network trainer saved, and of their softmax ensemble.

CPS, DHC, DMPF, GuidedNet and co-learning train two (or more) networks but export one (student A, or the
ensemble of the ``_Ensemble`` variants). When such a trainer scores below nnUNetTrainer, the first question
is whether the method or the exported network is at fault: did both networks lose, or only the one that is
exported? This script answers it from one finished run without retraining. It reads the run's checkpoint,
predicts the test images with nnU-Net's predictor once per saved network (``checkpoint['nnunet_ssl']
['networks']`` and ``['teachers']``: every network whose weights fit the exported architecture) and once
with the mean of their softmax (:class:`nnunet_ssl.networks.ensemble.SoftmaxEnsemble`, what the
``_Ensemble`` trainers export), and scores each against the reference labels with the package's evaluation
(the benchmark's Dice and HD95).

A second Dice column keeps only each class's largest connected component of the prediction (nnU-Net's
``remove_all_but_largest_component``, full connectivity, as ``nnUNetv2_apply_postprocessing``): where it
rises well above the plain Dice, the network's loss is false-positive islands away from the structure,
which nnU-Net's own post-processing would remove; where it does not, the errors touch the structure.

    python benchmarks/member_networks.py $nnUNet_results/Dataset681_X/nnUNetTrainerCPS__nnUNetPlans_cpu3d__3d_fullres \\
        -f all -i $nnUNet_raw/Dataset680_X/imagesTs -l $nnUNet_raw/Dataset680_X/labelsTs -o /tmp/members_cps_s0 \\
        --disable_tta --out results/some_study/members_cps_s0.md
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
from typing import Dict, List

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import write_report  # noqa: E402


def saved_networks(checkpoint: dict) -> Dict[str, dict]:
    """``name -> state dict`` of every network and teacher the checkpoint holds (nnunet_ssl trainers); a plain
    nnU-Net checkpoint holds only ``network_weights``, returned as ``network``."""
    ssl = checkpoint.get("nnunet_ssl") or {}
    found = dict(ssl.get("networks") or {})
    found.update({f"teacher {name}": state for name, state in (ssl.get("teachers") or {}).items()})
    return found or {"network": checkpoint["network_weights"]}


def member_template(network: torch.nn.Module) -> torch.nn.Module:
    """The single-network architecture of a predictor's network (its first member if it is an ensemble)."""
    from nnunet_ssl.networks.ensemble import SoftmaxEnsemble

    return network.members[0] if isinstance(network, SoftmaxEnsemble) else network


def fits(template: torch.nn.Module, state: dict) -> bool:
    own = template.state_dict()
    return set(own) == set(state) and all(own[k].shape == state[k].shape for k in own)


def largest_component_dice(pred_dir: str, ref_dir: str, labels: Dict[str, int], file_ending: str) -> Dict[str, float]:
    """Mean Dice per class over the reference cases after keeping each class's largest component."""
    from nnunetv2.postprocessing.remove_connected_components import remove_all_but_largest_component

    from nnunet_ssl.evaluation.folders import _read_seg, list_cases, reader_class
    from nnunet_ssl.evaluation.metrics import overlap_metrics

    refs = list_cases(ref_dir, file_ending)
    preds = list_cases(pred_dir, file_ending)
    reader = reader_class(file_ending, next(iter(refs.values())))()
    scores: Dict[str, List[float]] = {name: [] for name in labels}
    for case, ref_file in refs.items():
        pred = _read_seg(reader, preds[case])[0]
        ref = _read_seg(reader, ref_file)[0]
        for name, value in labels.items():
            kept = remove_all_but_largest_component(pred == value)
            scores[name].append(overlap_metrics(kept, ref == value)[0])
    return {name: float(np.mean(v)) for name, v in scores.items()}


def volume_ratio(rows) -> float:
    """Predicted over reference foreground voxels, summed over the per-case, per-class evaluation ``rows``
    (``n_pred``, ``n_ref``; rows of missing predictions are skipped); nan without reference voxels."""
    rows = [r for r in rows if r.get("n_pred") is not None and r.get("n_ref") is not None]
    reference = sum(r["n_ref"] for r in rows)
    return sum(r["n_pred"] for r in rows) / reference if reference else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_folder", help="a trained run's folder (…/<trainer>__<plans>__<configuration>)")
    p.add_argument("-f", "--fold", default="0")
    p.add_argument("--checkpoint", default="checkpoint_final.pth")
    p.add_argument("-i", "--images", required=True, help="test images (nnU-Net raw naming)")
    p.add_argument("-l", "--labels", required=True, help="reference label maps of the same cases")
    p.add_argument("-o", "--output", required=True, help="folder for one prediction folder per network")
    p.add_argument("--disable_tta", action="store_true", help="no test-time mirroring (nnUNetv2_predict's flag)")
    p.add_argument("--out", default=None, help="also write the Markdown table here")
    args = p.parse_args(argv)

    from nnunet_ssl.evaluation.folders import evaluate_folders
    from nnunet_ssl.networks.ensemble import SoftmaxEnsemble
    from nnunet_ssl.pipeline import load_predictor

    # nnUNetv2_predict's settings (Gaussian-weighted tiles, step 0.5), on the CPU
    predictor = load_predictor(args.model_folder, (args.fold,), args.checkpoint, "cpu",
                               use_mirroring=not args.disable_tta, progress=True)
    checkpoint = torch.load(os.path.join(args.model_folder, f"fold_{args.fold}", args.checkpoint),
                            map_location="cpu", weights_only=False)
    template = member_template(predictor.network)
    networks = saved_networks(checkpoint)
    members = {n: s for n, s in networks.items() if fits(template, s)}
    skipped = sorted(set(networks) - set(members))
    if not members:
        raise SystemExit(f"none of the checkpoint's networks {sorted(networks)} fits the exported architecture")

    runs = {name: (copy.deepcopy(template), state) for name, state in members.items()}
    if len(members) > 1:
        ensemble = SoftmaxEnsemble([copy.deepcopy(template) for _ in members])
        state = {f"members.{i}.{k}": v for i, s in enumerate(members.values()) for k, v in s.items()}
        runs["ensemble (" + " + ".join(members) + ")"] = (ensemble, state)

    with open(os.path.join(args.model_folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    file_ending = dataset_json["file_ending"]
    labels = {k: v for k, v in dataset_json["labels"].items() if k != "background" and isinstance(v, int)}

    rows = []
    for i, (name, (net, state)) in enumerate(runs.items()):
        out = os.path.join(args.output, f"{i}_" + re.sub(r"\W+", "_", name).strip("_"))
        predictor.network = net.to(predictor.device).eval()
        predictor.list_of_parameters = [state]
        print(f"[{i + 1}/{len(runs)}] predicting with {name} -> {out}", flush=True)
        predictor.predict_from_files(args.images, out, save_probabilities=False, overwrite=True,
                                     num_processes_preprocessing=1, num_processes_segmentation_export=1)
        ev = evaluate_folders(out, args.labels, labels, file_ending=file_ending, progress=False)
        summary = ev.summary
        dice = {c: summary["per_class"][c]["dice"]["mean"] for c in labels}
        hd95 = summary["overall"]["hd95"]["mean"]
        lcc = largest_component_dice(out, args.labels, labels, file_ending)
        rows.append((name, dice, summary["overall"]["dice"]["mean"], hd95, lcc, volume_ratio(ev.rows)))

    lines = [f"# Networks of `{os.path.basename(os.path.normpath(args.model_folder))}` (fold {args.fold}, "
             f"{args.checkpoint})", "",
             "Test-set Dice of every saved network that fits the exported architecture and of their softmax mean; "
             "'largest component': each class reduced to its largest connected component (full connectivity) before scoring; "
             "'predicted / reference volume': foreground voxels predicted over those labeled, summed over cases and "
             "classes (above 1: over-segmentation).", "",
             "| network | " + " | ".join(f"Dice {c}" for c in labels) + " | Dice mean | HD95 mean (mm) | "
             "Dice mean, largest component | predicted / reference volume |",
             "|---|" + "---:|" * (len(labels) + 4)]
    for name, dice, mean, hd95, lcc, volume in rows:
        lines.append(f"| {name} | " + " | ".join(f"{dice[c]:.3f}" for c in labels)
                     + f" | {mean:.3f} | {hd95:.2f} | {np.mean(list(lcc.values())):.3f} | {volume:.3f} |")
    if skipped:
        lines += ["", f"Not evaluated (another architecture): {', '.join(skipped)}."]
    lines += ["", "Command: `python benchmarks/member_networks.py " + " ".join(sys.argv[1:] if argv is None else argv)
              + "`", ""]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
