"""``nnunet-ssl train``: nnUNetv2_train with an explicit budget, for any trainer (nnU-Net's too)."""
from __future__ import annotations


from nnunet_ssl.commands import arguments


def add_arguments(parser) -> None:
    parser.add_argument("dataset", help="dataset id or name")
    parser.add_argument("configuration", help="e.g. 3d_fullres, 2d")
    parser.add_argument("fold", help="fold (0-4) or 'all'")
    parser.add_argument("-tr", dest="trainer", default="nnUNetTrainer")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans")
    parser.add_argument("-device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--epochs", type=arguments.count, default=None, help="num_epochs (default: the trainer's)")
    parser.add_argument("--iters", type=arguments.count, default=None, help="iterations per epoch (default: the trainer's)")
    parser.add_argument("--val-iters", type=arguments.count, default=None, help="validation iterations per epoch")
    parser.add_argument("--save-every", type=arguments.count, default=None, help="write checkpoint_latest every N epochs")
    parser.add_argument("--c", dest="continue_training", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--no-val", action="store_true", help="skip nnU-Net's final validation")
    parser.add_argument("-pretrained_weights", default=None,
                        help="checkpoint to start from (nnUNetv2_train's -pretrained_weights; not with --c)")


def run(args) -> int:
    from nnunet_ssl.runner import train

    train(args.dataset, args.configuration, args.fold, args.trainer, args.plans, args.device, args.continue_training,
          validate=not args.no_val,
          budget={"num_epochs": args.epochs, "num_iterations_per_epoch": args.iters,
                  "num_val_iterations_per_epoch": args.val_iters, "save_every": args.save_every},
          pretrained_weights=args.pretrained_weights)
    return 0
