"""Small tensor helpers shared by losses, trackers and trainers."""
from __future__ import annotations

import torch


def class_argmax(x: torch.Tensor) -> torch.Tensor:
    """Index of the largest entry along the class axis (dim 1): ``(B, C, *spatial)`` -> ``(B, *spatial)``
    long, the first one on ties, like ``x.argmax(1)``.

    Same result as ``x.argmax(1)``, but through ``x.max(1)``: on CPU, PyTorch's argmax over a
    non-innermost axis is an order of magnitude slower (13 ms vs 1 ms for a (4, 4, 32³) float
    tensor on two cores), and pseudo-labelling trainers take several per step.
    """
    if x.ndim < 2:
        raise ValueError(f"expected (B, C, ...) scores, got shape {tuple(x.shape)}")
    return x.max(1).indices
