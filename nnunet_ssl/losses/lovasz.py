"""Lovász hinge: a convex surrogate of the Jaccard loss for binary masks (Berman et al., CVPR 2018).

Pixels are sorted by their hinge error ``e_j = 1 − z_j·s_j`` (``s_j = ±1`` the label sign); the loss
is the dot product of the sorted, rectified errors with the gradient of the Jaccard loss along that
order (the Lovász extension), computed per image and averaged, as in the authors' reference code.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["lovasz_grad", "lovasz_hinge"]


def lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss for labels sorted by decreasing error:
    ``J_i = 1 − (G − Σ_{j≤i} g_j) / (G + Σ_{j≤i} (1 − g_j))`` with ``G = Σ g``; returns
    ``(J_1, J_2 − J_1, …, J_n − J_{n−1})``. ``gt_sorted`` 1-D, 0/1."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def _lovasz_hinge_flat(logits: Tensor, labels: Tensor) -> Tensor:
    if logits.numel() == 0:
        return logits.sum() * 0.0
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, order = torch.sort(errors, descending=True)
    grad = lovasz_grad(labels[order])
    return torch.dot(torch.relu(errors_sorted), grad)


def lovasz_hinge(logits: Tensor, labels: Tensor, per_image: bool = True) -> Tensor:
    """Binary Lovász hinge, a scalar. ``logits`` and ``labels`` (0/1) ``(B, *spatial)``: with ``per_image``
    the loss of each of the ``B`` images is computed over its pixels and the mean is returned; otherwise
    all pixels of the batch form one image."""
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must have one shape")
    logits, labels = logits.float(), labels.float()
    if not per_image:
        return _lovasz_hinge_flat(logits.flatten(), labels.flatten())
    losses = [_lovasz_hinge_flat(lg.flatten(), lb.flatten()) for lg, lb in zip(logits, labels)]
    return torch.stack(losses).mean()
