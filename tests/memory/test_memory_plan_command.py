"""``nnunet-ssl plan`` end to end on a tiny generated dataset: nnU-Net's planner with the target divided by the
trainer's factor, the record the start-of-training check reads, preprocessing when needed (labeled and
unlabeled), an idempotent rerun, ``--no-pp`` commands, data shared with plans of the same preprocessing."""
from __future__ import annotations

import copy
import json
import os

import pytest

from conftest import run_cmd, subprocess_env

DATASET_ID = 984  # in the session's nnU-Net folders (nnU-Net reads them once per process)
NAME = f"Dataset{DATASET_ID}_PlanTiny"


@pytest.mark.e2e
def test_plan_command(capsys):
    from nnunet_ssl.catalog import shipped_trainers
    from nnunet_ssl.cli import main
    from nnunet_ssl.commands.plan import (PLAN_RECORD, nnunet_memory_estimate, plan_for_trainer, plans_memory,
                                          share_preprocessed_data)
    from nnunet_ssl.data.synthetic import SyntheticSpec, generate_dataset
    from nnunet_ssl.trainers.semisupervised import plans_fit_gpu

    folders = {v: os.environ[v] for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    env = subprocess_env()
    generate_dataset(os.path.join(folders["nnUNet_raw"], NAME),
                     SyntheticSpec(num_labeled=4, num_unlabeled=2, num_test=0, shape=(16, 16, 16), seed=4))
    cps = shipped_trainers()["nnUNetTrainerCPS"]
    f = cps.activation_factor
    out = run_cmd(["nnunet-ssl", "plan", "-d", str(DATASET_ID), "-tr", "nnUNetTrainerCPS", "-np", "1"], env).stdout
    name = f"nnUNetPlans_{f:g}x"
    assert f"train with -p {name}" in out and "preprocess before training" not in out

    pre = os.path.join(folders["nnUNet_preprocessed"], NAME)
    with open(os.path.join(pre, name + ".json")) as fh:
        plans = json.load(fh)
    assert plans["plans_name"] == name
    assert plans[PLAN_RECORD] == {"trainer": "nnUNetTrainerCPS", "activation_factor": f, "gpu_memory_gb": 8.0,
                                  "gpu_memory_target_in_gb": 8.0 / f, "planner": "ExperimentPlanner"}
    ident = plans["configurations"]["3d_fullres"]["data_identifier"]
    assert len([x for x in os.listdir(os.path.join(pre, ident)) if x.endswith(".pkl")]) == 4  # labeled cases
    assert len([x for x in os.listdir(os.path.join(pre, ident + "_unlabeled")) if x.endswith(".pkl")]) == 2
    # the trainer's check never fires on plans made for it, however small the GPU
    per_network, plans_gb, _ = plans_memory(plans)
    assert per_network == 8.0 / f and plans_fit_gpu(f, per_network, plans_gb, gpu_gb=1.0)

    # the same in this process from here on (faster than more subprocesses)
    # nnU-Net's own estimate of these plans: at most the 8/f GB they were made for (up to the planner's batch
    # rounding, at most +25% at batch 2); the tiny images limit them far below
    estimate = nnunet_memory_estimate(plans, "3d_fullres")
    assert estimate is not None and 0 < estimate <= 1.25 * 8.0 / f
    assert plans_memory(plans, "3d_fullres")[0] == min(estimate, 8.0 / f)

    # rerun: nothing left to preprocess
    again = plan_for_trainer(str(DATASET_ID), "nnUNetTrainerCPS", num_processes=1)
    assert again["plans"] == name and again["commands"] == []
    assert "preprocessing" not in capsys.readouterr().out

    # --no-pp: another factor, other data identifier (no nnUNetPlans to share with): the commands are printed
    mt = shipped_trainers()["nnUNetTrainerMeanTeacher"].activation_factor
    assert main(["plan", "-d", str(DATASET_ID), "-tr", "nnUNetTrainerMeanTeacher", "--no-pp", "--gpu-memory-gb", "4",
                 "-np", "1"]) == 0
    no_pp = capsys.readouterr().out
    mt_name = f"nnUNetPlans_4GB_{mt:g}x"
    assert f"nnUNetv2_preprocess -d {DATASET_ID} -plans_name {mt_name} -c 3d_fullres" in no_pp
    assert f"nnunet-ssl preprocess-unlabeled -d {DATASET_ID} -c 3d_fullres -p {mt_name}" in no_pp
    assert not os.path.isdir(os.path.join(pre, f"{mt_name}_3d_fullres"))  # nothing preprocessed

    # sharing: same preprocessing (other patch/batch) -> the base's data identifier; other spacing -> own data
    other = copy.deepcopy(plans)
    other["configurations"]["3d_fullres"].update(data_identifier="nnUNetPlans_9x_3d_fullres", batch_size=7)
    assert "3d_fullres" in share_preprocessed_data(other, plans)
    assert other["configurations"]["3d_fullres"]["data_identifier"] == ident
    other["configurations"]["3d_fullres"].update(data_identifier="nnUNetPlans_9x_3d_fullres", spacing=[2.0, 2.0, 2.0])
    assert "3d_fullres" not in share_preprocessed_data(other, plans)

    # a wrong trainer name: one sentence, exit code 2
    assert main(["plan", "-d", str(DATASET_ID), "-tr", "nnUNetTrainerNope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nnunet-ssl plan: error: trainer 'nnUNetTrainerNope'")
