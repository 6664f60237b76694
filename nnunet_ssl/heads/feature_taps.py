"""Feature taps: read the features of one named module of an nnU-Net network during its forward.

GuidedNet (Zhao et al., ACM MM 2024) models the features of the last decoder stage, i.e. what
the segmentation 1x1 convolution of a ``dynamic_network_architectures`` ``UNetDecoder`` sees.
The tap attaches by module *name* (``"decoder.stages.<last>"``), never by index into an output
list, so it works with deep supervision on or off and for every decoder that has ``stages`` and
``seg_layers`` (PlainConvUNet, ResidualEncoderUNet, ResidualUNet).

Wrappers: DDP (``.module``) and ``torch.compile`` (``._orig_mod``) are stripped before the name
is resolved, so the same name works for a wrapped and a plain network. Under ``torch.compile``,
attach the tap before the first forward (a hook added later makes dynamo recompile).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from nnunet_ssl.utils.modules import unwrap

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _find_decoder(network: nn.Module) -> Tuple[str, nn.Module]:
    """(name, module) of the outermost submodule with ``stages`` and ``seg_layers`` ModuleLists."""
    for name, module in unwrap(network).named_modules():
        stages = getattr(module, "stages", None)
        seg_layers = getattr(module, "seg_layers", None)
        if isinstance(stages, nn.ModuleList) and isinstance(seg_layers, nn.ModuleList) and len(stages) > 0:
            return name, module
    raise ValueError(
        f"expected an nnU-Net network whose decoder has `stages` and `seg_layers` "
        f"(dynamic_network_architectures UNetDecoder), got {type(unwrap(network)).__name__}; "
        f"pass module_name= explicitly"
    )


def last_decoder_stage_name(network: nn.Module) -> str:
    """Name (as in ``unwrap(network).named_modules()``) of the last decoder stage, e.g.
    ``"decoder.stages.4"``: its output is the full-resolution feature map fed to the segmentation
    layer."""
    name, decoder = _find_decoder(network)
    prefix = f"{name}." if name else ""
    return f"{prefix}stages.{len(decoder.stages) - 1}"


def feature_channels(network: nn.Module) -> int:
    """Number of channels F of the last decoder stage's features (input channels of the last
    segmentation layer)."""
    _, decoder = _find_decoder(network)
    seg = decoder.seg_layers[-1]
    channels = getattr(seg, "in_channels", None)
    if channels is None:
        raise ValueError(f"expected the last segmentation layer to be a convolution, got {type(seg).__name__}")
    return int(channels)


def _resolve(network: nn.Module, module_name: str) -> nn.Module:
    modules = dict(unwrap(network).named_modules())
    name = module_name
    while name not in modules and name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    if name not in modules:
        decoder_names = [n for n in modules if n.startswith("decoder.stages.") and n.count(".") == 2]
        raise ValueError(
            f"network {type(unwrap(network)).__name__} has no module named {module_name!r}; "
            f"decoder stages are {decoder_names or 'not found'}"
        )
    return modules[name]


class FeatureTap:
    """Keeps the output of one module of ``network`` from its latest forward pass.

    ``FeatureTap(net)`` taps the last decoder stage (``last_decoder_stage_name``);
    ``FeatureTap(net, "decoder.stages.2")`` any named module. The captured tensor is not detached
    (losses on it train the network). Use as a context manager or call :meth:`remove`.

    Example::

        with FeatureTap(network) as tap:
            logits = network(x)
            feats = tap.features          # (B, F, *spatial)
    """

    def __init__(self, network: nn.Module, module_name: Optional[str] = None):
        self.module_name = module_name if module_name is not None else last_decoder_stage_name(network)
        self.module = _resolve(network, self.module_name)
        self._features: Optional[torch.Tensor] = None
        self._handle = self.module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs, output) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"tapped module {self.module_name!r} returned {type(output).__name__}, expected a Tensor")
        self._features = output

    @property
    def features(self) -> torch.Tensor:
        """Output of the tapped module in the latest forward, shape ``(B, F, *spatial)``."""
        if self._features is None:
            raise RuntimeError(f"no features captured at {self.module_name!r}: run a forward pass of the network first")
        return self._features

    def clear(self) -> None:
        """Drop the captured tensor (frees the autograd graph it keeps alive)."""
        self._features = None

    def remove(self) -> None:
        """Detach the hook; the tap captures nothing afterwards (the last capture stays readable)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
