"""The propagator's training loss: OHEM cross-entropy + Lovász hinge on the propagated frames.

STCN trains with bootstrapped (OHEM) cross-entropy; the FLARE22 pipeline adds the Lovász hinge.
The formulas live in :mod:`nnunet_ssl.losses.ohem` and :mod:`nnunet_ssl.losses.lovasz`.
"""
from __future__ import annotations

from typing import Tuple

from torch import Tensor, nn

from nnunet_ssl.losses.lovasz import lovasz_hinge
from nnunet_ssl.losses.ohem import ohem_binary_cross_entropy

__all__ = ["PropagationLoss"]


class PropagationLoss(nn.Module):
    """``L = OHEM-CE(z, y; p) + w · Lovász(z, y)``; the Lovász hinge per slice, averaged.

    ``logits`` and ``target`` ``(B, T, 1, H, W)`` (the frames after the annotated one); returns
    ``(L, OHEM-CE, Lovász)``."""

    def __init__(self, lovasz_weight: float = 1.0):
        super().__init__()
        self.lovasz_weight = float(lovasz_weight)

    def forward(self, logits: Tensor, target: Tensor, keep_fraction: float = 1.0) -> Tuple[Tensor, Tensor, Tensor]:
        ce = ohem_binary_cross_entropy(logits, target, keep_fraction)
        lovasz = lovasz_hinge(logits.flatten(0, 2), target.flatten(0, 2))
        return ce + self.lovasz_weight * lovasz, ce, lovasz
