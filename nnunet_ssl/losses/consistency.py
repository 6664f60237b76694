"""Consistency losses between two predictions of the same input."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from nnunet_ssl.utils.distributed import all_reduce_sum, world_size
from nnunet_ssl.utils.tensors import class_argmax


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean Teacher consistency (Tarvainen & Valpola 2017): ``mean((softmax(s) − softmax(t))²)``.

    Shapes ``(B, C, *spatial)``; the mean runs over every element (classes included). The teacher
    side is detached and both softmaxes are taken in float32.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher outputs differ in shape: {tuple(student_logits.shape)} vs "
                         f"{tuple(teacher_logits.shape)}")
    p_s = torch.softmax(student_logits.float(), 1)
    p_t = torch.softmax(teacher_logits.detach().float(), 1)
    return ((p_s - p_t) ** 2).mean()


def masked_probability_mse(student_logits: torch.Tensor, target_probs: torch.Tensor,
                           mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``Σ_j m_j Σ_c (softmax(s)_jc − q_jc)² / (C · Σ_j m_j)``: the squared error of probabilities
    averaged over classes and the voxels ``j`` the mask keeps (UA-MT's consistency; co-learning's
    MSE to soft targets with ``mask=None``, the plain mean).

    ``student_logits``, ``target_probs`` (detached): ``(B, C, *spatial)``; ``mask``: ``(B, *spatial)``
    or ``(B, 1, *spatial)`` in [0, 1]. ``Σ m`` is all-reduced over DDP ranks and divided by their
    number, so gradients averaged by DDP equal the global masked mean. An empty mask gives 0.
    """
    if student_logits.shape != target_probs.shape:
        raise ValueError(f"student logits and target probabilities differ in shape: {tuple(student_logits.shape)} "
                         f"vs {tuple(target_probs.shape)}")
    sq = (torch.softmax(student_logits.float(), 1) - target_probs.detach().float()) ** 2
    if mask is None:
        return sq.mean()
    m = mask.detach().float()
    m = m if m.ndim == sq.ndim else m.unsqueeze(1)
    if m.shape[0] != sq.shape[0] or m.shape[1] != 1 or m.shape[2:] != sq.shape[2:]:
        raise ValueError(f"mask must be (B, *spatial) or (B, 1, *spatial) = {(sq.shape[0], 1, *sq.shape[2:])}, "
                         f"got {tuple(mask.shape)}")
    den = all_reduce_sum(m.sum()) / world_size() * sq.shape[1]
    return (sq * m).sum() / den if den > 0 else sq.sum() * 0.0


def hard_pseudo_labels(logits: torch.Tensor) -> torch.Tensor:
    """``argmax`` over classes (dim 1) of detached logits: ``(B, C, *spatial)`` -> ``(B, *spatial)`` long."""
    return class_argmax(logits.detach().float())


def pseudo_label_ce(logits: torch.Tensor, pseudo_labels: torch.Tensor) -> torch.Tensor:
    """Plain cross-entropy of ``logits`` against hard ``pseudo_labels`` (one direction of CPS)."""
    return F.cross_entropy(logits.float(), pseudo_labels)


def cross_pseudo_supervision(logits_a: torch.Tensor, logits_b: torch.Tensor,
                             ce: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
                             ce_b: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """CPS (Chen et al., CVPR 2021): ``CE(a, argmax b) + CE_b(b, argmax a)``.

    ``ce(logits, labels)`` defaults to plain cross-entropy; DHC-style trainers pass class-weighted CEs.
    ``ce_b`` (default: ``ce``) is used for the second term, e.g. GuidedNet's KT-CPS, where each
    direction carries the class weights of the network that made the pseudo-labels.
    Pseudo-labels carry no gradient.
    """
    ce = ce or pseudo_label_ce
    ce_b = ce_b or ce
    return ce(logits_a, hard_pseudo_labels(logits_b)) + ce_b(logits_b, hard_pseudo_labels(logits_a))
