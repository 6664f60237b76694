"""The ``nnunet-ssl`` console command.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``; this file only lists them. Command modules import torch and nnU-Net inside
``run`` only, so that ``nnunet-ssl --help`` is fast and nnU-Net's path variables are read when the
command runs (after it may have set them).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from nnunet_ssl.errors import UserError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "env": ("nnunet_ssl.commands.env", "print the nnUNet_extTrainer export line and check the set-up"),
    "preprocess-unlabeled": ("nnunet_ssl.commands.preprocess_unlabeled",
                             "preprocess imagesUnlabeled/ with the dataset's nnU-Net plans"),
    "split": ("nnunet_ssl.commands.split",
              "make a semi-supervised dataset from a labeled one (label-fraction split)"),
    "train": ("nnunet_ssl.commands.train",
              "nnUNetv2_train with an explicit budget (epochs, iterations) for any trainer"),
    "shrink-plans": ("nnunet_ssl.commands.shrink_plans",
                     "write a small CPU-sized copy of a plans file (patch, features, batch size)"),
    "plan": ("nnunet_ssl.commands.plan", "nnU-Net plans sized for a trainer's GPU memory (target / activation factor)"),
    "demo": ("nnunet_ssl.commands.demo",
             "generate a small synthetic dataset, train nnUNetTrainer and Mean Teacher on CPU, print Dice"),
    "evaluate": ("nnunet_ssl.commands.evaluate", "per-case Dice, IoU, NSD, HD95, ASD of predictions vs references"),
    "benchmark": ("nnunet_ssl.commands.benchmark", "label-fraction study: split, plan, train, predict, evaluate, report"),
    "selftrain": ("nnunet_ssl.commands.selftrain",
                  "pseudo-label rounds: teachers predict unlabeled cases, a consensus/stability filter, a student"),
    "propagate": ("nnunet_ssl.commands.propagate", "2d reference slices + mask propagation through each volume"),
    "convert-ct-windows": ("nnunet_ssl.commands.convert_ct_windows", "CT dataset -> one [0,1] channel per CT window"),
    "feature-shift": ("nnunet_ssl.commands.feature_shift", "is the unlabeled pool far from the labeled cases?"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-ssl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except UserError as e:
        print(f"nnunet-ssl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nnunet-ssl {args.command}: interrupted; finished work is kept.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
