"""Training-only heads on the encoder of an nnU-Net network, for category-level supervision.

:class:`EncoderTaps` captures the output of every encoder stage with forward hooks, so the
network stays a plain nnU-Net network (hooks add no parameters and nothing to its
``state_dict``; the checkpoint's ``network_weights`` load into nnU-Net unchanged).
:class:`MultiScaleProjectionHeads` (MSPH: conv → BatchNorm → LeakyReLU → global average pooling →
MLP → L2-normalised embedding per stage, as in the seed) feeds the supervised contrastive loss at every
scale;
:class:`ClassificationHead` predicts the multi-label category vector from the deepest features.
The heads live in the trainer (their own ``state_dict``), not in the network.

Why BatchNorm, not the InstanceNorm of nnU-Net's network: the head pools right after its norm, and
InstanceNorm sets every channel of every image to the same mean (its bias) and variance before the
pooling, so the pooled vectors of different images hardly differ (only through the LeakyReLU) and the
contrastive loss cannot fall. BatchNorm normalises over the batch and keeps the differences between
images. Under DDP the trainer converts it to SyncBatchNorm (heads are extra networks, wrapped like
nnU-Net's network). A head's batch needs more than one value per channel (batch · spatial > 1).

Typical use in a trainer::

    taps = EncoderTaps(self.network)        # before the first forward of a torch.compile'd network
    msph = MultiScaleProjectionHeads.for_network(self.network, proj_dim=64)
    cls = ClassificationHead(encoder_stage_channels(self.network)[-1], num_classes - 1)
    seg_out = self.network(x)
    feats = taps.pop()                      # [(B, C_s, *spatial_s) for every stage]
    z = msph(feats)                         # [(B, proj_dim) for every stage]
    logits = cls(feats[-1])                 # (B, num_classes - 1)
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Type

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_ssl.heads.feature_taps import FeatureTap
from nnunet_ssl.utils.modules import unwrap

DEFAULT_STAGES_KEY = "encoder.stages"


def global_average_pool(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial)`` → ``(B, C)``: mean over all spatial positions (2D and 3D alike)."""
    return x.flatten(2).mean(dim=2)


def _stages_key(network: nn.Module) -> str:
    return getattr(network, "key_to_encoder", None) or DEFAULT_STAGES_KEY


def _encoder_parts(network: nn.Module):
    """(plain network, key of the stage container, the stage container, the encoder module)."""
    net = unwrap(network)
    key = _stages_key(net)
    try:
        stages = net.get_submodule(key)
    except AttributeError:
        raise ValueError(f"{type(net).__name__} has no submodule {key!r}; encoder taps need an nnU-Net network "
                         f"built by dynamic_network_architectures (PlainConvUNet, ResidualEncoderUNet, ...)")
    encoder = net.get_submodule(key.rpartition(".")[0]) if "." in key else net
    return net, key, stages, encoder


def encoder_module(network: nn.Module) -> nn.Module:
    """The encoder of an nnU-Net ``network`` (possibly DDP/compile-wrapped): the module holding the
    stages. Its parameters are the encoder's; every other parameter of the network is the decoder's
    (note that a ``UNetDecoder`` keeps a reference to the encoder, so ``decoder.parameters()``
    includes the encoder's)."""
    return _encoder_parts(network)[3]


def encoder_stage_channels(network: nn.Module) -> List[int]:
    """Output channels of every encoder stage (``encoder.output_channels`` of dynamic_network_architectures)."""
    _, key, stages, encoder = _encoder_parts(network)
    channels = getattr(encoder, "output_channels", None)
    if channels is None or len(channels) != len(stages):
        raise ValueError(f"cannot tell the output channels of the {len(stages)} stages of {key!r}: the encoder has "
                         f"no matching 'output_channels'")
    return [int(c) for c in channels]


def encoder_conv_op(network: nn.Module) -> Type[nn.Module]:
    """The convolution class of the encoder (``nn.Conv2d`` or ``nn.Conv3d``)."""
    _, _, stages, encoder = _encoder_parts(network)
    conv_op = getattr(encoder, "conv_op", None)
    if conv_op is None:
        conv_op = next((type(m) for m in stages.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))), None)
    if conv_op is None:
        raise ValueError("the encoder has no conv_op and no Conv2d/Conv3d layer")
    return conv_op


def _matching_batchnorm(conv_op: Type[nn.Module]) -> Type[nn.Module]:
    from dynamic_network_architectures.building_blocks.helper import get_matching_batchnorm

    return get_matching_batchnorm(conv_op)


class ProjectionHead(nn.Module):
    """One scale of MSPH: ``(B, C, *spatial)`` → ``(B, proj_dim)``, rows of unit L2 norm.

    conv (C → C, ``kernel_size``) → norm (BatchNorm of the conv's dimensionality unless ``norm_op``
    is given; see the module docstring for why not InstanceNorm) → LeakyReLU → global average pooling
    (:meth:`pooled`) → Linear(C, hidden) → ReLU → Linear(hidden, proj_dim) → L2 normalisation. The MLP
    follows SimCLR (Chen et al. 2020).
    """

    def __init__(self, in_channels: int, conv_op: Type[nn.Module], proj_dim: int = 64, hidden: int = 256,
                 norm_op: Optional[Type[nn.Module]] = None, kernel_size: int = 3):
        super().__init__()
        norm_op = norm_op or _matching_batchnorm(conv_op)
        self.conv = conv_op(in_channels, in_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = norm_op(in_channels, affine=True)
        self.nonlin = nn.LeakyReLU(0.01, inplace=True)
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, proj_dim))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` → ``(B, C)``: the pooled features the MLP projects."""
        return global_average_pool(self.nonlin(self.norm(self.conv(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(self.pooled(x)), dim=1)


class MultiScaleProjectionHeads(nn.Module):
    """One :class:`ProjectionHead` per encoder stage. ``forward(features)`` takes the stage outputs
    ``[(B, C_s, *spatial_s)]`` (e.g. :meth:`EncoderTaps.pop`) and returns ``[(B, proj_dim)]``."""

    def __init__(self, encoder_channels: Sequence[int], conv_op: Type[nn.Module], proj_dim: int = 64,
                 hidden: int = 256, norm_op: Optional[Type[nn.Module]] = None, kernel_size: int = 3):
        super().__init__()
        if len(encoder_channels) == 0:
            raise ValueError("encoder_channels is empty; pass the output channels of every encoder stage")
        self.heads = nn.ModuleList(ProjectionHead(int(c), conv_op, proj_dim, hidden, norm_op, kernel_size)
                                   for c in encoder_channels)

    @classmethod
    def for_network(cls, network: nn.Module, **kwargs) -> "MultiScaleProjectionHeads":
        """Heads matching the encoder of an nnU-Net ``network`` (possibly DDP/compile-wrapped)."""
        return cls(encoder_stage_channels(network), encoder_conv_op(network), **kwargs)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if len(features) != len(self.heads):
            raise ValueError(f"got {len(features)} feature maps for {len(self.heads)} projection heads; pass the "
                             f"output of every encoder stage")
        return [head(f) for head, f in zip(self.heads, features)]


class ClassificationHead(nn.Module):
    """Multi-label classifier on the deepest encoder features: global average pooling → Linear.
    ``(B, C, *spatial)`` → logits ``(B, num_classes)``, to be trained with BCE-with-logits against
    :func:`nnunet_ssl.data.category_labels.category_vectors` (``num_classes`` = its length)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(global_average_pool(x))


class EncoderTaps:
    """Captures the output of every encoder stage of an nnU-Net network on each forward.

    One :class:`~nnunet_ssl.heads.feature_taps.FeatureTap` per stage, attached by module name
    (``key_to_encoder`` of dynamic_network_architectures, ``"encoder.stages"``, then ``.0``,
    ``.1``, ...) to the unwrapped network, so it fires whether the forward goes through DDP,
    ``torch.compile`` or the plain module. A ``torch.compile``'d network must get its taps before
    its first forward (hooks added later are not seen by the compiled graph). Features keep their
    graph, so losses on them train the encoder.

    Each forward overwrites the captured features; :meth:`pop` returns and releases them. Use as a
    context manager or call :meth:`remove` to detach the hooks.
    """

    def __init__(self, network: nn.Module):
        net, key, stages, _ = _encoder_parts(network)
        self.names = [f"{key}.{name}" for name, _ in stages.named_children()]
        if not self.names:
            raise ValueError(f"{key!r} of {type(net).__name__} has no stages")
        self.taps = [FeatureTap(net, name) for name in self.names]

    @property
    def features(self) -> List[torch.Tensor]:
        """The stage outputs of the last forward, shallowest first: ``[(B, C_s, *spatial_s)]``."""
        try:
            return [tap.features for tap in self.taps]
        except RuntimeError as e:
            raise RuntimeError(f"{e} (a torch.compile'd network needs its EncoderTaps before its first forward)")

    def pop(self) -> List[torch.Tensor]:
        """:attr:`features`, then forget them (frees their graph once the caller drops them)."""
        out = self.features
        self.clear()
        return out

    def clear(self) -> None:
        for tap in self.taps:
            tap.clear()

    def remove(self) -> None:
        """Detach the hooks and forget the features; the network is exactly as before."""
        for tap in self.taps:
            tap.remove()
        self.clear()

    def __enter__(self) -> "EncoderTaps":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
