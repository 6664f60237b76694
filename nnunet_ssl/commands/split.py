"""``nnunet-ssl split``: a semi-supervised raw dataset from a fully labeled one.

``--labeled 100%`` (or every case) is allowed: it makes a fully labeled copy (minus ``--test``), the
supervised reference the benchmark uses; its next step then has no unlabeled preprocessing.
"""
from __future__ import annotations

from nnunet_ssl.commands import arguments


def add_arguments(parser) -> None:
    parser.add_argument("-d", dest="dataset", required=True, help="source dataset id or name in nnUNet_raw")
    parser.add_argument("--labeled", required=True, help="labeled cases: a count (7) or a fraction (10%%)")
    parser.add_argument("--id", dest="target_id", type=int, required=True, help="id of the new dataset")
    parser.add_argument("--name", default=None,
                        help="name of the new dataset (default: <source name>L<labeled>s<seed>)")
    parser.add_argument("--seed", type=arguments.seed, default=0, help="seed of the random choice (default 0)")
    parser.add_argument("--test", default="0", help="held-out test cases (imagesTs/labelsTs): count or %% (default 0)")
    parser.add_argument("--group-regex", default=None,
                        help=r"keep cases of one group together, group = first regex group, e.g. '(patient\d+)'")


def run(args) -> int:
    import os
    import re

    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_ssl.data.split import make_split
    from nnunet_ssl.data.unlabeled import raw_dataset_folder
    from nnunet_ssl.errors import UserError

    try:
        source = maybe_convert_to_dataset_name(args.dataset)
    except RuntimeError:
        raise UserError(f"dataset {args.dataset!r} not found in nnUNet_raw") from None
    if not 1 <= args.target_id <= 999:
        raise UserError(f"--id must be between 1 and 999, got {args.target_id}")
    try:
        existing = maybe_convert_to_dataset_name(args.target_id)
    except RuntimeError:
        existing = None
    base = source.split("_", 1)[1] if "_" in source else source
    tag = re.sub(r"[^A-Za-z0-9]", "", str(args.labeled).replace("%", "pct"))
    name = args.name or f"{base}L{tag}s{args.seed}"
    target = f"Dataset{args.target_id:03d}_{name}"
    if existing is not None and existing != target:
        raise UserError(f"dataset id {args.target_id} is already used by {existing}; choose another --id")
    record = make_split(raw_dataset_folder(source), raw_dataset_folder(target), args.labeled, args.seed, args.test,
                        args.group_regex)
    print(f"{target}: {len(record['labeled'])} labeled, {len(record['unlabeled'])} unlabeled, "
          f"{len(record['test'])} test cases -> {os.path.join(raw_dataset_folder(target))}")
    if record["unlabeled"]:
        print(f"next: nnUNetv2_plan_and_preprocess -d {args.target_id} && "
              f"nnunet-ssl preprocess-unlabeled -d {args.target_id} -c 3d_fullres")
    else:
        print(f"next: nnUNetv2_plan_and_preprocess -d {args.target_id} (every case is labeled: for supervised "
              f"trainers such as nnUNetTrainer; semi-supervised trainers need unlabeled cases, i.e. a smaller "
              f"--labeled)")
    return 0
