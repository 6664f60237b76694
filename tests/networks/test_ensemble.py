"""Softmax ensembles as nnU-Net inference networks (dual-network inference of CPS, DHC, DMPF, GuidedNet)."""
from __future__ import annotations

import inspect
import json
import math
import os

import pytest
import torch
from ensemble_checks import assert_mean_softmax_of
from torch import nn

from nnunet_ssl.networks.ensemble import SoftmaxEnsemble, ensemble_builder, mean_softmax_logits


def test_mean_softmax_logits_hand_checked():
    # softmax([0, 0]) = (.5, .5); softmax([ln 3, 0]) = (.75, .25); mean = (.625, .375)
    z1 = torch.tensor([[0.0, 0.0]])
    z2 = torch.tensor([[math.log(3.0), 0.0]])
    out = mean_softmax_logits([z1, z2])
    assert torch.allclose(out, torch.log(torch.tensor([[0.625, 0.375]])), atol=1e-6)
    assert torch.allclose(torch.softmax(out, 1), torch.tensor([[0.625, 0.375]]), atol=1e-6)


def test_mean_softmax_logits_weighted_hand_checked():
    # 0.25·(.5, .5) + 0.75·(.75, .25) = (.6875, .3125); weights (1, 3) are normalised to (.25, .75)
    z1, z2 = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    probs = torch.softmax(mean_softmax_logits([z1, z2], [1.0, 3.0]), 1)
    assert torch.allclose(probs, torch.tensor([[0.6875, 0.3125]]), atol=1e-6)
    assert torch.allclose(torch.softmax(mean_softmax_logits([z1, z2], [0.0, 1.0]), 1), torch.softmax(z2, 1))
    with pytest.raises(ValueError, match="non-negative weights"):
        mean_softmax_logits([z1, z2], [0.0, 0.0])


def test_mean_softmax_logits_no_underflow():
    # member probabilities of ~e^-200 must not become log(0) = -inf
    z = torch.tensor([[200.0, 0.0]])
    out = mean_softmax_logits([z, z])
    assert torch.isfinite(out).all() and torch.allclose(out, torch.log_softmax(z, 1), atol=1e-5)


class _Const(nn.Module):
    def __init__(self, logits, deep):
        super().__init__()
        self.logits, self.deep = logits, deep

    def forward(self, x):
        return [self.logits, self.logits[..., ::2]] if self.deep else self.logits


@pytest.mark.parametrize("deep", [False, True])
def test_ensemble_combines_every_scale(deep):
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    out = SoftmaxEnsemble([_Const(a, deep), _Const(b, deep)])(torch.zeros(1))
    if deep:
        assert len(out) == 2
        assert torch.allclose(out[1], mean_softmax_logits([a[..., ::2], b[..., ::2]]))
        out = out[0]
    assert torch.allclose(torch.softmax(out, 1), (torch.softmax(a, 1) + torch.softmax(b, 1)) / 2, atol=1e-6)


def test_builder_has_nnunet_signature_and_never_nests():
    calls = []

    def member(plans_manager, configuration_manager, num_input_channels, num_output_channels,
               enable_deep_supervision=True):
        calls.append(enable_deep_supervision)
        return nn.Conv1d(num_input_channels, num_output_channels, 1)

    build = ensemble_builder(ensemble_builder(member, 3), 2)  # re-wrapping uses the member builder
    assert "plans_manager" in inspect.signature(build).parameters  # what nnU-Net's predictor checks
    net = build(None, None, 1, 4, enable_deep_supervision=False)
    assert isinstance(net, SoftmaxEnsemble) and len(net.members) == 2 and calls == [False, False]
    assert set(net.state_dict()) == {"members.0.weight", "members.0.bias", "members.1.weight", "members.1.bias"}


def test_ensemble_trainer_class_builds_ensemble_but_trains_single_networks():
    from nnunet_ssl.trainers.cps import nnUNetTrainerCPS, nnUNetTrainerCPS_Ensemble

    assert nnUNetTrainerCPS_Ensemble.build_network_architecture.member_builder is \
        nnUNetTrainerCPS.build_network_architecture
    assert not hasattr(nnUNetTrainerCPS.build_network_architecture, "member_builder")


@pytest.mark.e2e
def test_ensemble_trainer_validates_exports_and_predicts_the_mean(tiny_3d, tmp_path):
    """Train CPS_Ensemble in-process, then nnU-Net's predictor builds the ensemble from the class and the
    checkpoint: its output equals the mean softmax of the trainer's two networks."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from conftest import CPU_PLANS, run_cmd, subprocess_env
    from nnunet_ssl.runner import train

    name = "nnUNetTrainerCPS_Ensemble"
    t = train(tiny_3d["id"], "3d_fullres", 0, name, CPU_PLANS, "cpu", validate=True,
              budget={"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1})
    assert os.path.isfile(os.path.join(t.output_folder, "validation", "summary.json"))
    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False)
    predictor.initialize_from_trained_model_folder(os.path.dirname(t.output_folder), (0,), "checkpoint_final.pth")
    net = predictor.network
    assert isinstance(net, SoftmaxEnsemble)
    net.load_state_dict(predictor.list_of_parameters[0])
    assert_mean_softmax_of(net, t.network, t.extra_networks["network_b"], t.configuration_manager.patch_size)
    out = tmp_path / "pred"
    run_cmd(["nnUNetv2_predict", "-d", str(tiny_3d["id"]), "-c", "3d_fullres", "-tr", name, "-p", CPU_PLANS,
             "-f", "0", "-i", os.path.join(tiny_3d["raw"], "imagesTs"), "-o", str(out), "-device", "cpu",
             "-npp", "1", "-nps", "1", "--disable_progress_bar"], subprocess_env())
    ending = json.load(open(os.path.join(tiny_3d["raw"], "dataset.json")))["file_ending"]
    assert sorted(f for f in os.listdir(out) if f.endswith(ending)) == \
        sorted(c + ending for c in tiny_3d["summary"]["test"])
