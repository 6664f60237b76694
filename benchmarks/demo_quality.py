"""Per-class test Dice of several trainers on the demo dataset, at the same iteration budget.

A thin wrapper over ``nnunet-ssl demo`` (same data, planning, training and prediction code), which
records the table in ``benchmarks/results/`` together with the command that reproduces it. The demo
dataset's tiny structure (class "lesion") is what class-imbalance methods target.

- ``--dim 3`` (default): grey 3D volumes, a few labeled and many unlabeled ones;
- ``--dim 2``: RGB frames where every training frame without a pixel mask has an image-level
  category label (``categoryLabels.json``), for the category-supervised trainers.

Several ``--labeled`` counts (with the same total of training cases, ``--total``) give one demo
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


def run_demo(args, labeled: int, unlabeled: int, workdir: str) -> dict:
    cmd = ["nnunet-ssl", "demo", "--dim", str(args.dim), "--workdir", workdir, "--epochs", str(args.epochs),
           "--iters", str(args.iters), "--labeled", str(labeled), "--unlabeled", str(unlabeled),
           "--test", str(args.test), "--seed", str(args.seed), "--trainers", *args.trainers]
    subprocess.run(cmd, check=True)
    with open(os.path.join(workdir, "demo_results.json")) as f:
        return json.load(f)


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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=os.path.abspath("nnunet_ssl_bench_demo"))
    p.add_argument("--out", default=os.path.join(HERE, "results", "demo_quality.md"))
    args = p.parse_args()
    if args.total is not None and any(n >= args.total for n in args.labeled):
        p.error("every --labeled count must be smaller than --total")

    t0 = time.time()
    rows = []  # (labeled, unlabeled, results)
    for n in args.labeled:
        unlabeled = args.total - n if args.total is not None else args.unlabeled
        workdir = args.workdir if len(args.labeled) == 1 else f"{args.workdir}_{n}labeled"
        rows.append((n, unlabeled, run_demo(args, n, unlabeled, workdir)))

    classes = [c for c in next(iter(rows[0][2]["dice"].values())) if c != "mean"]
    several = len(rows) > 1
    from nnunet_ssl.commands.demo import KINDS

    counts = "; ".join(f"{n} labeled + {u} {KINDS[args.dim].others}" for n, u, _ in rows)
    lines = ["# Demo dataset: per-class test Dice at the same budget", "",
             f"{DESCRIPTION[args.dim]}. Training cases: {counts}; {args.test} held-out test cases, data seed "
             f"{args.seed}; every trainer {args.epochs} epochs × {args.iters} iterations, fold `all`, one training "
             f"run each (no repeat seeds: differences of a few points are within run-to-run noise).", "",
             "| " + ("labeled | " if several else "") + "trainer | " + " | ".join(classes) + " | mean |",
             "|---" * (len(classes) + 2 + several) + "|"]
    for n, u, res in rows:
        share = f"{n} ({100 * n / (n + u):.0f}%) | " if several else ""
        for t, d in res["dice"].items():
            lines.append(f"| {share}{t} | " + " | ".join(f"{d[c]:.3f}" for c in classes) + f" | {d['mean']:.3f} |")
    flags = (f"--dim {args.dim} " if args.dim != 3 else "") + f"--trainers {' '.join(args.trainers)} " \
        f"--epochs {args.epochs} --iters {args.iters} --labeled {' '.join(map(str, args.labeled))} " + \
        (f"--total {args.total} " if args.total is not None else f"--unlabeled {args.unlabeled} ") + \
        f"--test {args.test} --seed {args.seed}"
    lines += ["", f"Wall time {time.time() - t0:.0f} s on {os.cpu_count()} CPU cores. Reproduce: "
                  f"`python benchmarks/demo_quality.py {flags}` (one `nnunet-ssl demo` per labeled count).", ""]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
