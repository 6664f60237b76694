"""Mean Teacher's student-teacher step (Tarvainen & Valpola, NeurIPS 2017), shared by the Mean Teacher
and UA-MT trainers."""
from __future__ import annotations

import torch

from nnunet_ssl.losses.consistency import softmax_mse
from nnunet_ssl.trainers.semisupervised import nnUNetTrainerSemiSupervised, split_output
from nnunet_ssl.utils.modules import full_resolution


class MeanTeacherTrainer(nnUNetTrainerSemiSupervised):
    """Base (not a trainer to run) of ``nnUNetTrainerMeanTeacher`` and ``nnUNetTrainerUAMT``: a student on
    labeled + unlabeled patches and an EMA teacher that sees the unlabeled patch with small Gaussian noise
    (:meth:`teacher_input`). :meth:`compute_losses` is Mean Teacher's:
    ``L = L_sup(f(x_l), y_l) + w(t)·mean((p_student(x_u) − p_teacher(x_u + n))²)``."""

    consistency_weight: float = 0.1
    """w_max of the consistency term."""
    teacher_noise_std: float = 0.1
    """σ of the Gaussian noise on the teacher's input (normalised intensities)."""
    teacher_noise_clip: float = 0.2
    """The noise is clipped to ±this value."""

    teacher_sources = {"teacher": "network"}
    cost_model = {"forward": 3, "backward": 2}  # student on labeled+unlabeled (2), teacher on unlabeled (1)
    activation_factor = 2  # student graph on labeled + unlabeled (benchmarks/results/activation_memory.md)

    def teacher_input(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.generator).to(x.device, x.dtype) * self.teacher_noise_std
        return x + noise.clamp(-self.teacher_noise_clip, self.teacher_noise_clip)

    def compute_losses(self, data, target, unlabeled):
        n = data.shape[0]
        out_l, out_u = split_output(self.network(torch.cat([data, unlabeled])), n)
        loss_sup = self.loss(out_l, target)
        with torch.no_grad():
            teacher_logits = full_resolution(self.teachers["teacher"](self.teacher_input(unlabeled)))
        loss_cons = softmax_mse(full_resolution(out_u), teacher_logits)
        w = self.rampup_weight()
        return {"loss": loss_sup + w * loss_cons, "loss_sup": loss_sup, "loss_cons": loss_cons, "w_cons": w}
