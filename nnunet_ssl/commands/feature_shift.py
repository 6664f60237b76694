"""``nnunet-ssl feature-shift``: does the unlabeled pool lie far from the labeled cases in a trained
model's encoder features? Writes ``feature_shift.json``, a PCA scatter and per-feature density plots
to ``-o`` and prints one sentence (see :mod:`nnunet_ssl.evaluation.feature_shift`)."""
from __future__ import annotations

import argparse

from nnunet_ssl.commands import arguments


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}")
    return value


def add_arguments(parser) -> None:
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name, as for nnU-Net")
    parser.add_argument("-c", dest="configuration", required=True, help="configuration the model was trained with")
    parser.add_argument("-tr", dest="trainer", required=True, help="trainer class of the model")
    parser.add_argument("-f", dest="fold", default="0", help="fold of the model (default 0; 'all' for fold_all)")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth",
                        help="checkpoint file name (default: checkpoint_final.pth)")
    parser.add_argument("-o", dest="output", required=True, help="output folder for the JSON and the figures")
    parser.add_argument("--max-cases", type=arguments.count, default=None,
                        help="at most this many cases per pool (a seeded random subset; default: all)")
    parser.add_argument("--images", default=None,
                        help="compare this folder of raw images (named like imagesTr) instead of the preprocessed "
                             "unlabeled pool, e.g. scans from a new site")
    parser.add_argument("--permutations", type=arguments.count, default=1000,
                        help="permutations of the MMD test (default 1000; all splits when there are fewer)")
    parser.add_argument("--alpha", type=_probability, default=0.05, help="significance level (default 0.05)")
    parser.add_argument("--top-k", type=arguments.count, default=6,
                        help="most shifted feature dimensions to draw (default 6)")
    parser.add_argument("--seed", type=arguments.seed, default=0, help="seed of subsets and permutations (default 0)")
    parser.add_argument("-device", default=None, choices=("cpu", "cuda", "mps"),
                        help="device (default: cuda if available, else cpu)")


def run(args) -> int:
    import os

    import torch

    from nnunet_ssl.evaluation.feature_shift import feature_shift

    fold = args.fold
    if fold != "all":
        try:
            fold = int(fold)
        except ValueError:
            from nnunet_ssl.errors import UserError

            raise UserError(f"-f must be a fold number or 'all', got {args.fold!r}") from None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    result = feature_shift(args.dataset, args.configuration, args.trainer, args.plans, fold, args.checkpoint,
                           args.output, args.max_cases, args.images, device, args.top_k, args.permutations,
                           args.alpha, args.seed)
    print(result["sentence"])
    print(f"details: {os.path.join(args.output, 'feature_shift.json')}, feature_shift_pca.png, feature_shift_kde.png")
    return 0
