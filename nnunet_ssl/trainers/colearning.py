"""Multi-model co-learning with hybrid cropping (seed: Tongji, left atrium) as an nnU-Net trainer:
two students, a teacher made of one EMA per student whose predictions are averaged, cross
pseudo-supervision, teacher supervision and hybrid crops (INDMIX inputs, OUTDMIX soft targets)."""
from __future__ import annotations

from typing import Tuple

import torch

from nnunet_ssl.losses.consistency import hard_pseudo_labels, masked_probability_mse
from nnunet_ssl.losses.weighted import WeightedDiceCE
from nnunet_ssl.mixing.masks import box_mask
from nnunet_ssl.mixing.mixes import HYBRID_CROP_BETA, hybrid_crop, mix
from nnunet_ssl.networks.ensemble import mean_softmax_logits
from nnunet_ssl.teachers.ema import ema_decay, ema_update_
from nnunet_ssl.trainers.semisupervised import nnUNetTrainerSemiSupervised, split_output
from nnunet_ssl.utils.modules import full_resolution


def colearning_teacher_shares(alpha: float, beta: float) -> Tuple[float, float]:
    """Shares ``(α/(α+β), β/(α+β))`` of the two EMA teachers in the teacher's prediction (equal shares
    for ``α = β = 0``, which keeps both teachers fixed). Each teacher follows its own student with the
    EMA decay ``1 − (α + β)``, so a student's weight enters its teacher at rate ``α + β`` and the
    prediction at its share of it, as in the seed's update ``θ_t ← (1−α−β)θ_t + αθ_s1 + βθ_s2``."""
    if alpha < 0 or beta < 0 or alpha + beta > 1:
        raise ValueError(f"expected EMA weights alpha, beta >= 0 with alpha + beta <= 1, got {alpha}, {beta}")
    total = float(alpha) + float(beta)
    return (0.5, 0.5) if total == 0 else (float(alpha) / total, float(beta) / total)


class nnUNetTrainerCoLearning(nnUNetTrainerSemiSupervised):
    """Two students ``s1`` (``self.network``) and ``s2`` (``network_b``, differently initialised) and a
    teacher ``t``. Per step, with ``ŷ`` argmax labels:

    - ``L_labeled = Dice(s1(x_l), y) + Dice(s2(x_l), y)`` (soft Dice, foreground, deep supervision);
    - ``L_cps = Dice(s1(x_u), ŷ^{s2}) + Dice(s2(x_u), ŷ^{s1})``, ``L_teacher = Dice(s1(x_u), ŷ^t) +
      Dice(s2(x_u), ŷ^t)``, ``L_unlabeled = L_cps + L_teacher``;
    - hybrid crops with one box ``M`` (crop parameter 0.5): ``Mixed1 = x_l·M + x_u·(1−M)`` → s1,
      ``Mixed2 = x_u·M + x_l·(1−M)`` → s2, targets = ground truth on labeled regions and the
      teacher's soft prediction of ``x_u`` on unlabeled ones; ``L_mix = MSE + MSE`` of probabilities;
    - ``L = L_labeled + λ·w(t)·L_unlabeled + μ·w(t)·L_mix``, λ = μ = 1.

    The teacher. The seed averages the two students' *weights* (``θ_t ← (1−α−β)θ_t + αθ_s1 + βθ_s2``),
    but a weight average of two independently initialised networks is not a network: nothing aligns
    their units, and on the 3D demo such a teacher scored mean Dice 0.277 against 0.573/0.561 for its
    own students (``benchmarks/results/README.md``). Weight averaging needs one basin, and CPS needs two
    different students, so here each student has its own EMA teacher (decay ``1 − (α + β)``) and the
    teacher's prediction is the ``α : β`` mixture of their softmax (:func:`colearning_teacher_shares`).

    ``w(t)`` is the sigmoid ramp-up (to 1 over ``rampup_fraction`` of training): no public
    reference code exists, and early pseudo-labels of random networks would otherwise weigh as
    much as the ground truth; ``rampup_fraction = 0`` gives constant weights. Unsupervised terms use
    the full-resolution output. Each student runs on ``[x_l, x_u]`` and on its crops (and, for the
    one-graph step, student 2 once more on ``x_u`` without gradient: :meth:`compute_losses`); each
    teacher once on ``x_u`` (no gradient). Pairs for the crops: the first ``min(B_l, B_u)`` patches of each
    batch; ignore-label voxels of ``y`` are left out of ``L_mix``. Inference network: student 1 (the
    students are what the seed's co-learning trains; ``_TeacherInference`` predicts with the teacher).
    """

    consistency_weight: float = 1.0
    """λ: weight of L_unlabeled (L_cps + L_teacher), ramped up."""
    mix_weight: float = 1.0
    """μ: weight of L_mix, ramped up like λ."""
    ema_alpha: float = 0.005
    """α: rate at which student 1 enters the teacher (its EMA decay is 1 − α − β; its share α/(α+β))."""
    ema_beta: float = 0.005
    """β: rate at which student 2 enters the teacher."""
    hybrid_crop_beta: float = HYBRID_CROP_BETA
    """Crop parameter: box side as a fraction of each patch side."""

    extra_network_names = ("network_b",)
    teacher_sources = {"teacher_1": "network", "teacher_2": "network_b"}
    unused_hyperparameters = ("ema_decay",)  # the teachers' decay is 1 − ema_alpha − ema_beta
    # one graph at a time: each student on labeled+unlabeled, then on its crops (backward 2x3, held 2); two
    # teachers (2); student 2's gradient-free pass on the unlabeled batch for student 1's pseudo-labels (1)
    cost_model = {"forward": 9, "backward": 6, "held": 2}
    activation_factor = 3  # one student's graph on labeled + unlabeled, and A's gradients (activation_memory.md)

    def initialize(self):
        super().initialize()
        colearning_teacher_shares(self.ema_alpha, self.ema_beta)  # check the settings before training
        dice = dict(ce_weight=0.0, dice_weight=1.0, batch_dice=self.configuration_manager.batch_dice)
        self.dice_loss = self.deep_supervised(WeightedDiceCE(**dice, ignore_index=self.label_manager.ignore_label))
        self.pseudo_dice = WeightedDiceCE(**dice)

    def after_optimizer_step(self) -> None:
        total = self.ema_alpha + self.ema_beta
        if total == 0:  # α = β = 0: the teachers are kept
            return
        a = ema_decay(self.global_step, 1.0 - total)
        for name, source in self.teacher_sources.items():
            ema_update_(self.teachers[name].module, [self.trainable_networks()[source]], [1.0 - a])

    @torch.no_grad()
    def teacher_logits(self, x_u: torch.Tensor) -> torch.Tensor:
        """Logits of the teacher: ``log(s_1·softmax(t_1(x)) + s_2·softmax(t_2(x)))`` with the shares of
        :func:`colearning_teacher_shares`, full resolution, float32."""
        outputs = [full_resolution(self.teachers[name](x_u)) for name in self.teacher_sources]
        return mean_softmax_logits(outputs, colearning_teacher_shares(self.ema_alpha, self.ema_beta))

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
        """One step. Student i's loss is ``Dice(s_i(x_l), y) + λw·[Dice(s_i(x_u), ŷ^{partner}) + Dice(s_i(x_u), ŷ^t)]``
        on ``[x_l; x_u]`` plus ``μw·MSE(s_i(Mixed_i), ...)`` on its hybrid crop; of its partner it needs only the
        detached pseudo-labels on ``x_u``. So, as CPS (:meth:`cross_supervised_parts`), when both students treat
        each sample on its own (:meth:`one_graph_step`) a gradient-free pass of student 2 over ``x_u`` gives
        student 1's pseudo-labels, student 1's ``[x_l; x_u]`` part is backpropagated and freed, then student
        2's, then each student's crop pass: one graph of at most two batches alive at a time (instead of both
        students on three), for one more forward pass over ``x_u`` (1.05x the compute); same loss and
        gradients. Otherwise (BatchNorm, dropout) every graph is built and their sum is backpropagated. The
        crops run as their own forward pass in both cases (the networks treat each sample on its own, so
        batching them with ``[x_l; x_u]`` would change nothing but the memory)."""
        b, n = data.shape[0], min(data.shape[0], unlabeled.shape[0])
        t_logits = self.teacher_logits(unlabeled)
        y_l = full_resolution(target)[:n].long()
        mix1, mix2, valid1, valid2 = self.hybrid_crops(data[:n], y_l, unlabeled[:n], torch.softmax(t_logits[:n], 1))
        y_t = hard_pseudo_labels(t_logits)
        w = self.rampup_weight(1.0)
        students = (self.network, self.extra_networks["network_b"])
        one_graph = self.one_graph_step(*students)
        kept = (lambda t: t.detach()) if one_graph else (lambda t: t)

        def part(index, output, partner_pseudo):
            lab, u = split_output(output, b)
            u = full_resolution(u).float()
            terms = (self.dice_loss(lab, target), self.pseudo_dice(u, partner_pseudo), self.pseudo_dice(u, y_t))
            loss = terms[0] + self.consistency_weight * w * (terms[1] + terms[2])
            return loss, tuple(kept(t) for t in terms), hard_pseudo_labels(u)

        x = torch.cat([data, unlabeled])
        if one_graph:
            parts = self.cross_supervised_parts(*students, x, unlabeled, part)
        else:
            outputs = [net(x) for net in students]
            pseudo = [hard_pseudo_labels(full_resolution(split_output(o, b)[1])) for o in outputs]
            parts = [part(i, outputs[i], pseudo[1 - i])[1] for i in (0, 1)]
        loss_mix = 0
        for net, (mixed, valid) in zip(students, ((mix1, valid1), (mix2, valid2))):
            term = masked_probability_mse(full_resolution(net(mixed.image)).float(), mixed.label, valid)
            if one_graph:
                self.backward_part(self.mix_weight * w * term)
            loss_mix = loss_mix + kept(term)
        loss_lab, loss_cps, loss_teacher = (p1 + p2 for p1, p2 in zip(*parts))
        loss = loss_lab + self.consistency_weight * w * (loss_cps + loss_teacher) + self.mix_weight * w * loss_mix
        return {"loss": loss, "loss_labeled": loss_lab, "loss_cps": loss_cps, "loss_teacher": loss_teacher,
                "loss_mix": loss_mix, "w_unsup": w}


class nnUNetTrainerCoLearning_StudentInference(nnUNetTrainerCoLearning):
    """Co-learning predicting with student 1. Since the co-learning teacher became one EMA per student
    (it was a weight average of both students, which scored mean Dice 0.277 against 0.573 for
    student 1 on the 3D demo), this is the default of ``nnUNetTrainerCoLearning`` too; the name is kept
    because trained models are stored under it."""

    inference_model = "network"


class nnUNetTrainerCoLearning_TeacherInference(nnUNetTrainerCoLearning):
    """Co-learning, trained identically, predicting with the teacher: the mean softmax of the two EMA
    teachers (equal shares, as the default ``ema_alpha = ema_beta``)."""

    inference_model = ("teacher_1", "teacher_2")
