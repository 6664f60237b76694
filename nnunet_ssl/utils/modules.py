"""Helpers for networks that nnU-Net may have wrapped (DDP ``.module``, ``torch.compile``'s ``._orig_mod``)."""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn


def unwrap(module: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel and torch.compile wrappers, in any nesting order."""
    while True:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(getattr(module, "_orig_mod"), nn.Module):
            module = module._orig_mod
        else:
            return module


def full_resolution(output: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
    """The full-resolution logits of a network output (the first entry under deep supervision)."""
    if isinstance(output, (list, tuple)):
        return output[0]
    return output


def repeatable_per_sample(*modules: nn.Module) -> bool:
    """Whether a training-mode forward pass of a sample gives the same output whatever else is in the batch
    and however often it is repeated: no batch statistics (BatchNorm) and no active dropout. nnU-Net's
    networks (instance norm, no dropout by default) are."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) or (
                    isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0):
                return False
    return True


def set_deep_supervision(module: nn.Module, enabled: bool) -> None:
    """Switch deep supervision of an nnU-Net network (PlainConvUNet, ResidualEncoderUNet, ...), or of
    every member of an ensemble of them (a module with a ``members`` list)."""
    mod = unwrap(module)
    for member in getattr(mod, "members", ()):
        set_deep_supervision(member, enabled)
    decoder = getattr(mod, "decoder", None)
    if decoder is not None and hasattr(decoder, "deep_supervision"):
        decoder.deep_supervision = enabled
