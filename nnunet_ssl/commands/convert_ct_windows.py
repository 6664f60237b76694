"""``nnunet-ssl convert-ct-windows``: a CT dataset with one HU channel -> a dataset with one [0, 1]
channel per CT window (see :mod:`nnunet_ssl.data.ct_windows` for the windows and the normalisation).

Two forms::

    nnunet-ssl convert-ct-windows -d SRC --id NEW [--windows abdomen chest bone | L:W | name=L:W ...]
    nnunet-ssl convert-ct-windows --images IN -o OUT --like NEW     # new scans, before nnUNetv2_predict
"""
from __future__ import annotations

from nnunet_ssl.commands import arguments


def add_arguments(parser) -> None:
    parser.add_argument("-d", dest="dataset", default=None, help="source CT dataset id or name in nnUNet_raw")
    parser.add_argument("--id", dest="target_id", type=int, default=None, help="id of the new (windowed) dataset")
    parser.add_argument("--name", default=None, help="name of the new dataset (default: <source name>Windows)")
    parser.add_argument("--windows", nargs="+", default=None, metavar="WINDOW",
                        help="presets abdomen (L40 W400), chest (L-600 W1500), bone (L400 W1800), or level:width in "
                             "HU (40:400), or name=level:width (lung=-600:1500; needed for a negative level). "
                             "Default: abdomen chest bone")
    parser.add_argument("--images", default=None, help="folder of new single-channel CT scans (<case>_0000<ending>) "
                                                       "to convert for prediction (with -o and --like)")
    parser.add_argument("-o", dest="output", default=None, help="output folder for --images")
    parser.add_argument("--like", default=None, help="converted dataset (id or name) whose windows --images uses")
    parser.add_argument("-np", dest="num_processes", type=arguments.count, default=1,
                        help="worker processes (default: 1)")


def _dataset_name(text):
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_ssl.errors import UserError

    try:
        return maybe_convert_to_dataset_name(text)
    except RuntimeError:
        raise UserError(f"dataset {text!r} not found in nnUNet_raw") from None


def _run_images(args) -> int:
    import json
    import os

    from nnunet_ssl.data.ct_windows import convert_folder
    from nnunet_ssl.data.unlabeled import raw_dataset_folder
    from nnunet_ssl.errors import UserError

    if args.output is None or args.like is None:
        raise UserError("--images needs -o OUTPUT_FOLDER and --like CONVERTED_DATASET (whose windows to apply)")
    if args.dataset is not None or args.target_id is not None or args.windows is not None:
        raise UserError("--images takes its windows from --like; do not combine it with -d, --id or --windows")
    name = _dataset_name(args.like)
    path = os.path.join(raw_dataset_folder(name), "dataset.json")
    if not os.path.isfile(path):
        raise UserError(f"{path} not found; --like must name a dataset made by convert-ct-windows")
    with open(path) as f:
        dataset_json = json.load(f)
    r = convert_folder(args.images, args.output, dataset_json, name, args.num_processes)
    print(f"{len(r.converted)} case(s) converted, {len(r.skipped)} already done -> {args.output}")
    print(f"next: nnUNetv2_predict -i {args.output} -o PREDICTIONS -d {name} -c CONFIG -tr TRAINER")
    return 0


def run(args) -> int:
    from nnunet_ssl.data.ct_windows import DEFAULT_WINDOWS, convert_dataset, parse_windows
    from nnunet_ssl.data.unlabeled import raw_dataset_folder
    from nnunet_ssl.errors import UserError

    if args.images is not None:
        return _run_images(args)
    if args.dataset is None or args.target_id is None:
        raise UserError("give -d SOURCE and --id NEW (a dataset), or --images IN -o OUT --like NEW (new scans)")
    if args.output is not None or args.like is not None:
        raise UserError("-o and --like belong to --images; a dataset conversion writes to nnUNet_raw/--id")
    windows = parse_windows(args.windows or DEFAULT_WINDOWS)
    source = _dataset_name(args.dataset)
    if not 1 <= args.target_id <= 999:
        raise UserError(f"--id must be between 1 and 999, got {args.target_id}")
    base = source.split("_", 1)[1] if "_" in source else source
    target = f"Dataset{args.target_id:03d}_{args.name or base + 'Windows'}"
    try:
        existing = _dataset_name(args.target_id)
    except UserError:
        existing = None
    if existing is not None and existing != target:
        raise UserError(f"dataset id {args.target_id} is already used by {existing}; choose another --id")
    r = convert_dataset(raw_dataset_folder(source), raw_dataset_folder(target), windows, args.num_processes)
    print(f"{target}: {len(r.converted)} case(s) converted, {len(r.skipped)} already done, {len(r.copied)} label/extra "
          f"file(s) copied; channels: " + ", ".join(str(w) for w in windows))
    if r.ignored:
        print(f"not carried over (folders convert-ct-windows does not know): {', '.join(r.ignored)}")
    print(f"next: nnUNetv2_plan_and_preprocess -d {args.target_id}; for new scans: nnunet-ssl convert-ct-windows "
          f"--images IN -o OUT --like {args.target_id}")
    return 0
