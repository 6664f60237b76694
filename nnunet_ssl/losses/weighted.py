"""Class- and voxel-weighted cross-entropy and soft Dice (DHC, DMPF, BCP), 2D and 3D.

- Class weights ``(C,)`` (DisW, DifW, CDifW, ...; Wang & Li, DHC, MICCAI 2023) reweigh classes;
  they are always detached here.
- Voxel weights ``(B, *spatial)`` reweigh voxels, e.g. BCP's region weights (Bai et al.,
  "Bidirectional Copy-Paste for Semi-Supervised Medical Image Segmentation", CVPR 2023): voxels
  copied from a labeled image weigh 1, those from an unlabeled image ``u_weight``.

Inputs: logits ``(B, C, *spatial)``; targets integer-valued ``(B, 1, *spatial)`` (nnU-Net's
loaders, float allowed) or ``(B, *spatial)``; ``ignore_index`` marks voxels to leave out.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnunet_ssl.utils.distributed import is_distributed
from nnunet_ssl.weighting.functional import one_hot, to_label_map

__all__ = [
    "soft_dice_stats",
    "weighted_cross_entropy",
    "weighted_soft_dice",
    "WeightedDiceCE",
]

Weights = Optional[Union[Tensor, Sequence[float]]]


def _class_weights(class_weights: Weights, num_classes: int, like: Tensor) -> Optional[Tensor]:
    if class_weights is None:
        return None
    w = torch.as_tensor(class_weights).detach().to(device=like.device, dtype=torch.float32).flatten()
    if w.numel() != num_classes:
        raise ValueError(f"class_weights must have {num_classes} entries (one per class), got {w.numel()}")
    return w


def _voxel_weights(voxel_weights: Optional[Tensor], labels: Tensor, valid: Optional[Tensor]) -> Optional[Tensor]:
    """Combined per-voxel weights ``(B, *spatial)`` float32 (voxel weights × not-ignored), or None."""
    v = None
    if voxel_weights is not None:
        v = voxel_weights.detach()
        if v.dim() == labels.dim() + 1 and v.shape[1] == 1:
            v = v[:, 0]
        if v.shape != labels.shape:
            raise ValueError(
                f"voxel_weights must have shape (B, *spatial) = {tuple(labels.shape)} or (B, 1, *spatial), "
                f"got {tuple(voxel_weights.shape)}"
            )
        v = v.float()
    if valid is not None:
        v = valid.float() if v is None else v * valid
    return v


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``, else 0 (with all-zero weights both are 0)."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def weighted_cross_entropy(
    logits: Tensor,
    target: Tensor,
    class_weights: Weights = None,
    voxel_weights: Optional[Tensor] = None,
    ignore_index: Optional[int] = None,
) -> Tensor:
    """Weighted CE: ``Σ_j v_j w_{y_j} CE_j / Σ_j v_j w_{y_j}``, a scalar.

    ``class_weights`` ``(C,)`` ``w`` and ``voxel_weights`` ``(B, *spatial)`` or ``(B, 1, *spatial)``
    ``v`` (both optional, non-negative, detached) are multiplied per voxel; the sum is normalised
    by the summed combined weights, so class weights alone give ``F.cross_entropy(weight=w)`` and
    no weights the plain mean CE. If every combined weight is 0 the loss is 0.
    """
    labels, valid = to_label_map(target, logits.shape[1], logits.shape[2:], ignore_index)
    ce = F.cross_entropy(logits, labels, reduction="none")
    w = _class_weights(class_weights, logits.shape[1], logits)
    v = _voxel_weights(voxel_weights, labels, valid)
    if w is None and v is None:
        return ce.mean()
    per_voxel = w[labels] if w is not None else torch.ones_like(ce)
    if v is not None:
        per_voxel = per_voxel * v
    return _safe_ratio((per_voxel * ce).sum(), per_voxel.sum())


def soft_dice_stats(
    probs: Tensor, onehot: Tensor, voxel_weights: Optional[Tensor] = None, batch_dice: bool = True
) -> Tuple[Tensor, Tensor, Tensor]:
    """``(Σ v·p·y, Σ v·p, Σ v·y)`` of probabilities and one-hot targets ``(B, C, *spatial)``.

    ``voxel_weights`` ``(B, *spatial)``. Sums over batch and space (``(C,)``) with ``batch_dice``,
    else over space only (``(B, C)``). Under DDP the batch-Dice sums are gathered from all ranks
    (with gradients), so every rank optimises the same Dice as a single process would.
    """
    if voxel_weights is not None:
        vw = voxel_weights.unsqueeze(1)
        probs, onehot = probs * vw, onehot * vw
    dims = ([0] if batch_dice else []) + list(range(2, probs.dim()))
    stats = (probs * onehot).sum(dims), probs.sum(dims), onehot.sum(dims)
    if batch_dice and is_distributed():
        # pool the batch over every DDP rank, with gradients, as nnU-Net's own batch Dice does
        from nnunetv2.utilities.ddp_allgather import AllGatherGrad

        stats = tuple(AllGatherGrad.apply(s).sum(0) for s in stats)
    return stats


def weighted_soft_dice(
    logits_or_probs: Tensor,
    target: Tensor,
    class_weights: Weights = None,
    voxel_weights: Optional[Tensor] = None,
    include_background: bool = False,
    smooth: float = 1e-5,
    batch_dice: bool = True,
    softmax: bool = True,
    ignore_index: Optional[int] = None,
) -> Tensor:
    """``1 − weighted mean Dice``: ``Σ_c w_c (1 − d_c) / Σ_c w_c`` over the foreground classes
    (all classes with ``include_background``), a scalar.

    ``d_c = (2 Σ v p y + smooth) / (Σ v p + Σ v y + smooth)`` with ``p`` the softmax of the logits
    (``softmax=False`` for probabilities) ``(B, C, *spatial)``, ``y`` the one-hot target, ``v`` the
    optional voxel weights ``(B, *spatial)``. ``batch_dice`` pools the batch (nnU-Net's default);
    otherwise the per-sample losses are averaged. ``class_weights`` ``(C,)`` default to equal; if
    all selected weights are 0 the loss is 0.
    """
    C = logits_or_probs.shape[1]
    labels, valid = to_label_map(target, C, logits_or_probs.shape[2:], ignore_index)
    probs = torch.softmax(logits_or_probs.float(), 1) if softmax else logits_or_probs.float()
    v = _voxel_weights(voxel_weights, labels, valid)
    tp, ps, ts = soft_dice_stats(probs, one_hot(labels, C), v, batch_dice)
    dice = (2 * tp + smooth) / (ps + ts + smooth)
    w = _class_weights(class_weights, C, probs)
    w = torch.ones(C, device=probs.device) if w is None else w
    first = 0 if include_background else 1
    dice, w = dice[..., first:], w[first:]
    loss = _safe_ratio(((1 - dice) * w).sum(-1), w.sum())
    return loss.mean()


class WeightedDiceCE(nn.Module):
    """``dice_weight · Dice_W + ce_weight · CE_W`` (DHC's supervised loss; DMPF uses ``ce_weight=0.5``).

    Class weights are stored (``set_class_weights``, e.g. once per iteration from a tracker) or
    passed per call; voxel weights are per call. Works inside nnU-Net's ``DeepSupervisionWrapper``,
    which calls ``loss(output_i, target_i[, voxel_weights_i])`` for each scale.
    """

    def __init__(
        self,
        class_weights: Weights = None,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        include_background: bool = False,
        smooth: float = 1e-5,
        batch_dice: bool = True,
        ignore_index: Optional[int] = None,
    ):
        super().__init__()
        self.ce_weight, self.dice_weight = float(ce_weight), float(dice_weight)
        self.include_background, self.smooth, self.batch_dice = include_background, float(smooth), batch_dice
        self.ignore_index = ignore_index
        self.class_weights: Optional[Tensor] = None
        self.set_class_weights(class_weights)

    def set_class_weights(self, class_weights: Weights) -> None:
        """Store ``(C,)`` class weights (detached copy) for later calls; ``None`` = equal weights."""
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights).detach().float().clone()

    def forward(
        self, logits: Tensor, target: Tensor, voxel_weights: Optional[Tensor] = None, class_weights: Weights = None
    ) -> Tensor:
        w = self.class_weights if class_weights is None else class_weights
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.dice_weight:
            loss = loss + self.dice_weight * weighted_soft_dice(
                logits, target, w, voxel_weights, self.include_background, self.smooth, self.batch_dice,
                ignore_index=self.ignore_index,
            )
        if self.ce_weight:
            loss = loss + self.ce_weight * weighted_cross_entropy(logits, target, w, voxel_weights, self.ignore_index)
        return loss

    def extra_repr(self) -> str:
        return (f"ce_weight={self.ce_weight}, dice_weight={self.dice_weight}, "
                f"include_background={self.include_background}, batch_dice={self.batch_dice}")
