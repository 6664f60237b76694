"""Class-imbalance weights as pure functions.

Every weight vector here has shape ``(C,)`` (background included), is float32 and carries no
gradient. Functions that read a batch come in two halves: ``*_stats`` returns sums (which a
trainer all-reduces across DDP ranks) and ``*_from_stats`` turns the reduced sums into the
quantity, so that every rank derives the same weights.

Formulas:
- DisW and DifW: Wang & Li, "Towards Generic Semi-Supervised Framework for Volumetric Medical
  Image Segmentation" (DHC), MICCAI 2023 / NeurIPS 2023.
- Information score / CDifW / CDisW: the DMPF (Double-Mix Pseudo-label Framework) talk and its
  reference code (lzhang30/Double-Mix).
- KT weights: GuidedNet (ACM MM 2024), DisW's log-ratio over correctly predicted labeled voxels.
- Floored weights (ours): ``floor + w/mean(w)``, so that a loss weighted by DisW/DifW still
  supervises the frequent classes.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "to_label_map",
    "one_hot",
    "class_counts",
    "distribution_weights",
    "hard_dice_stats",
    "dice_from_stats",
    "dice_per_class_hard",
    "learning_speed_increments",
    "difficulty_weights",
    "DifficultyState",
    "difficulty_step",
    "confidence_stats",
    "confidence_from_stats",
    "confidence_scores",
    "information_scores",
    "confidence_scaled_weights",
    "correct_counts",
    "kt_weights",
    "floored_weights",
]

# ----------------------------------------------------------------------------------------------
# label maps
# ----------------------------------------------------------------------------------------------


def to_label_map(
    target: Tensor,
    num_classes: int,
    spatial_shape: Optional[Sequence[int]] = None,
    ignore_index: Optional[int] = None,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Integer label map ``(B, *spatial)`` from a target ``(B, 1, *spatial)`` or ``(B, *spatial)``.

    Float targets holding integer values (nnU-Net's loaders) are rounded. Voxels equal to
    ``ignore_index`` are set to 0 in the returned map and marked ``False`` in the returned mask
    ``(B, *spatial)`` (``None`` without ``ignore_index``). Any other value outside ``[0, C)`` raises
    ``ValueError``. ``spatial_shape``, when given, is checked against the target's.
    """
    if spatial_shape is None:  # counts only: (B, 1, ...) and (B, ...) give the same result
        if target.dim() >= 3 and target.shape[1] == 1:
            target = target[:, 0]
    else:
        if target.dim() == len(spatial_shape) + 2 and target.shape[1] == 1:
            target = target[:, 0]
        if tuple(target.shape[1:]) != tuple(spatial_shape):
            raise ValueError(
                f"target must be a label map (B, 1, *spatial) or (B, *spatial) with spatial = {tuple(spatial_shape)}"
                f" (the prediction's), got shape {tuple(target.shape)}; one-hot targets are not supported"
            )
    labels = target.round().long() if target.is_floating_point() else target.long()
    valid = None
    if ignore_index is not None:
        valid = labels != ignore_index
        labels = torch.where(valid, labels, torch.zeros_like(labels))
    if labels.numel() and bool(((labels < 0) | (labels >= num_classes)).any()):
        bad = labels[(labels < 0) | (labels >= num_classes)].unique()[:5].tolist()
        raise ValueError(
            f"target holds values {bad} outside the {num_classes} classes [0, {num_classes - 1}]"
            + ("" if ignore_index is None else f" (ignore_index={ignore_index})")
            + "; pass ignore_index for an ignore label or fix num_classes"
        )
    return labels, valid


def one_hot(labels: Tensor, num_classes: int, valid: Optional[Tensor] = None, dtype=torch.float32) -> Tensor:
    """``(B, *spatial)`` integer labels → ``(B, C, *spatial)`` one-hot; ignored voxels are all-zero."""
    oh = torch.zeros((labels.shape[0], num_classes, *labels.shape[1:]), dtype=dtype, device=labels.device)
    oh.scatter_(1, labels.unsqueeze(1), 1)
    if valid is not None:
        oh = oh * valid.unsqueeze(1).to(dtype)
    return oh


def class_counts(labels: Tensor, num_classes: int, valid: Optional[Tensor] = None) -> Tensor:
    """Voxels per class ``(C,)`` float32 of an integer map ``(B, *spatial)`` (only ``valid`` voxels)."""
    flat = labels.reshape(-1)
    if valid is not None:
        flat = flat[valid.reshape(-1)]
    return torch.bincount(flat, minlength=num_classes)[:num_classes].float()


# ----------------------------------------------------------------------------------------------
# DisW (distribution) and KT weights
# ----------------------------------------------------------------------------------------------


def distribution_weights(
    counts: Tensor, floor: float = 0.0, smoothing: float = 1.0, valid: Optional[Tensor] = None
) -> Tensor:
    """DisW of DHC: ``r_c = max_k a_k / a_c``, ``w_c = C · log(r_c) / max_k log(r_k)``.

    ``counts`` ``(C,)`` are voxel counts ``a_c``; ``smoothing`` (default +1, METHODS) is added here
    so a class with no voxel gets a finite, maximal weight. The most frequent class gets 0; with
    ``floor > 0`` every weight is at least ``floor`` (applied to the final, ``C``-scaled weight).
    When all counts are equal (``max log r = 0``) every weight is 1 before the ``C`` scale, i.e.
    ``C`` — the same scale as an all-equal DifW initialisation, so an EMA never mixes scales.
    ``valid`` ``(C,)`` bool restricts both maxima to those classes; the others are returned as 0
    (a tracker keeps its previous value for them).
    """
    counts = counts.detach().float()
    C = counts.numel()
    valid = torch.ones(C, dtype=torch.bool, device=counts.device) if valid is None else valid.bool()
    if not bool(valid.any()):
        return torch.zeros(C, device=counts.device)
    a = counts + smoothing
    if bool((a[valid] <= 0).any()):
        raise ValueError(f"class counts + smoothing must be > 0, got counts {counts.tolist()} and smoothing {smoothing}")
    log_r = torch.log(a[valid].max() / a.clamp_min(torch.finfo(torch.float32).tiny))
    log_r = torch.where(valid, log_r, torch.zeros_like(log_r))
    top = log_r.max()
    w = log_r / top if top > 0 else torch.ones_like(log_r)
    w = (w * C).clamp_min(floor)
    return torch.where(valid, w, torch.zeros_like(w))


def correct_counts(pred_labels: Tensor, target: Tensor, num_classes: int, valid: Optional[Tensor] = None) -> Tensor:
    """Labeled voxels per class ``(C,)`` the network predicts correctly (``pred == target == c``).

    ``pred_labels`` and ``target`` are integer maps ``(B, *spatial)``.
    """
    hit = pred_labels == target
    if valid is not None:
        hit = hit & valid
    return class_counts(target[hit], num_classes)


def kt_weights(correct: Tensor, present: Optional[Tensor] = None, floor: float = 0.0, smoothing: float = 1.0) -> Tensor:
    """Knowledge-transfer weights of GuidedNet's KT-CPS: DisW's log-ratio over ``correct`` ``(C,)``,
    the counts of correctly predicted labeled voxels, so classes the network gets right least
    often weigh most. ``present`` ``(C,)`` bool marks classes with labeled voxels in the batch; the
    others are left out (returned as 0) since "correct" is undefined for them.
    """
    return distribution_weights(correct, floor=floor, smoothing=smoothing, valid=present)


# ----------------------------------------------------------------------------------------------
# hard Dice and DifW (difficulty)
# ----------------------------------------------------------------------------------------------


def hard_dice_stats(
    pred_labels: Tensor, target: Tensor, num_classes: int, valid: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor, Tensor]:
    """Sums for the hard Dice of integer maps ``(B, *spatial)``: ``(intersection, pred_sum,
    target_sum)``, each ``(C,)`` float32, summed over batch and space (all-reduce them under DDP)."""
    inter = correct_counts(pred_labels, target, num_classes, valid)
    return inter, class_counts(pred_labels, num_classes, valid), class_counts(target, num_classes, valid)


def dice_from_stats(intersection: Tensor, pred_sum: Tensor, target_sum: Tensor) -> Tuple[Tensor, Tensor]:
    """``d_c = 2·|P∩G| / (|P| + |G|)`` ``(C,)`` and a validity mask ``(C,)``: a class absent from both
    prediction and target has no Dice (returned as 0, ``valid=False``)."""
    denom = pred_sum + target_sum
    valid = denom > 0
    dice = 2 * intersection / torch.where(valid, denom, torch.ones_like(denom))
    return dice.float(), valid


def dice_per_class_hard(
    pred_labels: Tensor, target: Tensor, num_classes: int, valid: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    """Hard Dice per class ``(C,)`` over the whole batch, with its validity mask (single process)."""
    return dice_from_stats(*hard_dice_stats(pred_labels, target, num_classes, valid))


def learning_speed_increments(
    prev_dice: Tensor, dice: Tensor, form: str = "paper", eps: float = 1e-8
) -> Tuple[Tensor, Tensor]:
    """One iteration's learned / un-learned increments ``(C,)`` of DHC's DifW, both ``≥ 0``.

    With ``Δ = d_t − d_{t−1}`` and ``ℓ = ln(d_t / d_{t−1})`` (Dice clamped to ``≥ eps``):
    - ``form="paper"``: learned ``1[Δ>0]·ℓ``, un-learned ``1[Δ≤0]·|ℓ|``. The paper writes
      ``1[Δ≤0]·ℓ``, which is ≤ 0 and makes ``(s^u/s^l)^α`` a fractional power of a negative
      number; we take its magnitude, the amount un-learned.
    - ``form="reference"`` (xmed-lab/DHC code): learned ``1[Δ>0]·Δ·ℓ``, un-learned ``1[Δ≤0]·Δ·ℓ``
      (a product of two non-positive numbers).
    """
    if form not in ("paper", "reference"):
        raise ValueError(f"form must be 'paper' or 'reference', got {form!r}")
    d, d0 = dice.float().clamp_min(eps), prev_dice.float().clamp_min(eps)
    delta, log_ratio = dice.float() - prev_dice.float(), torch.log(d / d0)
    up = delta > 0
    zero = torch.zeros_like(log_ratio)
    if form == "paper":
        return torch.where(up, log_ratio, zero), torch.where(up, zero, -log_ratio)
    return torch.where(up, delta * log_ratio, zero), torch.where(up, zero, delta * log_ratio)


def difficulty_weights(
    learned: Tensor, unlearned: Tensor, mean_dice: Tensor, alpha: float = 0.2, eps: float = 1e-8
) -> Tensor:
    """DifW: ``s = ((s^u + ε)/(s^l + ε))^α``, ``w = (1 − d̄)·s``, returned as ``C·w / max(w)``.

    ``learned``/``unlearned`` ``(C,)`` are the accumulated speeds, ``mean_dice`` ``(C,)`` the EMA of
    Dice. If every ``w`` is 0 (all classes perfect) all weights are equal (``C``).
    """
    s = ((unlearned.float().clamp_min(0) + eps) / (learned.float().clamp_min(0) + eps)).pow(alpha)
    w = (1 - mean_dice.float()).clamp_min(0) * s
    C = w.numel()
    top = w.max()
    return C * w / top if top > 0 else torch.full_like(w, float(C))


class DifficultyState(NamedTuple):
    """DifW state after one step; all ``(C,)``."""

    learned: Tensor
    unlearned: Tensor
    mean_dice: Tensor
    weights: Tensor


def difficulty_step(
    prev_dice: Tensor,
    dice: Tensor,
    learned: Tensor,
    unlearned: Tensor,
    mean_dice: Tensor,
    valid: Optional[Tensor] = None,
    has_prev: Optional[Tensor] = None,
    momentum: float = 49 / 50,
    alpha: float = 0.2,
    eps: float = 1e-8,
    form: str = "paper",
) -> DifficultyState:
    """One DifW iteration (DHC): accumulate learning speeds, update the Dice EMA, weigh.

    Speeds and ``d̄`` are accumulated with an EMA of momentum ``(τ−1)/τ`` (``τ = 50``): the
    paper's sum over the last ``τ`` iterations up to a factor ``1/τ`` that cancels in the ratio.
    ``valid`` ``(C,)`` marks classes with a Dice this iteration, ``has_prev`` classes that also
    had one before (speed increments need both); classes outside keep their state.
    Shapes: every tensor ``(C,)``.
    """
    C = dice.numel()
    ones = torch.ones(C, dtype=torch.bool, device=dice.device)
    valid = ones if valid is None else valid.bool()
    has_prev = ones if has_prev is None else has_prev.bool()
    inc_l, inc_u = learning_speed_increments(prev_dice, dice, form=form, eps=eps)
    step = valid & has_prev
    learned = torch.where(step, momentum * learned + (1 - momentum) * inc_l, learned)
    unlearned = torch.where(step, momentum * unlearned + (1 - momentum) * inc_u, unlearned)
    mean_dice = torch.where(valid, momentum * mean_dice + (1 - momentum) * dice.float(), mean_dice)
    return DifficultyState(learned, unlearned, mean_dice, difficulty_weights(learned, unlearned, mean_dice, alpha, eps))


# ----------------------------------------------------------------------------------------------
# confidence / information score (CDifW, CDisW)
# ----------------------------------------------------------------------------------------------


def confidence_stats(
    probs: Tensor, target: Tensor, num_classes: int, valid: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    """Sums for the class confidence: ``(Σ_{j∈J_c} p_{c,j}, z_c = |J_c|)``, each ``(C,)`` float32.

    ``probs`` ``(B, C, *spatial)`` softmax probabilities, ``target`` integer ``(B, *spatial)``,
    ``J_c`` the ground-truth voxels of class c (all-reduce both sums under DDP).
    """
    oh = one_hot(target, num_classes, valid)
    dims = [0] + list(range(2, probs.dim()))
    return (probs.detach().float() * oh).sum(dims), oh.sum(dims)


def confidence_from_stats(prob_sums: Tensor, counts: Tensor) -> Tuple[Tensor, Tensor]:
    """``r_c = Σ_{j∈J_c} p_{c,j} / z_c`` ``(C,)`` and its validity mask (``z_c > 0``; else ``r_c = 0``)."""
    valid = counts > 0
    return prob_sums / torch.where(valid, counts, torch.ones_like(counts)), valid


def confidence_scores(
    probs: Tensor, target: Tensor, num_classes: int, valid: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    """Mean predicted probability of the true class over its ground-truth voxels ``(C,)`` and
    validity mask, for one process (see :func:`confidence_stats` for DDP)."""
    return confidence_from_stats(*confidence_stats(probs, target, num_classes, valid))


def information_scores(confidence: Tensor, smooth: float = 0.0) -> Tensor:
    """DMPF information score ``i_c = (1 − r_c + s) / (max_k(1 − r_k) + s)`` ``(C,)``.

    ``smooth`` s = 0 is the formula of the talk; the reference code uses 1e-2, which also keeps
    a perfectly confident class above 0. If every class is perfectly confident (denominator 0),
    all scores are 1.
    """
    u = (1 - confidence.float()).clamp_min(0) + smooth
    top = u.max()
    return u / top if top > 0 else torch.ones_like(u)


def confidence_scaled_weights(weights: Tensor, information: Tensor, beta: float = 0.2) -> Tensor:
    """``i^β · w`` ``(C,)``: CDifW when ``w`` is DifW, CDisW when ``w`` is DisW (DMPF; β = 0.2 as
    the reference's exponent)."""
    return information.float().clamp_min(0).pow(beta) * weights.float()


# ----------------------------------------------------------------------------------------------
# floor for loss weights
# ----------------------------------------------------------------------------------------------


def floored_weights(weights: Tensor, floor: float = 1.0) -> Tensor:
    """``floor + w / mean(w)`` ``(C,)``: class weights no class falls below, for a supervised loss.

    DisW gives the most frequent class (background) weight 0 and DifW gives a well-learned class
    almost 0, so a weighted CE stops paying for false positives on it. Dividing by the mean makes
    the floor a fraction of the average weight, whatever the weights' scale; ``floor = 1`` is the
    ``1 + w/mean(w)`` form, ``floor = 0`` keeps the pure weights' ratios (the weighted CE and Dice
    are normalised by the weights, so only ratios matter). The order of the classes is kept and
    the largest/smallest ratio is at most ``(floor + max(w)/mean(w)) / floor``. All weights 0:
    every class gets ``floor``. Detached, float32.
    """
    if floor < 0:
        raise ValueError(f"floor must be >= 0, got {floor}")
    w = weights.detach().float()
    mean = w.mean()
    relative = w / mean if mean > 0 else torch.zeros_like(w)
    return relative + float(floor)
