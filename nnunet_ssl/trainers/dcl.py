"""Category-level supervision: class-wise contrastive learning with multi-scale projection heads
(Zhang, Hayashi, Oda, Mori, "Towards better laparoscopic video segmentation: a class-wise
contrastive learning approach with multi-scale feature extraction", Healthc. Technol. Lett. 11(2-3),
2024). Its SimCLR baseline (Chen et al., ICML 2020) is :mod:`nnunet_ssl.trainers.simclr`; both build
on :class:`~nnunet_ssl.methods.contrastive.ContrastiveSegmentationTrainer`.

Data: few images with pixel labels (``imagesTr``/``labelsTr``), many with only image-level
category labels (``imagesUnlabeled`` + ``categoryLabels.json``, see
:mod:`nnunet_ssl.data.category_labels`).

``L = L_seg + α·L_DCL + β·L_cls`` with

- ``L_seg`` on the pixel-labeled patches: nnU-Net's own Dice + CE (``self.loss`` as nnU-Net's
  ``_build_loss`` makes it, with its deep supervision). The seed's ``GDL + focal`` is the named
  paper variant ``nnUNetTrainerDCL_GDLFocal`` / ``nnUNetTrainerDCLCls_GDLFocal`` (same deep
  supervision): its ``1/n²`` class weights give the frequent classes (organ, vessel) ~0.001 of the
  Dice weight, so they are trained by the focal term alone and were predicted on most frames where
  they are absent (demo, 10% labels: DCLCls 0.690 with GDL + focal, 0.834 with Dice + CE);
- ``L_DCL = Σ_scales SupCon(Z_s)`` over every patch that has a category label: positives are
  patches with the same category set (and stage, when both have one), every other labeled patch
  is a negative; unlabeled images without a category entry are left out (never negatives);
- ``L_cls`` = BCE-with-logits of the multi-hot category vector (background excluded) predicted
  by a classification head on the deepest encoder features.

Category vectors: a pixel-labeled patch uses the foreground classes present in its own
(augmented, cropped) mask, exact for what the network sees; an unlabeled patch uses its image's
label from ``categoryLabels.json`` (an image-level label: a random crop can miss a listed class,
which the method accepts as label noise). Stages come from ``categoryLabels.json`` for both.

Heads are training-only: they are extra trainable modules of the trainer (``extra_networks``:
in the optimizer, gradient-clipped, DDP-wrapped, saved and restored with the checkpoint's
``nnunet_ssl`` state), the encoder features reach them through forward hooks
(:class:`~nnunet_ssl.heads.projection.EncoderTaps`), so ``network_weights`` is a plain nnU-Net
network and ``nnUNetv2_predict`` works unchanged.

Under DDP each rank contrasts the patches of its own batch (embeddings are not gathered across
ranks); the per-rank losses' gradients are averaged by DDP as usual.

The base class' ``consistency_weight``, ``rampup_fraction`` and ``ema_decay`` are not used here
(category labels are labels: no ramp-up, no teacher; ``unused_hyperparameters``), nor is ``seed`` by
the DCL trainers (they draw nothing from the trainer's generator).
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from nnunet_ssl.data.category_labels import (CATEGORY_LABELS_FILE, CategoryLabel, category_vector,
                                             classes_in_mask, load_category_labels, read_mask_classes)
from nnunet_ssl.errors import UserError
from nnunet_ssl.heads.projection import encoder_module
from nnunet_ssl.losses.contrastive import multiscale_supcon_loss, positive_pair_mask, supcon_chance
from nnunet_ssl.losses.segmentation import GeneralisedDiceFocalLoss
from nnunet_ssl.methods.contrastive import CLASSIFIER, PROJECTION, ContrastiveSegmentationTrainer
from nnunet_ssl.trainers.semisupervised import split_output
from nnunet_ssl.utils.modules import full_resolution, unwrap

PRETRAIN, DECODER = "encoder_pretraining", "decoder_training"


# ---------------------------------------------------------------------------------------------- pure parts
def batch_categories(labeled_target: torch.Tensor, labeled_keys: Sequence[str], unlabeled_keys: Sequence[str],
                     labels: Mapping[str, CategoryLabel], num_classes: int
                     ) -> Tuple[torch.Tensor, List[Optional[str]], torch.Tensor]:
    """Category targets of a stacked batch ``[labeled; unlabeled]`` of ``N = B + B_u`` patches.

    ``labeled_target``: ``(B, 1, *spatial)`` full-resolution label map of the labeled patches; their
    classes are the foreground values ``1..num_classes-1`` present in it (the ignore label, which
    nnU-Net gives the value ``num_classes``, never counts). Unlabeled patch ``j`` uses
    ``labels[unlabeled_keys[j]]``. Stages come from ``labels`` for both (``None`` if absent).

    Returns ``vectors`` ``(N, num_classes - 1)`` float32 multi-hot (zeros where unknown),
    ``stages`` (``N`` entries) and ``keep`` ``(N,)`` bool: the patches that have a category label.
    """
    b = labeled_target.shape[0]
    if len(labeled_keys) not in (0, b):
        raise ValueError(f"got {len(labeled_keys)} labeled keys for {b} labeled patches")
    values = range(1, num_classes)
    vectors, stages, keep = [], [], []
    for i in range(b):
        key = labeled_keys[i] if labeled_keys else None
        stage = labels[key].stage if key in labels else None
        vectors.append(category_vector(CategoryLabel(classes_in_mask(labeled_target[i], values), stage), num_classes))
        stages.append(stage)
        keep.append(True)
    for key in unlabeled_keys:
        label = labels.get(key)
        vectors.append(category_vector(label, num_classes) if label is not None else torch.zeros(num_classes - 1))
        stages.append(label.stage if label is not None else None)
        keep.append(label is not None)
    return torch.stack(vectors), stages, torch.tensor(keep, dtype=torch.bool)


# ---------------------------------------------------------------------------------------------- trainers
class nnUNetTrainerDCL(ContrastiveSegmentationTrainer):
    """Class-wise contrastive learning + segmentation: ``L = L_seg + α·Σ_scales SupCon(Z_s)``.

    Positive pairs: patches with the same category set (and stage). Needs ``categoryLabels.json``
    giving at least one image without pixel labels a category label.
    """

    cls_weight: float = 0.0
    """β: weight of the multi-label classification loss (0: no classification head)."""

    requires_category_labels = True
    unused_hyperparameters = ContrastiveSegmentationTrainer.unused_hyperparameters + ("seed",)
    cost_model = {"forward": 2, "backward": 2}  # one pass over labeled + unlabeled patches (heads are small)
    activation_factor = 3  # labeled + unlabeled graph and the projection heads: 2.4x measured (activation_memory.md)

    @property
    def extra_network_names(self) -> Tuple[str, ...]:
        return (PROJECTION, CLASSIFIER) if self.cls_weight > 0 else (PROJECTION,)

    # ---- category labels
    def load_category_labels(self) -> Dict[str, CategoryLabel]:
        """Validated category labels of the raw dataset; :class:`UserError` if there are none for
        images without pixel labels."""
        raw_base = os.environ.get("nnUNet_raw")
        name = self.plans_manager.dataset_name
        if not raw_base or not os.path.isdir(os.path.join(raw_base, name)):
            raise UserError(f"its category labels are read from nnUNet_raw/{name}/{CATEGORY_LABELS_FILE}, but "
                            f"nnUNet_raw is {'not set' if not raw_base else repr(raw_base) + ' without ' + name}")
        raw = os.path.join(raw_base, name)
        masks = read_mask_classes(raw, self.dataset_json)
        labels = load_category_labels(raw, self.dataset_json, mask_classes=masks)
        if not set(labels) - set(masks):
            raise UserError(f"{os.path.join(raw, CATEGORY_LABELS_FILE)} gives no image without a pixel label (in "
                            f"imagesUnlabeled) a category label; add entries naming the classes each one contains")
        return labels

    def on_train_start(self):
        try:
            self.category_labels = self.load_category_labels()
        except UserError as e:
            raise UserError(f"{type(self).__name__} trains on image-level category labels; {e}") from None
        super().on_train_start()
        missing = sorted(set(self._unlabeled_cases) - set(self.category_labels))
        self.print_to_log_file(f"category labels: {len(self.category_labels)} images, "
                               f"{sum(lab.stage is not None for lab in self.category_labels.values())} with a stage; "
                               f"{len(missing)} of {len(self._unlabeled_cases)} unlabeled images have none and are "
                               f"left out of the category losses")

    # ---- losses
    def category_terms(self, features: Sequence[torch.Tensor], target, n_labeled: int) -> Dict[str, torch.Tensor]:
        """``loss_dcl``, ``loss_cls`` (if β > 0) and monitors over the patches with a category label;
        ``loss_dcl_chance`` is what ``loss_dcl`` would be with embeddings that tell no image apart
        (:func:`supcon_chance`): the term learns when ``loss_dcl`` falls below it.
        ``features``: encoder stage outputs of the stacked batch ``[labeled; unlabeled]``."""
        vectors, stages, keep = batch_categories(full_resolution(target)[:n_labeled],
                                                 self.batch_keys["labeled"], self.batch_keys["unlabeled"],
                                                 self.category_labels, self.label_manager.num_segmentation_heads)
        idx = keep.nonzero().squeeze(1).to(features[0].device)
        vectors = vectors.to(features[0].device)[idx]
        positives = positive_pair_mask(vectors, [stages[i] for i in idx.tolist()])
        z = [zs[idx] for zs in self.project(features)]
        terms = {"loss_dcl": multiscale_supcon_loss(z, positives, self.temperature),
                 "loss_dcl_chance": supcon_chance(positives, len(z)),
                 "n_category": float(len(idx)),
                 "positive_anchor_rate": positives.any(1).float().mean() if len(idx) else 0.0}
        if self.cls_weight > 0:
            logits = self.extra_networks[CLASSIFIER](features[-1])[idx].float()
            terms["loss_cls"] = (F.binary_cross_entropy_with_logits(logits, vectors) if len(idx)
                                 else logits.sum() * 0.0)  # no NaN from an empty mean
        return terms

    def category_loss(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        loss = self.contrastive_weight * terms["loss_dcl"]
        return loss + self.cls_weight * terms["loss_cls"] if self.cls_weight > 0 else loss

    def compute_losses(self, data, target, unlabeled):
        n = data.shape[0]
        out_l, _ = split_output(self.network(torch.cat([data, unlabeled])), n)
        terms = self.category_terms(self.encoder_taps.pop(), target, n)
        loss_seg = self.loss(out_l, target)
        return {"loss": loss_seg + self.category_loss(terms), "loss_seg": loss_seg, **terms}


class nnUNetTrainerDCLCls(nnUNetTrainerDCL):
    """DCL + multi-label classification of the category vector: ``L = L_seg + α·L_DCL + β·L_cls``."""

    cls_weight: float = 0.5
    """β: weight of the multi-label classification loss (BCE-with-logits)."""


class nnUNetTrainerDCLTwoStep(nnUNetTrainerDCLCls):
    """Two steps in one run: (1) for the first ``pretrain_fraction`` of all iterations the encoder
    (+ heads) is trained with ``α·L_DCL + β·L_cls`` only, the decoder frozen; (2) then the encoder is
    frozen and the decoder trained with ``L_seg`` on the labeled patches only.

    Freezing: the frozen part gets ``requires_grad=False`` but keeps its place in the optimizer (so
    the optimizer state round-trips across the boundary and ``--c`` works in either phase); its
    ``.grad`` stays ``None``, so SGD leaves it exactly unchanged (no momentum, no weight decay). In
    step 2 the encoder is also put in eval mode each epoch (frozen BatchNorm statistics, if any).
    The phase is saved with the checkpoint; a run resumed in step 2 stays there. Under DDP the
    network is wrapped anew at each switch (DDP registers the parameters needing gradients when it
    is built).
    """

    pretrain_fraction: float = 0.5
    """Fraction of all training iterations spent on encoder pre-training (step 1), in (0, 1)."""

    phase = None  # PRETRAIN or DECODER once training starts; saved with the checkpoint (not a hyper-parameter)

    @property
    def pretrain_iterations(self) -> int:
        """Iterations of step 1: ``ceil(pretrain_fraction · total_iterations)`` (recomputed if a resumed
        run changes the budget; a run already in step 2 stays there)."""
        return math.ceil(self.pretrain_fraction * self.total_iterations)

    def enter_phase(self, phase: str) -> None:
        if phase not in (PRETRAIN, DECODER):
            raise ValueError(f"phase must be {PRETRAIN!r} or {DECODER!r}, got {phase!r}")
        encoder = {id(p) for p in encoder_module(self.network).parameters()}
        for p in unwrap(self.network).parameters():
            p.requires_grad_((id(p) in encoder) == (phase == PRETRAIN))
        for name in self.extra_network_names:
            for p in self.extra_networks[name].parameters():
                p.requires_grad_(phase == PRETRAIN)
        if self.is_ddp and phase != self.phase:
            self.network = nn.parallel.DistributedDataParallel(self.network.module, device_ids=[self.local_rank])
        if phase != self.phase:
            self.print_to_log_file(f"DCL two-step: phase {phase} at iteration {self.global_step}")
        self.phase = phase

    def on_train_start(self):
        if not 0 < self.pretrain_fraction < 1:
            raise UserError(f"pretrain_fraction must be in (0, 1), got {self.pretrain_fraction}")
        super().on_train_start()
        self.enter_phase(self.phase or PRETRAIN)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        if self.phase == DECODER:
            encoder_module(self.network).eval()

    def extra_state_dict(self) -> dict:
        return {"phase": self.phase}

    def load_extra_state_dict(self, state: dict) -> None:
        if state.get("phase") is not None:
            self.enter_phase(state["phase"])

    def compute_losses(self, data, target, unlabeled):
        if self.phase == PRETRAIN and self.global_step >= self.pretrain_iterations:
            self.enter_phase(DECODER)
        n = data.shape[0]
        if self.phase == PRETRAIN:  # the decoder's output is unused (frozen; DDP needs the full forward)
            self.network(torch.cat([data, unlabeled]))
            terms = self.category_terms(self.encoder_taps.pop(), target, n)
            return {"loss": self.category_loss(terms), **terms, "phase": 0.0}
        out = self.network(data)
        self.encoder_taps.clear()
        loss_seg = self.loss(out, target)
        return {"loss": loss_seg, "loss_seg": loss_seg, "phase": 1.0}


# ---------------------------------------------------------------------------------------------- paper variant
class GDLFocalSegmentationLoss(ContrastiveSegmentationTrainer):
    """Mixin of the paper variants: ``L_seg = gdl_weight · GDL + focal_weight · focal`` (the seed's
    segmentation loss) in nnU-Net's deep-supervision wrapper with nnU-Net's per-scale weights."""

    gdl_weight: float = 1.0
    """Weight of the generalised Dice loss in L_seg."""
    focal_weight: float = 1.0
    """Weight of the focal loss in L_seg."""
    focal_gamma: float = 2.0
    """γ of the focal loss."""

    def _build_loss(self):
        seg = GeneralisedDiceFocalLoss(self.gdl_weight, self.focal_weight, self.focal_gamma,
                                       ignore_index=self.label_manager.ignore_label)
        loss = super()._build_loss()  # nnU-Net's wrapper carries its per-scale weights; not modified
        if isinstance(loss, DeepSupervisionWrapper):
            return DeepSupervisionWrapper(seg, loss.weight_factors)
        return seg


class nnUNetTrainerDCL_GDLFocal(GDLFocalSegmentationLoss, nnUNetTrainerDCL):
    """nnUNetTrainerDCL with the seed's ``L_seg = GDL + focal`` instead of nnU-Net's Dice + CE."""


class nnUNetTrainerDCLCls_GDLFocal(GDLFocalSegmentationLoss, nnUNetTrainerDCLCls):
    """nnUNetTrainerDCLCls with the seed's ``L_seg = GDL + focal`` instead of nnU-Net's Dice + CE."""
