"""Heterogeneous CPS: network B of another architecture, built from the same plans."""
from __future__ import annotations

import os

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from ensemble_checks import assert_mean_softmax_of

from nnunet_ssl.errors import UserError
from nnunet_ssl.networks.ensemble import SoftmaxEnsemble
from nnunet_ssl.networks.heterogeneous import (PLAIN_UNET, RESENC_UNET, partner_architecture,
                                               translate_arch_kwargs)

PLAIN_KWARGS = {  # a 3-stage PlainConvUNet as nnU-Net's planner writes it into plans.json
    "n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "n_conv_per_stage": [2, 2, 2],
    "n_conv_per_stage_decoder": [2, 2], "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
}


def test_default_partners_and_explicit_choice():
    assert partner_architecture(PLAIN_UNET) == RESENC_UNET
    assert partner_architecture(RESENC_UNET) == PLAIN_UNET
    assert partner_architecture("some.other.module.PlainConvUNet") == RESENC_UNET  # matched by class name
    assert partner_architecture(PLAIN_UNET, "my.Net") == "my.Net"
    with pytest.raises(UserError, match="no default partner architecture for my.SwinUNETR"):
        partner_architecture("my.SwinUNETR")


def test_translation_uses_the_target_planners_depths():
    to_resenc = translate_arch_kwargs(PLAIN_UNET, PLAIN_KWARGS, RESENC_UNET)
    assert "n_conv_per_stage" not in to_resenc
    assert to_resenc["n_blocks_per_stage"] == [1, 3, 4]  # ResEncUNetPlanner's first three stages
    assert to_resenc["n_conv_per_stage_decoder"] == [1, 1]
    assert {k: to_resenc[k] for k in ("features_per_stage", "strides", "kernel_sizes")} == \
        {k: PLAIN_KWARGS[k] for k in ("features_per_stage", "strides", "kernel_sizes")}
    back = translate_arch_kwargs(RESENC_UNET, to_resenc, PLAIN_UNET)
    assert back == PLAIN_KWARGS  # Plain -> ResEnc -> Plain is the planner's PlainConvUNet again


def test_other_classes_get_the_arguments_they_accept_or_a_clear_refusal():
    # ResidualUNet takes the plans' shared arguments but needs n_blocks_per_stage, which PlainConvUNet plans lack
    with pytest.raises(UserError, match="cannot build ResidualUNet from the plans of PlainConvUNet: the plans have no "
                                        "n_blocks_per_stage$"):
        translate_arch_kwargs(PLAIN_UNET, PLAIN_KWARGS, "dynamic_network_architectures.architectures.unet.ResidualUNet")
    resenc_kwargs = translate_arch_kwargs(PLAIN_UNET, PLAIN_KWARGS, RESENC_UNET)
    kwargs = translate_arch_kwargs(RESENC_UNET, resenc_kwargs,
                                   "dynamic_network_architectures.architectures.unet.ResidualUNet")
    assert kwargs == resenc_kwargs  # every argument it accepts, nothing it does not
    with pytest.raises(UserError, match="cannot be imported"):
        translate_arch_kwargs(PLAIN_UNET, PLAIN_KWARGS, "no.such.Network")


def test_planner_depths_match_the_installed_nnunet(tiny_3d):
    """The block counts are nnU-Net's own planners' (set in their __init__, so read from instances)."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import \
        ResEncUNetPlanner

    from nnunet_ssl.networks import heterogeneous as h

    plain, resenc = ExperimentPlanner(tiny_3d["id"]), ResEncUNetPlanner(tiny_3d["id"])
    assert plain.UNet_class is PlainConvUNet and resenc.UNet_class is ResidualEncoderUNet
    n = min(len(plain.UNet_blocks_per_stage_encoder), len(h.PLAIN_ENCODER_CONVS))
    assert tuple(plain.UNet_blocks_per_stage_encoder[:n]) == h.PLAIN_ENCODER_CONVS[:n]
    assert tuple(plain.UNet_blocks_per_stage_decoder[:n - 1]) == h.PLAIN_DECODER_CONVS[:n - 1]
    n = min(len(resenc.UNet_blocks_per_stage_encoder), len(h.RESENC_ENCODER_BLOCKS))
    assert tuple(resenc.UNet_blocks_per_stage_encoder[:n]) == h.RESENC_ENCODER_BLOCKS[:n]
    assert tuple(resenc.UNet_blocks_per_stage_decoder[:n - 1]) == h.RESENC_DECODER_CONVS[:n - 1]


def test_both_networks_have_the_same_deep_supervision_outputs():
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    req = ["conv_op", "norm_op", "dropout_op", "nonlin"]
    a = get_network_from_plans(PLAIN_UNET, PLAIN_KWARGS, req, 1, 3, deep_supervision=True)
    b = get_network_from_plans(RESENC_UNET, translate_arch_kwargs(PLAIN_UNET, PLAIN_KWARGS, RESENC_UNET), req, 1, 3,
                               deep_supervision=True)
    assert isinstance(a, PlainConvUNet) and isinstance(b, ResidualEncoderUNet)
    x = torch.randn(2, 1, 16, 16, 16)
    out_a, out_b = a(x), b(x)
    assert [o.shape for o in out_a] == [o.shape for o in out_b] == \
        [torch.Size([2, 3, 16, 16, 16]), torch.Size([2, 3, 8, 8, 8])]  # n_stages - 1 decoder outputs


def test_ensemble_variant_refuses_a_per_run_network_b(tiny_3d, monkeypatch):
    import json

    from conftest import CPU_PLANS
    from nnunet_ssl.runner import build_trainer

    monkeypatch.setenv("nnUNet_ssl_overrides", json.dumps({"network_b_architecture": PLAIN_UNET}))
    with pytest.raises(SystemExit, match="network_b_architecture cannot be set per run"):  # one line, exit 1
        build_trainer(tiny_3d["id"], "3d_fullres", 0, "nnUNetTrainerCPSHetero_Ensemble", CPU_PLANS, "cpu")


@pytest.mark.e2e
def test_hetero_trains_two_architectures_and_the_ensemble_predicts_their_mean(tiny_3d):
    """CPSHetero_Ensemble in-process: A is the plans' PlainConvUNet, B a ResidualEncoderUNet; nnU-Net's
    predictor rebuilds the pair from the class and the checkpoint, and predicts their mean softmax."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from conftest import CPU_PLANS
    from nnunet_ssl.runner import train

    t = train(tiny_3d["id"], "3d_fullres", 0, "nnUNetTrainerCPSHetero_Ensemble", CPU_PLANS, "cpu", validate=False,
              budget={"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1})
    a, b = t.network, t.extra_networks["network_b"]
    assert isinstance(a, PlainConvUNet) and isinstance(b, ResidualEncoderUNet)
    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False)
    predictor.initialize_from_trained_model_folder(os.path.dirname(t.output_folder), (0,), "checkpoint_final.pth")
    net = predictor.network
    assert isinstance(net, SoftmaxEnsemble)
    assert [type(m) for m in net.members] == [PlainConvUNet, ResidualEncoderUNet]
    net.load_state_dict(predictor.list_of_parameters[0])  # strict: same keys and shapes as trained
    assert_mean_softmax_of(net, t.network, t.extra_networks["network_b"], t.configuration_manager.patch_size)
