"""CPU end-to-end run of every shipped trainer: nnUNetv2_train → nnUNetv2_train --c → nnUNetv2_predict.

Generated from the registry of trainers, so a new trainer is tested without anyone remembering to.
Ablation subclasses (nnUNetTrainer<Method>_<Variant>) run one in-process training step instead
(tests/e2e/test_ablations.py); a method's own trainer runs the full cycle here.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import CPU_PLANS, E2E_BUDGET, run_cmd, subprocess_env
from nnunet_ssl.catalog import is_ablation, shipped_trainers

TRAINERS = {n: c for n, c in shipped_trainers().items() if not is_ablation(n)}


def _cases(trainer_cls):
    """(dataset fixture, configuration) pairs a trainer is run on."""
    if getattr(trainer_cls, "requires_category_labels", False):
        return [("tiny_2d_rgb", "2d")]
    return [("tiny_3d", c) for c in getattr(trainer_cls, "e2e_configurations", ("3d_fullres",))]


PARAMS = [pytest.param(name, ds, cfg, id=f"{name}-{cfg}") for name, cls in TRAINERS.items()
          for ds, cfg in _cases(cls)]


@pytest.mark.e2e
@pytest.mark.parametrize("trainer,dataset_fixture,configuration", PARAMS)
def test_train_resume_predict(trainer, dataset_fixture, configuration, request, tmp_path):
    ds = request.getfixturevalue(dataset_fixture)
    did = str(ds["id"])
    out_base = os.path.join(os.environ["nnUNet_results"], ds["name"], f"{trainer}__{CPU_PLANS}__{configuration}")
    fold_dir = os.path.join(out_base, "fold_0")

    # 1) train one epoch
    env = subprocess_env(nnUNet_ssl_overrides=json.dumps(E2E_BUDGET), nnUNet_n_proc_DA=0)
    run_cmd(["nnUNetv2_train", did, configuration, "0", "-tr", trainer, "-p", CPU_PLANS, "-device", "cpu"], env)
    ckpt = torch.load(os.path.join(fold_dir, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 1
    assert ckpt["trainer_name"] == trainer
    state = ckpt.get("nnunet_ssl")
    if state is not None:  # our trainers: extension present, step counter advanced, inference net recorded
        assert state["global_step"] == E2E_BUDGET["num_iterations_per_epoch"]
        inference = state["inference_model"]
        for k, v in ckpt["network_weights"].items():
            name, key = inference, k
            if isinstance(inference, (list, tuple)):  # an ensemble: members.<i>.<key> is network inference[i]
                _, i, key = k.split(".", 2)
                name = inference[int(i)]
            source = state["teachers"].get(name, state["networks"].get(name))
            assert torch.equal(v, source[key]), f"network_weights differ from {name} at {key}"

    # 2) resume with --c for one more epoch: continues at epoch 1, step 2
    env2 = subprocess_env(nnUNet_ssl_overrides=json.dumps({**E2E_BUDGET, "num_epochs": 2}), nnUNet_n_proc_DA=0)
    run_cmd(["nnUNetv2_train", did, configuration, "0", "-tr", trainer, "-p", CPU_PLANS, "-device", "cpu", "--c"],
            env2)
    ckpt2 = torch.load(os.path.join(fold_dir, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt2["current_epoch"] == 2
    if state is not None:
        assert ckpt2["nnunet_ssl"]["global_step"] == 2 * E2E_BUDGET["num_iterations_per_epoch"]
    log = ckpt2["logging"]
    assert len(log["train_losses"]) == 2 and all(v == v for v in log["train_losses"])  # no NaN
    assert os.path.isfile(os.path.join(fold_dir, "validation", "summary.json"))

    # 3) nnU-Net's predictor, unchanged
    out = tmp_path / "pred"
    run_cmd(["nnUNetv2_predict", "-d", did, "-c", configuration, "-tr", trainer, "-p", CPU_PLANS, "-f", "0",
             "-i", os.path.join(ds["raw"], "imagesTs"), "-o", str(out), "-device", "cpu", "-npp", "1", "-nps", "1",
             "--disable_progress_bar"], subprocess_env())
    ending = json.load(open(os.path.join(ds["raw"], "dataset.json")))["file_ending"]
    predicted = sorted(f for f in os.listdir(out) if f.endswith(ending))
    assert predicted == sorted(c + ending for c in ds["summary"]["test"])
