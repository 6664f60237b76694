"""Segmentation losses for the category-level supervision method: generalised Dice and focal loss.

Multi-class softmax, 2D and 3D: logits ``(B, C, *spatial)``, targets integer-valued
``(B, 1, *spatial)`` or ``(B, *spatial)``; ``ignore_index`` marks voxels to leave out.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from nnunet_ssl.losses.weighted import _class_weights, soft_dice_stats
from nnunet_ssl.weighting.functional import one_hot, to_label_map

__all__ = ["generalised_dice_loss", "focal_loss", "GeneralisedDiceFocalLoss"]


def generalised_dice_loss(
    logits: Tensor,
    target: Tensor,
    include_background: bool = True,
    smooth: float = 1e-5,
    batch_dice: bool = True,
    softmax: bool = True,
    ignore_index: Optional[int] = None,
) -> Tensor:
    """Generalised Dice loss (Sudre et al., DLMIA 2017), a scalar:
    ``1 − (2 Σ_c w_c Σ_j p_cj y_cj + s) / (Σ_c w_c Σ_j (p_cj + y_cj) + s)``, ``w_c = 1/(Σ_j y_cj)²``.

    Guards: a class absent from the target (infinite weight) gets the largest finite weight, or
    all weights are 1 if no class is present; the weights are then normalised to sum to 1, which
    leaves the ratio unchanged but keeps ``smooth`` meaningful (raw ``1/n²`` weights are tiny).
    ``batch_dice`` pools the batch; otherwise per-sample losses are averaged.
    """
    C = logits.shape[1]
    labels, valid = to_label_map(target, C, logits.shape[2:], ignore_index)
    probs = torch.softmax(logits.float(), 1) if softmax else logits.float()
    tp, ps, ts = soft_dice_stats(probs, one_hot(labels, C), None if valid is None else valid.float(), batch_dice)
    first = 0 if include_background else 1
    tp, ps, ts = tp[..., first:], ps[..., first:], ts[..., first:]
    present = ts > 0
    w = torch.where(present, 1.0 / torch.where(present, ts, torch.ones_like(ts)) ** 2, torch.zeros_like(ts))
    top = w.max(-1, keepdim=True).values
    w = torch.where(present, w, top)
    w = torch.where(top > 0, w, torch.ones_like(w))
    w = (w / w.sum(-1, keepdim=True)).detach()
    num = 2 * (w * tp).sum(-1) + smooth
    den = (w * (ps + ts)).sum(-1) + smooth
    return (1 - num / den).mean()


def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: Optional[Union[Tensor, Sequence[float]]] = None,
    ignore_index: Optional[int] = None,
) -> Tensor:
    """Multi-class focal loss (Lin et al., ICCV 2017), a scalar:
    ``mean_j −α_{y_j} (1 − p_{y_j})^γ log p_{y_j}`` over the non-ignored voxels.

    ``alpha`` ``(C,)`` optional per-class factors (detached). ``gamma = 0`` without ``alpha`` is the
    plain mean cross-entropy.
    """
    labels, valid = to_label_map(target, logits.shape[1], logits.shape[2:], ignore_index)
    logp = torch.log_softmax(logits.float(), 1).gather(1, labels.unsqueeze(1)).squeeze(1)
    loss = -((1 - logp.exp()).clamp_min(0) ** gamma) * logp
    a = _class_weights(alpha, logits.shape[1], logits)
    if a is not None:
        loss = loss * a[labels]
    if valid is None:
        return loss.mean()
    n = valid.sum()
    return (loss * valid).sum() / n.clamp_min(1)


class GeneralisedDiceFocalLoss(nn.Module):
    """``L_seg = gdl_weight · GDL + focal_weight · Focal`` (category-level supervision's segmentation
    loss); usable inside nnU-Net's ``DeepSupervisionWrapper``."""

    def __init__(
        self,
        gdl_weight: float = 1.0,
        focal_weight: float = 1.0,
        gamma: float = 2.0,
        alpha: Optional[Union[Tensor, Sequence[float]]] = None,
        include_background: bool = True,
        smooth: float = 1e-5,
        batch_dice: bool = True,
        ignore_index: Optional[int] = None,
    ):
        super().__init__()
        self.gdl_weight, self.focal_weight, self.gamma = float(gdl_weight), float(focal_weight), float(gamma)
        self.alpha = None if alpha is None else torch.as_tensor(alpha).detach().float().clone()
        self.include_background, self.smooth, self.batch_dice = include_background, float(smooth), batch_dice
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        gdl = generalised_dice_loss(logits, target, self.include_background, self.smooth, self.batch_dice,
                                    ignore_index=self.ignore_index)
        focal = focal_loss(logits, target, self.gamma, self.alpha, self.ignore_index)
        return self.gdl_weight * gdl + self.focal_weight * focal
