"""Per-class test Dice of several trainers on the demo dataset, at the same iteration budget.

A thin wrapper over ``nnunet-ssl demo`` (same data, planning, training and prediction code), which
records the table in ``benchmarks/results/demo_quality.md`` together with the command that
reproduces it. The demo dataset's tiny structure (class "lesion") is what class-imbalance methods
target.

    python benchmarks/demo_quality.py --trainers nnUNetTrainer nnUNetTrainerMeanTeacher nnUNetTrainerCPS \\
        nnUNetTrainerDHC nnUNetTrainerDMPF --epochs 40 --iters 25
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trainers", nargs="+", required=True)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--iters", type=int, default=25)
    p.add_argument("--labeled", type=int, default=4)
    p.add_argument("--unlabeled", type=int, default=24)
    p.add_argument("--test", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=os.path.abspath("nnunet_ssl_bench_demo"))
    p.add_argument("--out", default=os.path.join(HERE, "results", "demo_quality.md"))
    args = p.parse_args()
    cmd = ["nnunet-ssl", "demo", "--workdir", args.workdir, "--epochs", str(args.epochs), "--iters", str(args.iters),
           "--labeled", str(args.labeled), "--unlabeled", str(args.unlabeled), "--test", str(args.test),
           "--seed", str(args.seed), "--trainers", *args.trainers]
    t0 = time.time()
    subprocess.run(cmd, check=True)
    with open(os.path.join(args.workdir, "demo_results.json")) as f:
        res = json.load(f)
    classes = [c for c in next(iter(res["dice"].values())) if c != "mean"]
    lines = ["# Demo dataset: per-class test Dice at the same budget", "",
             f"Synthetic 3D dataset (32³ volumes; organ = large, vessel = medium, lesion = tiny), "
             f"{args.labeled} labeled + {args.unlabeled} unlabeled training volumes, {args.test} held-out test "
             f"volumes, data seed {args.seed}; CPU plans (patch 32³, features 8/16/32, batch 2), every trainer "
             f"{args.epochs} epochs × {args.iters} iterations, fold `all`, one training run each "
             f"(no repeat seeds: differences of a few points are within run-to-run noise).", "",
             "| trainer | " + " | ".join(classes) + " | mean |", "|---" * (len(classes) + 2) + "|"]
    for t, d in res["dice"].items():
        lines.append(f"| {t} | " + " | ".join(f"{d[c]:.3f}" for c in classes) + f" | {d['mean']:.3f} |")
    rel = " ".join(a if " " not in a else repr(a) for a in cmd)
    lines += ["", f"Wall time {time.time() - t0:.0f} s on {os.cpu_count()} CPU cores. Reproduce: "
                  f"`python benchmarks/demo_quality.py --trainers {' '.join(args.trainers)} --epochs {args.epochs} "
                  f"--iters {args.iters} --test {args.test}` (runs `{rel.split(' --trainers')[0]} ...`).", ""]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
