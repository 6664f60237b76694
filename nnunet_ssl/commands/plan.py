"""``nnunet-ssl plan``: nnU-Net plans sized for a semi-supervised trainer's GPU memory.

nnU-Net's planner picks patch and batch size so that ONE network with its batch fits a GPU memory
target (8 GB for its default ``ExperimentPlanner``). A trainer's step holds about
``activation_factor`` times those activations (e.g. labeled + unlabeled batch, two networks), so
this runs nnU-Net's own planner (what ``nnUNetv2_plan_experiment -pl PLANNER -gpu_memory_target
G/f -overwrite_plans_name NAME`` runs) with the target divided by the trainer's factor and writes
the plans ``<planner's plans name>_<f>x`` (``nnUNetPlans_4x``; ``nnUNetPlans_24GB_4x`` for a
``--gpu-memory-gb`` other than the planner's default). nnU-Net does not write the target into a plans
file, so the command adds an entry :data:`PLAN_RECORD` (trainer, factor, target) that the trainers'
start-of-training check reads.

Preprocessed data are shared where nothing that preprocessing writes differs: a configuration whose
preprocessing (spacing, normalisation, resampling, ...: :func:`~nnunet_ssl.data.unlabeled.plans_fingerprint`,
which also stamps the unlabeled cases) equals that of the planner's default plans uses their
``data_identifier``, so its labeled and unlabeled cases are not written twice. Otherwise (or when
they are missing) the configuration is preprocessed by nnU-Net's preprocessor, and the unlabeled
cases by ``nnunet-ssl preprocess-unlabeled``'s code; ``--no-pp`` prints those commands instead.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import io
import json
import math
import os
import warnings
from typing import Optional, Tuple

from nnunet_ssl.commands import arguments
from nnunet_ssl.errors import UserError

PLAN_RECORD = "nnunet_ssl_plan"
"""Top-level entry of a plans file written by this command: ``trainer``, ``activation_factor``,
``gpu_memory_gb`` (the GPU the plans are for) and ``gpu_memory_target_in_gb`` (given to nnU-Net's
planner, per network: ``gpu_memory_gb / activation_factor``), ``planner``."""
DEFAULT_PLANNER = "ExperimentPlanner"
FALLBACK_TARGET_GB = 8.0
"""nnU-Net's ``ExperimentPlanner`` default target, assumed for plans whose planner cannot be found."""


def gigabytes(text: str) -> float:
    """argparse type: a finite GPU memory size in GB > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of GB > 0, got {text!r}")
    return value


def add_arguments(parser) -> None:
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name, as for nnU-Net")
    parser.add_argument("-tr", dest="trainer", required=True, help="the trainer the plans are for")
    parser.add_argument("-c", dest="configuration", default="3d_fullres",
                        help="configuration to preprocess and train (default: 3d_fullres); all are planned")
    parser.add_argument("--gpu-memory-gb", type=gigabytes, default=None,
                        help="GPU memory to fill, in GB (default: the planner's target, 8 for ExperimentPlanner)")
    parser.add_argument("-pl", dest="planner", default=DEFAULT_PLANNER,
                        help=f"nnU-Net experiment planner (default: {DEFAULT_PLANNER}; e.g. nnUNetPlannerResEncM)")
    parser.add_argument("-np", dest="num_processes", type=arguments.count, default=2,
                        help="processes for fingerprint extraction and preprocessing (default: 2)")
    parser.add_argument("--no-pp", dest="preprocess", action="store_false",
                        help="plan only; print the preprocessing commands instead of running them")


# ------------------------------------------------------------------ pieces shared with the trainers' check
def find_planner(name: str):
    """nnU-Net's planner class ``name``, looked up as ``nnUNetv2_plan_experiment -pl`` does; None if absent."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    return recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "experiment_planning"), name,
                                       current_module="nnunetv2.experiment_planning")


def planner_defaults(planner_cls) -> Tuple[str, float]:
    """(plans name, GPU memory target in GB) a planner class uses when not told otherwise."""
    params = inspect.signature(planner_cls.__init__).parameters
    return params["plans_name"].default, float(params["gpu_memory_target_in_gb"].default)


def planner_memory_gb(estimate: float, batch_size: int, reference_value: float, reference_batch_size: int,
                      reference_gb: float) -> float:
    """GPU memory of one network by nnU-Net's planner model (``ExperimentPlanner.get_plans_for_configuration``:
    ``reference_value`` feature-map elements at ``reference_batch_size`` fill ``reference_gb``):
    ``reference_gb * batch_size * estimate / (reference_batch_size * reference_value)``, ``estimate`` the
    network's ``compute_conv_feature_map_size(patch)``. A plan the planner sized for memory lands near its
    target (the batch is rounded); one limited by the data (patch = image, batch capped at 5% of the
    dataset or at 2) below it."""
    return float(reference_gb * batch_size * estimate / (reference_batch_size * reference_value))


def nnunet_memory_estimate(plans: dict, configuration: str) -> Optional[float]:
    """:func:`planner_memory_gb` of ``configuration``'s patch and batch, with the reference values and the
    estimate of an instance of the planner that made the plans (built for the dataset: it reads the raw
    ``dataset.json`` and the fingerprint); None when that is not possible (no raw dataset here, a planner
    that cannot be imported)."""
    try:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from nnunet_ssl.pipeline import planning_threads

        cls = find_planner(plans.get("experiment_planner_used", DEFAULT_PLANNER))
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), planning_threads():
            warnings.simplefilter("ignore")
            planner = cls(plans["dataset_name"])
            cm = PlansManager(plans).get_configuration(configuration)
            estimate = planner.static_estimate_VRAM_usage(
                tuple(cm.patch_size), len(planner.dataset_json["channel_names"]), len(planner.dataset_json["labels"]),
                cm.network_arch_class_name, cm.network_arch_init_kwargs, cm.network_arch_init_kwargs_req_import)
        three_d = len(cm.patch_size) == 3
        return planner_memory_gb(estimate, cm.batch_size,
                                 planner.UNet_reference_val_3d if three_d else planner.UNet_reference_val_2d,
                                 planner.UNet_reference_val_corresp_bs_3d if three_d else
                                 planner.UNet_reference_val_corresp_bs_2d, planner.UNet_reference_val_corresp_GB)
    except Exception:
        return None


def plans_memory(plans: dict, configuration: Optional[str] = None) -> Tuple[float, float, str]:
    """(GB of one network under ``plans``, GB the plans are meant to fill, how that is known).

    Plans written by this command carry :data:`PLAN_RECORD`: ``G/f`` per network for a GPU of ``G``.
    nnU-Net's own plans record their planner (``experiment_planner_used``) but not a custom
    ``-gpu_memory_target``; they are taken to be made with that planner's default target (8 GB for
    ExperimentPlanner, 24 for nnUNetPlannerResEncL) for one network. With ``configuration``, nnU-Net's
    estimate of its patch and batch (:func:`nnunet_memory_estimate`) replaces the per-network value when
    it is smaller: plans that the data, not the memory, limited (small images, few cases) need less."""
    record = plans.get(PLAN_RECORD)
    if record:
        per_network, budget = float(record["gpu_memory_target_in_gb"]), float(record["gpu_memory_gb"])
        how = f"made by nnunet-ssl plan for {record['trainer']}"
    else:
        name = plans.get("experiment_planner_used", DEFAULT_PLANNER)
        try:
            cls = find_planner(name)
            per_network = planner_defaults(cls)[1] if cls is not None else FALLBACK_TARGET_GB
        except Exception:  # a custom planner that cannot be imported here: nnU-Net's default
            per_network = FALLBACK_TARGET_GB
        budget, how = per_network, f"nnU-Net's {name} target for one network"
    estimate = nnunet_memory_estimate(plans, configuration) if configuration else None
    if estimate is not None and estimate < per_network:
        return estimate, budget, f"nnU-Net's estimate for this patch and batch; {how}: {per_network:.3g} GB"
    return per_network, budget, how


def plan_command(dataset: str, trainer: str, configuration: str, plans: Optional[dict] = None) -> str:
    """The ``nnunet-ssl plan`` command that sizes plans like ``plans`` (same planner and GPU) for ``trainer``."""
    cmd = f"nnunet-ssl plan -d {dataset} -tr {trainer} -c {configuration}"
    plans = plans or {}
    record = plans.get(PLAN_RECORD) or {}
    planner = record.get("planner") or plans.get("experiment_planner_used", DEFAULT_PLANNER)
    if planner != DEFAULT_PLANNER:
        cmd += f" -pl {planner}"
    if record.get("gpu_memory_gb"):
        cmd += f" --gpu-memory-gb {float(record['gpu_memory_gb']):g}"
    return cmd


def plans_name(base: str, factor: float, gpu_memory_gb: float, default_gb: float) -> str:
    """``<base>_<f>x``, or ``<base>_<G>GB_<f>x`` when G is not the planner's default."""
    gpu = "" if math.isclose(gpu_memory_gb, default_gb) else f"_{gpu_memory_gb:g}GB"
    return f"{base}{gpu}_{factor:g}x"


def share_preprocessed_data(plans: dict, base: dict) -> list:
    """Give every configuration of ``plans`` whose preprocessing equals ``base``'s (same
    :func:`plans_fingerprint` once the data identifiers agree) ``base``'s ``data_identifier``, in place;
    return those configurations."""
    from nnunet_ssl.data.unlabeled import plans_fingerprint

    shared = []
    for c, cfg in plans["configurations"].items():
        base_cfg = base.get("configurations", {}).get(c, {})
        if "data_identifier" not in cfg or "data_identifier" not in base_cfg:
            continue
        trial = copy.deepcopy(plans)
        trial["configurations"][c]["data_identifier"] = base_cfg["data_identifier"]
        if plans_fingerprint(trial, c) == plans_fingerprint(base, c):
            cfg["data_identifier"] = base_cfg["data_identifier"]
            shared.append(c)
    return shared


# ------------------------------------------------------------------ the command
def _trainer_class(name: str):
    from nnunet_ssl.catalog import shipped_trainers

    shipped = shipped_trainers()
    if name in shipped:
        return shipped[name]
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return recursive_find_trainer_class_by_name(name)
    except (RuntimeError, AssertionError):
        raise UserError(f"trainer {name!r} was found neither among nnunet_ssl's trainers nor nnU-Net's; check the "
                        f"name (nnunet-ssl env shows where trainers are searched)") from None


def _missing_cases(data_folder: str, raw_folder: str, dataset_json: dict) -> int:
    """Labeled cases of the raw dataset that are not in nnU-Net's preprocessed ``data_folder``."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    cases = set(get_filenames_of_train_images_and_targets(raw_folder, dataset_json))
    if not os.path.isdir(data_folder):
        return len(cases)
    try:
        present = set(infer_dataset_class(data_folder).get_identifiers(data_folder))
    except Exception:  # an empty or foreign folder
        present = set()
    return len(cases - present)


def plan_for_trainer(dataset: str, trainer: str, configuration: str = "3d_fullres",
                     gpu_memory_gb: Optional[float] = None, planner: str = DEFAULT_PLANNER, num_processes: int = 2,
                     preprocess: bool = True) -> dict:
    """Plan (and preprocess) ``dataset`` for ``trainer``; returns what was done (see the module doc)."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiment_dataset,
                                                                      preprocess_dataset)
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import (convert_dataset_name_to_id,
                                                               maybe_convert_to_dataset_name)

    from nnunet_ssl.data.unlabeled import UNLABELED_FOLDER, preprocess_unlabeled
    from nnunet_ssl.pipeline import planning_threads
    from nnunet_ssl.utils.files import write_json_atomic

    if not (nnUNet_raw.is_set() and nnUNet_preprocessed.is_set()):
        raise UserError("nnUNet_raw and nnUNet_preprocessed must be set, as for nnUNetv2_plan_and_preprocess")
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError):
        raise UserError(f"dataset {dataset!r} was not found in nnUNet_raw or nnUNet_preprocessed (give its id or "
                        f"its DatasetXXX_Name)") from None
    dataset_id = convert_dataset_name_to_id(name)
    raw = os.path.join(nnUNet_raw, name)
    if not os.path.isfile(os.path.join(raw, "dataset.json")):
        raise UserError(f"{raw}/dataset.json not found; nnU-Net's planner reads the raw dataset")
    trainer_cls = _trainer_class(trainer)
    factor = float(getattr(trainer_cls, "activation_factor", 1))
    planner_cls = find_planner(planner)
    if planner_cls is None:
        raise UserError(f"experiment planner {planner!r} not found in nnunetv2.experiment_planning; e.g. "
                        f"{DEFAULT_PLANNER} or nnUNetPlannerResEncM")
    base_name, default_gb = planner_defaults(planner_cls)
    gpu_gb = float(gpu_memory_gb) if gpu_memory_gb is not None else default_gb
    pre = os.path.join(nnUNet_preprocessed, name)
    base_file = os.path.join(pre, base_name + ".json")
    if factor <= 1 and math.isclose(gpu_gb, default_gb):
        return {"plans": base_name, "factor": factor, "planned": False, "dataset": name,
                "dataset_id": dataset_id, "exists": os.path.isfile(base_file)}
    target = plans_name(base_name, factor, gpu_gb, default_gb)
    with planning_threads():
        if not os.path.isfile(os.path.join(pre, "dataset_fingerprint.json")):
            print(f"extracting the dataset fingerprint of {name} (nnU-Net) ...", flush=True)
            extract_fingerprints([dataset_id], num_processes=num_processes, clean=False)
        print(f"planning {name} with {planner} for {gpu_gb:g} GB / {factor:g} = {gpu_gb / factor:.3g} GB per "
              f"network ...", flush=True)
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*non-standard gpu_memory_target_in_gb.*")
                plans, _ = plan_experiment_dataset(dataset_id, planner_cls, gpu_gb / factor,
                                                   overwrite_plans_name=target)
        except Exception:
            print(log.getvalue())
            raise
    if configuration not in plans["configurations"]:
        raise UserError(f"nnU-Net planned no {configuration!r} for {name} (planned: "
                        f"{', '.join(plans['configurations'])}); choose one of those with -c")
    base = None
    if os.path.isfile(base_file):
        with open(base_file) as f:
            base = json.load(f)
    shared = share_preprocessed_data(plans, base) if base else []
    plans[PLAN_RECORD] = {"trainer": trainer, "activation_factor": factor, "gpu_memory_gb": gpu_gb,
                          "gpu_memory_target_in_gb": gpu_gb / factor, "planner": planner}
    write_json_atomic(os.path.join(pre, target + ".json"), plans)

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    cm = PlansManager(plans).get_configuration(configuration)
    with open(os.path.join(raw, "dataset.json")) as f:
        dataset_json = json.load(f)
    missing = _missing_cases(os.path.join(pre, cm.data_identifier), raw, dataset_json)
    has_unlabeled = os.path.isdir(os.path.join(raw, UNLABELED_FOLDER))
    commands = []
    if missing:
        commands.append(f"nnUNetv2_preprocess -d {dataset_id} -plans_name {target} -c {configuration} "
                        f"-np {num_processes}")
    if has_unlabeled:
        commands.append(f"nnunet-ssl preprocess-unlabeled -d {dataset_id} -c {configuration} -p {target} "
                        f"-np {num_processes}")
    if preprocess:
        if missing:
            print(f"preprocessing {missing} labeled case(s) of {configuration} with nnU-Net ...", flush=True)
            preprocess_dataset(dataset_id, target, (configuration,), (num_processes,))
        if has_unlabeled:
            preprocess_unlabeled(dataset_id, configuration, target, num_processes=num_processes)
        commands = []
    base_cfg = PlansManager(base).get_configuration(configuration) if base and configuration in \
        base["configurations"] else None
    return {"plans": target, "factor": factor, "planned": True, "dataset": name, "dataset_id": dataset_id,
            "gpu_gb": gpu_gb, "target_gb": gpu_gb / factor, "base": base_name if base_cfg else None,
            "estimate_gb": nnunet_memory_estimate(plans, configuration),
            "base_estimate_gb": nnunet_memory_estimate(base, configuration) if base_cfg else None,
            "base_patch": base_cfg.patch_size if base_cfg else None,
            "base_batch": base_cfg.batch_size if base_cfg else None,
            "patch": cm.patch_size, "batch": cm.batch_size, "shared": shared, "data_identifier": cm.data_identifier,
            "commands": commands}


def run(args) -> int:
    r = plan_for_trainer(args.dataset, args.trainer, args.configuration, args.gpu_memory_gb, args.planner,
                         args.num_processes, args.preprocess)
    dataset_id = r["dataset_id"]
    train = f"nnUNetv2_train {dataset_id} {args.configuration} FOLD -tr {args.trainer} -p {r['plans']}"
    if not r["planned"]:
        where = "" if r["exists"] else f" (make them first: nnUNetv2_plan_and_preprocess -d {dataset_id})"
        print(f"{args.trainer} holds one network's activations (activation_factor {r['factor']:g}), so nnU-Net's own "
              f"plans {r['plans']} fit it{where}; train with -p {r['plans']}:\n  {train}")
        return 0
    def gb(value):
        return "" if value is None else f", nnU-Net's estimate {value:.2g} GB per network"

    was = f" ({r['base']}: patch {list(r['base_patch'])}, batch {r['base_batch']}{gb(r['base_estimate_gb'])})" \
        if r["base"] else ""
    print(f"wrote {r['plans']}.json for {args.trainer} (activation_factor {r['factor']:g}) on {r['gpu_gb']:g} GB, i.e. "
          f"{r['target_gb']:.3g} GB per network: {args.configuration} patch {list(r['patch'])}, batch {r['batch']}"
          f"{gb(r['estimate_gb'])}{was}")
    if r["shared"]:
        print(f"preprocessed data shared with {r['base']} (same preprocessing): {', '.join(r['shared'])}")
    if r["commands"]:
        print("preprocess before training:\n  " + "\n  ".join(r["commands"]))
    print(f"train with -p {r['plans']}:\n  {train}")
    return 0
