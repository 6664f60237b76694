"""DMPF — Double-Mix Pseudo-label Framework (Zhang, Hayashi, Oda & Mori, "Double-mix pseudo-label
framework: enhancing semi-supervised segmentation on category-imbalanced CT volumes", IJCARS 2025)
as an nnU-Net trainer, with the ablations the paper reports as named subclasses."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from nnunet_ssl.losses.consistency import hard_pseudo_labels
from nnunet_ssl.losses.weighted import weighted_cross_entropy, weighted_soft_dice
from nnunet_ssl.methods.class_weighted_pair import ClassWeightedPairTrainer
from nnunet_ssl.mixing.masks import DEFAULT_BETA
from nnunet_ssl.mixing.mixes import STRONG_MIXES, MixResult, get_strong_mix
from nnunet_ssl.trainers.semisupervised import split_output
from nnunet_ssl.utils.modules import full_resolution

__all__ = ["dmpf_total_loss", "foreground_samples", "nnUNetTrainerDMPF"]


def dmpf_total_loss(loss_sup: torch.Tensor, loss_mix: torch.Tensor, loss_u: torch.Tensor,
                    theta: float, mix_weight: float) -> torch.Tensor:
    """DMPF's objective ``L = (1 − μ)·L_sup + μ·L_m^unsup + θ·L_u^unsup`` (scalars; θ and μ already
    ramped up). The paper writes ``L_sup + L_m + θ·L_u``; its reference code trains on ``L_sup``
    alone in the first epoch and on ``0.75·L_sup + 0.25·L_m`` after (μ = 0.25)."""
    return (1 - mix_weight) * loss_sup + mix_weight * loss_mix + theta * loss_u


def foreground_samples(pseudo_labels: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: the samples of an integer pseudo-label map ``(B, *spatial)`` holding any class
    other than background (0)."""
    return (pseudo_labels.flatten(1) > 0).any(1)


class nnUNetTrainerDMPF(ClassWeightedPairTrainer):
    """Two students A (``self.network``) and B (``network_b``), each with an EMA teacher; A weighs
    classes with CDifW, B with DisW (``weights_a``/``weights_b``). Per step:

    1. one forward of each student on ``[x_l; x_u]``; ``W_A``, ``W_B`` updated from these outputs;
    2. pseudo-labels ``ŷ_A^u = argmax f̂_A(x_u)``, ``ŷ_B^u = argmax f̂_B(x_u)`` from the EMA teachers;
    3. DMP for each model with its own weights and pseudo-labels (A: ``W_A``, ``ŷ_A^u``; B: ``W_B``,
       ``ŷ_B^u``): classes ``S`` drawn ∝ weights, ``M = 1[ŷ^u ∈ S]``, ``x^m = x_u·M + x_l·(1−M)``,
       ``ŷ^m = ŷ^u·M + y_l·(1−M)`` (unlabeled sample i onto labeled sample i; draws from
       ``self.generator``); a second forward of each student on its mixed batch;
    4. ``L_m = CE_{W_A}(f_A(x_A^m), ŷ_A^m) + CE_{W_B}(f_B(x_B^m), ŷ_B^m)`` (each plus an unweighted
       foreground Dice, ``mix_dice_weight``, as the reference code), leaving out every sample
       whose pseudo-label (``ŷ_A^u`` for A's mix, ``ŷ_B^u`` for B's) holds background only: its class
       mask covers the whole patch, so the labeled image and its lesion would be replaced by an
       unlabeled image labeled background. The fraction left out is logged (``mix_skipped_A/B``);
    5. ``L_sup = Seg_{W_A}(f_A(x_l), y_l) + Seg_{W_B}(f_B(x_l), y_l)``, ``Seg_W = Dice_W + ½·CE_W``
       with nnU-Net's deep supervision (class weights floored, see ``weight_floor``; the unlabeled terms'
       weights in 4. and 6. likewise, ``unsupervised_weight_floor``);
    6. ``L_u = Seg_{W_A}(f_A(x_u), ŷ_B^u) + Seg_{W_B}(f_B(x_u), ŷ_A^u)``;
    7. ``L = (1 − μ(t))·L_sup + μ(t)·L_m + θ(t)·L_u``, θ(t) the sigmoid ramp-up to ``consistency_weight``,
       μ(t) the same ramp-up to ``mix_weight`` (0.25).

    Why μ: at step 0 the teachers are copies of random students, so their pseudo-labels (and the
    mixes built from them) are noise. The reference code (lzhang30/Double-Mix) trains on ``L_sup``
    alone for the first epoch and then on ``(1.5·L_sup + 0.5·L_m)/2 = 0.75·L_sup + 0.25·L_m``; we keep
    that 0.75/0.25 split as the end point and reach it with the sigmoid ramp-up instead of a jump
    after an epoch whose length depends on nnU-Net's budget.

    Unsupervised terms use the full-resolution outputs, in float32.

    Departure from the paper and the reference: the class weights of L_m's CE and of L_u are floored as the
    supervised term's (``unsupervised_weight_floor = 1``: ``1 + w/mean(w)``); DMP's class sampling keeps the
    trackers' weights. The trackers weigh background ~0 (DisW exactly 0; CDifW ended at ~0.2 against 1.3-2.9
    for the Hippocampus classes), so with their weights (``nnUNetTrainerDMPF_UnsupervisedNoFloor``) those
    terms hardly charge a pseudo-labelled false positive. On the ``cpu-quick`` Hippocampus study (10% labeled,
    split seeds 0 / 1 / 2) that DMPF over-segmented the anterior class (predicted volume 2.9 / 4.0 / 2.9 × the
    reference, precision 0.23-0.31) and scored 0.618 / 0.576 / 0.611; with the floor 0.787 / 0.622 / 0.780
    (higher on every seed, anterior volume 1.04 / 1.02 / 1.28; seed 1 over-segmented the posterior instead,
    2.2×). On the 3D demo the floor scored below (0.553 against 0.694, separate single runs, one of them losing
    a class entirely, as nnUNetTrainer's own runs do there). The same defect made DHC's floor its default
    (``benchmarks/results/README.md``).

    Order of the EMA update: the paper updates the teachers at the start of an iteration (its step 2);
    here they are updated right after each optimizer step (``after_optimizer_step``), which is the
    same thing — the students do not change between the end of step t−1 and the start of step t, and
    at the first step ``a = 0`` copies the students, as ``on_train_start`` does.

    Cost per step: each student runs two forward/backward passes (``B + B_u`` and ``min(B, B_u)``
    samples; the mixed batch needs this step's weights, which need this step's labeled outputs), each
    teacher one forward pass without gradients (``B_u`` samples). With ``B_u = B`` that is 3× the
    samples of nnU-Net per student, ≈ 6 nnU-Net steps plus two forward-only passes. Memory: one pass's
    graph at a time (:meth:`compute_losses`), at most a student on ``B + B_u`` samples: 2 labeled batches.

    Inference network: student A (``network``), as the reference code evaluates students (it
    predicts with the mean of both students' softmax: ``nnUNetTrainerDMPF_Ensemble``); teacher A
    is the variant ``nnUNetTrainerDMPF_TeacherInference``. Reference-code divergences (cyclic
    in-batch mixing, model A trained on B's mix, mixed targets from the model's own argmax) are not
    used.

    Ablations (named subclasses below; pairs are A–B): weight pairs DisW–DifW, CDifW–CDifW,
    CDifW–CDisW, DisW–DisW, CDisW–CDisW (CDifW–DisW is this class), and DMP replaced by CutMix,
    CutOut (the erased box carries no loss) or ClassMix (``strong_mix``).
    """

    weights_a: str = "cdifw"
    """Class-weight tracker of model A: one of disw, difw, cdifw, cdisw."""
    weights_b: str = "disw"
    """Class-weight tracker of model B: one of disw, difw, cdifw, cdisw."""
    consistency_weight: float = 0.1
    """θ: w_max of the cross pseudo-label term L_u (the reference's run command uses -w 0.1)."""
    strong_mix: str = "dmp"
    """Strong mix of unlabeled onto labeled patches: dmp (default), cutmix, cutout or classmix."""
    box_beta: float = DEFAULT_BETA
    """Box side as a fraction of the patch side, for strong_mix cutmix/cutout."""
    mix_weight: float = 0.25
    """μ_max: weight of the mixed term L_m against 1 − μ for L_sup after the ramp-up (reference 0.25)."""
    mix_dice_weight: float = 1.0
    """Weight of an unweighted foreground soft Dice added to the weighted CE of L_m (0: CE_W alone, as the
    paper writes it: ``nnUNetTrainerDMPF_MixCE``). 1: as the reference code, whose mixed loss is its
    DC_and_CE_loss (unweighted Dice + CE): the Dice charges false positives, which the trackers' CE weights
    (background ~0) do not. Measured on the 3D demo, 3 seeds (benchmarks/results/README.md): mean Dice 0.748
    against 0.694 with CE alone, organ 0.928 / vessel 0.884 / lesion 0.432 against 0.914 / 0.866 / 0.303
    (separate single runs per seed, not paired)."""

    mix_class_weights: bool = True
    """Weigh L_m's CE by the class weights (the paper's CE_W). False: the plain CE, as the reference code's
    mixed loss ends up (its weights are set once to equal values and never updated):
    ``nnUNetTrainerDMPF_MixUnweighted``. DMP's class sampling uses the trackers' weights either way."""

    teacher_sources = {"teacher_a": "network", "teacher_b": "network_b"}
    inference_model = "network"
    seg_ce_weight = 0.5
    # two students on labeled+unlabeled and on their mix (2 x 3), two teachers on unlabeled (2)
    # one graph at a time: A on labeled+unlabeled (2), A on its mix (1), then B's two (backward 6, held 2)
    cost_model = {"forward": 8, "backward": 6, "held": 2}
    # one student's graph on labeled + unlabeled (saved 2.01x), but the peak also holds A's gradients while B's
    # graph is alive: 2.18x on nnU-Net's plans (benchmarks/results/activation_memory.md)
    activation_factor = 3

    def initialize(self):
        if self.strong_mix not in STRONG_MIXES:
            raise ValueError(f"strong_mix must be one of {sorted(STRONG_MIXES)}, got {self.strong_mix!r}")
        super().initialize()

    def strong_mix_one(self, x_u: torch.Tensor, x_l: torch.Tensor, y_l: torch.Tensor, pseudo: torch.Tensor,
                       class_weights: torch.Tensor) -> MixResult:
        """Step 3 for one model: its mix from its pseudo-labels ``ŷ^u`` and its class weights ``W``, pasting
        unlabeled sample i onto labeled sample i for ``i < min(B, B_u)``, random draws from ``self.generator``.

        ``x_u`` ``(B_u, C, *patch)``, ``x_l`` ``(B, C, *patch)``, ``y_l`` ``(B, *patch)`` integer,
        ``pseudo`` ``(B_u, *patch)`` integer, ``class_weights`` ``(num_classes,)``."""
        k = min(x_u.shape[0], x_l.shape[0])
        options = {"beta": self.box_beta} if self.strong_mix in ("cutmix", "cutout") else {}
        return get_strong_mix(self.strong_mix)(x_u[:k], pseudo[:k], x_l[:k], y_l[:k], class_weights,
                                               self.generator, **options)

    def mixed_loss(self, logits: torch.Tensor, mixed: MixResult, pseudo: torch.Tensor,
                   class_weights: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Step 4 for one model: ``CE_W(logits, ŷ^m)`` (plus ``mix_dice_weight`` × the unweighted foreground
        soft Dice) over the samples whose pseudo-label holds a foreground class, and the fraction of samples
        left out.

        ``logits`` ``(k, C, *patch)`` of the mixed batch, ``pseudo`` ``(B_u, *patch)`` the pseudo-labels
        the mix was built from (its first ``k`` samples were mixed), ``class_weights`` ``(C,)``."""
        keep = foreground_samples(pseudo[:logits.shape[0]])
        weight = mixed.weight * keep.view(-1, *([1] * (mixed.weight.dim() - 1))).to(mixed.weight.dtype)
        ignore = self.label_manager.ignore_label
        loss = weighted_cross_entropy(logits, mixed.label, class_weights, weight, ignore)
        if self.mix_dice_weight:
            dice = self.seg_loss
            loss = loss + self.mix_dice_weight * weighted_soft_dice(
                logits, mixed.label, None, weight, dice.include_background, dice.smooth, dice.batch_dice,
                ignore_index=ignore)
        return loss, 1 - keep.float().mean()

    def compute_losses(self, data, target, unlabeled):
        """Steps 1-7, one student at a time: A's terms on ``[x_l; x_u]`` (its class weights, ``L_sup``, ``L_u``
        with teacher B's pseudo-labels), then A's mix and ``L_m``, then the same for B. Each student's terms
        read only its own outputs, its own tracker and the teachers' detached pseudo-labels, and the mixes
        are drawn in the order A, B, so the loss, the class weights, the mixes and the gradients are those of
        one joint graph. With ``one_graph_per_network`` (default) each of the four graphs (A on
        ``[x_l; x_u]``, A on its mix, B, B's mix) is backpropagated (:meth:`backward_part`) and freed before the
        next pass runs, at no extra compute: about 2x nnUNetTrainer's saved activations instead of 6x. Off (as benchmarks/
        term_gradients.py sets it), the terms keep their graphs and train_step backpropagates their sum."""
        n = data.shape[0]
        x = torch.cat([data, unlabeled])
        y_l = full_resolution(target)[:, 0].long()
        now = self.one_graph_per_network
        with torch.no_grad():  # 2. the EMA teachers' pseudo-labels
            pseudo = {m: hard_pseudo_labels(full_resolution(self.teachers[f"teacher_{m.lower()}"](unlabeled)))
                      for m in ("A", "B")}
        theta, mu = self.rampup_weight(), self.rampup_weight(self.mix_weight)
        terms = {}
        for m, partner, net in (("A", "B", self.network), ("B", "A", self.extra_networks["network_b"])):
            out_l, out_u = split_output(net(x), n)
            w = self.update_class_weight(f"weights_{m}", out_l, out_u, target)  # 1. this step's class weights
            uw = self.unsupervised_class_weights(w)
            sup = self.supervised_loss(out_l, target, w)  # 5.
            u = self.seg_loss(full_resolution(out_u).float(), pseudo[partner], class_weights=uw)  # 6.
            if now:
                self.backward_part((1 - mu) * sup + theta * u)
            mix = self.strong_mix_one(unlabeled, data, y_l, pseudo[m], w)  # 3.
            mixed, skipped = self.mixed_loss(full_resolution(net(mix.image)).float(), mix, pseudo[m],
                                             uw if self.mix_class_weights else None)  # 4.
            if now:
                self.backward_part(mu * mixed)
            terms[m] = (sup, mixed, u, w, mix.mask.mean(), skipped)
        (sup_a, mix_a, u_a, w_a, ratio_a, skipped_a), (sup_b, mix_b, u_b, w_b, ratio_b, skipped_b) = \
            terms["A"], terms["B"]
        loss_sup, loss_mix, loss_u = sup_a + sup_b, mix_a + mix_b, u_a + u_b
        loss = dmpf_total_loss(loss_sup, loss_mix, loss_u, theta, mu)  # 7.
        if now:
            loss, loss_sup, loss_mix, loss_u = (v.detach() for v in (loss, loss_sup, loss_mix, loss_u))
        return {"loss": loss, "loss_sup": loss_sup, "loss_mix": loss_mix, "loss_u": loss_u, "theta": theta,
                "mix_weight": mu, "w_sup": 1 - mu, "mix_ratio_A": ratio_a, "mix_ratio_B": ratio_b,
                "mix_skipped_A": skipped_a, "mix_skipped_B": skipped_b, **self.class_weight_terms(w_a, w_b)}


# ---------------------------------------------------------------- ablations (DMPF paper), pairs are A–B
class nnUNetTrainerDMPF_DisWDifW(nnUNetTrainerDMPF):
    """Weight pair DisW (A) – DifW (B)."""
    weights_a, weights_b = "disw", "difw"


class nnUNetTrainerDMPF_CDifWCDifW(nnUNetTrainerDMPF):
    """Weight pair CDifW (A) – CDifW (B)."""
    weights_a, weights_b = "cdifw", "cdifw"


class nnUNetTrainerDMPF_CDifWCDisW(nnUNetTrainerDMPF):
    """Weight pair CDifW (A) – CDisW (B)."""
    weights_a, weights_b = "cdifw", "cdisw"


class nnUNetTrainerDMPF_DisWDisW(nnUNetTrainerDMPF):
    """Weight pair DisW (A) – DisW (B)."""
    weights_a, weights_b = "disw", "disw"


class nnUNetTrainerDMPF_CDisWCDisW(nnUNetTrainerDMPF):
    """Weight pair CDisW (A) – CDisW (B)."""
    weights_a, weights_b = "cdisw", "cdisw"


class nnUNetTrainerDMPF_CutMix(nnUNetTrainerDMPF):
    """DMP replaced by CutMix: an unlabeled box (sides ``box_beta``·patch) pasted onto the labeled patch."""
    strong_mix = "cutmix"


class nnUNetTrainerDMPF_CutOut(nnUNetTrainerDMPF):
    """DMP replaced by CutOut: a box of the unlabeled patch erased; the box carries no loss."""
    strong_mix = "cutout"


class nnUNetTrainerDMPF_ClassMix(nnUNetTrainerDMPF):
    """DMP replaced by ClassMix: half of the pseudo-label's classes (uniform) pasted onto the labeled patch."""
    strong_mix = "classmix"


class nnUNetTrainerDMPF_MixCE(nnUNetTrainerDMPF):
    """L_m as the paper writes it: the trackers' weighted CE alone, without the reference code's Dice."""
    mix_dice_weight = 0.0


class nnUNetTrainerDMPF_UnsupervisedNoFloor(nnUNetTrainerDMPF):
    """The unlabeled terms' class weights as the paper and the reference use them (``unsupervised_weight_floor =
    0``): pseudo-labelled background weighs what the trackers give it (DisW exactly 0, CDifW ~0.1 of the other
    classes), so L_m's CE and L_u hardly charge a false positive on it. DMPF's default until the Hippocampus
    study measured its over-segmentation (see :class:`nnUNetTrainerDMPF`)."""
    unsupervised_weight_floor = 0.0


class nnUNetTrainerDMPF_MixUnweighted(nnUNetTrainerDMPF):
    """L_m with the plain CE (plus the Dice, as the default), the class weights left to DMP's sampling, L_sup and
    L_u. The reference code's mixed loss is built with equal class weights that it never updates. Measured on
    seed 1 of the ``cpu-quick`` Hippocampus study while the unlabeled terms' weights were not yet floored (then
    this class's setting too): 0.556 (26% of posterior voxels predicted anterior), against 0.576 for DMPF with
    those unfloored weights and 0.622 with the floor that is now the default."""
    mix_class_weights = False


class nnUNetTrainerDMPF_FullRampup(nnUNetTrainerDMPF):
    """θ(t) and μ(t) ramp up over the whole run (``rampup_fraction = 1``) instead of the first 40%. The
    reference code ramps its cross pseudo-label weight over all epochs (``consistency_rampup = max_epoch``),
    as SSL4MIS's CPS does, where the full ramp fixed CPS's loss of a hippocampus class on the Hippocampus
    study; at 40% of training θ is ``exp(-5·0.36) ≈ 0.17`` of its maximum, μ the same share of 0.25."""
    rampup_fraction = 1.0


class nnUNetTrainerDMPF_TeacherInference(nnUNetTrainerDMPF):
    """Predicts with teacher A (the EMA of the CDifW student, whose pseudo-labels drive A's DMP)
    instead of student A; on short runs the teacher lags its student by ~1/(1 − ema_decay) steps."""
    inference_model = "teacher_a"


class nnUNetTrainerDMPF_Ensemble(nnUNetTrainerDMPF):
    """Predicts with the mean of both students' softmax, as DHC's and Double-Mix's reference code."""
    inference_model = ("network", "network_b")
