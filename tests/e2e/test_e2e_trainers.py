"""CPU end-to-end run of every shipped trainer: nnUNetv2_train → nnUNetv2_train --c → nnUNetv2_predict.

Generated from the registry of trainers, so a new trainer is tested without anyone remembering to.
Ablation subclasses (nnUNetTrainer<Method>_<Variant>) run one in-process training step instead
(tests/e2e/test_ablations.py); a method's own trainer runs the full cycle here.

The first trainer (by name) of each kind of run (3D dataset with 3d_fullres, 3D dataset with 2d, 2D RGB
dataset with category labels) runs the three real commands as subprocesses, so the command-line contract
is tested on each kind. Every other trainer runs them in the test process (tests/inprocess.py: nnU-Net's
entry functions with the same arguments, no new interpreter importing torch and nnU-Net per command,
about 12 s each): the first training without nnU-Net's final validation (the resume runs it and only
its result is checked), the resume through ``nnUNetv2_train``'s entry function with ``--c``, the
prediction through ``nnUNetv2_predict``'s with ``-npp 0 -nps 0`` (nnU-Net's sequential predictor, no
worker processes). The checks are the same for both.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import CPU_PLANS, E2E_BUDGET, run_cmd, subprocess_env
from inprocess import nnunet_predict, nnunet_train, nnunet_train_without_validation
from nnunet_ssl.catalog import is_ablation, shipped_trainers
from nnunet_ssl.overrides import ENV_VAR as OVERRIDES

TRAINERS = {n: c for n, c in shipped_trainers().items() if not is_ablation(n)}


def _cases(trainer_cls):
    """(dataset fixture, configuration) pairs a trainer is run on."""
    if getattr(trainer_cls, "requires_category_labels", False):
        return [("tiny_2d_rgb", "2d")]
    return [("tiny_3d", c) for c in getattr(trainer_cls, "e2e_configurations", ("3d_fullres",))]


def _first_of_each_kind(cases):
    """The runs that use the real commands: the first trainer (by name) of each (dataset, configuration)."""
    first = {}
    for name, ds, cfg in cases:
        first.setdefault((ds, cfg), name)
    return {(name, ds, cfg) for (ds, cfg), name in first.items()}


CASES = [(name, ds, cfg) for name, cls in TRAINERS.items() for ds, cfg in _cases(cls)]
CLI_RUNS = _first_of_each_kind(CASES)
PARAMS = [pytest.param(name, ds, cfg, (name, ds, cfg) in CLI_RUNS, id=f"{name}-{cfg}") for name, ds, cfg in CASES]


def test_every_kind_of_run_has_one_command_line_cycle():
    kinds = [(ds, cfg) for _, ds, cfg in CLI_RUNS]
    assert sorted(kinds) == sorted({(ds, cfg) for _, ds, cfg in CASES})  # one each
    assert {("tiny_3d", "3d_fullres"), ("tiny_3d", "2d"), ("tiny_2d_rgb", "2d")} <= set(kinds)
    assert _first_of_each_kind([("B", "d", "2d"), ("A", "d", "2d"), ("A", "d", "3d"), ("C", "e", "2d")]) == {
        ("B", "d", "2d"), ("A", "d", "3d"), ("C", "e", "2d")}


@pytest.mark.e2e
@pytest.mark.parametrize("trainer,dataset_fixture,configuration,subprocesses", PARAMS)
def test_train_resume_predict(trainer, dataset_fixture, configuration, subprocesses, request, tmp_path):
    ds = request.getfixturevalue(dataset_fixture)
    did = str(ds["id"])
    out_base = os.path.join(os.environ["nnUNet_results"], ds["name"], f"{trainer}__{CPU_PLANS}__{configuration}")
    fold_dir = os.path.join(out_base, "fold_0")
    train_args = [did, configuration, "0", "-tr", trainer, "-p", CPU_PLANS, "-device", "cpu"]
    out = tmp_path / "pred"
    predict_args = ["-d", did, "-c", configuration, "-tr", trainer, "-p", CPU_PLANS, "-f", "0",
                    "-i", os.path.join(ds["raw"], "imagesTs"), "-o", str(out), "-device", "cpu",
                    "--disable_progress_bar"]

    def train(budget, resume):
        env = {OVERRIDES: json.dumps(budget), "nnUNet_n_proc_DA": 0}
        if subprocesses:
            run_cmd(["nnUNetv2_train", *train_args, *(["--c"] if resume else [])], subprocess_env(**env))
        elif resume:
            nnunet_train(*train_args, "--c", env=env)
        else:  # the first run's final validation is not checked; the resume runs nnU-Net's validation
            nnunet_train_without_validation(*train_args[:3], trainer, CPU_PLANS, env=env)

    # 1) train one epoch
    train(E2E_BUDGET, resume=False)
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
    train({**E2E_BUDGET, "num_epochs": 2}, resume=True)
    ckpt2 = torch.load(os.path.join(fold_dir, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt2["current_epoch"] == 2
    if state is not None:
        assert ckpt2["nnunet_ssl"]["global_step"] == 2 * E2E_BUDGET["num_iterations_per_epoch"]
    log = ckpt2["logging"]
    assert len(log["train_losses"]) == 2 and all(v == v for v in log["train_losses"])  # no NaN
    assert os.path.isfile(os.path.join(fold_dir, "validation", "summary.json"))

    # 3) nnU-Net's predictor, unchanged: worker processes for the command, sequential in-process
    if subprocesses:
        run_cmd(["nnUNetv2_predict", *predict_args, "-npp", "1", "-nps", "1"], subprocess_env())
    else:
        nnunet_predict(*predict_args, "-npp", "0", "-nps", "0")
    ending = json.load(open(os.path.join(ds["raw"], "dataset.json")))["file_ending"]
    predicted = sorted(f for f in os.listdir(out) if f.endswith(ending))
    assert predicted == sorted(c + ending for c in ds["summary"]["test"])
