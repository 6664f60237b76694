"""Self-training rounds with each filter against round 0 (the first teacher), at the same budget per model.

A thin wrapper over ``nnunet-ssl selftrain``: one run per filter, each in its own work folder (its own
round datasets), the same teachers (trained once, reused by every run), then one table of test Dice
per round and filter, written to ``benchmarks/results/`` with the command. Rerun to continue::

    python benchmarks/selftrain_rounds.py -d Dataset601_HippocampusDevL10pcts0 \\
        --test-from Dataset600_HippocampusDevTest40s0 -p nnUNetPlans_cpuquick \\
        --teachers nnUNetTrainer nnUNetTrainerCPS --rounds 2 --epochs 40 --iters 25 \\
        --work selftrain_study --out benchmarks/results/selftrain_hippocampus.md

The datasets are those of an ``nnunet-ssl benchmark`` study (a label-fraction split with its
``imagesUnlabeled`` and the study's held-out test dataset), so round 0 is the study's own run.
"""
from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import write_report  # noqa: E402

FILTERS = {"consensus": ["--filter", "consensus"], "stability": ["--filter", "stability"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-d", dest="source", required=True)
    p.add_argument("--test-from", required=True)
    p.add_argument("-c", dest="configuration", default="3d_fullres")
    p.add_argument("-p", dest="plans", default="nnUNetPlans")
    p.add_argument("--teachers", nargs="+", default=["nnUNetTrainer", "nnUNetTrainerCPS"])
    p.add_argument("--student", default="nnUNetTrainer")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threshold", default="0.8")
    p.add_argument("--drop", default="0.2")
    p.add_argument("--epochs", default=None)
    p.add_argument("--iters", default=None)
    p.add_argument("-device", default="cpu")
    p.add_argument("--filters", nargs="+", default=list(FILTERS), choices=list(FILTERS))
    p.add_argument("--work", required=True, help="folder of the runs (one subfolder per filter)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "selftrain_rounds.md"))
    args = p.parse_args(argv)

    t0 = time.time()
    tables = {}
    for name in args.filters:
        cmd = ["nnunet-ssl", "selftrain", "-d", args.source, "-c", args.configuration, "-p", args.plans,
               "-o", os.path.join(args.work, name), "--teachers", *args.teachers, "--student", args.student,
               "--rounds", str(args.rounds), "--threshold", args.threshold, "--drop", args.drop,
               "--test-from", args.test_from, "-device", args.device, "--disable_tta", *FILTERS[name]]
        cmd += ["--epochs", args.epochs] if args.epochs else []
        cmd += ["--iters", args.iters] if args.iters else []
        print("+", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        with open(os.path.join(args.work, name, "rounds.csv")) as f:
            tables[name] = list(csv.DictReader(f))

    def cell(row, key):
        v = row.get(key)
        return "–" if v in (None, "", "None") else f"{float(v):.3f}"

    lines = [f"# Self-training rounds on {args.source}", "",
             f"Teachers {', '.join(args.teachers)} (fold all), student {args.student}, plans {args.plans}, "
             f"{args.epochs or 'default'} epochs × {args.iters or 'default'} iterations per model, no test-time "
             f"mirroring; test set: imagesTs/labelsTs of {args.test_from}. Consensus: accept a case when the mean "
             f"Dice of each teacher's mask with the averaged pseudo-label is ≥ {args.threshold}; stability: drop "
             f"the {float(args.drop):.0%} of cases whose pseudo-label changed most since the previous round "
             f"(round 1: the lowest consensus scores). One run per filter; single runs, no seeds.", "",
             "| filter | round | model | accepted / unlabeled | mean score | validation Dice | test Dice |",
             "|---|---|---|---|---|---|---|"]
    for name, rows in tables.items():
        for row in rows:
            acc = "–" if row["round"] == "0" else f"{row['accepted']} / {row['unlabeled']}"
            lines.append(f"| {name} | {row['round']} | {row['model']} | {acc} | {cell(row, 'mean_score')} | "
                         f"{cell(row, 'val_dice')} | {cell(row, 'test_dice')} |")
    lines += ["", f"Wall time {time.time() - t0:.0f} s on this machine (finished steps of earlier invocations "
                  f"are reused, not counted). Reproduce: `python benchmarks/selftrain_rounds.py "
                  f"{shlex.join(argv if argv is not None else sys.argv[1:])}`"]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
