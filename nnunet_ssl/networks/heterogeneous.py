"""A second network of another architecture, built from the same nnU-Net plans.

Heterogeneous CPS pairs two architectures so that the two networks make different errors (the seed
FLARE22 pipeline pairs a transformer with a CNN). Here the partner is any architecture nnU-Net's
``get_network_from_plans`` can build; its arguments are translated from the plans' architecture, so both
networks share the plans' stages, features, kernel sizes and strides, hence the same deep-supervision
scales and the same nnU-Net loss.

Default partners are nnU-Net's two U-Nets: ``PlainConvUNet`` ↔ ``ResidualEncoderUNet``, with the blocks
per stage nnU-Net's own planners give each (``ExperimentPlanner``: 2 convolutions per encoder and decoder
stage; ``ResEncUNetPlanner``: 1, 3, 4, 6, 6, … residual blocks per encoder stage and 1 convolution per
decoder stage; a test checks these numbers against the installed planners).
"""
from __future__ import annotations

import inspect
import pydoc
from typing import Tuple

from torch import nn

from nnunet_ssl.errors import UserError

PLAIN_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
RESENC_UNET = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"

PLAIN_ENCODER_CONVS = (2,) * 14
"""nnU-Net's ExperimentPlanner: ``UNet_blocks_per_stage_encoder``."""
PLAIN_DECODER_CONVS = (2,) * 13
"""nnU-Net's ExperimentPlanner: ``UNet_blocks_per_stage_decoder``."""
RESENC_ENCODER_BLOCKS = (1, 3, 4) + (6,) * 10
"""nnU-Net's ResEncUNetPlanner: ``UNet_blocks_per_stage_encoder``."""
RESENC_DECODER_CONVS = (1,) * 12
"""nnU-Net's ResEncUNetPlanner: ``UNet_blocks_per_stage_decoder``."""

PARTNERS = {PLAIN_UNET: RESENC_UNET, RESENC_UNET: PLAIN_UNET}


def _short(class_name: str) -> str:
    return class_name.rsplit(".", 1)[-1]


def partner_architecture(class_name: str, requested: str = "") -> str:
    """The partner's class path: ``requested`` if given, else PlainConvUNet ↔ ResidualEncoderUNet.
    Class names are compared by their last component, so plans written with another module path for
    nnU-Net's U-Nets still find their partner."""
    if requested:
        return requested
    for name, partner in PARTNERS.items():
        if _short(name) == _short(class_name):
            return partner
    raise UserError(f"no default partner architecture for {class_name}; set network_b_architecture to a class path "
                    f"(e.g. {RESENC_UNET}) in nnUNet_ssl_overrides")


def translate_arch_kwargs(source_class: str, kwargs: dict, target_class: str) -> dict:
    """The plans' architecture arguments ``kwargs`` (of ``source_class``) rewritten for ``target_class``.

    Shared arguments (stages, features, convolution, kernel sizes, strides, normalisation, dropout,
    non-linearity, bias) are kept. Between PlainConvUNet and ResidualEncoderUNet, the per-stage depth
    becomes the target planner's (``n_conv_per_stage`` ↔ ``n_blocks_per_stage`` and the decoder's
    ``n_conv_per_stage_decoder``). For any other target, the arguments its ``__init__`` accepts are
    passed; a required argument that the plans do not hold is refused in one sentence.
    """
    n_stages = int(kwargs["n_stages"])
    out = dict(kwargs)
    target = _short(target_class)
    if target == _short(RESENC_UNET):
        out.pop("n_conv_per_stage", None)
        out["n_blocks_per_stage"] = list(RESENC_ENCODER_BLOCKS[:n_stages])
        out["n_conv_per_stage_decoder"] = list(RESENC_DECODER_CONVS[:n_stages - 1])
        return out
    if target == _short(PLAIN_UNET):
        for key in ("n_blocks_per_stage", "block", "bottleneck_channels", "stem_channels"):
            out.pop(key, None)
        out["n_conv_per_stage"] = list(PLAIN_ENCODER_CONVS[:n_stages])
        out["n_conv_per_stage_decoder"] = list(PLAIN_DECODER_CONVS[:n_stages - 1])
        return out
    cls = pydoc.locate(target_class)
    if cls is None:
        raise UserError(f"network_b_architecture {target_class!r} cannot be imported (give a full class path)")
    params = inspect.signature(cls.__init__).parameters
    accepted = {k: v for k, v in out.items() if k in params}
    provided_elsewhere = {"self", "input_channels", "num_classes", "deep_supervision"}
    missing = [name for name, p in params.items()
               if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD
               and name not in accepted and name not in provided_elsewhere]
    if missing:
        raise UserError(f"cannot build {_short(target_class)} from the plans of {_short(source_class)}: "
                        f"the plans have no {', '.join(missing)}")
    return accepted


def build_partner_network(configuration_manager, num_input_channels: int, num_output_channels: int,
                          enable_deep_supervision: bool, requested: str = "") -> Tuple[nn.Module, str]:
    """(network, class path) of the partner architecture, built by nnU-Net's ``get_network_from_plans``
    from the configuration's plans with translated arguments."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    source = configuration_manager.network_arch_class_name
    target = partner_architecture(source, requested)
    kwargs = translate_arch_kwargs(source, configuration_manager.network_arch_init_kwargs, target)
    requires_import = [k for k in configuration_manager.network_arch_init_kwargs_req_import if k in kwargs]
    net = get_network_from_plans(target, kwargs, requires_import, num_input_channels, num_output_channels,
                                 allow_init=True, deep_supervision=enable_deep_supervision)
    return net, target


def partner_builder(requested: str = ""):
    """A ``build_network_architecture`` (nnU-Net's signature) building the partner architecture (``requested``,
    '' = the default partner of the plans' architecture) from the same plans."""

    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        return build_partner_network(configuration_manager, num_input_channels, num_output_channels,
                                     enable_deep_supervision, requested)[0]

    return build_network_architecture
