"""``nnunet-ssl shrink-plans``: a CPU-sized copy of a plans file (the original is never modified)."""
from __future__ import annotations


def _ints(text: str):
    return [int(x) for x in text.replace("x", ",").split(",") if x.strip()]


def add_arguments(parser) -> None:
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name")
    parser.add_argument("-c", dest="configuration", default="3d_fullres")
    parser.add_argument("-p", dest="plans", default="nnUNetPlans", help="source plans identifier")
    parser.add_argument("-o", dest="target", default=None, help="new plans identifier (default: <plans>_cpu)")
    parser.add_argument("--patch", type=_ints, default=None, help="patch size, e.g. 32,32,32 (default: preset)")
    parser.add_argument("--features", type=_ints, default=None, help="features per stage, e.g. 8,16,32")
    parser.add_argument("--batch-size", type=int, default=None)


def run(args) -> int:
    import os

    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_ssl.errors import UserError
    from nnunet_ssl.planners.shrink import CPU_PRESETS, write_shrunk_plans

    if not nnUNet_preprocessed.is_set():
        raise UserError("nnUNet_preprocessed is not set")
    try:
        name = maybe_convert_to_dataset_name(args.dataset)
    except RuntimeError:
        raise UserError(f"dataset {args.dataset!r} not found") from None
    preset = dict(CPU_PRESETS["2d" if args.configuration.startswith("2d") else "3d"])
    for key, value in (("patch_size", args.patch), ("features_per_stage", args.features),
                       ("batch_size", args.batch_size)):
        if value is not None:
            preset[key] = value
    ident = write_shrunk_plans(os.path.join(nnUNet_preprocessed.get(), name), args.configuration, args.plans,
                               args.target, **preset)
    print(f"wrote {ident}.json ({args.configuration}: {preset}); train with -p {ident}")
    return 0
