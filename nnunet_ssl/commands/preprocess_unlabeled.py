"""``nnunet-ssl preprocess-unlabeled``: nnU-Net preprocessing of imagesUnlabeled/ with existing plans."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name, as for nnU-Net")
    parser.add_argument("-c", dest="configurations", nargs="+", default=["3d_fullres"],
                        help="configuration(s) to preprocess for (default: 3d_fullres)")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("-np", dest="num_processes", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--overwrite", action="store_true",
                        help="preprocess every case again (replaced one by one; nothing is deleted first)")


def run(args) -> int:
    from nnunet_ssl.data.unlabeled import preprocess_unlabeled

    for c in args.configurations:
        r = preprocess_unlabeled(args.dataset, c, args.plans, args.num_processes, overwrite=args.overwrite)
        print(f"{c}: {len(r.written)} case(s) written, {len(r.skipped)} already done -> {r.output_folder}")
    return 0
