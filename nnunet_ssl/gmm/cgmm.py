"""Class-conditional Gaussian mixture on decoder features (3D-CGMM of GuidedNet).

Zhao et al., "GuidedNet: Semi-Supervised Multi-Organ Segmentation via Labeled Data Guide
Unlabeled Data", ACM MM 2024. Per class ``k``, labeled features over the ground-truth voxels of
``k`` give a mean ``μ_k`` and a standard deviation ``σ_k`` (diagonal Gaussian, per feature
channel); the class prior ``p(k)`` is the labeled class frequency; every voxel gets the posterior
``P(k|x) ∝ p(k)·N̄(f(x) | μ_k, σ_k)`` and the CGMM prediction ``G = argmax_k P(k|x)``.

Calibration: ``N̄`` is the *channel-mean* density, ``log N̄ = (1/F) Σ_c log N(f_c | μ_kc, σ_kc)``
(the geometric mean of the per-channel densities), not their product. The reference code's
density is ``exp(−(mean_c |f − μ_k|)²)``, also a mean over channels; a product over F channels
(F = 32 in nnU-Net's 2D decoder) multiplies every log-likelihood gap by F, and with a tiny
variance floor the posterior becomes one-hot (gaps of 10^4 nats were measured), ``L_gt``'s
gradient dwarfs the supervised one and the CGMM never disagrees with itself. The channel mean
keeps the gap between two classes at ``mean_c`` of the per-channel gaps, independent of F. The
variance floor :data:`DEFAULT_VAR_FLOOR` bounds what is left: nnU-Net's decoder features come out
of an instance norm and a leaky ReLU (per-channel variance ~0.3 per image), so ``σ² ≥ 0.05``
caps a class pair at ``Δ²/(2·0.05) = 10·Δ²`` nats per unit of channel-mean squared separation
``Δ²``, whatever the within-class spread collapses to (constant background, dead channels).

Conventions
- Features ``(B, F, *spatial)``, labels ``(B, *spatial)`` or ``(B, 1, *spatial)`` (2D or 3D).
  Labels are resized to the feature resolution by nearest neighbour when the shapes differ.
  Voxels labeled ``ignore_index`` (nnU-Net's ignore label) are not counted; any other label
  outside ``[0, K)`` raises ``ValueError``.
- Everything is computed in float32 with autocast disabled: under mixed precision the inputs
  may be float16, the densities never leave log space, so nothing under- or overflows.
- DDP: per-class counts, sums and centred squared sums are all-reduced (``all_reduce_sum``)
  before any division, so all ranks hold the same statistics. The reduced values keep the
  gradient of the local contribution, so a loss on the batch posterior trains the features.
- A class absent from the batch has count 0: the functional moments give it ``μ = 0`` and
  ``σ = sqrt(var_floor)``, which are placeholders; such a class is excluded from the posterior
  through a log prior of ``-inf`` (see :func:`log_posterior`).
"""
from __future__ import annotations

import math
from typing import Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from nnunet_ssl.utils.distributed import all_reduce_sum
from nnunet_ssl.utils.tensors import class_argmax
from nnunet_ssl.weighting.functional import to_label_map

DEFAULT_VAR_FLOOR = 0.05
"""Default floor of the per-class feature variances (see the module docstring for why 0.05)."""

EXCLUDED_LOG_POSTERIOR = -1.0e4
"""Log posterior written for classes excluded from the mixture (log prior ``-inf``). Finite, so
no NaN can arise downstream (``p·log p``, gradients); ``exp(-1e4) == 0`` in float32 and the
most probable included class has a log posterior ``>= -log K``, so an excluded class never wins
the argmax."""


class ClassMoments(NamedTuple):
    mu: torch.Tensor  # (K, F) class means
    sigma: torch.Tensor  # (K, F) class standard deviations, >= sqrt(var_floor)
    counts: torch.Tensor  # (K,) voxels per class (all ranks)


def _no_autocast(device: torch.device):
    return torch.autocast(device_type=device.type, enabled=False)


def labels_at(
    labels: torch.Tensor, spatial_shape: Sequence[int], num_classes: int, ignore_index: Optional[int] = None
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Labels ``(B, *s)`` or ``(B, 1, *s)`` (integer-valued, any dtype) as a long label map
    ``(B, *spatial_shape)`` and a valid mask (``None`` without ``ignore_index``), resized by
    nearest neighbour if ``s != spatial_shape``. Validation as in
    :func:`nnunet_ssl.weighting.functional.to_label_map` (values outside ``[0, K)`` other than
    ``ignore_index`` raise ``ValueError``)."""
    spatial_shape = tuple(int(s) for s in spatial_shape)
    lab = labels[:, 0] if labels.ndim == len(spatial_shape) + 2 and labels.shape[1] == 1 else labels
    if lab.ndim == len(spatial_shape) + 1 and tuple(lab.shape[1:]) != spatial_shape:
        lab = F.interpolate(lab[:, None].float(), size=spatial_shape, mode="nearest")[:, 0]
    return to_label_map(lab, num_classes, spatial_shape, ignore_index)


def _flat_valid(features: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: Optional[int]):
    """(N_valid, F) float32 features and (N_valid,) labels of the labeled (not ignored) voxels."""
    if features.ndim < 3:
        raise ValueError(f"expected features (B, F, *spatial), got shape {tuple(features.shape)}")
    lab, valid = labels_at(labels, features.shape[2:], num_classes, ignore_index)
    if lab.shape[0] != features.shape[0]:
        raise ValueError(f"features have batch size {features.shape[0]} but labels {lab.shape[0]}")
    flat = features.float().movedim(1, -1).reshape(-1, features.shape[1])
    if valid is None:
        return flat, lab.reshape(-1)
    valid = valid.reshape(-1)
    return flat[valid], lab.reshape(-1)[valid]


def class_sums(features: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: Optional[int] = None):
    """Per-class voxel counts ``(K,)`` and feature sums ``(K, F)`` of this process's batch.

    features ``(B, F, *spatial)``; labels ``(B, *spatial)`` or ``(B, 1, *spatial)``.
    Differentiable with respect to ``features``. Not reduced across ranks.
    """
    with _no_autocast(features.device):
        x, lab = _flat_valid(features, labels, num_classes, ignore_index)
        # index_add rather than bincount: bincount has no deterministic CUDA kernel; float64 keeps
        # counts exact beyond 2**24 voxels
        counts = torch.zeros(num_classes, dtype=torch.float64, device=x.device)
        counts = counts.index_add(0, lab, torch.ones_like(lab, dtype=torch.float64)).float()
        sums = x.new_zeros(num_classes, x.shape[1]).index_add(0, lab, x)
    return counts, sums


def class_centered_square_sums(
    features: torch.Tensor, labels: torch.Tensor, mu: torch.Tensor, ignore_index: Optional[int] = None
) -> torch.Tensor:
    """``Σ_{voxels of k} (f − μ_k)²`` per class and channel, ``(K, F)``, for given means ``mu (K, F)``.

    Centring on the (globally reduced) mean before squaring avoids the cancellation of
    ``E[f²] − E[f]²`` when ``|μ| ≫ σ``. Not reduced across ranks.
    """
    with _no_autocast(features.device):
        x, lab = _flat_valid(features, labels, mu.shape[0], ignore_index)
        d = x - mu.float()[lab]
        return x.new_zeros(mu.shape).index_add(0, lab, d * d)


def _global_sum(local: torch.Tensor) -> torch.Tensor:
    """All-ranks sum as value, gradient of the local contribution."""
    return local + (all_reduce_sum(local) - local.detach())


def class_moments(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    var_floor: float = DEFAULT_VAR_FLOOR,
    ignore_index: Optional[int] = None,
) -> ClassMoments:
    """Per-class mean ``μ (K, F)``, standard deviation ``σ (K, F)`` and count ``(K,)`` of labeled
    features over the ground-truth voxels of each class, over all DDP ranks (default floor:
    :data:`DEFAULT_VAR_FLOOR`).

    ``σ_k² = max(mean_k((f − μ_k)²), var_floor)`` (population variance, floored so a class of one
    voxel or of constant features keeps a finite density). Absent classes: ``μ = 0``,
    ``σ = sqrt(var_floor)``, count 0. Differentiable with respect to ``features``.
    """
    if var_floor <= 0:
        raise ValueError(f"var_floor must be > 0, got {var_floor}")
    counts, sums = class_sums(features, labels, num_classes, ignore_index)
    counts, sums = all_reduce_sum(counts), _global_sum(sums)
    denom = counts.clamp_min(1.0)[:, None]
    mu = sums / denom
    # μ enters detached: the exact derivative of Σ_all (f − μ)² through μ is 0, but one DDP rank
    # sees only its own voxels, whose share of that derivative is not.
    sq = _global_sum(class_centered_square_sums(features, labels, mu.detach(), ignore_index))
    var = (sq / denom).clamp_min(var_floor)
    return ClassMoments(mu, var.sqrt(), counts)


def log_priors(counts: torch.Tensor) -> torch.Tensor:
    """``log p(k) = log(n_k / Σ n)`` from class counts ``(K,)``; ``-inf`` for a class with no voxel
    (which excludes it from :func:`log_posterior`)."""
    counts = counts.detach().float()
    return torch.log(counts / counts.sum().clamp_min(1e-12))


def log_posterior(
    features: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, log_prior: torch.Tensor
) -> torch.Tensor:
    """``log P(k|x) = log p(k) + log N̄(f(x)|μ_k, σ_k) − logsumexp_j(…)`` per voxel, ``(B, K, *spatial)``,
    with the channel-mean log-density

        log N̄(f|μ_k, σ_k) = (1/F) Σ_c [ −(f_c − μ_kc)² / (2σ_kc²) − log σ_kc − ½ log 2π ]

    (the geometric mean of the F per-channel densities; why not their product: module docstring).
    For F = 1 it is the ordinary Gaussian posterior.

    features ``(B, F, *spatial)``; mu, sigma ``(K, F)`` (diagonal Gaussians); log_prior ``(K,)``.
    Float32, autocast off, log-sum-exp over classes: no density is ever exponentiated, so
    features of any magnitude (float16 inputs included) give finite results. Classes with a
    non-finite log prior are excluded: their entry is :data:`EXCLUDED_LOG_POSTERIOR`.
    Differentiable with respect to features, mu and sigma.
    """
    if features.ndim < 3:
        raise ValueError(f"expected features (B, F, *spatial), got shape {tuple(features.shape)}")
    num_classes, num_feats = mu.shape[0], features.shape[1]
    if mu.shape != (num_classes, num_feats) or sigma.shape != mu.shape or log_prior.shape != (num_classes,):
        raise ValueError(
            f"expected mu and sigma (K, {num_feats}) and log_prior (K,), got mu {tuple(mu.shape)}, "
            f"sigma {tuple(sigma.shape)}, log_prior {tuple(log_prior.shape)}"
        )
    included = torch.isfinite(log_prior)
    if not bool(included.any()):
        raise ValueError("every class has log prior -inf: no class statistics yet (no labeled voxel seen)")
    idx = included.nonzero()[:, 0]
    with _no_autocast(features.device):
        x = features.float()
        mu_i, sigma_i, lp_i = mu.float()[idx], sigma.float()[idx], log_prior.float()[idx]
        if not bool((sigma_i > 0).all()):
            raise ValueError("expected sigma > 0 for every class with a finite log prior")
        # quadratic form Σ_f (x_f − μ_kf)² / σ_kf², expanded into two channel contractions (no
        # (B, K, F, *spatial) tensor); centring on the mean of the class means keeps the
        # expansion's cancellation at the scale of the class spread.
        centre = mu_i.mean(0).detach()
        shape = (1, num_feats) + (1,) * (x.ndim - 2)
        xc = x - centre.view(shape)
        m = mu_i - centre
        w = sigma_i.pow(-2)
        quad = (
            torch.einsum("bf...,kf->bk...", xc * xc, w)
            - 2.0 * torch.einsum("bf...,kf->bk...", xc, w * m)
            + (w * m * m).sum(1).view((1, -1) + (1,) * (x.ndim - 2))
        ).clamp_min(0.0)
        log_norm = -torch.log(sigma_i).mean(1) - 0.5 * math.log(2.0 * math.pi)
        joint = (lp_i + log_norm).view((1, -1) + (1,) * (x.ndim - 2)) - (0.5 / num_feats) * quad
        post = joint - torch.logsumexp(joint, dim=1, keepdim=True)
        out = x.new_full((x.shape[0], num_classes) + tuple(x.shape[2:]), EXCLUDED_LOG_POSTERIOR)
        return out.index_copy(1, idx, post)


def cgmm_predict(log_post: torch.Tensor) -> torch.Tensor:
    """CGMM prediction ``G = argmax_k P(k|x)``: ``(B, K, *spatial)`` → ``(B, *spatial)`` long."""
    return class_argmax(log_post)


class ClassConditionalGMM:
    """Running class-conditional Gaussian mixture over labeled features (GuidedNet's 3D-CGMM).

    ``update(features, labels)`` computes the batch moments (all ranks) and folds them into the
    stored estimate, per class present in the batch:
    ``θ ← m·θ + (1 − m)·θ_batch`` for ``θ ∈ {μ, σ², p}`` with ``m = momentum`` (``None`` or 0:
    the batch value replaces the old one; the first estimate of a class is always the batch
    value). ``p`` is the class's voxel frequency in the batch; priors are renormalised over the
    classes with an estimate. A class absent from the batch keeps its last estimate. A class
    never seen is excluded from the posterior (log prior ``-inf``, log posterior
    :data:`EXCLUDED_LOG_POSTERIOR`). Stored estimates are detached; ``update`` returns the
    differentiable batch moments for the losses of the same step.
    """

    def __init__(
        self,
        num_classes: int,
        momentum: Optional[float] = None,
        var_floor: float = DEFAULT_VAR_FLOOR,
        ignore_index: Optional[int] = None,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if momentum is not None and not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be None or in [0, 1), got {momentum}")
        if var_floor <= 0:
            raise ValueError(f"var_floor must be > 0, got {var_floor}")
        self.num_classes = int(num_classes)
        self.momentum = momentum
        self.var_floor = float(var_floor)
        self.ignore_index = ignore_index
        self.mu = torch.zeros(num_classes, 0)
        self.var = torch.zeros(num_classes, 0)
        self.prior = torch.zeros(num_classes)
        self.seen = torch.zeros(num_classes, dtype=torch.bool)

    @torch.no_grad()
    def _fold(self, batch: ClassMoments) -> None:
        device, num_feats = batch.mu.device, batch.mu.shape[1]
        if self.mu.shape[1] != num_feats:
            if bool(self.seen.any()):
                raise ValueError(f"features have {num_feats} channels, the mixture was fitted on {self.mu.shape[1]}")
            self.mu = torch.zeros(self.num_classes, num_feats)
            self.var = torch.zeros(self.num_classes, num_feats)
        self.mu, self.var, self.prior, self.seen = (t.to(device) for t in (self.mu, self.var, self.prior, self.seen))
        present = batch.counts > 0
        freq = batch.counts / batch.counts.sum().clamp_min(1.0)
        keep = torch.where(self.seen & present, float(self.momentum or 0.0), 0.0)
        keep = torch.where(present, keep, 1.0)  # absent: keep the last estimate untouched
        self.mu = keep[:, None] * self.mu + (1 - keep[:, None]) * batch.mu.detach().float()
        self.var = keep[:, None] * self.var + (1 - keep[:, None]) * batch.sigma.detach().float().pow(2)
        self.prior = keep * self.prior + (1 - keep) * freq
        self.seen = self.seen | present

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> ClassMoments:
        """Fold the labeled batch (features ``(B, F, *spatial)``, labels ``(B[, 1], *spatial)``) into
        the estimate; returns the batch's differentiable :class:`ClassMoments`."""
        batch = class_moments(features, labels, self.num_classes, self.var_floor, self.ignore_index)
        self._fold(batch)
        return batch

    @property
    def sigma(self) -> torch.Tensor:
        """Stored standard deviations ``(K, F)``."""
        return self.var.sqrt()

    def log_prior(self) -> torch.Tensor:
        """``(K,)`` log priors, normalised over seen classes; ``-inf`` for unseen ones."""
        prior = torch.where(self.seen, self.prior, torch.zeros_like(self.prior))
        return log_priors(prior)

    def log_posterior(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, K, *spatial)`` log posterior of the stored mixture (see :func:`log_posterior`)."""
        if not bool(self.seen.any()):
            raise ValueError("ClassConditionalGMM has no estimate yet: call update() with labeled features first")
        device = features.device
        return log_posterior(features, self.mu.to(device), self.sigma.to(device), self.log_prior().to(device))

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """CGMM prediction ``(B, *spatial)`` of the stored mixture."""
        return cgmm_predict(self.log_posterior(features))

    def state_dict(self) -> Dict[str, Union[torch.Tensor, float, int, None]]:
        return {
            "num_classes": self.num_classes,
            "momentum": self.momentum,
            "var_floor": self.var_floor,
            "ignore_index": self.ignore_index,
            "mu": self.mu.clone(),
            "var": self.var.clone(),
            "prior": self.prior.clone(),
            "seen": self.seen.clone(),
        }

    def load_state_dict(self, state: Dict[str, Union[torch.Tensor, float, int, None]]) -> None:
        if int(state["num_classes"]) != self.num_classes:
            raise ValueError(f"state has {state['num_classes']} classes, this mixture {self.num_classes}")
        self.momentum = state["momentum"]
        self.var_floor = float(state["var_floor"])
        self.ignore_index = state["ignore_index"]
        self.mu = state["mu"].clone()
        self.var = state["var"].clone()
        self.prior = state["prior"].clone()
        self.seen = state["seen"].clone().bool()
