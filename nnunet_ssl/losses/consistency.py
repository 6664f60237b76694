"""Consistency losses between two predictions of the same input."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

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


def hard_pseudo_labels(logits: torch.Tensor) -> torch.Tensor:
    """``argmax`` over classes (dim 1) of detached logits: ``(B, C, *spatial)`` -> ``(B, *spatial)`` long."""
    return class_argmax(logits.detach().float())


def cross_pseudo_supervision(logits_a: torch.Tensor, logits_b: torch.Tensor,
                             ce: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
                             ce_b: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """CPS (Chen et al., CVPR 2021): ``CE(a, argmax b) + CE_b(b, argmax a)``.

    ``ce(logits, labels)`` defaults to plain cross-entropy; DHC-style trainers pass class-weighted CEs.
    ``ce_b`` (default: ``ce``) is used for the second term, e.g. GuidedNet's KT-CPS, where each
    direction carries the class weights of the network that made the pseudo-labels.
    Pseudo-labels carry no gradient.
    """
    ce = ce or (lambda logits, labels: F.cross_entropy(logits.float(), labels))
    ce_b = ce_b or ce
    return ce(logits_a, hard_pseudo_labels(logits_b)) + ce_b(logits_b, hard_pseudo_labels(logits_a))
