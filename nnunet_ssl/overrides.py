"""Per-run overrides of trainer hyper-parameters through the environment.

nnU-Net builds a trainer from its class name only, so a run cannot pass hyper-parameters on the
command line. Every nnunet_ssl trainer reads the environment variable ``nnUNet_ssl_overrides``, a
JSON object mapping attribute names to values, e.g.::

    nnUNet_ssl_overrides='{"num_epochs": 2, "num_iterations_per_epoch": 5, "consistency_weight": 0.3}' \\
        nnUNetv2_train 501 3d_fullres 0 -tr nnUNetTrainerMeanTeacher -device cpu

Allowed keys: the trainer's documented hyper-parameters (printed at start-up) and nnU-Net's budget
attributes in :data:`NNUNET_BUDGET_KEYS`. A value must have the type of the default (ints are
accepted for floats). Unknown keys or wrong types stop the run with a message listing what is
allowed. Named ablation trainers are the way to make a setting permanent; overrides are for
budgets (CPU tests, quick studies) and sweeps, and are recorded in the training log.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable

ENV_VAR = "nnUNet_ssl_overrides"

NNUNET_BUDGET_KEYS = (
    "num_epochs",
    "num_iterations_per_epoch",
    "num_val_iterations_per_epoch",
    "save_every",
    "initial_lr",
    "weight_decay",
    "oversample_foreground_percent",
)


def read_overrides(environ=None) -> Dict[str, Any]:
    environ = os.environ if environ is None else environ
    text = environ.get(ENV_VAR, "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{ENV_VAR} must be a JSON object like '{{\"num_epochs\": 2}}'; got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{ENV_VAR} must be a JSON object, got {type(value).__name__}")
    return value


def _compatible(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(default))


def apply_overrides(obj: Any, allowed: Iterable[str], overrides: Dict[str, Any]) -> Dict[str, Any]:
    """Set ``overrides`` on ``obj`` after checking names and types; return what was applied."""
    allowed = sorted(set(allowed))
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"{ENV_VAR}: unknown setting(s) {unknown} for {type(obj).__name__}; allowed: {allowed}")
    applied = {}
    for key, value in overrides.items():
        default = getattr(obj, key)
        if not _compatible(default, value):
            raise ValueError(f"{ENV_VAR}: {key} must be of type {type(default).__name__} like its default "
                             f"{default!r}; got {value!r}")
        if isinstance(default, float) and isinstance(value, int):
            value = float(value)
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        setattr(obj, key, value)
        applied[key] = value
    return applied
