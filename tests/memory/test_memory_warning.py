"""The start-of-training check for plans too small a GPU budget: the pure decision (hand-checked numbers),
what plans say about their budget, and the trainer method with a simulated CUDA device, all on the CPU."""
from __future__ import annotations

import types

import pytest
import torch

from nnunet_ssl.commands.plan import PLAN_RECORD, plan_command, planner_memory_gb, plans_memory, plans_name
from nnunet_ssl.trainers.semisupervised import nnUNetTrainerSemiSupervised, plans_fit_gpu

GiB = 2 ** 30


def test_plans_fit_gpu_hand_checked():
    # nnU-Net's plans (8 GB for one network), a 2x trainer: needs 16 GB
    assert not plans_fit_gpu(2, 8, 8, 12)  # 16 > max(8, 12)
    assert plans_fit_gpu(2, 8, 8, 16)  # 16 <= max(8, 16)
    assert plans_fit_gpu(1, 8, 8, 6)  # one network on nnU-Net's plans: 8 <= max(8, 6), whatever the GPU
    # plans made for a 3x trainer on 8 GB: 8/3 GB per network; 3 * 8/3 = 8 (up to rounding) <= 8 on any GPU
    assert plans_fit_gpu(3, 8 / 3, 8, 4)
    # plans made for a 4x trainer (2 GB per network) used by a 6x trainer: 12 GB > max(8, 10)
    assert not plans_fit_gpu(6, 8 / 4, 8, 10)
    assert plans_fit_gpu(6, 8 / 4, 8, 12)


def test_planner_memory_model_hand_checked():
    # nnU-Net's reference: 560e6 feature-map elements at batch 2 fill 8 GB (ExperimentPlanner, 3d)
    assert planner_memory_gb(560e6, 2, 560e6, 2, 8) == 8.0
    assert planner_memory_gb(280e6, 2, 560e6, 2, 8) == 4.0  # half the elements: 8 * 2 * 280e6 / (2 * 560e6)
    assert planner_memory_gb(40e6, 9, 560e6, 2, 8) == pytest.approx(8 * 9 * 40e6 / (2 * 560e6))  # = 2.571


def test_plans_memory_record_and_nnunet_defaults():
    record = {PLAN_RECORD: {"trainer": "nnUNetTrainerCPS", "activation_factor": 4, "gpu_memory_gb": 8,
                            "gpu_memory_target_in_gb": 2, "planner": "ExperimentPlanner"}}
    assert plans_memory(record)[:2] == (2.0, 8.0)
    # nnU-Net's own plans: the planner's default target (not recorded by nnU-Net), for one network
    assert plans_memory({"experiment_planner_used": "ExperimentPlanner"})[:2] == (8.0, 8.0)
    assert plans_memory({"experiment_planner_used": "nnUNetPlannerResEncL"})[:2] == (24.0, 24.0)
    assert plans_memory({"experiment_planner_used": "NoSuchPlanner"})[:2] == (8.0, 8.0)  # fallback


def test_plan_command_and_names():
    assert plan_command("Dataset501_X", "nnUNetTrainerDMPF", "3d_fullres") == \
        "nnunet-ssl plan -d Dataset501_X -tr nnUNetTrainerDMPF -c 3d_fullres"
    assert plan_command("Dataset501_X", "nnUNetTrainerDMPF", "2d", {"experiment_planner_used": "nnUNetPlannerResEncM"}) \
        == "nnunet-ssl plan -d Dataset501_X -tr nnUNetTrainerDMPF -c 2d -pl nnUNetPlannerResEncM"
    ours = {PLAN_RECORD: {"planner": "ExperimentPlanner", "gpu_memory_gb": 24.0}}
    assert plan_command("Dataset501_X", "nnUNetTrainerCPS", "3d_fullres", ours).endswith("--gpu-memory-gb 24")
    assert plans_name("nnUNetPlans", 4, 8.0, 8.0) == "nnUNetPlans_4x"
    assert plans_name("nnUNetPlans", 4, 24.0, 8.0) == "nnUNetPlans_24GB_4x"


class nnUNetTrainerFake:
    """Just what warn_if_plans_exceed_gpu reads from a trainer."""

    def __init__(self, plans, factor, device="cuda", batch_size=2):
        self.activation_factor = factor
        self.device = torch.device(device)
        self.plans_manager = types.SimpleNamespace(plans=plans, plans_name="nnUNetPlans", dataset_name="Dataset501_X")
        self.configuration_manager = types.SimpleNamespace(batch_size=2)
        self.configuration_name = "3d_fullres"
        self.batch_size = batch_size
        self.messages = []

    def print_to_log_file(self, *args):
        self.messages.append(" ".join(map(str, args)))

    def check(self):
        nnUNetTrainerSemiSupervised.warn_if_plans_exceed_gpu(self)
        return self.messages


@pytest.fixture
def gpu(monkeypatch):
    def set_gib(gib):
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda device: types.SimpleNamespace(total_memory=gib * GiB))
    return set_gib


NNUNET_PLANS = {"experiment_planner_used": "ExperimentPlanner"}


def test_warning_on_nnunet_plans(gpu):
    gpu(12)
    messages = nnUNetTrainerFake(NNUNET_PLANS, 4).check()  # 4 x 8 GB = 32 GB > 12 GB
    assert len(messages) == 1 and messages[0].startswith("WARNING: nnUNetTrainerFake")
    assert "nnunet-ssl plan -d Dataset501_X -tr nnUNetTrainerFake -c 3d_fullres" in messages[0]
    gpu(40)
    assert nnUNetTrainerFake(NNUNET_PLANS, 4).check() == []  # 32 GB fit a 40 GB GPU


def test_never_on_cpu_or_for_one_network(gpu):
    gpu(1)
    assert nnUNetTrainerFake(NNUNET_PLANS, 4, device="cpu").check() == []
    assert nnUNetTrainerFake(NNUNET_PLANS, 1).check() == []


def test_never_on_plans_made_for_the_trainer(gpu):
    made_for_4x = {PLAN_RECORD: {"trainer": "nnUNetTrainerFake", "activation_factor": 4, "gpu_memory_gb": 8,
                                 "gpu_memory_target_in_gb": 2, "planner": "ExperimentPlanner"}}
    for gib in (1, 6, 8, 80):  # 4 x 2 GB = the 8 GB the plans were made for, whatever this GPU has
        gpu(gib)
        assert nnUNetTrainerFake(made_for_4x, 4).check() == []
        assert nnUNetTrainerFake(made_for_4x, 2).check() == []  # a lighter trainer on them too
    gpu(10)
    messages = nnUNetTrainerFake(made_for_4x, 6).check()  # 6 x 2 = 12 GB > max(8, 10)
    assert len(messages) == 1 and "--gpu-memory-gb 8" in messages[0]


def test_ddp_share_of_the_batch(gpu):
    gpu(16)
    # one of two samples per GPU: 4 x 8 GB x 1/2 = 16 GB fit 16 GB; the whole batch (32 GB) would not
    assert nnUNetTrainerFake(NNUNET_PLANS, 4, batch_size=1).check() == []
    assert len(nnUNetTrainerFake(NNUNET_PLANS, 4, batch_size=2).check()) == 1
