"""Gradient scale of each loss term of a semi-supervised trainer against its supervised term.

A semi-supervised loss is a sum of terms (supervised, consistency, pseudo-label, mixed, ...), each with
its own weight and ramp-up. Whether an unsupervised term helps or drowns the labels depends on the size
of its gradient at the network nnU-Net exports, not on its value. For a trainer (fresh, or restored
from one of its checkpoints, e.g. ``checkpoint_final.pth`` of a finished run) this script draws
``--steps`` labeled (and unlabeled) batches from the trainer's own loaders and, on each, computes the
trainer's ``compute_losses`` exactly as its training step does (same autocast, same trackers: their
state advances as in training) and, for every term that carries a gradient, the L2 norm of its gradient
with respect to the parameters of the inference network (``self.network``, student A):

- ``|grad|``: the term's own gradient norm (before the weight the loss gives it);
- ``/ sup``: that norm divided by the supervised term's (``loss_sup``, ``loss_seg`` or ``loss_labeled``,
  whichever the trainer logs);
- the row ``unsupervised part of loss``: ``|grad(loss) - w_sup·grad(sup)|``, i.e. everything the total loss
  adds to the supervised term, weights and ramp-ups included, and its ratio to the supervised gradient
  (``w_sup``: the weight the loss gives the supervised term, logged by trainers where it is not 1, e.g.
  DMPF's ``1 − μ``);
- ``cos(supervised, unsupervised part)``: whether that addition pulls along the labels' gradient (> 0),
  across it (≈ 0) or against it (< 0).

The weights the trainer logs (``w_*``) are printed with their values. Means over the steps; no
optimizer step is taken, nothing is written to the run folder.

    python benchmarks/term_gradients.py -d 601 -tr nnUNetTrainerDHC -p nnUNetPlans_cpuquick \\
        --checkpoint checkpoint_final.pth --steps 8
    python benchmarks/term_gradients.py -d 601 -tr nnUNetTrainerDHC -p nnUNetPlans_cpuquick \\
        --overrides '{"consistency_weight": 1}' --out results/term_gradients_dhc.md
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Dict, Iterable, List, Optional

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import finish_loaders, write_report  # noqa: E402

SUPERVISED_TERMS = ("loss_sup", "loss_seg", "loss_labeled")
"""Names under which the trainers log their supervised term (first one present is used)."""


UNSUPERVISED = "unsupervised part of loss"
COSINE = "cos(supervised, unsupervised part)"


def term_gradient_norms(terms: Dict[str, object], params: List[torch.nn.Parameter],
                        supervised: Optional[str] = None, supervised_weight: float = 1.0) -> Dict[str, float]:
    """L2 norm of the gradient of every scalar tensor term of ``terms`` that requires a gradient, with respect
    to ``params`` (parameters no term reaches count as zero gradient). With ``supervised`` (a key of
    ``terms``) and a ``"loss"`` entry, also ``"unsupervised part of loss"``: the norm of
    ``grad(loss) - supervised_weight·grad(terms[supervised])`` (``supervised_weight``: the supervised term's
    weight in the loss), and ``"cos(supervised, unsupervised part)"``: the cosine between
    that difference and the supervised gradient (negative: the unlabeled terms pull the network against its
    labels; nan if either is zero). The graph is kept (``retain_graph``) for every term."""
    names = [k for k, v in terms.items()
             if isinstance(v, torch.Tensor) and v.requires_grad and v.numel() == 1]
    grads = {}
    for i, name in enumerate(names):
        g = torch.autograd.grad(terms[name], params, retain_graph=True, allow_unused=True)
        grads[name] = torch.cat([(x if x is not None else torch.zeros_like(p)).detach().flatten().float()
                                 for x, p in zip(g, params)])
    norms = {k: float(v.norm()) for k, v in grads.items()}
    if supervised in grads and "loss" in grads:
        sup, unsup = grads[supervised], grads["loss"] - float(supervised_weight) * grads[supervised]
        norms[UNSUPERVISED] = float(unsup.norm())
        denominator = float(sup.norm() * unsup.norm())
        norms[COSINE] = float(sup @ unsup) / denominator if denominator > 0 else float("nan")
    return norms


def supervised_term(names: Iterable[str]) -> Optional[str]:
    """The first of :data:`SUPERVISED_TERMS` among ``names``, or None."""
    names = set(names)
    return next((n for n in SUPERVISED_TERMS if n in names), None)


def run_budget(run_folder: str) -> dict:
    """``num_epochs`` and ``num_iterations_per_epoch`` of a run, from the ``debug.json`` nnU-Net writes
    into its folder at the start of training ({} if absent)."""
    path = os.path.join(run_folder, "debug.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        debug = json.load(f)
    return {k: int(debug[k]) for k in ("num_epochs", "num_iterations_per_epoch") if k in debug}


def _scalar(v) -> Optional[float]:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().mean()) if v.numel() else None
    if isinstance(v, (int, float, np.floating)):
        return float(v)
    return None


def measure(trainer, steps: int) -> Dict[str, dict]:
    """Per term: mean value, mean gradient norm at ``trainer.network`` over ``steps`` batches."""
    params = [p for p in trainer.network.parameters() if p.requires_grad]
    values: Dict[str, List[float]] = {}
    norms: Dict[str, List[float]] = {}
    for _ in range(steps):
        batch = next(trainer.dataloader_train)
        data, target = trainer._to_device(batch["data"]), trainer._to_device(batch["target"])
        unlabeled = None
        if trainer.uses_unlabeled_batch():
            unlabeled = trainer._to_device(next(trainer.dataloader_unlabeled)["data"])
        trainer.optimizer.zero_grad(set_to_none=True)
        with trainer.autocast():
            terms = trainer.compute_losses(data, target, unlabeled)
        sup = supervised_term(terms)
        weight = _scalar(terms.get("w_sup", 1.0))
        for k, v in term_gradient_norms(terms, params, sup, 1.0 if weight is None else weight).items():
            norms.setdefault(k, []).append(v)
        for k, v in terms.items():
            s = _scalar(v)
            if s is not None:
                values.setdefault(k, []).append(s)
        del terms
    out = {k: {"value": float(np.mean(v))} for k, v in values.items()}
    for k, v in norms.items():
        out.setdefault(k, {})["grad"] = float(np.mean(v))
    out["_supervised"] = {"name": supervised_term(values)}
    return out


def report(result: Dict[str, dict], title: str, command: str) -> List[str]:
    sup = result.pop("_supervised")["name"]
    base = result.get(sup, {}).get("grad") if sup else None
    lines = [f"# Gradient scale of the loss terms: {title}", "",
             "Gradient norms at the inference network's parameters, mean over the measured steps; `/ sup`: "
             f"divided by the supervised term's (`{sup}`). Weights (`w_*`) are the values the loss used.", "",
             "| term | value | grad | / sup |", "|---|---|---|---|"]
    cosine = result.pop(COSINE, {}).get("grad")
    for k, r in sorted(result.items(), key=lambda kv: ("grad" not in kv[1], kv[0])):
        grad = r.get("grad")
        ratio = f"{grad / base:.3g}" if grad is not None and base else ""
        value = f"{r['value']:.4g}" if "value" in r else ""
        lines.append(f"| {k} | {value} | {'' if grad is None else f'{grad:.4g}'} | {ratio} |")
    if cosine is not None:
        lines.append(f"| {COSINE} | {cosine:.3g} | | |")
    return lines + ["", f"Command: `{command}`", ""]


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-d", dest="dataset", required=True, help="dataset id or name (nnU-Net folders from the environment)")
    p.add_argument("-c", dest="configuration", default="3d_fullres")
    p.add_argument("-f", dest="fold", default="all")
    p.add_argument("-tr", dest="trainer", required=True, help="a semi-supervised nnunet_ssl trainer")
    p.add_argument("-p", dest="plans", default="nnUNetPlans")
    p.add_argument("--checkpoint", default=None,
                   help="a checkpoint file name in the run folder (e.g. checkpoint_final.pth) or a path; "
                        "default: freshly initialised networks")
    p.add_argument("--epochs", type=int, default=None,
                   help="the run's num_epochs (ramp-ups depend on it; default: the run folder's debug.json with "
                        "--checkpoint, else the trainer's)")
    p.add_argument("--iters", type=int, default=None, help="the run's iterations per epoch (default: as --epochs)")
    p.add_argument("--steps", type=int, default=8, help="batches to average over (default 8)")
    p.add_argument("--overrides", default=None, help="nnUNet_ssl_overrides JSON for the trainer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the Markdown table here")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    os.environ.setdefault("nnUNet_compile", "false")
    if args.overrides is not None:
        json.loads(args.overrides)  # a clear error before anything is built
        os.environ["nnUNet_ssl_overrides"] = args.overrides

    from nnunet_ssl.overrides import NNUNET_BUDGET_KEYS, apply_overrides
    from nnunet_ssl.runner import build_trainer

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    t = build_trainer(args.dataset, args.configuration, args.fold, args.trainer, args.plans, "cpu")
    budget = run_budget(t.output_folder) if args.checkpoint else {}
    budget.update({k: v for k, v in (("num_epochs", args.epochs), ("num_iterations_per_epoch", args.iters))
                   if v is not None})
    apply_overrides(t, NNUNET_BUDGET_KEYS, budget)  # as build_trainer(budget=...) does
    if not hasattr(t, "compute_losses"):
        p.error(f"{args.trainer} has no compute_losses: only nnunet_ssl's semi-supervised trainers have loss terms")
    t.disable_checkpointing = True
    t.one_graph_per_network = False  # every term's graph at once (same gradients as the step's)
    if args.checkpoint:
        path = args.checkpoint if os.path.isfile(args.checkpoint) else os.path.join(t.output_folder, args.checkpoint)
        if not os.path.isfile(path):
            p.error(f"checkpoint {path} not found")
        t.load_checkpoint(path)
    # nnU-Net's start writes its log, plans and debug files: into a scratch folder, not into the run
    scratch = tempfile.mkdtemp(prefix="term_gradients_")
    t.output_folder, t.log_file = scratch, os.path.join(scratch, "log.txt")
    t.on_train_start()
    t.on_train_epoch_start()
    try:
        result = measure(t, args.steps)
    finally:
        finish_loaders(t)
        shutil.rmtree(scratch, ignore_errors=True)
    where = f"{args.checkpoint} (epoch {t.current_epoch}, step {getattr(t, 'global_step', '?')})" \
        if args.checkpoint else "fresh networks"
    title = f"{args.trainer}, {t.plans_manager.dataset_name} {args.configuration} {args.plans}, {where}"
    command = "python benchmarks/term_gradients.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = report(result, title, command)
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
