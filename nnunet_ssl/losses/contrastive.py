"""Supervised contrastive learning on image-level embeddings.

SupCon: Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, the ``L_out`` form (eq. 2).
SimCLR: Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020 (positives = the other augmented view of the same image).

Positive pairs for category-level supervision are images with the same category set (and the same
stage, when both images have one); every other image of the batch is a negative. Pass only images
that have a category label: an unlabeled image would otherwise count as a negative.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch


def positive_pair_mask(category_vectors: torch.Tensor, stages: Optional[Sequence[Optional[str]]] = None
                       ) -> torch.Tensor:
    """``(B, B)`` bool: ``[i, j]`` is True when images i ≠ j have the same category set, and the same
    stage when both have one (a missing stage, ``None``, matches any stage).

    ``category_vectors``: ``(B, K)`` multi-hot (entries > 0.5 count as present), e.g. from
    :func:`nnunet_ssl.data.category_labels.category_vectors`. ``stages``: ``B`` strings or ``None``.
    The diagonal is False.
    """
    if category_vectors.ndim != 2:
        raise ValueError(f"category_vectors must be (B, K) multi-hot, got shape {tuple(category_vectors.shape)}")
    b = category_vectors.shape[0]
    present = category_vectors > 0.5
    mask = (present[:, None, :] == present[None, :, :]).all(dim=2)
    if stages is not None:
        if len(stages) != b:
            raise ValueError(f"got {len(stages)} stages for a batch of {b} category vectors")
        same_stage = torch.tensor([[si is None or sj is None or si == sj for sj in stages] for si in stages],
                                  dtype=torch.bool, device=mask.device).reshape(b, b)
        mask = mask & same_stage
    return mask & ~torch.eye(b, dtype=torch.bool, device=mask.device)


def simclr_positive_mask(batch_size: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """``(2B, 2B)`` bool for two views stacked as ``[v1; v2]`` (``B = batch_size`` images): row i's
    only positive is the other view of image ``i mod B``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    idx = torch.arange(2 * batch_size, device=device)
    partner = (idx + batch_size) % (2 * batch_size)
    return partner[None, :] == idx[:, None]


def _off_diagonal(positive_mask: torch.Tensor):
    """``(positives, not_self)``: the ``(B, B)`` bool positive mask without its diagonal, and the off-diagonal mask."""
    b = positive_mask.shape[0]
    not_self = ~torch.eye(b, dtype=torch.bool, device=positive_mask.device)
    return positive_mask.to(torch.bool) & not_self, not_self


def supcon_loss(embeddings: torch.Tensor, positive_mask: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss ``L_out`` (Khosla et al. 2020, eq. 2), averaged over anchors:

    ``ℓ_i = −1/|P(i)| · Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a≠i} exp(z_i·z_a/τ) )``

    ``embeddings``: ``(B, D)``, L2-normalised rows ``z``. ``positive_mask``: ``(B, B)`` bool, ``P(i)``
    = the True entries of row i (the diagonal is ignored). Anchors without positives are excluded
    from the mean; if no anchor has one, returns 0 still attached to the graph. Computed in float32.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (B, D), got shape {tuple(embeddings.shape)}")
    b = embeddings.shape[0]
    if positive_mask.shape != (b, b):
        raise ValueError(f"positive_mask must be ({b}, {b}) for {b} embeddings, got {tuple(positive_mask.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    positives, not_self = _off_diagonal(positive_mask)
    num_pos = positives.sum(dim=1)
    has_pos = num_pos > 0
    if not bool(has_pos.any()):
        return embeddings.sum() * 0.0
    z = embeddings.float()
    logits = z @ z.t() / temperature
    log_denominator = torch.logsumexp(logits.masked_fill(~not_self, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - log_denominator
    mean_log_prob_pos = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(1)[has_pos] / num_pos[has_pos]
    return -mean_log_prob_pos.mean()


def supcon_chance(positive_mask: torch.Tensor, num_scales: int = 1) -> float:
    """What :func:`multiscale_supcon_loss` over ``num_scales`` scales is when the embeddings tell the images
    apart not at all (every similarity equal): each anchor's softmax over the ``B - 1`` others is uniform, so
    ``ℓ_i = ln(B - 1)`` for every anchor with a positive, and the loss is ``num_scales · ln(B - 1)``; 0 if
    no anchor has a positive (as the loss). A contrastive term that learns falls below this level."""
    if not bool(_off_diagonal(positive_mask)[0].any()):
        return 0.0
    return num_scales * math.log(positive_mask.shape[0] - 1)


def multiscale_supcon_loss(embeddings_per_scale: Sequence[torch.Tensor], positive_mask: torch.Tensor,
                           temperature: float = 0.07) -> torch.Tensor:
    """``L_DCL = Σ_scales SupCon(Z_s)``: :func:`supcon_loss` summed over the embeddings of every
    encoder stage (each ``(B, D_s)``), with one positive mask for all scales."""
    if len(embeddings_per_scale) == 0:
        raise ValueError("embeddings_per_scale is empty; pass one (B, D) tensor per encoder stage")
    return sum(supcon_loss(z, positive_mask, temperature) for z in embeddings_per_scale)
