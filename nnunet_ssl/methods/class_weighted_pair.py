"""The class-weighted student pair shared by DHC and DMPF (:class:`ClassWeightedPairTrainer`), and the
labeled class histogram DisW starts from.

Both methods train two students, A (``self.network``) and B (``network_b``), each with its own
class-weight tracker (:mod:`nnunet_ssl.weighting`): the trackers are updated once per step from the
step's own detached float32 outputs, before the losses that use them, and are checkpointed with
the run (``self.trackers``), and told when a training epoch ends (``end_epoch``: the CDifW/CDisW
confidence is smoothed once per epoch, as in the DMPF reference). DisW-based trackers start from the
labeled training set's class histogram. The per-class weights are logged every epoch as ``w_A``/``w_B`` and drawn in
``progress_ssl.png`` next to nnU-Net's ``progress.png``.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from nnunet_ssl.losses.weighted import WeightedDiceCE
from nnunet_ssl.trainers.semisupervised import nnUNetTrainerSemiSupervised
from nnunet_ssl.utils.modules import full_resolution
from nnunet_ssl.weighting.functional import floored_weights
from nnunet_ssl.weighting.trackers import build_tracker


def labeled_class_histogram(dataset, num_classes: int) -> np.ndarray:
    """Voxel count per class ``(num_classes,)`` (float64) over the segmentations of every case of an
    nnU-Net dataset (``dataset.identifiers``, ``dataset.load_case(id) -> (data, seg, seg_prev, props)``).

    Label ``-1`` (outside nnU-Net's nonzero crop mask) counts as background, as in nnU-Net's training
    transforms; values ``>= num_classes`` (the ignore label) are left out. DisW's initial weights
    (DHC, Wang & Li 2023) are computed from this histogram.
    """
    counts = np.zeros(int(num_classes), dtype=np.float64)
    for identifier in dataset.identifiers:
        seg = np.asarray(dataset.load_case(identifier)[1][:]).astype(np.int64).ravel()
        seg = seg[seg < num_classes]
        counts += np.bincount(np.maximum(seg, 0), minlength=num_classes)[:num_classes]
    return counts


class ClassWeightedPairTrainer(nnUNetTrainerSemiSupervised):
    """Base (not a trainer to run): students A and B with class-weight trackers ``weights_A`` and
    ``weights_B`` and the class-weighted segmentation loss ``Seg_W = Dice_W + ce_weight·CE_W``
    (:class:`~nnunet_ssl.losses.weighted.WeightedDiceCE`, foreground Dice, nnU-Net's batch Dice and
    smoothing; with nnU-Net's deep-supervision weights on the supervised term).

    Each tracker is updated from its own model: labeled logits and ground truth (DifW, CDifW, CDisW's
    confidence) and the model's argmax on the unlabeled batch (DisW counts, as in DHC).

    Floor of the supervised weights (``weight_floor``, default 1): ``Seg_W`` on the labeled batch
    weighs classes by ``weight_floor + w/mean(w)`` of the tracker's ``w``. The pure formulas starve
    frequent classes — DisW gives background weight 0 and DifW a well-learned class ≈ 0 — so the
    weighted CE stops charging for false positives there (on the project's demo, organ/vessel Dice
    0.90–0.91 against 0.95 for nnUNetTrainer). Default 1 (``1 + w/mean(w)``): the smallest weight is
    half the average one and the rare classes keep their emphasis (ordering kept, ratios softened). ``weight_floor = 0`` is the
    papers' supervised loss. The unsupervised terms (DHC's CPS, DMPF's ``L_m`` and ``L_u``) have their own floor,
    ``unsupervised_weight_floor``; DMP's class sampling keeps the trackers' weights, as in the papers.
    """

    weights_a: str = "difw"
    """Class-weight tracker of model A: one of disw, difw, cdifw, cdisw (see nnunet_ssl.weighting)."""
    weights_b: str = "disw"
    """Class-weight tracker of model B: one of disw, difw, cdifw, cdisw."""
    disw_floor: float = 0.0
    """Lowest DisW weight (0 as in the reference: the most frequent class, background, weighs 0)."""
    weight_floor: float = 1.0
    """Floor of the supervised loss's class weights, in units of their mean: Seg_W uses
    weight_floor + w/mean(w) (1: every class adds at least the trackers' average weight; 0: the pure weights)."""
    unsupervised_weight_floor: float = 1.0
    """Floor of the class weights in the unsupervised terms (DHC's CPS, DMPF's L_m and L_u), in units of their
    mean, as ``weight_floor`` for the supervised term: ``floor + w/mean(w)``. 0: the trackers' weights, as in
    the papers (background weighs ~0 there, so those terms do not charge for false positives on it; the
    ``_UnsupervisedNoFloor`` variants). DMP's class sampling always uses the trackers' weights. Default 1: with
    the trackers' weights DHC and DMPF both over-segmented on the Hippocampus studies
    (:class:`~nnunet_ssl.trainers.dhc.nnUNetTrainerDHC`, :class:`~nnunet_ssl.trainers.dmpf.nnUNetTrainerDMPF`)."""
    difw_tau: float = 50.0
    """DifW accumulation length τ (momentum (τ−1)/τ of learning speeds and mean Dice)."""
    difw_alpha: float = 0.2
    """DifW exponent α of the un-learned/learned speed ratio."""
    confidence_beta: float = 0.2
    """Exponent β of the information score i^β in CDifW/CDisW."""

    extra_network_names = ("network_b",)
    seg_ce_weight = 1.0  # weight of CE_W in Seg_W (DHC 1, DMPF ½); part of the method, not a setting

    # ------------------------------------------------------------------ set-up
    def tracker_kwargs(self, kind: str) -> dict:
        """Constructor options of tracker ``kind`` from the hyper-parameters."""
        kwargs = {"ignore_index": self.label_manager.ignore_label}
        if kind in ("disw", "cdisw"):
            kwargs["floor"] = self.disw_floor
        if kind in ("difw", "cdifw"):
            kwargs.update(tau=self.difw_tau, alpha=self.difw_alpha)
        if kind in ("cdifw", "cdisw"):
            kwargs["beta"] = self.confidence_beta
        return kwargs

    def build_trackers(self) -> None:
        allowed = ("disw", "difw", "cdifw", "cdisw")
        for model, attr in (("A", "weights_a"), ("B", "weights_b")):
            kind = str(getattr(self, attr)).lower()
            if kind not in allowed:
                raise ValueError(f"{attr} must be one of {list(allowed)}, got {getattr(self, attr)!r}")
            self.trackers[f"weights_{model}"] = build_tracker(kind, self.label_manager.num_segmentation_heads,
                                                              **self.tracker_kwargs(kind))

    def initialize(self):
        super().initialize()
        self.seg_loss = WeightedDiceCE(ce_weight=self.seg_ce_weight, dice_weight=1.0,
                                       batch_dice=self.configuration_manager.batch_dice,
                                       ignore_index=self.label_manager.ignore_label)
        # nnU-Net's own deep-supervision weights (from _build_loss), so the weighted loss mirrors self.loss
        deep = self.deep_supervised(self.seg_loss)
        self.seg_loss_ds = deep if deep is not self.seg_loss else None

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        self._labeled_train_dataset = dataset_tr  # for the DisW initialisation
        return dataset_tr, dataset_val

    def on_train_start(self):
        super().on_train_start()
        if self.global_step == 0:  # a resumed run keeps its restored trackers
            self.initialise_distribution_weights()

    def initialise_distribution_weights(self) -> None:
        """Initialise the DisW-based trackers from the labeled training set's class histogram."""
        trackers = {n: t for n, t in self.trackers.items() if hasattr(t, "initialise")}
        if not trackers:
            return
        hist = labeled_class_histogram(self._labeled_train_dataset, self.label_manager.num_segmentation_heads)
        for name, tracker in trackers.items():
            tracker.initialise(torch.as_tensor(hist))
            self.print_to_log_file(f"{name} initialised from the labeled class histogram {hist.astype(int).tolist()}:"
                                   f" {[round(float(w), 3) for w in tracker.weights]}")

    def on_train_epoch_end(self, train_outputs):
        super().on_train_epoch_end(train_outputs)  # logs this epoch's terms (w_A, w_B as used in it)
        for tracker in self.trackers.values():
            tracker.end_epoch()  # e.g. CDifW/CDisW: the confidence is smoothed once per epoch

    # ------------------------------------------------------------------ per-step pieces
    def update_class_weights(self, out_a_l, out_b_l, out_a_u, out_b_u, target) -> Tuple[torch.Tensor, torch.Tensor]:
        """Update ``weights_A`` from model A's outputs and ``weights_B`` from model B's (labeled logits
        ``(B, C, *patch)``, unlabeled logits ``(B_u, C, *patch)``; deep-supervision lists allowed),
        detached, float32; return the new ``(C,)`` weights ``(W_A, W_B)``."""
        return (self.update_class_weight("weights_A", out_a_l, out_a_u, target),
                self.update_class_weight("weights_B", out_b_l, out_b_u, target))

    def update_class_weight(self, name: str, out_l, out_u, target) -> torch.Tensor:
        """Update tracker ``name`` from its own model's labeled and unlabeled outputs (each tracker reads only
        its model's outputs, so a step may update A's before B has run); return its new ``(C,)`` weights."""
        return self.trackers[name].update(full_resolution(out_l).detach().float(), full_resolution(target),
                                          full_resolution(out_u).detach().float())

    def supervised_loss(self, output, target, class_weights: torch.Tensor) -> torch.Tensor:
        """``Seg_W(output, target)`` with ``W = weight_floor + w/mean(w)`` of the tracker's ``w``
        (:func:`~nnunet_ssl.weighting.functional.floored_weights`), with nnU-Net's deep supervision
        when ``output`` is a list."""
        class_weights = floored_weights(class_weights, self.weight_floor)
        if isinstance(output, (list, tuple)):
            if self.seg_loss_ds is None:
                raise RuntimeError("deep-supervised output but nnU-Net's loss is not deep-supervised")
            n = len(output)
            return self.seg_loss_ds(output, target, [None] * n, [class_weights] * n)
        return self.seg_loss(output, full_resolution(target), class_weights=class_weights)

    def unsupervised_class_weights(self, class_weights: torch.Tensor) -> torch.Tensor:
        """The class weights of the unsupervised terms: ``unsupervised_weight_floor + w/mean(w)`` (the losses
        are normalised by the weights, so floor 0 is the trackers' weights)."""
        return floored_weights(class_weights, self.unsupervised_weight_floor)

    @staticmethod
    def class_weight_terms(w_a: torch.Tensor, w_b: torch.Tensor) -> dict:
        """The per-class weights as logged terms (one line per class in ``progress_ssl.png``)."""
        return {"w_A": w_a, "w_B": w_b}
