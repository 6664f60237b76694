"""``nnunet-ssl propagate``: reference slices from a 2d nnU-Net model, propagated through each volume.

The reference model (any nnU-Net 2d model folder, ours or plain nnU-Net) segments ``--slices`` uniformly
sampled slices with nnU-Net's predictor; per organ, the ``--per-organ`` slices with the largest predicted
area seed a trained ``nnUNetTrainerMaskPropagation`` model, which carries each mask through the volume in
both directions. The per-organ probabilities are merged (background where no organ exceeds 0.5, else the
most probable organ) and written with nnU-Net's export in the geometry of the input images. See
:func:`nnunet_ssl.propagation.inference.propagate_folder`.
"""
from __future__ import annotations

import argparse

from nnunet_ssl.commands import arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", dest="input", required=True, metavar="IMAGES",
                        help="folder of images named as for nnUNetv2_predict (<case>_0000.nii.gz, ...)")
    parser.add_argument("-o", dest="output", required=True, metavar="OUT", help="folder for the label maps")
    parser.add_argument("--reference", required=True, metavar="MODEL_FOLDER",
                        help="an nnU-Net 2d model folder (<nnUNet_results>/DatasetXXX/<trainer>__<plans>__2d)")
    parser.add_argument("--propagator", required=True, metavar="MODEL_FOLDER",
                        help="the model folder of nnUNetTrainerMaskPropagation on the same dataset and plans")
    parser.add_argument("-f", dest="folds", nargs="+", default=None, metavar="FOLD",
                        help="folds of both models (ensembled; default: every fold both models have)")
    parser.add_argument("-chk", dest="checkpoint", default="checkpoint_final.pth",
                        help="checkpoint file name in each fold (default: checkpoint_final.pth)")
    parser.add_argument("-device", default=None, choices=["cpu", "cuda"],
                        help="default: cuda if PyTorch sees a GPU, else cpu")
    parser.add_argument("--slices", type=arguments.count, default=10, metavar="N",
                        help="slices the reference model segments, sampled uniformly (default: 10)")
    parser.add_argument("--per-organ", type=arguments.count, default=2, metavar="K",
                        help="reference slices per organ: those with the largest predicted area (default: 2)")
    parser.add_argument("--memory-every", type=arguments.count, default=None, metavar="N",
                        help="every N-th propagated slice stays in memory (default: the propagator's training "
                             "setting)")
    parser.add_argument("--max-memory-frames", type=arguments.whole_number(0), default=None, metavar="N",
                        help="at most N propagated slices in memory, 0 = no bound (default: the training setting)")
    parser.add_argument("--disable_tta", action="store_true",
                        help="no mirroring test-time augmentation in the reference stage (as nnUNetv2_predict)")
    parser.add_argument("--overwrite", action="store_true",
                        help="predict every case again (default: keep finished cases of the same settings)")
    parser.add_argument("--disable_progress_bar", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    from nnunet_ssl.propagation.inference import propagate_folder

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    result = propagate_folder(args.input, args.output, args.reference, args.propagator, folds=args.folds,
                              checkpoint_name=args.checkpoint, device=device, num_slices=args.slices,
                              references_per_organ=args.per_organ, memory_every=args.memory_every,
                              max_memory_frames=args.max_memory_frames, use_mirroring=not args.disable_tta,
                              overwrite=args.overwrite, progress=not args.disable_progress_bar)
    skipped = f", {len(result['skipped'])} already done" if result["skipped"] else ""
    print(f"{len(result['written'])} case(s) written{skipped} -> {args.output}")
    return 0
