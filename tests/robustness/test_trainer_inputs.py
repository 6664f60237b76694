"""Bad inputs to the trainers, and what the user gets (issue 13 items 2, 3, 5, 7; issue 16).

Every refusal is one line on stderr, ``nnunet_ssl: error: <sentence>``, and a non-zero exit code
(in-process: ``SystemExit`` with that text), raised before anything is trained or written.

- **``UserError`` anywhere in a trainer entry point nnU-Net calls** (``__init__``, ``initialize``,
  ``load_checkpoint``, ``on_train_start``, ``run_training``, ``perform_actual_validation``, also from a
  subclass override that raises before calling ``super()``): ``nnunet_ssl: error: <its message>``.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import time

import pytest
import torch

from conftest import CPU_PLANS, TEST_PRESETS, run_cmd, subprocess_env

REGIONS_ID = 975
REGIONS_NAME = f"Dataset{REGIONS_ID:03d}_SSLRegions"
BUDGET = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}


def _error_lines(text: str):
    return [line for line in text.splitlines() if line.startswith("nnunet_ssl: error:")]


def _plans_and_json(name: str):
    pre = os.path.join(os.environ["nnUNet_preprocessed"], name)
    with open(os.path.join(pre, f"{CPU_PLANS}.json")) as f:
        plans = json.load(f)
    with open(os.path.join(pre, "dataset.json")) as f:
        dataset_json = json.load(f)
    plans["continue_training"] = False  # as nnU-Net's get_trainer_from_args sets it
    return plans, dataset_json


# ---------------------------------------------------------------------------------------------- UserError
def _mean_teacher_subclass(method: str):
    """A Mean Teacher whose ``method`` override raises a UserError before calling super()."""
    from nnunet_ssl.errors import UserError
    from nnunet_ssl.trainers.mean_teacher import nnUNetTrainerMeanTeacher

    def refuse(self, *args, **kwargs):
        raise UserError(f"refused in {method}")

    return type(f"nnUNetTrainerRefuses_{method}", (nnUNetTrainerMeanTeacher,), {method: refuse})


@pytest.mark.parametrize("method", ["initialize", "on_train_start", "run_training", "load_checkpoint",
                                    "perform_actual_validation"])
def test_user_error_in_a_subclass_override_is_one_sentence(tiny_3d, method):
    plans, dataset_json = _plans_and_json(tiny_3d["name"])
    t = _mean_teacher_subclass(method)(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    with pytest.raises(SystemExit, match=f"^nnunet_ssl: error: refused in {method}$"):
        getattr(t, method)(*(("unused.pth",) if method == "load_checkpoint" else ()))


def test_user_error_deep_inside_initialize_and_init(tiny_3d, monkeypatch):
    from nnunet_ssl.errors import UserError
    from nnunet_ssl.runner import build_trainer
    from nnunet_ssl.trainers.mean_teacher import nnUNetTrainerMeanTeacher

    t = build_trainer(tiny_3d["id"], "3d_fullres", 0, "nnUNetTrainerMeanTeacher", CPU_PLANS, "cpu")

    def refuse():
        raise UserError("no trackers today")

    monkeypatch.setattr(t, "build_trackers", refuse)  # called inside the base's initialize
    with pytest.raises(SystemExit, match="^nnunet_ssl: error: no trackers today$"):
        t.initialize()
    # a bad override is refused in __init__ the same way
    monkeypatch.setenv("nnUNet_ssl_overrides", json.dumps({"no_such_setting": 1}))
    plans, dataset_json = _plans_and_json(tiny_3d["name"])
    with pytest.raises(SystemExit, match="^nnunet_ssl: error: .*no_such_setting"):
        nnUNetTrainerMeanTeacher(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))


