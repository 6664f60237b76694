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

from nnunet_ssl.utils.distributed import all_reduce_sum, is_distributed
from nnunet_ssl.utils.tensors import class_argmax
from nnunet_ssl.weighting.functional import one_hot, to_label_map

__all__ = [
    "present_classes",
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


def _sum_dims(x: Tensor, batch_dice: bool) -> list:
    """Axes a Dice sum runs over: batch and space with ``batch_dice``, else space only."""
    return ([0] if batch_dice else []) + list(range(2, x.dim()))


def _weighted_sum(onehot: Tensor, voxel_weights: Optional[Tensor], dims: list) -> Tensor:
    """``Σ v·y`` of a one-hot ``(B, C, *spatial)`` over ``dims`` (``Σ y`` without voxel weights)."""
    return (onehot if voxel_weights is None else onehot * voxel_weights.unsqueeze(1)).sum(dims)


def present_classes(
    probs: Tensor, onehot: Tensor, voxel_weights: Optional[Tensor] = None, batch_dice: bool = True
) -> Tensor:
    """Classes present in the target or in the prediction (argmax) of the batch, bool ``(C,)``
    (``(B, C)`` per sample without ``batch_dice``); voxels of weight 0 do not count.

    ``probs``/``onehot`` ``(B, C, *spatial)``, ``voxel_weights`` ``(B, *spatial)``. Under DDP the
    batch counts are summed over all ranks, so every rank leaves out the same classes.
    """
    with torch.no_grad():
        predicted = one_hot(class_argmax(probs), probs.shape[1])
        dims = _sum_dims(probs, batch_dice)
        counts = _weighted_sum(predicted + onehot, voxel_weights, dims)
        if batch_dice:
            counts = all_reduce_sum(counts)
    return counts > 0


def soft_dice_stats(
    probs: Tensor, onehot: Tensor, voxel_weights: Optional[Tensor] = None, batch_dice: bool = True
) -> Tuple[Tensor, Tensor, Tensor]:
    """``(Σ v·p·y, Σ v·p, Σ v·y)`` of probabilities and one-hot targets ``(B, C, *spatial)``.

    ``voxel_weights`` ``(B, *spatial)``. Sums over batch and space (``(C,)``) with ``batch_dice``,
    else over space only (``(B, C)``). Under DDP the batch-Dice sums are gathered from all ranks
    (with gradients), so every rank optimises the same Dice as a single process would.
    """
    dims = _sum_dims(probs, batch_dice)
    weighted_probs = probs if voxel_weights is None else probs * voxel_weights.unsqueeze(1)  # v enters once
    stats = ((weighted_probs * onehot).sum(dims), weighted_probs.sum(dims),
             _weighted_sum(onehot, voxel_weights, dims))
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
    """``1 − weighted mean Dice``: ``Σ_{c∈P} w_c (1 − d_c) / Σ_{c∈P} w_c`` over the foreground classes
    (all classes with ``include_background``) that are present, a scalar.

    ``d_c = (2 Σ v p y + smooth) / (Σ v p + Σ v y + smooth)`` with ``p`` the softmax of the logits
    (``softmax=False`` for probabilities) ``(B, C, *spatial)``, ``y`` the one-hot target, ``v`` the
    optional voxel weights ``(B, *spatial)`` (each voxel's weight enters every sum once).
    ``batch_dice`` pools the batch (nnU-Net's default); otherwise the per-sample losses are averaged.
    ``class_weights`` ``(C,)`` default to equal; if no selected class is present or all their
    weights are 0 the loss is 0.

    ``P``: the classes present in the target or in the prediction's argmax of the batch (of the
    sample without ``batch_dice``; see :func:`present_classes`). A class absent from both has no
    Dice to learn (its soft Dice is ≈ 0 from stray probability mass alone, with a vanishing
    gradient), so counting it would only pad numerator and denominator with its weight and dilute
    the classes that are there — worst for the rare, heavily weighted classes DisW/DifW favour. A
    class predicted but not labeled stays in, so false positives are paid for. We keep the
    normalisation by ``Σ w_c`` instead of DHC's reference ``−mean_c(w_c·d_c)`` (weights scaled to
    ``max = C``): the loss stays in ``[0, 1]`` whatever the weights' scale, so its balance with the
    CE term and nnU-Net's learning rate do not drift as the weights evolve.
    """
    C = logits_or_probs.shape[1]
    labels, valid = to_label_map(target, C, logits_or_probs.shape[2:], ignore_index)
    probs = torch.softmax(logits_or_probs.float(), 1) if softmax else logits_or_probs.float()
    v = _voxel_weights(voxel_weights, labels, valid)
    onehot = one_hot(labels, C)
    tp, ps, ts = soft_dice_stats(probs, onehot, v, batch_dice)
    dice = (2 * tp + smooth) / (ps + ts + smooth)
    w = _class_weights(class_weights, C, probs)
    w = torch.ones(C, device=probs.device) if w is None else w
    w = w * present_classes(probs, onehot, v, batch_dice)  # (C,) or (B, C)
    first = 0 if include_background else 1
    dice, w = dice[..., first:], w[..., first:]
    loss = _safe_ratio(((1 - dice) * w).sum(-1), w.sum(-1))
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
