"""GuidedNet losses around the 3D-CGMM (Zhao et al., "GuidedNet: Semi-Supervised Multi-Organ
Segmentation via Labeled Data Guide Unlabeled Data", ACM MM 2024).

Two CPS networks A and B; ``f`` are the last decoder stage's features
(:class:`nnunet_ssl.heads.feature_taps.FeatureTap`), the mixture is :mod:`nnunet_ssl.gmm`.
One step of a trainer, per network::

    m = gmm.update(f_lab, y_lab)                                    # moments of this batch
    lp_lab = log_posterior(f_lab, m.mu, m.sigma, log_priors(m.counts))  # differentiable in f, μ, σ
    L_gt   = loss_gt(lp_lab, y_lab)
    L_self = loss_self(logits_lab, cgmm_predict(lp_lab))
    L_max  = loss_max(m.mu, present=m.counts > 0)
    lp_unl = log_posterior(f_unl, m.mu, m.sigma, log_priors(m.counts))  # or gmm.log_posterior(f_unl)
    pseudo = rectify_pseudo_labels(logits_unl, lp_unl)
    # with both networks: loss_cons(lp_unl_A.exp(), lp_unl_B.exp()),
    #                     loss_rectify(logits_unl_A, logits_unl_B, pseudo_A, pseudo_B)

All shapes ``(B, K, *spatial)`` for class maps, ``(B, *spatial)`` for label maps, 2D or 3D.
Everything is computed in float32 with autocast off.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from nnunet_ssl.gmm.cgmm import _no_autocast, labels_at
from nnunet_ssl.losses.weighted import weighted_cross_entropy
from nnunet_ssl.utils.distributed import all_reduce_sum
from nnunet_ssl.utils.tensors import class_argmax
from nnunet_ssl.weighting.functional import one_hot

__all__ = [
    "loss_gt",
    "loss_self",
    "loss_max",
    "loss_cons",
    "loss_rectify",
    "rectify_pseudo_labels",
    "rectification_rate",
]


def _check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _check_label_map(logits: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if labels.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"expected {name} (B, *spatial) = {tuple(logits.shape[:1] + logits.shape[2:])} matching the "
            f"logits {tuple(logits.shape)}, got {tuple(labels.shape)}"
        )


def loss_gt(log_post: torch.Tensor, labels: torch.Tensor, ignore_index: Optional[int] = None) -> torch.Tensor:
    """``L_gt``: cross-entropy of the CGMM posterior against the ground truth, a scalar.

    ``L_gt = mean_{labeled voxels} −log P(y|x)`` with ``log_post`` ``(B, K, *spatial)`` from
    :func:`nnunet_ssl.gmm.log_posterior`, labels ``(B[, 1], *spatial)`` (resized by nearest to the
    posterior's resolution if needed; ``ignore_index`` voxels left out; none left → 0).
    The paper's ``G`` is the argmax, which has no gradient; the loss is taken on the posterior
    instead, so it trains the features directly and through ``μ``/``σ`` when those come from the
    same batch (:func:`nnunet_ssl.gmm.class_moments`). ``log_post`` is already normalised, so the
    cross-entropy's log-softmax leaves it unchanged (value and gradient).
    """
    lab, valid = labels_at(labels, log_post.shape[2:], log_post.shape[1], ignore_index)
    with _no_autocast(log_post.device):
        return weighted_cross_entropy(log_post.float(), lab, voxel_weights=None if valid is None else valid.float())


def _log1m_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``log(1 − softmax(z)_k)`` per class, exact also when ``softmax(z)_k`` rounds to 1.

    For the top class: ``logsumexp_{j≠k} z_j − logsumexp_j z_j``; for the others (``p ≤ 1/2``)
    ``log1p(−p)``, fed a harmless value where not selected so no inf/NaN gradient can leak.
    """
    log_p = torch.log_softmax(logits, 1)
    is_top = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, class_argmax(logits)[:, None], True)
    others = torch.logsumexp(logits.masked_fill(is_top, float("-inf")), 1, keepdim=True)
    top = others - torch.logsumexp(logits, 1, keepdim=True)
    rest = torch.log1p(-torch.exp(torch.where(is_top, torch.full_like(log_p, -1.0), log_p)))
    return torch.where(is_top, top.expand_as(log_p), rest)


def loss_self(logits: torch.Tensor, cgmm_labels: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``L_self``: binary cross-entropy between the network's softmax and the one-hot CGMM
    prediction ``G`` on labeled data, a scalar.

    ``L_self = mean_voxels (1/K) Σ_k −[g_k log p_k + (1 − g_k) log(1 − p_k)]`` with
    ``p = softmax(logits)`` ``(B, K, *spatial)``, ``g = one_hot(cgmm_labels)``, ``cgmm_labels``
    ``(B, *spatial)`` (:func:`nnunet_ssl.gmm.cgmm_predict`, no gradient). ``mask`` ``(B, *spatial)``
    restricts the mean to some voxels (none → 0). Logs are taken from the logits (exact for
    saturated softmaxes, no clamping). Needs K ≥ 2.
    """
    if logits.shape[1] < 2:
        raise ValueError(f"loss_self needs at least 2 classes, got logits with {logits.shape[1]}")
    _check_label_map(logits, cgmm_labels, "cgmm_labels")
    with _no_autocast(logits.device):
        z = logits.float()
        g = one_hot(cgmm_labels.detach().long(), z.shape[1])
        bce = -(g * torch.log_softmax(z, 1) + (1 - g) * _log1m_softmax(z)).mean(1)
        if mask is None:
            return bce.mean()
        _check_label_map(logits, mask, "mask")
        m = mask.float()
        return (bce * m).sum() / m.sum().clamp_min(1.0)


def loss_max(mu: torch.Tensor, present: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``L_max = 2 / (K(K−1)) Σ_{k<v} exp(−d_kv²)`` with ``d_kv = (1/F) Σ_c |μ_kc − μ_vc|``, a scalar:
    the mean over the K(K−1)/2 unordered pairs of class means ``mu`` ``(K, F)`` of a similarity
    (1 for equal means, → 0 as they part), so minimising it pushes the class means apart.

    ``d_kv`` is the channel-mean absolute distance, as in the reference code (kimjisoo12/GuidedNet,
    ``proto_loss``), not the squared Euclidean norm ``‖μ_k − μ_v‖²``: the norm sums over the F
    channels, so for F = 32 channels apart by 1 it gives ``exp(−32) ≈ 1e-14`` and the loss (and its
    gradient) vanish before training starts; the mean gives ``exp(−1)``. (The paper writes
    ``Σ_{k≠v}`` with the same factor; summing ordered pairs would count each pair twice and range
    over [0, 2].) ``present`` ``(K,)`` bool restricts it to the classes with an estimate (e.g.
    ``counts > 0``); fewer than two classes → 0.
    """
    if mu.ndim != 2:
        raise ValueError(f"expected class means (K, F), got shape {tuple(mu.shape)}")
    with _no_autocast(mu.device):
        m = mu.float()
        if present is not None:
            if present.shape != (mu.shape[0],):
                raise ValueError(f"expected present ({mu.shape[0]},) bool, got shape {tuple(present.shape)}")
            m = m[present.bool()]
        k = m.shape[0]
        if k < 2:
            return m.sum() * 0.0
        i, j = torch.triu_indices(k, k, offset=1, device=m.device)
        d = (m[i] - m[j]).abs().mean(-1)
        return torch.exp(-d * d).mean()


def loss_cons(prob_a: torch.Tensor, prob_b: torch.Tensor) -> torch.Tensor:
    """``L_cons = mean((Ĝ^A − Ĝ^B)²)`` over batch, classes and voxels, a scalar: agreement of the
    CGMM posteriors (probabilities, ``(B, K, *spatial)``, e.g. ``log_posterior(...).exp()``) of
    networks A and B on unlabeled data. Both sides carry gradient."""
    _check_same_shape("prob_a", prob_a, "prob_b", prob_b)
    with _no_autocast(prob_a.device):
        return (prob_a.float() - prob_b.float()).pow(2).mean()


def rectify_pseudo_labels(logits: torch.Tensor, log_post: torch.Tensor) -> torch.Tensor:
    """CGMM-rectified hard pseudo-labels ``Ĝ = argmax_k p_k · P(k|x)`` ``(B, *spatial)``, detached.

    The network's softmax ``p`` (logits ``(B, K, *spatial)``) and the CGMM posterior (``log_post``,
    same shape, :func:`nnunet_ssl.gmm.log_posterior`) are combined as a product of experts, in log
    space: where the network is unsure, the labeled feature distribution decides; where the CGMM
    is unsure, the network does. ``argmax(logits)`` vs. the result is what
    :func:`rectification_rate` measures.
    """
    _check_same_shape("logits", logits, "log_post", log_post)
    with torch.no_grad(), _no_autocast(logits.device):
        return class_argmax(torch.log_softmax(logits.float(), 1) + log_post.float())


def loss_rectify(
    logits_a: torch.Tensor,
    logits_b: torch.Tensor,
    pseudo_a: torch.Tensor,
    pseudo_b: torch.Tensor,
    ce: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """``L_rectify = CE(p^A, Ĝ^A) + CE(p^B, Ĝ^B)``, a scalar: each network learns its own
    CGMM-rectified hard pseudo-labels ``(B, *spatial)`` (:func:`rectify_pseudo_labels`) on
    unlabeled data. ``ce(logits, labels)`` defaults to the mean cross-entropy; pass a
    class-weighted one (e.g. KT weights) as for
    :func:`nnunet_ssl.losses.consistency.cross_pseudo_supervision`."""
    _check_label_map(logits_a, pseudo_a, "pseudo_a")
    _check_label_map(logits_b, pseudo_b, "pseudo_b")
    ce = ce or (lambda logits, labels: F.cross_entropy(logits.float(), labels))
    with _no_autocast(logits_a.device):
        return ce(logits_a, pseudo_a.detach().long()) + ce(logits_b, pseudo_b.detach().long())


def rectification_rate(pseudo_before: torch.Tensor, pseudo_after: torch.Tensor) -> torch.Tensor:
    """Share of voxels whose pseudo-label the rectification changed, over all DDP ranks (a
    collective: call it on every rank), as a 0-dim float tensor; 0 for empty inputs."""
    _check_same_shape("pseudo_before", pseudo_before, "pseudo_after", pseudo_after)
    changed = (pseudo_before != pseudo_after).sum().float()
    total = torch.tensor(float(pseudo_before.numel()), device=changed.device)
    stats = all_reduce_sum(torch.stack([changed, total]))
    return stats[0] / stats[1].clamp_min(1.0)
