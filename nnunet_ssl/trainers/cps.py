"""Cross Pseudo Supervision (Chen et al., CVPR 2021) as an nnU-Net trainer."""
from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ssl.errors import UserError
from nnunet_ssl.losses.consistency import cross_pseudo_supervision, hard_pseudo_labels, pseudo_label_ce
from nnunet_ssl.networks.ensemble import ensemble_of
from nnunet_ssl.networks.heterogeneous import build_partner_network, partner_builder
from nnunet_ssl.trainers.semisupervised import nnUNetTrainerSemiSupervised, split_output
from nnunet_ssl.utils.modules import full_resolution


class nnUNetTrainerCPS(nnUNetTrainerSemiSupervised):
    """Two networks of one architecture, differently initialised, each supervising the other on
    unlabeled patches with hard pseudo-labels:
    ``L = L_sup(A) + L_sup(B) + w(t)·[CE(f_A(x_u), argmax f_B(x_u)) + CE(f_B(x_u), argmax f_A(x_u))]``.

    Inference network: A (``self.network``). A and B play symmetric roles, so either would do; A is
    the one nnU-Net itself built and validates, which keeps validation and export untouched.
    Heterogeneous CPS (two architectures) overrides :meth:`build_extra_network`.

    ``w(t)`` ramps up over the whole run (``rampup_fraction = 1``), as the reference code does (SSL4MIS
    ``train_cross_pseudo_supervision_3D.py``: ``sigmoid_rampup(iter // 150, 200)`` over 30,000 iterations),
    not over the first 40% METHODS.md gives for consistency terms in general. At 40% of training the
    reference's weight is ``exp(-5·0.36) ≈ 0.17`` of its maximum, so a partner's early mistakes (one
    hippocampus part labelled as the other) are taught far less. Measured on the Hippocampus study (cpu-quick,
    10%, 3 split seeds; ``benchmarks/results/hippocampus_study_10pct``): mean Dice 0.759 ± 0.059 with the full
    ramp against 0.558 ± 0.211 with the 40% ramp (``nnUNetTrainerCPS_Rampup40``) and 0.644 ± 0.237 for
    nnUNetTrainer; with the 40% ramp, network A of seed 1 lost the anterior class for good (both with w_max 0.1).
    With ``w_max = 1`` at 2.5% labeled (``cpu-3d``, ``hippocampus_lowlabel_cpu3d/probe_cps_rampup40.md``) the
    40% ramp gave network A 0.829 / 0.812 / 0.742 against 0.821 / 0.819 / 0.826 with the full ramp (pooled
    −0.027, p < 0.001): on seed 2, A missed the posterior class for 32 epochs while the weight reached 1.

    ``w_max = 1``, as the DHC repository's CPS and DHC scripts default to over an nnU-Net-style Dice + CE
    supervised loss (the loss nnU-Net's trainers use; SSL4MIS's 0.1 sits on a supervised loss halved to
    ``0.5·(CE + Dice)``). Measured on the ``cpu-3d`` Hippocampus study (10%, 2000 iterations, 3 split seeds,
    ``benchmarks/results/hippocampus_study_10pct_cpu3d``): with ``w_max = 0.1`` (``nnUNetTrainerCPS_Weight0p1``)
    the CPS term added 3.0-4.5% of the supervised gradient at the end, the two networks trained nearly
    independently and network A failed on seed 0 (mean Dice 0.767 / 0.835 / 0.839, 0.814 ± 0.040, pooled
    −0.029 against nnUNetTrainer, p < 0.001); with ``w_max = 1`` the term adds 36% and A scored 0.838 / 0.837
    / 0.846 (0.840 ± 0.005, pooled −0.003, p 0.09, against nnUNetTrainer's 0.837 / 0.849 / 0.843).
    """

    consistency_weight: float = 1.0
    """w_max of the CPS term."""
    rampup_fraction: float = 1.0
    """Fraction of training over which ``w(t)`` ramps up to ``consistency_weight`` (reference: all of it)."""

    extra_network_names = ("network_b",)
    # one graph at a time: A, then B, each on labeled+unlabeled (backward 4, held 2); plus B's gradient-free
    # pass on the unlabeled batch for A's pseudo-labels (forward 4 + 1)
    cost_model = {"forward": 5, "backward": 4, "held": 2}
    # one network's graph on labeled + unlabeled (saved 1.98x), but the peak also holds A's gradients and
    # pseudo-labels while B's graph is alive: 2.16x on nnU-Net's plans (benchmarks/results/activation_memory.md)
    activation_factor = 3

    def compute_losses(self, data, target, unlabeled):
        if self.one_graph_step(self.network, self.extra_networks["network_b"]):
            return self._losses_one_graph_at_a_time(data, target, unlabeled)
        n = data.shape[0]
        x = torch.cat([data, unlabeled])
        out_a_l, out_a_u = split_output(self.network(x), n)
        out_b_l, out_b_u = split_output(self.extra_networks["network_b"](x), n)
        loss_sup = self.loss(out_a_l, target) + self.loss(out_b_l, target)
        loss_cps = cross_pseudo_supervision(full_resolution(out_a_u), full_resolution(out_b_u))
        w = self.rampup_weight()
        return {"loss": loss_sup + w * loss_cps, "loss_sup": loss_sup, "loss_cps": loss_cps, "w_cps": w}

    def _losses_one_graph_at_a_time(self, data, target, unlabeled):
        """The same loss and gradients with one network's graph alive at a time
        (:meth:`cross_supervised_parts`): A's part ``L_sup(A) + w·CE(f_A(x_u), argmax f_B(x_u))`` needs only
        B's pseudo-labels, which a gradient-free pass of B over the unlabeled batch gives; it is
        backpropagated and freed, keeping A's pseudo-labels, then B's part is. The extra pass equals B's
        unlabeled output in the joint pass because nnU-Net's networks treat each sample on its own (networks
        with batch statistics or dropout take the joint step)."""
        n = data.shape[0]
        w = self.rampup_weight()

        def part(index, output, partner_pseudo):
            out_l, out_u = split_output(output, n)
            logits_u = full_resolution(out_u)
            sup, cps = self.loss(out_l, target), pseudo_label_ce(logits_u, partner_pseudo)
            return sup + w * cps, (sup.detach(), cps.detach()), hard_pseudo_labels(logits_u)

        (sup_a, cps_a), (sup_b, cps_b) = self.cross_supervised_parts(
            self.network, self.extra_networks["network_b"], torch.cat([data, unlabeled]), unlabeled, part)
        loss_sup, loss_cps = sup_a + sup_b, cps_a + cps_b
        return {"loss": loss_sup + w * loss_cps, "loss_sup": loss_sup, "loss_cps": loss_cps, "w_cps": w}


class nnUNetTrainerCPS_Rampup40(nnUNetTrainerCPS):
    """CPS with the consistency weight ramped up over the first 40% of training (METHODS.md's general
    default, CPS's default until the Hippocampus study measured it: 0.558 ± 0.211 mean Dice against 0.759 ±
    0.059 for the full ramp, 3 split seeds). Kept to reproduce that comparison, so with that study's
    ``w_max = 0.1``."""

    consistency_weight = 0.1
    rampup_fraction = 0.4


class nnUNetTrainerCPS_Weight0p1(nnUNetTrainerCPS):
    """CPS with ``w_max = 0.1`` (SSL4MIS's CPS setting and METHODS.md's DHC setting), CPS's default until the
    ``cpu-3d`` Hippocampus study measured it against ``w_max = 1`` (see :class:`nnUNetTrainerCPS`). Same
    full-run ramp. Trains the CPS rows recorded before that change."""

    consistency_weight = 0.1


class nnUNetTrainerCPS_Ensemble(nnUNetTrainerCPS):
    """CPS, trained identically, predicting with the mean of both networks' softmax (the seed FLARE22
    pipeline combines both CPS networks). Validation, ``checkpoint_best`` and ``nnUNetv2_predict``
    use the ensemble; its ``network_weights`` hold both networks (``members.0`` = A, ``members.1`` = B).
    Twice the inference cost of CPS. Not the default: on Hippocampus at 2.5% labeled (``cpu-3d``, 3 split seeds,
    ``benchmarks/results/hippocampus_lowlabel_cpu3d/nnunet_repeat_ensemble.md``) the ensemble scored 0.827 on
    average against 0.825 for the softmax mean of two nnUNetTrainer runs (pooled +0.002, p 0.22). Its gain over
    one nnUNetTrainer network is what ensembling two supervised networks gives."""

    inference_model = ("network", "network_b")


class nnUNetTrainerCPSHetero(nnUNetTrainerCPS):
    """CPS with two architectures (the seed FLARE22 pipeline pairs a transformer with a CNN): network A is
    the plans' architecture, as nnU-Net builds it; network B another one nnU-Net can build from the same
    plans (``network_b_architecture``; default PlainConvUNet ↔ ResidualEncoderUNet, see
    :mod:`nnunet_ssl.networks.heterogeneous`). Both keep nnU-Net's deep supervision at the same scales, so
    the losses are CPS's unchanged. Inference network: A (``nnUNetv2_predict`` builds it from the plans).

    ``-pretrained_weights`` reaches B only where its entries match A's (usually none); the start-up log
    says so. B's compute differs from A's: ``cost_model`` assumes B costs about 1.4 A (multiply-accumulates
    of ResidualEncoderUNet with nnU-Net's 1-3-4 blocks against PlainConvUNet's 2 convolutions per stage,
    counted on the iteration-cost plans: 32³ patch, features 8/16/32), so 2 + 2.8 ≈ 5 labeled-batch passes
    backward, one at a time (B's 2.8 held), and 1.4 more forward for B's pseudo-labels.
    """

    network_b_architecture: str = ""
    """Class path of network B ('' = the partner of the plans' architecture: PlainConvUNet ↔
    ResidualEncoderUNet)."""

    cost_model = {"forward": 6, "backward": 5, "held": 3}  # + B's gradient-free pass on the unlabeled batch
    activation_factor = 3  # the larger B's graph on labeled + unlabeled (activation_memory.md)

    def build_extra_network(self, name: str):
        net, target = build_partner_network(self.configuration_manager, self.num_input_channels,
                                            self.label_manager.num_segmentation_heads, self.enable_deep_supervision,
                                            self.network_b_architecture)
        self.print_to_log_file(f"{name}: {target.rsplit('.', 1)[-1]} (network: "
                               f"{self.configuration_manager.network_arch_class_name.rsplit('.', 1)[-1]})")
        return net


def hetero_pair_builder(network_b_architecture: str):
    """A ``build_network_architecture`` (nnU-Net's signature) building the ensemble of A (the plans'
    architecture) and B (``network_b_architecture``, '' = the default partner); training builds A alone."""
    plans_builder = nnUNetTrainer.build_network_architecture
    return ensemble_of([plans_builder, partner_builder(network_b_architecture)], plans_builder)


class nnUNetTrainerCPSHetero_Ensemble(nnUNetTrainerCPSHetero):
    """Heterogeneous CPS predicting with the mean of both networks' softmax. nnU-Net's predictor rebuilds
    the pair from the plans and this class, so B is the class's ``network_b_architecture``: overriding it
    per run is refused (subclass to pair other architectures)."""

    inference_model = ("network", "network_b")
    build_network_architecture = staticmethod(hetero_pair_builder(""))

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "build_network_architecture" not in cls.__dict__:  # a subclass pairing another B predicts with it
            cls.build_network_architecture = staticmethod(hetero_pair_builder(cls.network_b_architecture))

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if "network_b_architecture" in self.applied_overrides:
            raise UserError(f"{type(self).__name__}: network_b_architecture cannot be set per run, because "
                            f"nnUNetv2_predict rebuilds the ensemble from the class; subclass it instead")
