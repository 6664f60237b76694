"""Filters that clean hard pseudo-labels before they supervise a student."""
from __future__ import annotations

from typing import Union

import cc3d
import numpy as np
import torch

_CONNECTIVITY = {"full": {2: 8, 3: 26}, "face": {2: 4, 3: 6}}


def _largest_per_class(arr: np.ndarray, num_classes: int, connectivity: int, fill_value: int) -> np.ndarray:
    """One 2D/3D integer array: keep the largest component of each class in ``1 … num_classes−1``."""
    work = np.where((arr >= 1) & (arr < num_classes), arr, 0).astype(np.uint32)
    components, n = cc3d.connected_components(work, connectivity=connectivity, return_N=True)
    if n == 0:
        return arr.copy()
    flat = components.ravel()
    sizes = np.bincount(flat, minlength=n + 1)
    class_of = np.zeros(n + 1, dtype=np.int64)
    class_of[flat] = work.ravel()  # every voxel of a component carries its class
    keep = np.zeros(n + 1, dtype=bool)
    ids = np.arange(1, n + 1)
    for c in np.unique(class_of[1:]):
        of_c = ids[class_of[1:] == c]
        keep[of_c[np.argmax(sizes[of_c])]] = True  # ties: the first component in scan order
    out = arr.copy()
    out[(work > 0) & ~keep[components]] = fill_value
    return out


def largest_connected_component_per_class(labels: Union[torch.Tensor, np.ndarray], num_classes: int,
                                          connectivity: str = "full",
                                          fill_value: int = 0) -> Union[torch.Tensor, np.ndarray]:
    """Keep only the largest connected component of each foreground class, per sample.

    The optional pseudo-label clean-up of Bidirectional Copy-Paste (Bai et al., CVPR 2023),
    extended from one foreground class to each class ``1 … num_classes−1``. Voxels of smaller
    components become ``fill_value`` (background); background and values outside
    ``[1, num_classes)`` (e.g. an ignore label) are left as they are. Equal sizes: the component met
    first in scan order wins. Components are found by ``cc3d`` (connected-components-3d).

    ``labels``: integer ``(B, *spatial)`` or ``(B, 1, *spatial)``, 2 or 3 spatial dims, a torch
    tensor (any device; the result keeps device and dtype) or a numpy array.
    ``connectivity``: ``"full"`` (8 in 2D, 26 in 3D) or ``"face"`` (4 in 2D, 6 in 3D).
    """
    if connectivity not in _CONNECTIVITY:
        raise ValueError(f"expected connectivity 'full' or 'face', got {connectivity!r}")
    if num_classes < 1:
        raise ValueError(f"expected num_classes >= 1, got {num_classes}")
    is_torch = isinstance(labels, torch.Tensor)
    arr = labels.detach().cpu().numpy() if is_torch else np.asarray(labels)
    if arr.ndim < 3 or np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"expected an integer label map (B, *spatial) or (B, 1, *spatial), "
                         f"got dtype {arr.dtype} and shape {arr.shape}")
    out = np.empty_like(arr)
    for b in range(arr.shape[0]):
        sample = arr[b]
        while sample.ndim > 2 and sample.shape[0] == 1:  # (1, *spatial) channel, or a single slice
            sample = sample[0]
        if sample.ndim not in (2, 3):
            raise ValueError(f"expected 2 or 3 spatial dims per sample, got sample shape {arr[b].shape}")
        conn = _CONNECTIVITY[connectivity][sample.ndim]
        out[b] = _largest_per_class(sample, num_classes, conn, fill_value).reshape(arr[b].shape)
    if is_torch:
        return torch.from_numpy(out).to(device=labels.device, dtype=labels.dtype)
    return out
