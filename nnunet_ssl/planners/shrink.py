"""CPU-sized copies of nnU-Net plans: smaller patch, fewer stages and feature maps, smaller batch.

nnU-Net's default plans are sized for a GPU. Tests, the demo and ``cpu-quick`` benchmarks train on
two CPU cores, so they write a *new* plans file (e.g. ``nnUNetPlans_cpu.json``) next to the
original, with the same ``data_identifier`` so nnU-Net's preprocessed data are reused unchanged.
The original plans file is never modified. Train with ``-p nnUNetPlans_cpu``.
"""
from __future__ import annotations

import json
import os
from copy import deepcopy
from typing import Optional, Sequence

from nnunet_ssl.errors import UserError


def shrink_configuration(plans: dict, configuration: str, patch_size: Optional[Sequence[int]] = None,
                         features_per_stage: Optional[Sequence[int]] = None, batch_size: Optional[int] = None,
                         n_conv_per_stage: Optional[int] = None, plans_name: Optional[str] = None) -> dict:
    """Return a copy of ``plans`` whose ``configuration`` is shrunk.

    ``features_per_stage`` sets the number of stages too (its length); strides and kernel sizes
    keep nnU-Net's planned values for the remaining stages. ``patch_size`` must be divisible by
    the total downsampling of those stages.
    """
    plans = deepcopy(plans)
    if configuration not in plans["configurations"]:
        raise UserError(f"configuration {configuration!r} not in plans; available: "
                        f"{', '.join(plans['configurations'])}")
    cfg = plans["configurations"][configuration]
    if "inherits_from" in cfg:
        parent = plans["configurations"][cfg["inherits_from"]]
        cfg = {**deepcopy(parent), **{k: v for k, v in cfg.items() if k != "inherits_from"}}
        plans["configurations"][configuration] = cfg
    arch = cfg["architecture"]["arch_kwargs"]
    n_old = arch["n_stages"]
    if features_per_stage is not None:
        n_new = len(features_per_stage)
        if not 1 <= n_new <= n_old:
            raise UserError(f"features_per_stage needs 1..{n_old} entries (the planned number of stages), got {n_new}")
        arch["n_stages"] = n_new
        arch["features_per_stage"] = [int(f) for f in features_per_stage]
        for key in ("kernel_sizes", "strides"):
            arch[key] = arch[key][:n_new]
        for key, n in (("n_conv_per_stage", n_new), ("n_conv_per_stage_decoder", n_new - 1)):
            if key in arch:
                arch[key] = arch[key][:n]
        for key in ("n_blocks_per_stage",):  # residual encoder plans
            if key in arch:
                arch[key] = arch[key][:n_new]
    if n_conv_per_stage is not None:
        for key in ("n_conv_per_stage", "n_conv_per_stage_decoder", "n_blocks_per_stage"):
            if key in arch:
                arch[key] = [int(n_conv_per_stage)] * len(arch[key])
    if patch_size is not None:
        if len(patch_size) != len(cfg["patch_size"]):
            raise UserError(f"patch size {list(patch_size)} has {len(patch_size)} axes, configuration "
                            f"{configuration!r} has {len(cfg['patch_size'])}")
        cfg["patch_size"] = [int(p) for p in patch_size]
    total = [1] * len(cfg["patch_size"])
    for s in arch["strides"]:
        total = [t * int(x) for t, x in zip(total, s)]
    bad = [p for p, t in zip(cfg["patch_size"], total) if p % t]
    if bad:
        raise UserError(f"patch size {cfg['patch_size']} is not divisible by the network's downsampling {total}; "
                        f"choose multiples of it")
    if batch_size is not None:
        cfg["batch_size"] = int(batch_size)
    if plans_name is not None:
        plans["plans_name"] = plans_name
    return plans


def write_shrunk_plans(preprocessed_dataset_folder: str, configuration: str, source_plans: str = "nnUNetPlans",
                       target_plans: Optional[str] = None, **kwargs) -> str:
    """Write ``<target_plans>.json`` (default ``<source_plans>_cpu``) and return its identifier."""
    src = os.path.join(preprocessed_dataset_folder, source_plans + ".json")
    if not os.path.isfile(src):
        raise UserError(f"plans file {src} not found; run nnUNetv2_plan_and_preprocess first")
    target_plans = target_plans or source_plans + "_cpu"
    if target_plans == source_plans:
        raise UserError("the shrunk plans need a new identifier; the source plans are never overwritten")
    with open(src) as f:
        plans = json.load(f)
    dst = os.path.join(preprocessed_dataset_folder, target_plans + ".json")
    if os.path.isfile(dst):  # other configurations shrunk earlier are kept
        with open(dst) as f:
            existing = json.load(f)
        existing["configurations"][configuration] = deepcopy(plans["configurations"][configuration])
        plans = existing
    shrunk = shrink_configuration(plans, configuration, plans_name=target_plans, **kwargs)
    tmp = dst + ".tmp"
    with open(tmp, "w") as f:
        json.dump(shrunk, f, indent=1)
    os.replace(tmp, dst)
    return target_plans


# sizes used by tests, the demo and the cpu-quick benchmark preset
CPU_PRESETS = {
    "3d": dict(patch_size=(32, 32, 32), features_per_stage=(8, 16, 32), batch_size=2),
    "2d": dict(patch_size=(32, 32), features_per_stage=(8, 16, 32), batch_size=4),
}
