"""GuidedNet (Zhao et al., "GuidedNet: Semi-Supervised Multi-Organ Segmentation via Labeled Data
Guide Unlabeled Data", ACM MM 2024) as an nnU-Net trainer, with the paper's ablations."""
from __future__ import annotations

from functools import partial
from typing import Dict, Optional, Tuple

import torch

from nnunet_ssl.gmm.cgmm import (DEFAULT_VAR_FLOOR, ClassConditionalGMM, cgmm_predict, labels_at, log_posterior,
                                 log_priors)
from nnunet_ssl.heads.feature_taps import FeatureTap
from nnunet_ssl.losses.consistency import cross_pseudo_supervision
from nnunet_ssl.losses.guidednet import (loss_cons, loss_gt, loss_max, loss_rectify, loss_self,
                                         rectification_rate, rectify_pseudo_labels)
from nnunet_ssl.losses.weighted import weighted_cross_entropy
from nnunet_ssl.trainers.semisupervised import nnUNetTrainerSemiSupervised, split_output
from nnunet_ssl.utils.modules import full_resolution
from nnunet_ssl.utils.tensors import class_argmax
from nnunet_ssl.weighting.trackers import KTWeightTracker

CGMM_TERMS = ("gt", "self", "max", "cons", "rectify")
"""The five CGMM loss terms, in the order of the paper's loss ablation."""
NETS = {"a": "network", "b": "network_b"}
"""Short name of each CPS network (used in tracker and logged term names) -> trainer network name."""


class nnUNetTrainerGuidedNet(nnUNetTrainerSemiSupervised):
    """Two CPS networks A, B (same architecture, different initialisation), each with a 3D-CGMM on the
    features ``f`` of its last decoder stage (a :class:`FeatureTap`, captured during the normal forward)::

        L = Σ_{N∈{A,B}} [ L_sup(N) + λ_gt·L_gt(N) + λ_self·L_self(N) + λ_max·L_max(N) ]
            + r(t)·[ w_cps·L_KT-CPS + λ_cons·L_cons + λ_rect·L_rectify ]

    ``L_sup`` is nnU-Net's Dice+CE with deep supervision; ``r(t)`` the sigmoid ramp-up (0→1).
    Labeled terms (per network): the CGMM is fitted to this batch's labeled features
    (differentiable moments, :func:`class_moments`); ``L_gt`` is the CE of its posterior against the
    labels, ``L_self`` the BCE between the network's softmax and ``G = argmax`` posterior, ``L_max``
    pushes the class means apart. Unlabeled terms use each network's stored mixture (momentum
    ``cgmm_momentum``; a class absent from this labeled batch keeps its last estimate): ``L_cons``
    is the MSE between the posteriors of A and B, ``L_rectify`` the CE of each network against its
    CGMM-rectified pseudo-labels ``argmax p·P(k|x)``. KT-CPS: ``CE_{w_B}(A, argmax B) +
    CE_{w_A}(B, argmax A)`` on unlabeled patches, ``w_N`` the KT weights of network N (DisW
    log-ratio over its correctly predicted labeled voxels, EMA ``kt_momentum``): as in the
    reference code, each direction is weighted by the network that made the pseudo-labels.

    Logged per epoch: ``loss_sup``, ``loss_cps``, ``loss_<term>`` for every enabled CGMM term (sums
    over A and B), ``rect_rate`` (share of unlabeled pseudo-label voxels the CGMM changed, A and B
    together), ``w_unsup`` (= r(t)), ``kt_weights_a``/``_b``.

    Defaults follow the reference code (kimjisoo12/GuidedNet, train_guidedNet_flare.py): CGMM terms
    weight 1, KT-CPS 0.1 with ramp-up, L_cons 0.1·ramp-up added to both networks' losses (= 0.2),
    KT EMA 0.99, per-batch class statistics. Deliberate differences: L_cons and L_rectify are taken
    on unlabeled patches only (METHODS; the reference's consistency term compares the labeled
    posteriors) and L_rectify is ramped up like the other unsupervised terms (the reference adds it
    with weight 1 from step 0, when pseudo-labels are noise); CPS runs on unlabeled patches as in
    ``nnUNetTrainerCPS`` (the reference also on labeled ones); KT weights start all equal instead of
    from the labeled class histogram (the ramp-up hides the first steps). The classes absent from a
    labeled batch are left out of that batch's mixture, so every term stays finite. The CGMM keeps
    the paper's per-class σ but averages its log-density over the feature channels, the scale of the
    reference's ``exp(−(mean_c |f−μ|)²)`` (a sum over channels made the posterior one-hot and L_gt's
    gradient dwarf L_sup's; :mod:`nnunet_ssl.gmm.cgmm`).

    Inference network: A (``self.network``), as in ``nnUNetTrainerCPS``.
    """

    consistency_weight: float = 0.1
    """w_cps: maximum weight of the KT-CPS term (ramped up)."""
    gt_weight: float = 1.0
    """λ_gt of L_gt (labeled, not ramped)."""
    self_weight: float = 1.0
    """λ_self of L_self (labeled, not ramped)."""
    max_weight: float = 1.0
    """λ_max of L_max (labeled class means, not ramped)."""
    cons_weight: float = 0.2
    """λ_cons: maximum weight of L_cons (ramped up)."""
    rectify_weight: float = 1.0
    """λ_rect: maximum weight of L_rectify (ramped up)."""
    cgmm_momentum: float = 0.0
    """Momentum of the stored CGMM estimate used on unlabeled data (0: this batch's statistics)."""
    cgmm_var_floor: float = DEFAULT_VAR_FLOOR
    """Floor of the per-class feature variances of the CGMM (bounds its confidence; see nnunet_ssl.gmm.cgmm)."""
    kt_momentum: float = 0.99
    """EMA momentum of the KT class weights."""
    kt_cps: bool = True
    """KT-CPS (class-weighted by KT weights) if True, plain CPS if False."""
    cgmm_terms: Tuple[str, ...] = CGMM_TERMS
    """Enabled CGMM loss terms, a subset of ('gt', 'self', 'max', 'cons', 'rectify'); () disables the CGMM."""

    unused_hyperparameters = ("ema_decay", "seed")
    # no EMA teacher (ema_decay), and nothing is drawn from the trainer's generator (seed)
    extra_network_names = ("network_b",)
    e2e_configurations = ("3d_fullres", "2d")
    cost_model = {"forward": 4, "backward": 4}  # two networks on labeled+unlabeled
    # A and B on labeled + unlabeled + the CGMM terms on features (activation_memory.md). The joint step: unlike
    # CPS, A's part needs B's labeled outputs (KT weights, B's mixture fit) and B's posterior on the unlabeled
    # features (L_cons), so one network's graph at a time would need B's gradient-free pass over labeled +
    # unlabeled, 1.17x the compute as for nnUNetTrainerDHC_LowMemory
    activation_factor = 6

    def initialize(self):
        unknown = sorted(set(self.cgmm_terms) - set(CGMM_TERMS))
        if unknown:
            raise ValueError(f"cgmm_terms must be a subset of {CGMM_TERMS}, got unknown {unknown}")
        super().initialize()
        # taps before the first forward (torch.compile traces the hooks then); no extra pass needed
        nets = self.trainable_networks()
        self.taps: Dict[str, FeatureTap] = {s: FeatureTap(nets[n]) for s, n in NETS.items()} if self.cgmm_terms else {}

    def build_trackers(self) -> None:
        num_classes, ignore = self.label_manager.num_segmentation_heads, self.label_manager.ignore_label
        for s in NETS:
            if self.kt_cps:
                self.trackers[f"kt_{s}"] = KTWeightTracker(num_classes, momentum=self.kt_momentum, ignore_index=ignore)
            if self.cgmm_terms:
                self.trackers[f"cgmm_{s}"] = ClassConditionalGMM(num_classes, momentum=self.cgmm_momentum or None,
                                                                 var_floor=self.cgmm_var_floor, ignore_index=ignore)

    def cps_loss(self, logits_u: Dict[str, torch.Tensor], weights: Dict[str, Optional[torch.Tensor]]):
        """(KT-)CPS on unlabeled logits ``(B_u, K, *patch)``: A learns B's pseudo-labels weighted by
        ``weights['b']`` and vice versa (None: unweighted, i.e. plain CPS)."""
        return cross_pseudo_supervision(logits_u["a"], logits_u["b"],
                                        ce=partial(weighted_cross_entropy, class_weights=weights["b"]),
                                        ce_b=partial(weighted_cross_entropy, class_weights=weights["a"]))

    def cgmm_losses(self, logits_l, logits_u, labels, n: int) -> Dict[str, torch.Tensor]:
        """Enabled CGMM terms (summed over A and B, unweighted) and ``rect_rate``. Features come from the
        taps: the first ``n`` samples are labeled; ``labels`` are the full-resolution labels ``(n, 1, *patch)``.
        Every enabled term is returned (0 when undefined)."""
        on = set(self.cgmm_terms)
        zero = logits_l["a"].new_zeros(())
        out = {f"loss_{t}": zero for t in CGMM_TERMS if t in on}
        ignore = self.label_manager.ignore_label
        lp_u = {}
        for s in NETS:
            feats = self.taps[s].features
            f_l, f_u = feats[:n], feats[n:]
            gmm = self.trackers[f"cgmm_{s}"]
            m = gmm.update(f_l, labels)  # counts are all-reduced: every rank takes the same branches
            if bool(m.counts.sum() > 0):
                lp_l = log_posterior(f_l, m.mu, m.sigma, log_priors(m.counts))
                if "gt" in on:
                    out["loss_gt"] = out["loss_gt"] + loss_gt(lp_l, labels, ignore)
                if "self" in on:
                    _, valid = labels_at(labels, f_l.shape[2:], m.mu.shape[0], ignore)
                    out["loss_self"] = out["loss_self"] + loss_self(logits_l[s], cgmm_predict(lp_l), valid)
                if "max" in on:
                    out["loss_max"] = out["loss_max"] + loss_max(m.mu, present=m.counts > 0)
            if on & {"cons", "rectify"} and bool(gmm.seen.any()):
                lp_u[s] = gmm.log_posterior(f_u)
        if len(lp_u) == len(NETS):
            if "cons" in on:
                out["loss_cons"] = loss_cons(lp_u["a"].exp(), lp_u["b"].exp())
            if "rectify" in on:
                pseudo = {s: rectify_pseudo_labels(logits_u[s], lp_u[s]) for s in NETS}
                out["loss_rectify"] = loss_rectify(logits_u["a"], logits_u["b"], pseudo["a"], pseudo["b"])
                out["rect_rate"] = rectification_rate(torch.cat([class_argmax(logits_u[s]) for s in NETS]),
                                                      torch.cat([pseudo[s] for s in NETS]))
        return out

    def compute_losses(self, data, target, unlabeled):
        n = data.shape[0]
        x = torch.cat([data, unlabeled])
        outputs = {s: split_output(self.trainable_networks()[name](x), n) for s, name in NETS.items()}
        loss_sup = sum(self.loss(outputs[s][0], target) for s in NETS)
        logits_l = {s: full_resolution(outputs[s][0]).float() for s in NETS}
        logits_u = {s: full_resolution(outputs[s][1]).float() for s in NETS}
        ramp = self.rampup_weight(1.0)
        terms: Dict[str, object] = {"loss_sup": loss_sup, "w_unsup": ramp}

        weights = {s: None for s in NETS}
        if self.kt_cps:
            for s in NETS:
                weights[s] = terms[f"kt_weights_{s}"] = self.trackers[f"kt_{s}"].update(logits_l[s].detach(), target)
        terms["loss_cps"] = self.cps_loss(logits_u, weights)
        total = loss_sup + ramp * self.consistency_weight * terms["loss_cps"]

        if self.cgmm_terms:
            cgmm = self.cgmm_losses(logits_l, logits_u, full_resolution(target), n)
            for tap in self.taps.values():
                tap.clear()
            labeled = {"gt": self.gt_weight, "self": self.self_weight, "max": self.max_weight}
            unsup = {"cons": self.cons_weight, "rectify": self.rectify_weight}
            for t in self.cgmm_terms:
                total = total + (labeled[t] if t in labeled else ramp * unsup[t]) * cgmm[f"loss_{t}"]
            terms.update(cgmm)
        return {"loss": total, **terms}


class nnUNetTrainerGuidedNet_Ensemble(nnUNetTrainerGuidedNet):
    """GuidedNet trained as usual; inference (validation, exported weights) is the mean of the softmax
    outputs of networks A and B instead of A alone."""
    inference_model = ("network", "network_b")


# ---- ablations of the paper: components (KT-CPS, 3D-CGMM) and the CGMM loss terms. In the paper's loss
# table the row gt+self+max+cons is the full model, so L_rectify (the CGMM-rectified pseudo-labels) is on in
# every loss row; each row's name lists the other terms it keeps.
class nnUNetTrainerGuidedNet_NoKT(nnUNetTrainerGuidedNet):
    """GuidedNet without KT-CPS: plain (unweighted) CPS, CGMM terms unchanged."""
    kt_cps = False


class nnUNetTrainerGuidedNet_NoCGMM(nnUNetTrainerGuidedNet):
    """GuidedNet without the 3D-CGMM: KT-CPS only, no CGMM term."""
    cgmm_terms = ()
    activation_factor = 4  # as CPS: A and B graphs only (benchmarks/results/activation_memory.md)


class nnUNetTrainerGuidedNet_Lgt(nnUNetTrainerGuidedNet):
    """KT-CPS + L_gt (+ L_rectify)."""
    cgmm_terms = ("gt", "rectify")


class nnUNetTrainerGuidedNet_LgtLself(nnUNetTrainerGuidedNet):
    """KT-CPS + L_gt + L_self (+ L_rectify)."""
    cgmm_terms = ("gt", "self", "rectify")


class nnUNetTrainerGuidedNet_LgtLmax(nnUNetTrainerGuidedNet):
    """KT-CPS + L_gt + L_max (+ L_rectify)."""
    cgmm_terms = ("gt", "max", "rectify")


class nnUNetTrainerGuidedNet_LgtLselfLmax(nnUNetTrainerGuidedNet):
    """KT-CPS + L_gt + L_self + L_max (+ L_rectify)."""
    cgmm_terms = ("gt", "self", "max", "rectify")


class nnUNetTrainerGuidedNet_LgtLselfLmaxLcons(nnUNetTrainerGuidedNet):
    """KT-CPS + L_gt + L_self + L_max + L_cons (+ L_rectify): the paper's full-model row, i.e. the same
    training as nnUNetTrainerGuidedNet, under the row's own name (its own results folder)."""
    cgmm_terms = CGMM_TERMS
