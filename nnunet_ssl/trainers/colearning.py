"""Multi-model co-learning with hybrid cropping (seed: Tongji, left atrium) as an nnU-Net trainer:
two students, one teacher that follows both by a weighted EMA, cross pseudo-supervision, teacher
supervision and hybrid crops (INDMIX inputs, OUTDMIX soft targets)."""
from __future__ import annotations

from typing import Tuple

import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from nnunet_ssl.losses.consistency import hard_pseudo_labels
from nnunet_ssl.losses.weighted import WeightedDiceCE
from nnunet_ssl.mixing.masks import box_mask
from nnunet_ssl.mixing.mixes import HYBRID_CROP_BETA, hybrid_crop, mix
from nnunet_ssl.teachers.ema import ema_decay, ema_update_
from nnunet_ssl.trainers.semisupervised import nnUNetTrainerSemiSupervised, split_output
from nnunet_ssl.trainers.uamt import masked_probability_mse
from nnunet_ssl.utils.modules import full_resolution


def colearning_ema_weights(step: int, alpha: float, beta: float) -> Tuple[float, float]:
    """``(α_t, β_t)`` of the teacher update ``θ_t ← (1 − α_t − β_t)·θ_t + α_t·θ_s1 + β_t·θ_s2``.

    With the EMA warm-up of the shared building block, ``a_t = min(1 − 1/(t+1), 1 − α − β)`` and
    ``α_t = α·(1 − a_t)/(α + β)``, ``β_t = β·(1 − a_t)/(α + β)``: at step 0 the teacher becomes
    ``(α·θ_s1 + β·θ_s2)/(α + β)``, after about ``1/(α + β)`` steps ``α_t = α``, ``β_t = β``.
    ``α = β = 0`` gives ``(0, 0)``: the teacher is kept.
    """
    if alpha < 0 or beta < 0 or alpha + beta > 1:
        raise ValueError(f"expected EMA weights alpha, beta >= 0 with alpha + beta <= 1, got {alpha}, {beta}")
    total = float(alpha) + float(beta)
    if total == 0:
        return 0.0, 0.0
    share = (1.0 - ema_decay(step, 1.0 - total)) / total
    return float(alpha) * share, float(beta) * share


class nnUNetTrainerCoLearning(nnUNetTrainerSemiSupervised):
    """Two students ``s1`` (``self.network``) and ``s2`` (``network_b``, differently initialised) and a
    teacher ``t`` following both (:func:`colearning_ema_weights`). Per step, with ``ŷ`` argmax labels:

    - ``L_labeled = Dice(s1(x_l), y) + Dice(s2(x_l), y)`` (soft Dice, foreground, deep supervision);
    - ``L_cps = Dice(s1(x_u), ŷ^{s2}) + Dice(s2(x_u), ŷ^{s1})``, ``L_teacher = Dice(s1(x_u), ŷ^t) +
      Dice(s2(x_u), ŷ^t)``, ``L_unlabeled = L_cps + L_teacher``;
    - hybrid crops with one box ``M`` (crop parameter 0.5): ``Mixed1 = x_l·M + x_u·(1−M)`` → s1,
      ``Mixed2 = x_u·M + x_l·(1−M)`` → s2, targets = ground truth on labeled regions and the
      teacher's soft prediction of ``x_u`` on unlabeled ones; ``L_mix = MSE + MSE`` of probabilities;
    - ``L = L_labeled + λ·w(t)·L_unlabeled + μ·w(t)·L_mix``, λ = μ = 1.

    ``w(t)`` is the sigmoid ramp-up (to 1 over ``rampup_fraction`` of training): no public
    reference code exists, and early pseudo-labels of random networks would otherwise weigh as
    much as the ground truth; ``rampup_fraction = 0`` gives constant weights. Unsupervised terms use
    the full-resolution output. Each student runs once on ``[x_l, x_u, Mixed]``; the teacher once
    on ``x_u`` (no gradient). Pairs for the crops: the first ``min(B_l, B_u)`` patches of each
    batch; ignore-label voxels of ``y`` are left out of ``L_mix``. Inference network: the teacher.
    """

    consistency_weight: float = 1.0
    """λ: weight of L_unlabeled (L_cps + L_teacher), ramped up."""
    mix_weight: float = 1.0
    """μ: weight of L_mix, ramped up like λ."""
    ema_alpha: float = 0.005
    """α: share of student 1 in each teacher update (α + β = 1 − 0.99 as the shared EMA)."""
    ema_beta: float = 0.005
    """β: share of student 2 in each teacher update."""
    hybrid_crop_beta: float = HYBRID_CROP_BETA
    """Crop parameter: box side as a fraction of each patch side."""
    ema_decay: float = 0.99
    """Not used: the teacher follows ema_alpha / ema_beta."""

    extra_network_names = ("network_b",)
    teacher_sources = {"teacher": "network"}  # starts as s1; after_optimizer_step follows both students
    inference_model = "teacher"
    cost_model = {"forward": 7, "backward": 6}  # two students on labeled+unlabeled+mixed (2x3), teacher (1)

    def initialize(self):
        super().initialize()
        dice = dict(ce_weight=0.0, dice_weight=1.0, batch_dice=self.configuration_manager.batch_dice)
        self.dice_loss = WeightedDiceCE(**dice, ignore_index=self.label_manager.ignore_label)
        if isinstance(self.loss, DeepSupervisionWrapper):  # nnU-Net's scale weights
            self.dice_loss = DeepSupervisionWrapper(self.dice_loss, self.loss.weight_factors)
        self.pseudo_dice = WeightedDiceCE(**dice)

    def after_optimizer_step(self) -> None:
        weights = colearning_ema_weights(self.global_step, self.ema_alpha, self.ema_beta)
        students = [self.network, self.extra_networks["network_b"]]
        ema_update_(self.teachers["teacher"].module, students, list(weights))

    def hybrid_crops(self, x_l, y_l, x_u, teacher_probs):
        """INDMIX/OUTDMIX pairs and their loss masks (0 on ignore-label voxels of ``y_l``; None
        without an ignore label)."""
        m = box_mask(x_l.shape[2:], self.hybrid_crop_beta, self.generator, device=x_l.device)
        ignore = self.label_manager.ignore_label
        if ignore is None:
            return (*hybrid_crop(x_l, y_l, x_u, teacher_probs, m), None, None)
        valid = (y_l != ignore).float()
        mix1, mix2 = hybrid_crop(x_l, torch.where(valid > 0, y_l, 0), x_u, teacher_probs, m)
        ones = torch.ones_like(valid)
        return mix1, mix2, mix(valid, ones, m), mix(ones, valid, m)

    def compute_losses(self, data, target, unlabeled):
        b, n = data.shape[0], min(data.shape[0], unlabeled.shape[0])
        with torch.no_grad():
            t_logits = full_resolution(self.teachers["teacher"](unlabeled)).float()
        y_l = full_resolution(target)[:n].long()
        mix1, mix2, valid1, valid2 = self.hybrid_crops(data[:n], y_l, unlabeled[:n], torch.softmax(t_logits[:n], 1))

        out1 = self.network(torch.cat([data, unlabeled, mix1.image]))
        out2 = self.extra_networks["network_b"](torch.cat([data, unlabeled, mix2.image]))
        full1, full2 = full_resolution(out1).float(), full_resolution(out2).float()
        (lab1, _), (lab2, _) = split_output(out1, b), split_output(out2, b)
        u1, u2 = full1[b:-n], full2[b:-n]

        loss_lab = self.dice_loss(lab1, target) + self.dice_loss(lab2, target)
        loss_cps = self.pseudo_dice(u1, hard_pseudo_labels(u2)) + self.pseudo_dice(u2, hard_pseudo_labels(u1))
        y_t = hard_pseudo_labels(t_logits)
        loss_teacher = self.pseudo_dice(u1, y_t) + self.pseudo_dice(u2, y_t)
        loss_mix = (masked_probability_mse(full1[-n:], mix1.label, valid1)
                    + masked_probability_mse(full2[-n:], mix2.label, valid2))
        w = self.rampup_weight(1.0)
        loss = loss_lab + self.consistency_weight * w * (loss_cps + loss_teacher) + self.mix_weight * w * loss_mix
        return {"loss": loss, "loss_labeled": loss_lab, "loss_cps": loss_cps, "loss_teacher": loss_teacher,
                "loss_mix": loss_mix, "w_unsup": w}


class nnUNetTrainerCoLearning_StudentInference(nnUNetTrainerCoLearning):
    """Co-learning, trained identically, but student 1 (``self.network``) is the network written to
    the checkpoint and used for validation and ``nnUNetv2_predict``.

    The teacher is a weighted average of the *weights* of two differently initialised students,
    which need not be a good network: nothing aligns the two students' weights. On the 3D demo
    (500 iterations) the teacher of one run scored mean Dice 0.277 on the test volumes while the
    students of the same checkpoint scored 0.573 and 0.561 (benchmarks/results/README.md).
    """

    inference_model = "network"
