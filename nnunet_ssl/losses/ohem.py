"""Online hard example mining (OHEM) cross-entropy for binary masks, as STCN's bootstrapped CE.

STCN (Cheng et al., NeurIPS 2021) trains with plain cross-entropy first and then, warming up
linearly, keeps only the hardest ``p`` share of the pixels of a batch (``p`` falls from 1 to
``top_p = 0.15``). For one object, STCN's two-class softmax over (background, object) with logits
``(0, z)`` is the sigmoid of ``z``, so the per-pixel loss is binary cross-entropy with logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ohem_binary_cross_entropy", "ohem_keep_fraction"]


def ohem_binary_cross_entropy(logits: Tensor, target: Tensor, keep_fraction: float = 1.0) -> Tensor:
    """Mean of the ``k = max(1, floor(keep_fraction · N))`` largest per-pixel losses
    ``ℓ_j = −y_j log σ(z_j) − (1 − y_j) log(1 − σ(z_j))`` over all ``N`` pixels of the batch, a scalar.

    ``logits`` and ``target`` (0/1, or soft) of one shape, any layout (e.g. ``(B, T, 1, H, W)``);
    ``keep_fraction`` in (0, 1]: 1 is plain mean cross-entropy.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have one shape")
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    losses = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none").flatten()
    k = max(1, int(losses.numel() * keep_fraction))
    if k >= losses.numel():
        return losses.mean()
    return torch.topk(losses, k, sorted=False).values.mean()


def ohem_keep_fraction(step: int, warm_start: int, warm_end: int, top_p: float) -> float:
    """STCN's schedule of the kept share: 1 before ``warm_start``; ``top_p`` from ``warm_end`` on; in
    between ``top_p + (1 − top_p)·(warm_end − step)/(warm_end − warm_start)`` (linear)."""
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if step < warm_start:
        return 1.0
    if step >= warm_end:
        return float(top_p)
    return float(top_p + (1 - top_p) * (warm_end - step) / (warm_end - warm_start))
