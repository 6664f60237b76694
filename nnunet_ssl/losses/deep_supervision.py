"""Targets for nnU-Net's deep supervision built from full-resolution maps made during a step
(mixed labels, pseudo-labels, voxel weights), so mixed-image losses train every decoder head."""
from __future__ import annotations

from typing import List, Sequence

import torch.nn.functional as F
from torch import Tensor


def downsample_like(x: Tensor, outputs: Sequence[Tensor]) -> List[Tensor]:
    """``x`` resized to the spatial shape of each of ``outputs`` by ``nearest-exact`` interpolation, the
    rule nnU-Net's ``DownsampleSegForDSTransform`` applies to segmentations; the dtype is kept.

    ``x``: ``(B, 1, *spatial)`` (labels) or ``(B, *spatial)`` (voxel weights); ``outputs``: the deep
    supervision outputs ``(B, C, *spatial_i)``, full resolution first. An output of ``x``'s own
    shape gets ``x`` itself. Nearest resizing commutes with a voxel-wise mix, so downsampling a mixed
    label equals mixing the downsampled labels with the downsampled mask.
    """
    channel = x.dim() == outputs[0].dim()
    if not channel and x.dim() + 1 != outputs[0].dim():
        raise ValueError(f"expected (B, 1, *spatial) or (B, *spatial) for outputs of {outputs[0].dim()} dims, "
                         f"got {tuple(x.shape)}")
    spatial = x.shape[2:] if channel else x.shape[1:]
    result = []
    for out in outputs:
        if tuple(out.shape[2:]) == tuple(spatial):
            result.append(x)
            continue
        y = x if channel else x.unsqueeze(1)
        y = F.interpolate(y.float(), size=tuple(out.shape[2:]), mode="nearest-exact").to(x.dtype)
        result.append(y if channel else y[:, 0])
    return result
