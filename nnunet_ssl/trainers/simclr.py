"""SimCLR (Chen et al., ICML 2020) as the contrastive baseline of the category-level supervision seed
(:mod:`nnunet_ssl.trainers.dcl`): segmentation on the labeled patches plus NT-Xent between each unlabeled
patch and a second view of it. Needs no category labels. The base's ``consistency_weight``,
``rampup_fraction`` and ``ema_decay`` are not used (``unused_hyperparameters``); ``seed`` draws the
second view."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

from nnunet_ssl.losses.contrastive import multiscale_supcon_loss, simclr_positive_mask
from nnunet_ssl.methods.contrastive import ContrastiveSegmentationTrainer
from nnunet_ssl.trainers.semisupervised import split_output


def flip_and_jitter(x: torch.Tensor, flips: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """A second view for SimCLR: ``x'[b] = flip_{axes with flips[b]}(x[b]) · scale[b] + shift[b]``.

    ``x`` ``(B, C, *spatial)``; ``flips`` ``(B, n_spatial)`` bool; ``scale``, ``shift`` ``(B, C)``
    (per-sample, per-channel intensity jitter on the normalised intensities).
    """
    n_spatial = x.dim() - 2
    if flips.shape != (x.shape[0], n_spatial):
        raise ValueError(f"flips must be ({x.shape[0]}, {n_spatial}) for x of shape {tuple(x.shape)}, "
                         f"got {tuple(flips.shape)}")
    if scale.shape != x.shape[:2] or shift.shape != x.shape[:2]:
        raise ValueError(f"scale and shift must be {tuple(x.shape[:2])}, got {tuple(scale.shape)} and "
                         f"{tuple(shift.shape)}")
    per_sample = (x.shape[0],) + (1,) * (x.dim() - 1)
    out = x
    for d in range(n_spatial):
        out = torch.where(flips[:, d].to(x.device).view(per_sample), out.flip(2 + d), out)
    per_channel = x.shape[:2] + (1,) * n_spatial
    return out * scale.to(x).view(per_channel) + shift.to(x).view(per_channel)


def sample_view_parameters(shape: Sequence[int], generator: torch.Generator, flip_probability: float,
                           scale_range: float, shift_std: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(flips, scale, shift)`` for :func:`flip_and_jitter` of a batch of ``shape`` ``(B, C, *spatial)``:
    each axis flipped with ``flip_probability``, ``scale ~ U(1 - scale_range, 1 + scale_range)``,
    ``shift ~ N(0, shift_std²)``. Drawn on the CPU from ``generator``."""
    b, c, n_spatial = shape[0], shape[1], len(shape) - 2
    flips = torch.rand((b, n_spatial), generator=generator) < flip_probability
    scale = 1 + (2 * torch.rand((b, c), generator=generator) - 1) * scale_range
    shift = torch.randn((b, c), generator=generator) * shift_std
    return flips, scale, shift


class nnUNetTrainerSimCLR(ContrastiveSegmentationTrainer):
    """SimCLR baseline of the seed: ``L = L_seg + α·NT-Xent`` where each unlabeled patch's only
    positive is its second view (SupCon with one positive is SimCLR's NT-Xent).

    View 1 is the unlabeled patch as augmented by nnU-Net; view 2 is a cheap in-trainer
    augmentation of it (:func:`flip_and_jitter`: random flips along every spatial axis and a
    per-channel intensity scale and shift, drawn from ``self.generator``). Projection on the
    deepest encoder stage only by default (SimCLR's single head; ``multiscale=True`` for MSPH).
    Needs no category labels.
    """

    multiscale: bool = False
    """Project every encoder stage (MSPH) if True, else only the deepest one (SimCLR)."""
    view_flip_probability: float = 0.5
    """Probability of flipping view 2 along each spatial axis."""
    view_scale_range: float = 0.2
    """View 2 intensities are scaled by U(1 - r, 1 + r) per sample and channel."""
    view_shift_std: float = 0.1
    """View 2 intensities are shifted by N(0, σ²) per sample and channel."""

    def second_view(self, x: torch.Tensor) -> torch.Tensor:
        flips, scale, shift = sample_view_parameters(x.shape, self.generator, self.view_flip_probability,
                                                     self.view_scale_range, self.view_shift_std)
        return flip_and_jitter(x, flips, scale, shift)

    cost_model = {"forward": 3, "backward": 3}  # one pass over labeled, unlabeled and the second view
    activation_factor = 3  # one graph on labeled, unlabeled and the second view (activation_memory.md)

    def compute_losses(self, data, target, unlabeled):
        n, m = data.shape[0], unlabeled.shape[0]
        out_l, _ = split_output(self.network(torch.cat([data, unlabeled, self.second_view(unlabeled)])), n)
        z = [zs[n:] for zs in self.project(self.encoder_taps.pop())]
        loss_con = multiscale_supcon_loss(z, simclr_positive_mask(m, device=data.device), self.temperature)
        loss_seg = self.loss(out_l, target)
        return {"loss": loss_seg + self.contrastive_weight * loss_con, "loss_seg": loss_seg, "loss_simclr": loss_con}
