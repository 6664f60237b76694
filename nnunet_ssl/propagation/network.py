"""The space-time memory network (STCN-style) that propagates a binary mask from slice to slice.

- **Key encoder**: a residual backbone (``ResidualEncoder`` of dynamic_network_architectures, the
  encoder of nnU-Net's ResEnc U-Nets) on the image of a slice, then a 3×3 projection to ``key_dim``
  at the coarsest stage. Query and memory keys come from the same encoder (STCN).
- **Value encoder**: a second residual backbone on image + mask; its coarsest features are fused with
  the key encoder's (concatenation, residual blocks) into a ``value_dim`` value map.
- **Read-out** (:mod:`~nnunet_ssl.propagation.memory`): softmax over negative squared key distances.
- **Decoder**: read-out + query features, upsampled stage by stage with the key encoder's skips (as a
  U-Net decoder) to one logit per pixel at input resolution.

Images ``(N, C, H, W)`` with ``H`` and ``W`` divisible by :attr:`SpaceTimeMemoryNetwork.divisor` (the
residual blocks' pooled shortcuts need even sizes at every stride; :func:`pad_to_divisor` pads).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.residual import StackedResidualBlocks
from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
from torch import Tensor, nn

from nnunet_ssl.propagation.memory import memory_readout

__all__ = ["SpaceTimeMemoryNetwork", "pad_to_divisor"]


def pad_to_divisor(x: Tensor, divisor: int) -> Tensor:
    """``x`` ``(..., H, W)`` zero-padded at the bottom and right to multiples of ``divisor``."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % divisor, 0, -h % divisor))


def _conv_kwargs(norm: bool = True) -> dict:
    return dict(conv_bias=True, norm_op=nn.InstanceNorm2d if norm else None,
                norm_op_kwargs={"eps": 1e-5, "affine": True} if norm else None,
                nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})


class SpaceTimeMemoryNetwork(nn.Module):
    """Key/value encoders, memory read-out and mask decoder for one object (binary mask).

    ``features_per_stage`` sets the backbone (stage ``s`` has stride ``2^s``; keys and values live at the
    last stage); ``blocks_per_stage`` residual blocks (BasicBlockD) per stage.
    """

    def __init__(self, input_channels: int, features_per_stage: Sequence[int] = (16, 32, 64, 128), key_dim: int = 64,
                 value_dim: int = 128, blocks_per_stage: int = 1):
        super().__init__()
        features = [int(f) for f in features_per_stage]
        if not features or min(features) < 1 or min(input_channels, key_dim, value_dim, blocks_per_stage) < 1:
            raise ValueError(f"invalid architecture: input_channels={input_channels}, features_per_stage={features}, "
                             f"key_dim={key_dim}, value_dim={value_dim}, blocks_per_stage={blocks_per_stage}")
        self.architecture: Dict[str, object] = {"input_channels": int(input_channels), "features_per_stage": features,
                                                "key_dim": int(key_dim), "value_dim": int(value_dim),
                                                "blocks_per_stage": int(blocks_per_stage)}
        n = len(features)
        kw = _conv_kwargs()
        strides = [1] + [2] * (n - 1)
        self.key_encoder = ResidualEncoder(input_channels, n, features, nn.Conv2d, 3, strides, blocks_per_stage,
                                           return_skips=True, **kw)
        self.key_projection = nn.Conv2d(features[-1], key_dim, 3, padding=1)
        self.value_encoder = ResidualEncoder(input_channels + 1, n, features, nn.Conv2d, 3, strides, blocks_per_stage,
                                             return_skips=False, **kw)
        # fusion and decoder without normalisation (as STCN's): a read-out that is constant over the image (an
        # organ's identity while the affinity is still flat) would be erased by instance normalisation
        plain = _conv_kwargs(norm=False)
        self.value_fusion = StackedResidualBlocks(blocks_per_stage, nn.Conv2d, 2 * features[-1], value_dim, 3, 1,
                                                  **plain)
        self.readout_fusion = StackedResidualBlocks(1, nn.Conv2d, value_dim + features[-1], features[-1], 3, 1, **plain)
        self.up_blocks = nn.ModuleList(StackedResidualBlocks(1, nn.Conv2d, features[s + 1] + features[s], features[s],
                                                             3, 1, **plain) for s in reversed(range(n - 1)))
        self.head = nn.Conv2d(features[0], 1, 1)
        self.divisor = 2 ** (n - 1)
        """Input sizes must be multiples of this (the total stride)."""

    # ---------------------------------------------------------------- the parts
    def encode_key(self, image: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """(key ``(N, key_dim, h, w)``, skips: the key encoder's feature maps, finest first)."""
        if image.shape[-2] % self.divisor or image.shape[-1] % self.divisor:
            raise ValueError(f"image size {tuple(image.shape[-2:])} must be divisible by {self.divisor} (the total "
                             f"stride of {len(self.up_blocks) + 1} stages); pad it (pad_to_divisor)")
        skips = self.key_encoder(image)
        return self.key_projection(skips[-1]), skips

    def encode_value(self, image: Tensor, mask: Tensor, key_features: Tensor) -> Tensor:
        """Value ``(N, value_dim, h, w)`` of a slice with its (soft) mask ``(N, 1, H, W)``; ``key_features``
        are the key encoder's coarsest features of the same slice (``skips[-1]``)."""
        features = self.value_encoder(torch.cat([image, mask.to(image.dtype)], 1))
        return self.value_fusion(torch.cat([features, key_features], 1))

    def decode(self, readout: Tensor, skips: List[Tensor]) -> Tensor:
        """Logits ``(N, 1, H, W)`` from the memory read-out ``(N, value_dim, h, w)`` and the query's skips."""
        x = self.readout_fusion(torch.cat([readout, skips[-1]], 1))
        for block, skip in zip(self.up_blocks, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(x)

    def segment(self, query_key: Tensor, skips: List[Tensor], memory_keys: Tensor, memory_values: Tensor) -> Tensor:
        """Logits of a query slice reading memory keys ``(N, key_dim, M)`` and values ``(N, value_dim, M)``
        (``M`` positions of all memory slices, flattened)."""
        n, _, h, w = query_key.shape
        readout = memory_readout(memory_keys, memory_values, query_key.flatten(2))
        return self.decode(readout.view(n, -1, h, w), skips)

    # ---------------------------------------------------------------- training forward
    def forward(self, frames: Tensor, first_mask: Tensor) -> Tensor:
        """Propagate ``first_mask`` ``(B, 1, H, W)`` of frame 0 through ``frames`` ``(B, T, C, H, W)``:
        frame ``t`` reads the memory of frames ``0..t-1`` (frame 0 with its given mask, later frames with
        their predicted probabilities, gradients kept, as STCN trains). Returns logits ``(B, T-1, 1, H, W)``
        of frames ``1..T-1``."""
        if frames.dim() != 5 or frames.shape[1] < 2:
            raise ValueError(f"frames must be (B, T >= 2, C, H, W), got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        keys, skips = self.encode_key(frames.flatten(0, 1))
        keys = keys.unflatten(0, (b, t))
        skips = [s.unflatten(0, (b, t)) for s in skips]
        memory_k = [keys[:, 0].flatten(2)]
        memory_v = [self.encode_value(frames[:, 0], first_mask, skips[-1][:, 0]).flatten(2)]
        logits = []
        for i in range(1, t):
            out = self.segment(keys[:, i], [s[:, i] for s in skips], torch.cat(memory_k, 2), torch.cat(memory_v, 2))
            logits.append(out)
            if i < t - 1:
                memory_k.append(keys[:, i].flatten(2))
                memory_v.append(self.encode_value(frames[:, i], torch.sigmoid(out), skips[-1][:, i]).flatten(2))
        return torch.stack(logits, 1)
