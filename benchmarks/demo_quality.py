"""Per-class test Dice of several trainers on the demo dataset, at the same iteration budget.

A thin wrapper over ``nnunet-ssl demo`` (same data, planning, training and prediction code), which
records the table in ``benchmarks/results/`` together with the command that reproduces it. The demo
dataset's tiny structure (class "lesion") is what class-imbalance methods target.

- ``--dim 3`` (default): grey 3D volumes, a few labeled and many unlabeled ones;
- ``--dim 2``: RGB frames where every training frame without a pixel mask has an image-level
  category label (``categoryLabels.json``), for the category-supervised trainers.

A workdir holding a finished demo of the same settings and trainers is reused, not trained again (a
study spread over sessions resumes). Several ``--labeled`` counts (with the same total of training cases, ``--total``) give one demo
run each, in its own workdir, and one table::

    python benchmarks/demo_quality.py --trainers nnUNetTrainer nnUNetTrainerMeanTeacher nnUNetTrainerCPS \\
        nnUNetTrainerDHC nnUNetTrainerDMPF --epochs 20 --iters 25 --test 16
    python benchmarks/demo_quality.py --dim 2 --total 200 --labeled 2 20 --test 50 \\
        --trainers nnUNetTrainer nnUNetTrainerDCLCls --out benchmarks/results/category_labels.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import write_report  # noqa: E402

DESCRIPTION = {
    3: "Synthetic 3D dataset (32³ volumes; organ = large, vessel = medium, lesion = tiny); CPU plans (patch 32³, "
       "features 8/16/32, batch 2)",
    2: "Synthetic 2D RGB frames (64×64 PNG; organ = large, vessel = medium, lesion = tiny, each present in a frame "
       "with probability 0.7); every training frame without a pixel mask has a category label (the classes it "
       "shows); CPU plans (patch 64×64, features 8/16/32, batch 4)",
}


def finished_demo(workdir: str, trainers, epochs: int, iters: int, labeled: int, unlabeled: int, test: int,
                  seed: int, dim: int) -> Optional[dict]:
    """The results of a finished ``nnunet-ssl demo`` in ``workdir`` if it ran exactly these settings and
    trainers (then a study resumes without training them again), else None."""
    try:
        with open(os.path.join(workdir, "demo_settings.json")) as f:
            settings = json.load(f)
        with open(os.path.join(workdir, "demo_results.json")) as f:
            results = json.load(f)
    except (OSError, ValueError):
        return None
    wanted = {"dim": dim, "labeled": labeled, "unlabeled": unlabeled, "test": test, "seed": seed}
    same = ({k: settings.get(k) for k in wanted} == wanted and list(results.get("dice", {})) == list(trainers)
            and results.get("epochs") == epochs and results.get("iterations_per_epoch") == iters)
    return results if same else None


def workdir_of(args, labeled: int, seed: int) -> str:
    """The demo workdir of one labeled count and seed."""
    return args.workdir + (f"_{labeled}labeled" if len(args.labeled) > 1 else "") + \
        (f"_s{seed}" if len(args.seeds) > 1 else "")


def run_demo(args, labeled: int, unlabeled: int, seed: int, workdir: str) -> dict:
    cmd = ["nnunet-ssl", "demo", "--dim", str(args.dim), "--workdir", workdir, "--epochs", str(args.epochs),
           "--iters", str(args.iters), "--labeled", str(labeled), "--unlabeled", str(unlabeled),
           "--test", str(args.test), "--seed", str(seed), "--trainers", *args.trainers]
    subprocess.run(cmd, check=True)
    with open(os.path.join(workdir, "demo_results.json")) as f:
        return json.load(f)


def logged_terms(workdir: str, dim: int, trainer: str) -> dict:
    """The per-epoch terms a trainer of this package logged (``ssl/<term>`` -> list over epochs), read from
    the demo run's final checkpoint; {} for nnU-Net's own trainers or a missing checkpoint."""
    import torch

    from nnunet_ssl.commands.demo import KINDS, trainer_folder

    path = os.path.join(trainer_folder(os.path.join(workdir, "nnUNet_results"), KINDS[dim], trainer),
                        "checkpoint_final.pth")
    if not os.path.isfile(path):
        return {}
    log = torch.load(path, map_location="cpu", weights_only=False).get("logging", {})
    return {k[4:]: v for k, v in log.items() if k.startswith("ssl/")}


def contrastive_rows(terms_per_seed: dict, last: int = 5) -> Optional[tuple]:
    """``(first epoch, mean of the last epochs, chance)`` of ``loss_dcl``, each averaged over seeds, from
    ``{seed: logged_terms}``; None when no seed logged it."""
    runs = [t for t in terms_per_seed.values() if t.get("loss_dcl")]
    if not runs:
        return None
    first = float(np.mean([t["loss_dcl"][0] for t in runs]))
    end = float(np.mean([np.nanmean(t["loss_dcl"][-last:]) for t in runs]))
    chance = float(np.mean([np.nanmean(t["loss_dcl_chance"][-last:]) for t in runs if t.get("loss_dcl_chance")]
                           or [np.nan]))
    return first, end, chance


def any_absent_class(groups) -> bool:
    """Whether some test case lacks some class (a false-positive rate exists): on the 3D demo every case
    holds every class, and the Dice-when-present / false-positive table would only repeat the Dice."""
    return any(np.isfinite(v["false_positive_rate"]) for _, _, per_seed in groups for r in per_seed.values()
               for classes in r["presence"].values() for v in classes.values())


def summarise(per_seed: dict, baseline: str) -> list:
    """Table rows ``(trainer, {class: (mean, std)}, wins, pooled test)`` from ``{seed: demo_results}``.

    ``wins``: seeds on which the trainer's mean Dice exceeds ``baseline``'s; the test pairs every
    (seed, test case) mean Dice with the baseline's (two-sided Wilcoxon, pooled over seeds)."""
    from nnunet_ssl.evaluation.stats import paired_wilcoxon

    first = next(iter(per_seed.values()))
    classes = list(next(iter(first["dice"].values())))
    rows = []
    for trainer in first["dice"]:
        stats = {c: (float(np.mean([r["dice"][trainer][c] for r in per_seed.values()])),
                     float(np.std([r["dice"][trainer][c] for r in per_seed.values()])))
                 for c in classes}
        wins = sum(r["dice"][trainer]["mean"] > r["dice"][baseline]["mean"] for r in per_seed.values())
        test = None
        if trainer != baseline and all("per_case" in r for r in per_seed.values()):
            pairs = [{(s, c): v for s, r in per_seed.items() for c, v in r["per_case"][t].items()}
                     for t in (trainer, baseline)]
            test = paired_wilcoxon(*pairs)
        rows.append((trainer, stats, wins, test))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trainers", nargs="+", required=True)
    p.add_argument("--dim", type=int, choices=(3, 2), default=3)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--iters", type=int, default=25)
    p.add_argument("--labeled", type=int, nargs="+", default=[4], help="labeled training cases (one run per value)")
    p.add_argument("--unlabeled", type=int, default=24, help="unlabeled cases (when --total is not given)")
    p.add_argument("--total", type=int, default=None, help="training cases in all: unlabeled = total - labeled")
    p.add_argument("--test", type=int, default=16)
    p.add_argument("--seeds", "--seed", type=int, nargs="+", default=[0],
                   help="data seeds: one demo dataset (and one training run per trainer) per seed")
    p.add_argument("--baseline", default="nnUNetTrainer", help="the trainer the others are compared with")
    p.add_argument("--workdir", default=os.path.abspath("nnunet_ssl_bench_demo"))
    p.add_argument("--out", default=os.path.join(HERE, "results", "demo_quality.md"))
    args = p.parse_args()
    if args.total is not None and any(n >= args.total for n in args.labeled):
        p.error("every --labeled count must be smaller than --total")
    if args.baseline not in args.trainers:
        p.error(f"--baseline {args.baseline} must be one of --trainers")

    t0 = time.time()
    reused = 0  # finished demo runs whose results are read, not trained again
    groups = []  # (labeled, unlabeled, {seed: results})
    for n in args.labeled:
        unlabeled = args.total - n if args.total is not None else args.unlabeled
        per_seed = {}
        for seed in args.seeds:
            workdir = workdir_of(args, n, seed)
            done = finished_demo(workdir, args.trainers, args.epochs, args.iters, n, unlabeled, args.test, seed,
                                 args.dim)
            if done is not None:
                print(f"{workdir}: finished with these settings, results reused", flush=True)
                reused += 1
            per_seed[seed] = done if done is not None else run_demo(args, n, unlabeled, seed, workdir)
        groups.append((n, unlabeled, per_seed))

    several = len(groups) > 1
    k = len(args.seeds)
    from nnunet_ssl.commands.demo import KINDS

    counts = "; ".join(f"{n} labeled + {u} {KINDS[args.dim].others}" for n, u, _ in groups)
    seeds = " ".join(map(str, args.seeds))
    lines = ["# Demo dataset: per-class test Dice at the same budget", "",
             f"{DESCRIPTION[args.dim]}. Training cases: {counts}; {args.test} held-out test cases; data seeds "
             f"{seeds} (one dataset and one training run per trainer and seed; training itself is not seeded); "
             f"every trainer {args.epochs} epochs × {args.iters} iterations, fold `all`. "
             + (f"Cells: mean ± std over the {k} seeds; *wins*: seeds on which the trainer's mean Dice beats "
                f"{args.baseline}'s; *p*: two-sided Wilcoxon signed-rank test of per-case mean Dice against "
                f"{args.baseline}, pooled over seeds ({k} × {args.test} pairs)." if k > 1 else
                "One run each: differences of a few points are within run-to-run noise."), ""]
    classes = None
    for n, u, per_seed in groups:
        rows = summarise(per_seed, args.baseline)
        classes = classes or list(rows[0][1])
        if not lines[-1].startswith("|"):
            lines += ["| " + ("labeled | " if several else "") + "trainer | " + " | ".join(classes) +
                      (" | wins | Δ mean | p |" if k > 1 else " |"),
                      "|---" * (len(classes) + 1 + several + (3 if k > 1 else 0)) + "|"]
        share = f"{n} ({100 * n / (n + u):.0f}%) | " if several else ""
        for trainer, stats, wins, test in rows:
            cells = " | ".join((f"{m:.3f} ± {sd:.3f}" if k > 1 else f"{m:.3f}") for m, sd in stats.values())
            extra = ""
            if k > 1:
                delta = stats["mean"][0] - dict((r[0], r[1]) for r in rows)[args.baseline]["mean"][0]
                p_text = "" if test is None else (f"{test.p_value:.3g}" if test.tested else "n/a")
                extra = (f" | {wins}/{k} | {delta:+.3f} | {p_text}" if trainer != args.baseline else " | | | ")
            lines.append(f"| {share}{trainer} | {cells}{extra} |")
    if all("presence" in r for _, _, per_seed in groups for r in per_seed.values()) and any_absent_class(groups):
        lines += ["", "Per class, Dice on the test cases that contain the class / false-positive rate (share of the "
                      "cases without the class in which it is predicted), mean over seeds:", "",
                  "| " + ("labeled | " if several else "") + "trainer | " + " | ".join(classes[:-1]) + " |",
                  "|---" * (len(classes) + several) + "|"]
        for n, u, per_seed in groups:
            share = f"{n} | " if several else ""
            for trainer in next(iter(per_seed.values()))["presence"]:
                cells = []
                for c in classes[:-1]:
                    vals = [r["presence"][trainer][c] for r in per_seed.values()]
                    dice = float(np.nanmean([v["dice_present"] for v in vals]))
                    fpr = float(np.nanmean([v["false_positive_rate"] for v in vals]))
                    cells.append(f"{dice:.3f} / {fpr:.2f}")
                lines.append(f"| {share}{trainer} | " + " | ".join(cells) + " |")
    contrastive = []
    for n, u, per_seed in groups:
        for trainer in args.trainers:
            terms = {seed: logged_terms(workdir_of(args, n, seed), args.dim, trainer) for seed in per_seed}
            row = contrastive_rows(terms)
            if row is not None:
                contrastive.append(f"| {n} | {trainer} | {row[0]:.3f} | {row[1]:.3f} | {row[2]:.3f} |")
    if contrastive:
        lines += ["", "Contrastive term `loss_dcl` (training log), mean over seeds: its first epoch, its last 5 "
                      "epochs, and the chance level `scales · ln(B - 1)` at which the embeddings tell no patch apart "
                      "(below it, the term is learning):", "",
                  "| labeled | trainer | first epoch | last 5 epochs | chance |", "|---|---|---|---|---|", *contrastive]
    flags = (f"--dim {args.dim} " if args.dim != 3 else "") + f"--trainers {' '.join(args.trainers)} " \
        f"--epochs {args.epochs} --iters {args.iters} --labeled {' '.join(map(str, args.labeled))} " + \
        (f"--total {args.total} " if args.total is not None else f"--unlabeled {args.unlabeled} ") + \
        f"--test {args.test} --seeds {seeds}"
    reused_note = f" ({reused} finished demo run(s) reused: their training time is not in it)" if reused else ""
    lines += ["", f"Wall time {time.time() - t0:.0f} s on {os.cpu_count()} CPU cores{reused_note}. Reproduce: "
                  f"`python benchmarks/demo_quality.py {flags}` (one `nnunet-ssl demo` per labeled count and seed; "
                  f"finished demo runs are reused).", ""]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
