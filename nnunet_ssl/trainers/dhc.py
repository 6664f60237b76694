"""DHC — Dual-debiased Heterogeneous Co-training (Wang & Li, MICCAI 2023) as an nnU-Net trainer.

Two students A (``self.network``) and B (``network_b``) with their own class-weight trackers: the
class-weighted two-student base it shares with DMPF
(:class:`~nnunet_ssl.methods.class_weighted_pair.ClassWeightedPairTrainer`, which says how the trackers
are updated, checkpointed and logged).
"""
from __future__ import annotations

import torch

from nnunet_ssl.losses.consistency import hard_pseudo_labels
from nnunet_ssl.losses.weighted import weighted_cross_entropy
from nnunet_ssl.methods.class_weighted_pair import ClassWeightedPairTrainer
from nnunet_ssl.trainers.semisupervised import split_output
from nnunet_ssl.utils.modules import full_resolution

__all__ = ["weighted_cps", "nnUNetTrainerDHC", "nnUNetTrainerDHC_Ensemble", "nnUNetTrainerDHC_LowMemory",
           "nnUNetTrainerDHC_UnsupervisedNoFloor"]


def weighted_cps(logits_a: torch.Tensor, logits_b: torch.Tensor, weights_a: torch.Tensor,
                 weights_b: torch.Tensor) -> torch.Tensor:
    """Class-weighted cross pseudo supervision of DHC (Wang & Li 2023):
    ``CE_{W_A}(a, argmax b) + CE_{W_B}(b, argmax a)``, each model weighted by its own ``(C,)`` weights.

    ``logits_a``, ``logits_b``: ``(B, C, *spatial)``; computed in float32; pseudo-labels and weights
    carry no gradient. A model whose weights are all 0 on its pseudo-labels contributes 0.
    """
    a, b = logits_a.float(), logits_b.float()
    return (weighted_cross_entropy(a, hard_pseudo_labels(b), weights_a)
            + weighted_cross_entropy(b, hard_pseudo_labels(a), weights_b))


class nnUNetTrainerDHC(ClassWeightedPairTrainer):
    """DHC (Wang & Li, "DHC: Dual-debiased Heterogeneous Co-training Framework for Class-imbalanced
    Semi-supervised Medical Image Segmentation", MICCAI 2023): Cross Pseudo Supervision where model A
    is trained with difficulty-aware weights (DifW) and model B with distribution-aware weights (DisW).

    ``L = Σ_{m∈{A,B}} [Dice_{W_m} + CE_{W_m}](f_m(x_l), y_l)
    + w(t)·[CE_{W_A}(f_A(x), argmax f_B(x)) + CE_{W_B}(f_B(x), argmax f_A(x))]``, ``x`` the labeled and
    unlabeled batch together, ``w(t)`` the sigmoid ramp-up to ``consistency_weight`` (0.1).
    Per step: one forward of each student on ``[x_l; x_u]`` → weights from those outputs → losses.

    Inference network: A (``self.network``), so nnU-Net's validation and export are unchanged; the
    reference evaluates the mean of A and B (``nnUNetTrainerDHC_Ensemble``). Learning rate: nnU-Net's
    (the reference runs SGD with lr 0.03). Of the base's hyper-parameters DHC ignores ``ema_decay``
    (no EMA teacher) and ``seed`` (nothing is drawn from the trainer's generator).

    Departure from the paper and the reference: the CPS term's class weights are floored as the supervised
    term's (``unsupervised_weight_floor = 1``: ``1 + w/mean(w)``), so pseudo-labelled background, which DisW
    weighs exactly 0 and DifW ~0.06 of the foreground, is charged for. With the reference's weights
    (``nnUNetTrainerDHC_UnsupervisedNoFloor``) the term only ever pulls towards foreground: on the ``cpu-3d``
    Hippocampus study (10% labeled, split seeds 0 / 1 / 2) DHC over-segmented (predicted foreground volume
    1.100 / 1.163 / 1.087 × the reference, nnUNetTrainer 0.97-1.00) and scored 0.837 / 0.821 / 0.837. With the
    floor: 0.833 / 0.832 / 0.835, volume 1.03-1.07, network B 0.840 on every seed (0.825 / 0.813 without). The
    mean Dice is the same (+0.002, p 0.23); the floor removes the over-segmentation and seed 1's collapse
    (``benchmarks/results/README.md``, ``hippocampus_study_10pct_cpu3d/``).
    """

    consistency_weight: float = 0.1
    """w_max of the class-weighted CPS term."""

    unused_hyperparameters = ("ema_decay", "seed")

    cost_model = {"forward": 4, "backward": 4}  # two students on labeled+unlabeled
    activation_factor = 4  # A and B graphs on labeled + unlabeled (benchmarks/results/activation_memory.md)
    one_graph_per_network = False  # the joint step; nnUNetTrainerDHC_LowMemory trades time for memory

    def compute_losses(self, data, target, unlabeled):
        if self.one_graph_step(self.network, self.extra_networks["network_b"]):
            return self._losses_one_graph_at_a_time(data, target, unlabeled)
        n = data.shape[0]
        x = torch.cat([data, unlabeled])
        out_a, out_b = self.network(x), self.extra_networks["network_b"](x)
        (out_a_l, out_a_u), (out_b_l, out_b_u) = split_output(out_a, n), split_output(out_b, n)
        w_a, w_b = self.update_class_weights(out_a_l, out_b_l, out_a_u, out_b_u, target)
        loss_sup = self.supervised_loss(out_a_l, target, w_a) + self.supervised_loss(out_b_l, target, w_b)
        loss_cps = weighted_cps(full_resolution(out_a), full_resolution(out_b), self.unsupervised_class_weights(w_a),
                                self.unsupervised_class_weights(w_b))
        w = self.rampup_weight()
        return {"loss": loss_sup + w * loss_cps, "loss_sup": loss_sup, "loss_cps": loss_cps, "w_cps": w,
                **self.class_weight_terms(w_a, w_b)}

    def _losses_one_graph_at_a_time(self, data, target, unlabeled):
        """The same loss, gradients and tracker updates with one student's graph alive at a time
        (:meth:`cross_supervised_parts`): each tracker reads only its own student's outputs, so A's weights
        and A's part ``Seg_{W_A}(f_A(x_l), y) + w·CE_{W_A}(f_A(x), argmax f_B(x))`` need only B's
        pseudo-labels, from a gradient-free pass of B over labeled + unlabeled; A's part is backpropagated and
        freed before B's runs with A's pseudo-labels."""
        n = data.shape[0]
        x = torch.cat([data, unlabeled])
        w = self.rampup_weight()

        def part(index, output, partner_pseudo):
            out_l, out_u = split_output(output, n)
            weights = self.update_class_weight(("weights_A", "weights_B")[index], out_l, out_u, target)
            logits = full_resolution(output)
            sup = self.supervised_loss(out_l, target, weights)
            cps = weighted_cross_entropy(logits.float(), partner_pseudo, self.unsupervised_class_weights(weights))
            return sup + w * cps, (sup.detach(), cps.detach(), weights), hard_pseudo_labels(logits)

        (sup_a, cps_a, w_a), (sup_b, cps_b, w_b) = self.cross_supervised_parts(
            self.network, self.extra_networks["network_b"], x, x, part)
        loss_sup, loss_cps = sup_a + sup_b, cps_a + cps_b
        return {"loss": loss_sup + w * loss_cps, "loss_sup": loss_sup, "loss_cps": loss_cps, "w_cps": w,
                **self.class_weight_terms(w_a, w_b)}



class nnUNetTrainerDHC_LowMemory(nnUNetTrainerDHC):
    """DHC with one student's graph alive at a time (same losses, class weights and gradients): activation
    factor 3 instead of 4 (benchmarks/results/activation_memory.md: peak 2.16x nnUNetTrainer against 3.52x),
    for a GPU where DHC's plans do not fit. The price is B's gradient-free pass over labeled + unlabeled
    (DHC's CPS term covers both), 6 forward passes instead of 4: by the cost model 1.17x DHC's step time
    (measured on a loaded machine: 5.36x nnUNetTrainer against DHC's 3.57x in the same run,
    benchmarks/results/iteration_cost.md), which is why it is not DHC's default (CPS's extra pass covers the
    unlabeled batch only: 1.08x)."""
    one_graph_per_network = True
    # A, then B, each on labeled+unlabeled (backward 4, held 2), plus B's gradient-free pass (forward 4 + 2)
    cost_model = {"forward": 6, "backward": 4, "held": 2}
    activation_factor = 3  # one student's graph on labeled + unlabeled, and A's gradients


class nnUNetTrainerDHC_Ensemble(nnUNetTrainerDHC):
    """Predicts with the mean of both students' softmax, as DHC's and Double-Mix's reference code."""
    inference_model = ("network", "network_b")


class nnUNetTrainerDHC_UnsupervisedNoFloor(nnUNetTrainerDHC):
    """DHC with the CPS term's class weights as the paper and the reference use them
    (``unsupervised_weight_floor = 0``): pseudo-labelled background weighs what the trackers give it (DisW
    exactly 0). DHC's default until the ``cpu-3d`` Hippocampus study measured its over-segmentation (see
    :class:`nnUNetTrainerDHC`)."""

    unsupervised_weight_floor = 0.0
