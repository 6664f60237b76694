"""Bad inputs to the trainers, and what the user gets (issue 13 items 2, 3, 5, 7; issue 16).

Every refusal is one line on stderr, ``nnunet_ssl: error: <sentence>``, and a non-zero exit code
(in-process: ``SystemExit`` with that text), raised before anything is trained or written.

- **Region-based dataset** (dataset.json labels ``{"background": 0, "whole": [1, 2, 3], "core": [2, 3],
  "lesion": 3}``, ``regions_class_order``): every shipped trainer refuses, in ``__init__``, before the
  output folder exists:
  ``nnunet_ssl: error: nnUNetTrainerCPS trains on one class label per voxel and does not support
  region-based datasets, but Dataset975_SSLRegions defines the regions whole, core, lesion in its
  dataset.json; train this dataset with nnUNetTrainer, or convert its labels to plain classes``.
- **A loss term becomes NaN/inf** (here: a NaN in the EMA teacher, so Mean Teacher's consistency term is
  NaN while the supervised term is finite): training stops before the optimizer step, no checkpoint is
  written, the student keeps its weights:
  ``nnunet_ssl: error: nnUNetTrainerMeanTeacher: the training loss is nan at iteration 0 (epoch 0),
  caused by loss_cons = nan; training stopped before the optimizer step, so no weights were changed and
  no checkpoint with non-finite weights was written; lower the learning rate or the weight of that term,
  or check the input images for NaN/inf``.
- **``UserError`` anywhere in a trainer entry point nnU-Net calls** (``__init__``, ``initialize``,
  ``load_checkpoint``, ``on_train_start``, ``run_training``, ``perform_actual_validation``, also from a
  subclass override that raises before calling ``super()``): ``nnunet_ssl: error: <its message>``.
- **``-pretrained_weights``**: not an error, but nnU-Net loads them into ``self.network`` only; every
  extra network and teacher of the same architecture now starts from them too, and the log says
  ``pretrained weights (loaded into network by nnU-Net) also loaded into network_b; teachers copied from
  their students: teacher_a, teacher_b`` (``...; not into <name> (architecture differs)`` for the rest).
- **``nnUNetv2_train`` killed with SIGKILL**: its augmentation workers (labeled, validation and unlabeled
  streams) exit too instead of living on as orphans.
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


# ---------------------------------------------------------------------------------------------- regions
@pytest.fixture(scope="module")
def region_dataset():
    """A BraTS-like region dataset (nested regions of the synthetic classes 1-3), planned by nnU-Net."""
    from nnunet_ssl.data.synthetic import SyntheticSpec, generate_dataset
    from nnunet_ssl.planners.shrink import write_shrunk_plans

    raw = os.path.join(os.environ["nnUNet_raw"], REGIONS_NAME)
    generate_dataset(raw, SyntheticSpec(num_labeled=3, num_unlabeled=2, num_test=0, shape=(16, 16, 16), seed=5))
    path = os.path.join(raw, "dataset.json")
    with open(path) as f:
        dataset_json = json.load(f)
    dataset_json["labels"] = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "lesion": 3}
    dataset_json["regions_class_order"] = [1, 2, 3]
    with open(path, "w") as f:
        json.dump(dataset_json, f)
    run_cmd(["nnUNetv2_plan_and_preprocess", "-d", str(REGIONS_ID), "-c", "3d_fullres", "-np", "1"])
    pre = os.path.join(os.environ["nnUNet_preprocessed"], REGIONS_NAME)
    write_shrunk_plans(pre, "3d_fullres", "nnUNetPlans", CPU_PLANS, **TEST_PRESETS["3d_fullres"])
    return {"raw": raw, "preprocessed": pre}


def _results(name: str, trainer: str) -> str:
    return os.path.join(os.environ["nnUNet_results"], name, f"{trainer}__{CPU_PLANS}__3d_fullres")


def test_every_trainer_refuses_regions_before_writing_anything(region_dataset):
    from nnunet_ssl.catalog import shipped_trainers
    from nnunet_ssl.runner import build_trainer

    trainers = shipped_trainers()
    assert len(trainers) > 10
    for name, cls in trainers.items():
        assert cls.supports_regions is False, name
        with pytest.raises(SystemExit) as e:
            build_trainer(REGIONS_ID, "3d_fullres", 0, name, CPU_PLANS, "cpu")
        message = str(e.value)
        assert message.startswith(f"nnunet_ssl: error: {name} trains on one class label per voxel"), message
        assert "does not support region-based datasets" in message and "whole, core, lesion" in message
        assert "\n" not in message
        assert not os.path.exists(_results(REGIONS_NAME, name)), name  # nothing created, nothing trained


def test_region_refusal_on_the_command_line(region_dataset):
    trainer = "nnUNetTrainerCPS"
    p = run_cmd(["nnUNetv2_train", str(REGIONS_ID), "3d_fullres", "0", "-tr", trainer, "-p", CPU_PLANS,
                 "-device", "cpu"], subprocess_env(nnUNet_ssl_overrides=json.dumps(BUDGET)), check=False)
    assert p.returncode != 0
    lines = _error_lines(p.stderr)
    assert len(lines) == 1 and "does not support region-based datasets" in lines[0], p.stderr[-3000:]
    assert "Traceback" not in p.stderr + p.stdout
    assert not os.path.exists(_results(REGIONS_NAME, trainer))


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


# ---------------------------------------------------------------------------------------------- NaN loss
def test_non_finite_loss_stops_before_the_step_naming_the_term(tiny_3d):
    from nnunet_ssl.runner import build_trainer
    from nnunet_ssl.utils.modules import unwrap

    t = build_trainer(tiny_3d["id"], "3d_fullres", 0, "nnUNetTrainerMeanTeacher", CPU_PLANS, "cpu", budget=BUDGET)
    for f in glob.glob(os.path.join(t.output_folder, "checkpoint_*.pth")):
        os.remove(f)
    t.initialize()
    original = t.compute_losses
    before = {}

    def poisoned(data, target, unlabeled):
        if not before:  # a NaN teacher (e.g. a corrupt state): only the consistency term becomes NaN
            before.update({k: v.clone() for k, v in unwrap(t.network).state_dict().items()})
            with torch.no_grad():
                next(unwrap(t.teachers["teacher"].module).parameters()).fill_(float("nan"))
        return original(data, target, unlabeled)

    t.compute_losses = poisoned
    with pytest.raises(SystemExit) as e:
        t.run_training()
    message = str(e.value)
    assert message.startswith("nnunet_ssl: error: nnUNetTrainerMeanTeacher: the training loss is nan at "
                              "iteration 0 (epoch 0), caused by loss_cons = nan;"), message
    assert "loss_sup" not in message and "\n" not in message
    after = unwrap(t.network).state_dict()
    assert before and all(torch.equal(before[k], after[k]) for k in before)  # no optimizer step
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert glob.glob(os.path.join(t.output_folder, "checkpoint_*.pth")) == []


def test_non_finite_total_without_a_culprit_says_so():
    from nnunet_ssl.trainers.semisupervised import non_finite_loss_message

    msg = non_finite_loss_message("T", float("inf"), {"loss_sup": 1.0, "w": torch.tensor(0.5)}, 3, 1)
    assert msg.startswith("T: the training loss is inf at iteration 3 (epoch 1), caused by the total loss "
                          "(every logged term is finite);")
    msg = non_finite_loss_message("T", float("nan"), {"a": [1.0, float("nan")], "b": torch.tensor(float("inf"))},
                                  0, 0)
    assert "caused by a = [1.0, nan], b = inf;" in msg


# ---------------------------------------------------------------------------------------------- pretrained
def test_pretrained_weights_reach_every_network_and_teacher(tiny_3d, tmp_path):
    from nnunetv2.run.run_training import maybe_load_checkpoint

    from nnunet_ssl.runner import build_trainer
    from nnunet_ssl.utils.modules import unwrap

    t = build_trainer(tiny_3d["id"], "3d_fullres", 0, "nnUNetTrainerDMPF", CPU_PLANS, "cpu", budget=BUDGET)
    t.initialize()
    donor = t.build_extra_network("donor")  # a third random initialisation: the "pretrained" model
    torch.manual_seed(123)
    with torch.no_grad():
        for p in donor.parameters():
            p.add_(torch.randn_like(p))
    weights = donor.state_dict()
    ckpt = str(tmp_path / "pretrained.pth")
    torch.save({"network_weights": weights}, ckpt)
    b_seg_before = {k: v.clone() for k, v in unwrap(t.extra_networks["network_b"]).state_dict().items()
                    if ".seg_layers." in k}

    maybe_load_checkpoint(t, False, False, ckpt)  # what nnUNetv2_train -pretrained_weights does
    t.on_train_start()
    models = {n: unwrap(m.module if hasattr(m, "copy_from") else m) for n, m in t.all_models().items()}
    assert set(models) == {"network", "network_b", "teacher_a", "teacher_b"}
    loaded = [k for k in weights if ".seg_layers." not in k]  # nnU-Net never transfers the seg layers
    for name, model in models.items():
        state = model.state_dict()
        assert all(torch.equal(state[k], weights[k]) for k in loaded), name
    # B keeps its own segmentation layers, as if load_pretrained_weights had been applied to it
    b_state = models["network_b"].state_dict()
    assert all(torch.equal(b_state[k], v) for k, v in b_seg_before.items())
    with open(t.log_file) as f:
        log = f.read()
    assert ("pretrained weights (loaded into network by nnU-Net) also loaded into network_b; teachers copied "
            "from their students: teacher_a, teacher_b") in log




def test_fresh_start_without_pretrained_weights_keeps_distinct_students(tiny_3d):
    from nnunet_ssl.runner import build_trainer
    from nnunet_ssl.utils.modules import unwrap

    t = build_trainer(tiny_3d["id"], "3d_fullres", 0, "nnUNetTrainerCPS", CPU_PLANS, "cpu", budget=BUDGET)
    t.on_train_start()
    a, b = unwrap(t.network).state_dict(), unwrap(t.extra_networks["network_b"]).state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    with open(t.log_file) as f:
        assert "pretrained weights" not in f.read()


def test_share_loaded_weights_skips_other_architectures():
    from torch import nn

    from nnunet_ssl.trainers.semisupervised import share_loaded_weights

    torch.manual_seed(0)
    source, same, other = nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(4, 2)
    loaded, skipped = share_loaded_weights(source.state_dict(), ["weight"], {"same": same, "other": other})
    assert loaded == ["same"] and skipped == ["other"]
    assert torch.equal(same.weight, source.weight) and not torch.equal(same.bias, source.bias)


# ---------------------------------------------------------------------------------------------- SIGKILL
def _children(pid: int):
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.split("/")[2]))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table from /proc")
def test_workers_exit_when_nnunetv2_train_is_killed(tiny_3d):
    env = subprocess_env(nnUNet_n_proc_DA=2, nnUNet_ssl_overrides=json.dumps(
        {"num_epochs": 1000, "num_iterations_per_epoch": 1000, "num_val_iterations_per_epoch": 1}))
    p = subprocess.Popen(["nnUNetv2_train", str(tiny_3d["id"]), "3d_fullres", "0", "-tr", "nnUNetTrainerMeanTeacher",
                          "-p", CPU_PLANS, "-device", "cpu"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # 2 labeled + 1 validation + 2 unlabeled augmentation workers
        deadline, workers = time.time() + 240, []
        while time.time() < deadline and len(workers) < 5 and p.poll() is None:
            time.sleep(1)
            workers = _children(p.pid)
        assert len(workers) >= 5, f"workers {workers}, exit code {p.poll()}"
        p.send_signal(signal.SIGKILL)  # the main process only
        p.wait()
        deadline = time.time() + 15
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.5)
        assert not [w for w in workers if _alive(w)]
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
