"""``nnunet-ssl benchmark``: a label-fraction study of several trainers, resumable, with a report.

Example (a CPU study on the Hippocampus development set, ~1.5 h on two cores)::

    nnunet-ssl benchmark -d ../shared/data/Dataset904_HippocampusDev -o hippo_study --preset cpu-3d \\
        --fractions 10% 20% -tr nnUNetTrainer nnUNetTrainerMeanTeacher --seeds 0 --test 20% --id-base 600

For a GPU cluster, ``--write-commands study.sh`` writes the exact commands instead of running them;
rerunning without it afterwards (same arguments) evaluates and reports. See
:mod:`nnunet_ssl.benchmark.study` for the steps, the folder layout and how resuming works.
"""
from __future__ import annotations

import argparse

from nnunet_ssl.commands import arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_ssl.benchmark.presets import PRESETS
    from nnunet_ssl.benchmark.study import DEFAULT_FRACTIONS

    parser.add_argument("-d", dest="source", required=True, metavar="DATASET",
                        help="fully labeled source dataset: id or name in nnUNet_raw, or a raw dataset folder")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="study folder (study.json, runs, report); rerun with the same folder to continue")
    parser.add_argument("--fractions", nargs="+", default=list(DEFAULT_FRACTIONS), metavar="F",
                        help="labeled fractions of the training pool, e.g. 5%% 10%% 20%% 100%% (default) or 0.1")
    parser.add_argument("--seeds", nargs="+", type=arguments.seed, default=[0], metavar="S",
                        help="split seeds (default: 0)")
    parser.add_argument("-tr", "--trainers", nargs="+", default=["nnUNetTrainer", "nnUNetTrainerMeanTeacher"],
                        metavar="TRAINER", help="trainer class names (default: nnUNetTrainer nnUNetTrainerMeanTeacher)")
    parser.add_argument("--test", default="20%", help="held-out test cases (groups): count or %% (default 20%%)")
    parser.add_argument("--test-seed", type=arguments.seed, default=0, help="seed of the test-set choice (default 0)")
    parser.add_argument("-c", dest="configuration", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("--group-regex", default=None,
                        help=r"keep cases of one group (patient) together, e.g. '(patient\d+)'")
    parser.add_argument("--id-base", type=int, default=600,
                        help="dataset id of the test split; the split datasets take the next ids (default 600)")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS),
                        help="; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()))
    parser.add_argument("--epochs", type=arguments.count, default=None, help="override the preset's number of epochs")
    parser.add_argument("--iters", type=arguments.count, default=None,
                        help="override the preset's iterations per epoch")
    parser.add_argument("-device", default=None, choices=["cpu", "cuda", "mps"],
                        help="default: the preset's, else cuda when available")
    parser.add_argument("-np", dest="num_processes", type=arguments.count, default=None,
                        help="processes for preprocessing, prediction and evaluation (default: the preset's)")
    parser.add_argument("--tolerance", type=arguments.millimetres, default=1.0,
                        help="NSD tolerance in mm (default 1.0)")
    parser.add_argument("--baseline", default=None,
                        help="reference trainer of the report (default: nnUNetTrainer if listed, else the first)")
    parser.add_argument("--retry-failed", action="store_true", help="run failed runs again (default: keep them)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write-commands", metavar="FILE", default=None,
                      help="write the shell commands of the study to FILE (e.g. for a cluster) and run nothing")
    mode.add_argument("--dry-run", action="store_true", help="same as --write-commands <output>/commands.sh")
    mode.add_argument("--report-only", action="store_true", help="only rebuild the report from finished runs")


def run(args: argparse.Namespace) -> int:
    import os
    from collections import Counter

    from nnunet_ssl.benchmark.presets import get_preset
    from nnunet_ssl.benchmark.study import fraction_percent, run_study

    preset = get_preset(args.preset).with_budget(num_epochs=args.epochs, num_iterations_per_epoch=args.iters)
    commands = args.write_commands or (os.path.join(args.output, "commands.sh") if args.dry_run else None)
    result = run_study(args.source, args.output, fractions=args.fractions, seeds=args.seeds, trainers=args.trainers,
                       test=args.test, test_seed=args.test_seed, configuration=args.configuration,
                       group_regex=args.group_regex, id_base=args.id_base, preset=preset, device=args.device,
                       num_processes=args.num_processes, tolerance_mm=args.tolerance, baseline=args.baseline,
                       retry_failed=args.retry_failed, write_commands=commands, report_only=args.report_only)
    if result.commands_file is not None:
        print(f"wrote the commands of {len(result.outcomes)} run(s) to {result.commands_file}; nothing was run")
        return 0
    counts = Counter(o.status for o in result.outcomes)
    print(f"{len(result.outcomes)} run(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for o in result.outcomes:
        if o.status in ("failed", "skipped", "missing"):
            print(f"  {o.status}: {fraction_percent(o.run.fraction)} seed {o.run.seed} {o.run.trainer}: {o.reason}")
    print(f"report: {result.report}")
    if result.failed:
        print(f"{len(result.failed)} run(s) failed (kept as failed in the report); --retry-failed runs them again")
        return 1
    return 0
