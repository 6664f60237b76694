import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from nnunet_ssl.heads.feature_taps import FeatureTap, feature_channels, last_decoder_stage_name

FEATURES = (4, 8, 16)


def _net(kind: str, dim: int, deep_supervision: bool, num_classes: int = 3) -> nn.Module:
    conv = nn.Conv2d if dim == 2 else nn.Conv3d
    norm = nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d
    common = dict(
        input_channels=1, n_stages=3, features_per_stage=FEATURES, conv_op=conv, kernel_sizes=3,
        strides=(1, 2, 2), num_classes=num_classes, n_conv_per_stage_decoder=1, conv_bias=True,
        norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision,
    )
    torch.manual_seed(0)
    if kind == "plain":
        return PlainConvUNet(n_conv_per_stage=1, **common)
    return ResidualEncoderUNet(n_blocks_per_stage=1, **common)


class _CompiledLike(nn.Module):
    """Mimics torch.compile's OptimizedModule: the real network sits in ``_orig_mod``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self._orig_mod = net

    def forward(self, x):
        return self._orig_mod(x)


@pytest.mark.parametrize("kind", ["plain", "residual"])
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("deep_supervision", [True, False])
def test_tap_captures_last_decoder_stage_at_full_resolution(kind, dim, deep_supervision):
    net = _net(kind, dim, deep_supervision)
    # 3 stages -> 2 decoder stages; the last one is index 1, with FEATURES[0] = 4 channels
    assert last_decoder_stage_name(net) == "decoder.stages.1"
    assert feature_channels(net) == 4
    x = torch.randn((2, 1) + (8,) * dim)
    with FeatureTap(net) as tap:
        out = net(x)
        feats = tap.features
    logits = out[0] if deep_supervision else out
    assert feats.shape == (2, 4) + (8,) * dim
    # the features are exactly what the final 1x1 segmentation conv consumes
    torch.testing.assert_close(net.decoder.seg_layers[-1](feats), logits)
    assert feats.requires_grad  # not detached: losses on features train the network


def test_tap_by_explicit_name_and_through_wrappers():
    net = _net("plain", 2, True)
    wrapped = _CompiledLike(net)
    x = torch.randn(1, 1, 8, 8)
    tap_last = FeatureTap(wrapped)  # name resolved on the unwrapped network
    tap_mid = FeatureTap(wrapped, "_orig_mod.decoder.stages.0")  # wrapper prefix tolerated
    wrapped(x)
    assert tap_last.module is net.decoder.stages[1]
    assert tap_mid.module is net.decoder.stages[0]
    assert tap_last.features.shape == (1, 4, 8, 8)
    assert tap_mid.features.shape == (1, 8, 4, 4)  # stage 0 runs at half resolution
    tap_last.remove()
    tap_mid.remove()


def test_remove_stops_capturing_and_keeps_last_capture():
    net = _net("plain", 2, False)
    tap = FeatureTap(net)
    with pytest.raises(RuntimeError, match="no features captured"):
        tap.features
    net(torch.randn(1, 1, 8, 8))
    first = tap.features
    tap.remove()
    net(torch.randn(1, 1, 8, 8))
    assert tap.features is first
    assert len(net.decoder.stages[1]._forward_hooks) == 0
    tap.clear()
    with pytest.raises(RuntimeError):
        tap.features


def test_unknown_name_and_non_unet_raise_value_error():
    net = _net("plain", 2, False)
    with pytest.raises(ValueError, match="decoder.stages.9"):
        FeatureTap(net, "decoder.stages.9")
    with pytest.raises(ValueError, match="UNetDecoder"):
        last_decoder_stage_name(nn.Sequential(nn.Conv2d(1, 2, 1)))
