"""``nnunet-ssl selftrain``: pseudo-label rounds with a consensus or stability filter, on unchanged nnU-Net.

Example (two teachers, two rounds, consensus filter)::

    nnunet-ssl selftrain -d 501 -c 3d_fullres -o st501 --teachers nnUNetTrainer nnUNetTrainerCPS --rounds 2

Rerun the same command to continue after an interruption; raise ``--rounds`` to add rounds. The steps,
the datasets written and the report: :mod:`nnunet_ssl.selftrain.rounds`.
"""
from __future__ import annotations

import argparse
import math

from nnunet_ssl.commands import arguments


def fraction(text: str) -> float:
    """A number in [0, 1] (score threshold)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


def drop_fraction(text: str) -> float:
    value = fraction(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"must be below 1 (some cases must stay), got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from nnunet_ssl.selftrain.rounds import FILTERS

    parser.add_argument("-d", dest="source", required=True, metavar="DATASET",
                        help="dataset id or name in nnUNet_raw: labeled cases in imagesTr, unlabeled ones in "
                             "imagesUnlabeled; planned and preprocessed")
    parser.add_argument("-c", dest="configuration", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("-o", dest="workdir", required=True, metavar="DIR",
                        help="work folder (settings, predictions, scores, report); rerun with it to continue")
    parser.add_argument("--teachers", nargs="+", default=["nnUNetTrainer"], metavar="TRAINER[:FOLD]",
                        help="teacher models on the source dataset: trainer names, optionally :FOLD (0-4 or all; "
                             "default all), trained unless finished; the student of each round joins the next")
    parser.add_argument("--rounds", type=arguments.count, default=2, help="number of rounds (default 2)")
    parser.add_argument("--student", default="nnUNetTrainer", help="student trainer (default nnUNetTrainer)")
    parser.add_argument("-f", dest="fold", default="all", help="fold of the students (default all)")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("--filter", default="consensus", choices=FILTERS,
                        help="consensus: accept cases whose teachers agree (mean Dice with the aggregated "
                             "pseudo-label >= --threshold); stability: drop the --drop least stable cases between "
                             "rounds (consensus score in round 1); none: accept all (default consensus)")
    parser.add_argument("--threshold", type=fraction, default=0.8, help="consensus threshold (default 0.8)")
    parser.add_argument("--drop", type=drop_fraction, default=0.2,
                        help="fraction of cases the stability filter drops (default 0.2)")
    parser.add_argument("--student-init", choices=["scratch", "previous"], default="scratch",
                        help="previous: start each student from the previous round's student (round 1: the first "
                             "teacher) via -pretrained_weights (default scratch)")
    parser.add_argument("--epochs", type=arguments.count, default=None, help="epochs of every model (default: "
                                                                              "the trainer's)")
    parser.add_argument("--iters", type=arguments.count, default=None, help="iterations per epoch (default: "
                                                                             "the trainer's)")
    parser.add_argument("-device", default=None, choices=["cpu", "cuda", "mps"],
                        help="default: cuda when available, else cpu")
    parser.add_argument("--id-base", type=arguments.whole_number(1, 999), default=0,
                        help="dataset id of round 1's dataset, round r takes id + r - 1 (default: the first free "
                             "block from 700)")
    parser.add_argument("--test-from", default="", metavar="DATASET",
                        help="raw dataset (id, name or folder) whose imagesTs/labelsTs score every round "
                             "(default: the source's, when it has them)")
    parser.add_argument("--disable_tta", action="store_true",
                        help="no mirroring at prediction (nnUNetv2_predict's --disable_tta; 8x faster in 3D)")
    parser.add_argument("-np", dest="num_processes", type=arguments.count, default=1,
                        help="processes for preprocessing and prediction (default 1)")


def run(args) -> int:
    from nnunet_ssl.errors import UserError
    from nnunet_ssl.selftrain.rounds import Settings, parse_teacher, start

    for t in args.teachers:
        parse_teacher(t)
    if args.fold != "all" and not args.fold.isdigit():
        raise UserError(f"-f must be a fold number or 'all', got {args.fold!r}")
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    settings = Settings(source=str(args.source), configuration=args.configuration, plans=args.plans,
                        teachers=list(args.teachers), student=args.student, fold=args.fold, filter=args.filter,
                        threshold=args.threshold, drop=args.drop, epochs=args.epochs, iters=args.iters,
                        device=args.device, id_base=args.id_base, student_init=args.student_init,
                        test_from=str(args.test_from), tta=not args.disable_tta)
    st = start(args.workdir, settings, args.rounds, args.num_processes)
    results = st.run()
    print((st.work / "report.md").read_text())
    print(f"{len(results) - 1} round(s) done; report: {st.work / 'report.md'}")
    return 0
