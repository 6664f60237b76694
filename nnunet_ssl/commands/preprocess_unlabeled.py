"""``nnunet-ssl preprocess-unlabeled``: nnU-Net preprocessing of imagesUnlabeled/ with existing plans.

Bad images are skipped and listed (one line each) in the command's error; Ctrl-C stops the workers at
once and keeps every finished case (see :mod:`nnunet_ssl.data.unlabeled`)."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name, as for nnU-Net")
    parser.add_argument("-c", dest="configurations", nargs="+", default=["3d_fullres"],
                        help="configuration(s) to preprocess for (default: 3d_fullres)")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("-np", dest="num_processes", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--overwrite", action="store_true",
                        help="preprocess every case again (replaced one by one; nothing is deleted first). Without "
                             "it, cases preprocessed with other plans (re-planned since) are redone anyway")


def run(args) -> int:
    from nnunet_ssl.data.unlabeled import preprocess_unlabeled

    for c in args.configurations:
        r = preprocess_unlabeled(args.dataset, c, args.plans, args.num_processes, overwrite=args.overwrite)
        stale = f" ({len(r.stale)} of them stale: made with other plans)" if r.stale else ""
        print(f"{c}: {len(r.written)} case(s) written{stale}, {len(r.skipped)} already done -> {r.output_folder}")
    return 0
