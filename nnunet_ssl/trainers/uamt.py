"""Uncertainty-aware Mean Teacher (UA-MT; Yu et al., "Uncertainty-aware Self-ensembling Model for
Semi-supervised 3D Left Atrium Segmentation", MICCAI 2019) as an nnU-Net trainer."""
from __future__ import annotations

import math

import torch

from nnunet_ssl.losses.consistency import masked_probability_mse
from nnunet_ssl.methods.mean_teacher import MeanTeacherTrainer
from nnunet_ssl.schedules import sigmoid_rampup
from nnunet_ssl.trainers.semisupervised import split_output
from nnunet_ssl.utils.modules import full_resolution


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """``u = −Σ_c p̄_c log p̄_c`` of mean class probabilities ``(B, C, *spatial)`` → ``(B, *spatial)``
    (UA-MT's uncertainty; ``0·log 0 = 0``, so it is finite for one-hot inputs)."""
    return -torch.xlogy(probs.float(), probs.float()).sum(1)


def uncertainty_threshold(step: int, rampup_length: int, num_classes: int, start: float = 0.75) -> float:
    """UA-MT's threshold ``H(t) = (start + (1 − start)·r(t))·ln C`` with the sigmoid ramp-up ``r``
    (:func:`~nnunet_ssl.schedules.sigmoid_rampup`): from ``0.75·ln C`` up to ``ln C``, the maximal
    entropy of ``C`` classes."""
    if num_classes < 2:
        raise ValueError(f"the uncertainty threshold needs >= 2 classes, got {num_classes}")
    return (start + (1.0 - start) * sigmoid_rampup(step, rampup_length)) * math.log(num_classes)


class nnUNetTrainerUAMT(MeanTeacherTrainer):
    """Mean Teacher whose consistency is restricted to voxels where the teacher is certain.

    The teacher runs ``T`` times on the unlabeled batch with independent Gaussian input noise (σ 0.1,
    clipped ±0.2, as Mean Teacher), batched into ``ceil(T / passes_per_forward)`` forwards, before the
    student's forward (so their activations are freed before the student's graph is built); the
    uncertainty is the entropy of the mean probability; the mask keeps voxels with entropy below
    :func:`uncertainty_threshold` (0.75·ln C → ln C over ``threshold_rampup_fraction`` of training).
    ``L = L_sup + w(t)·masked MSE(p_student(x_u), p_teacher)``, ``w_max = 0.1``. The teacher target is
    the first of the ``T`` noisy passes (the reference draws one more noisy pass for it; same
    distribution, one pass saved). Inference network: the student, as SSL4MIS's UA-MT; teacher inference
    is ``nnUNetTrainerUAMT_TeacherInference``.
    """

    uncertainty_passes: int = 8
    """T: noisy teacher passes per step for the uncertainty estimate."""
    uncertainty_passes_per_forward: int = 2
    """Noisy copies per batched teacher forward (0: all T at once). 2: each teacher forward sees as many
    samples as the student's (labeled + unlabeled), so its transient activations never exceed the student's;
    all 8 at once raised the step's peak to 3.06x nnUNetTrainer's (activation_memory.md)."""
    threshold_start: float = 0.75
    """The entropy threshold starts at this fraction of ln C and ramps to ln C."""
    threshold_rampup_fraction: float = 1.0
    """Ramp-up length of the threshold as a fraction of all training iterations (reference: all)."""

    cost_model = {"forward": 10, "backward": 2}  # student on labeled+unlabeled (2), teacher T = 8 passes
    # the T noisy teacher passes run (no graph, 2 copies per forward) before the student's graph exists: peak
    # 1.99x on nnU-Net's plans, as Mean Teacher, against 4.62x with all 8 copies in one forward after the
    # student (activation_memory.md)
    activation_factor = 2

    @torch.no_grad()
    def noisy_teacher_probs(self, x_u: torch.Tensor) -> torch.Tensor:
        """Softmax of the teacher on ``T`` noisy copies of ``x_u``: ``(T, B_u, C, *spatial)`` float32."""
        passes = int(self.uncertainty_passes)
        if passes < 1:
            raise ValueError(f"uncertainty_passes must be >= 1, got {passes}")
        chunk = int(self.uncertainty_passes_per_forward) or passes
        if chunk < 0:
            raise ValueError(f"uncertainty_passes_per_forward must be >= 0, got {chunk}")
        probs = []
        for first in range(0, passes, chunk):
            k = min(chunk, passes - first)
            x = self.teacher_input(x_u.repeat(k, *([1] * (x_u.ndim - 1))))
            logits = full_resolution(self.teachers["teacher"](x)).float()
            probs.append(torch.softmax(logits, 1).reshape(k, *x_u.shape[:1], *logits.shape[1:]))
        return torch.cat(probs)

    def compute_losses(self, data, target, unlabeled):
        # the teacher's passes first: their transient activations are freed before the student's graph exists
        probs = self.noisy_teacher_probs(unlabeled)
        n = data.shape[0]
        out_l, out_u = split_output(self.network(torch.cat([data, unlabeled])), n)
        loss_sup = self.loss(out_l, target)
        threshold = uncertainty_threshold(self.global_step, int(self.threshold_rampup_fraction * self.total_iterations),
                                          probs.shape[2], self.threshold_start)
        mask = (predictive_entropy(probs.mean(0)) < threshold).float()
        loss_cons = masked_probability_mse(full_resolution(out_u), probs[0], mask)
        w = self.rampup_weight()
        return {"loss": loss_sup + w * loss_cons, "loss_sup": loss_sup, "loss_cons": loss_cons, "w_cons": w,
                "mask_ratio": mask.mean(), "threshold": threshold}


class nnUNetTrainerUAMT_TeacherInference(nnUNetTrainerUAMT):
    """UA-MT, trained identically, validating and exporting the EMA teacher."""

    inference_model = "teacher"
