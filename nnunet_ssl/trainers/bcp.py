"""Bidirectional Copy-Paste (BCP; Bai et al., "Bidirectional Copy-Paste for Semi-Supervised Medical
Image Segmentation", CVPR 2023) on Mean Teacher, as an nnU-Net trainer.

Both phases run inside one ``nnUNetv2_train``: the first ``ceil(pretrain_fraction · num_epochs)``
epochs pre-train the student on copy-pasted labeled pairs, then the teacher is set to the
pre-trained student and self-training on bidirectionally mixed labeled/unlabeled pairs begins.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch

from nnunet_ssl.losses.consistency import hard_pseudo_labels
from nnunet_ssl.losses.deep_supervision import downsample_like
from nnunet_ssl.losses.weighted import WeightedDiceCE
from nnunet_ssl.mixing.masks import DEFAULT_BETA, box_mask
from nnunet_ssl.mixing.mixes import MixResult, bidirectional_copy_paste, labeled_copy_paste
from nnunet_ssl.pseudo.filters import largest_connected_component_per_class
from nnunet_ssl.schedules import sigmoid_rampup
from nnunet_ssl.trainers.semisupervised import nnUNetTrainerSemiSupervised, split_output
from nnunet_ssl.utils.modules import full_resolution


def pretrain_epochs(num_epochs: int, fraction: float) -> int:
    """Epochs of the BCP pre-train phase: ``ceil(fraction · num_epochs)`` (a product within 1e-9 of
    an integer counts as that integer), so any fraction > 0 pre-trains at least one epoch.
    ``fraction`` ∈ [0, 1]: 0 skips pre-training, 1 never self-trains."""
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"pretrain_fraction must lie in [0, 1] (share of the epochs spent pre-training), "
                         f"got {fraction}")
    return int(math.ceil(float(fraction) * int(num_epochs) - 1e-9))


def partners(x: torch.Tensor) -> torch.Tensor:
    """The second source of every mix: sample ``i`` is paired with sample ``i − 1`` (cyclic), so
    with ``B >= 2`` the two sources of a mix are always different patches."""
    return torch.roll(x, 1, 0)


def pretrain_mix(x_l: torch.Tensor, y_l: torch.Tensor, mask: torch.Tensor) -> MixResult:
    """BCP pre-training input: ``x_i·M + x_{i−1}·(1−M)``, labels alike, for every labeled patch ``i``.

    ``x_l``: ``(B, C, *spatial)``, ``y_l``: integer ``(B, 1, *spatial)``, ``mask``: ``(*spatial)``.
    Pairing each patch with its neighbour keeps nnU-Net's batch size (the reference halves it) and
    uses every labeled voxel exactly once per step."""
    return labeled_copy_paste(x_l, y_l, partners(x_l), partners(y_l), mask)


def self_training_mix(x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor, y_u_hat: torch.Tensor,
                      mask: torch.Tensor, u_weight: float = 0.5) -> Tuple[MixResult, MixResult]:
    """BCP self-training inputs: ``X_in_i = x_l[i]·M + x_u[i]·(1−M)`` and
    ``X_out_i = x_u[i−1]·M + x_l[i−1]·(1−M)``, labels mixed alike with the pseudo-labels; voxels from
    a labeled image weigh 1, from an unlabeled one ``u_weight``.

    ``x_l``, ``x_u``: ``(n, C, *spatial)``; ``y_l``, ``y_u_hat``: integer ``(n, 1, *spatial)``;
    ``mask``: ``(*spatial)``. Each mix takes two different labeled and two different unlabeled
    patches (n >= 2), and together ``X_in`` and ``X_out`` hold every voxel of every patch once.
    """
    return bidirectional_copy_paste(x_l, y_l, x_u, y_u_hat, partners(x_u), partners(y_u_hat), partners(x_l),
                                    partners(y_l), mask, u_weight=u_weight)


class nnUNetTrainerBCP(nnUNetTrainerSemiSupervised):
    """BCP on Mean Teacher, both phases in one run.

    - Pre-train (epochs ``0 … ceil(pretrain_fraction·num_epochs) − 1``): student on labeled pairs
      copy-pasted through one box mask, loss ``(Dice + CE)/2``. The unlabeled stream is not read.
    - At the first self-train epoch the teacher becomes an exact copy of the student
      (:meth:`EMATeacher.copy_from`). The optimizer state and nnU-Net's poly LR simply continue (the
      reference also carries its SGD state over; one schedule spans the whole run).
    - Self-train: the teacher's argmax on the unlabeled patches (largest connected component per
      class if ``largest_cc``) labels them; the student learns ``X_in``/``X_out`` (see
      :func:`self_training_mix`) with region-weighted ``(Dice + CE)/2`` each, summed. The weight of
      unlabeled-region voxels ramps up (sigmoid) from 0 to ``u_weight`` over ``rampup_fraction`` of the
      self-training iterations: the reference weighs them 0.5 from its first self-training step, after
      10k of 40k pre-training iterations; on short runs the teacher's first pseudo-labels are poor
      (at full weight they taught "no foreground" on the 3D demo).

    The phase is stored in the checkpoint, so ``--c`` resumes on either side of the boundary and a
    resume that crosses it initialises the teacher then. Both phases keep nnU-Net's deep supervision:
    the mixed labels and region weights are made at full resolution and resized to every output scale
    as nnU-Net resizes segmentations (:func:`~nnunet_ssl.losses.deep_supervision.downsample_like`), so
    every decoder head is trained (a head without gradient breaks DDP) with nnU-Net's scale weights.
    Batches: every labeled patch is mixed with its neighbour in the batch (:func:`partners`), so a
    step needs >= 2 labeled (pre-train) and >= 2 labeled and unlabeled patches (self-train); with
    unequal sizes the first ``min(B_l, B_u)`` of each are used. Cost per self-train step: one student
    forward/backward of ``2·min(B_l, B_u)`` patches and one teacher forward of as many unlabeled.
    The EMA teacher follows the student in both phases (cheap). Inference network: the student, as
    the reference code evaluates and saves it; ``nnUNetTrainerBCP_TeacherInference`` uses the teacher.
    To start from a trained model instead of pre-training, set ``pretrain_fraction`` to 0 and pass
    ``-pretrained_weights``.
    """

    pretrain_fraction: float = 0.25
    """Share of the epochs spent pre-training (ceil(fraction·num_epochs) epochs; 0: none). The reference
    pre-trains 10k of 40k iterations, the seed's ACDC report 15k before 30k."""
    box_beta: float = DEFAULT_BETA
    """Box side as a fraction of each patch side (BCP 2/3; the seeds' ACDC study found 1/2 best)."""
    u_weight: float = 0.5
    """Loss weight of voxels that come from an unlabeled image (labeled voxels weigh 1), after ramp-up."""
    largest_cc: bool = True
    """Keep only the largest connected component per class of the teacher's pseudo-labels."""
    rampup_fraction: float = 0.4
    """Ramp-up of u_weight as a fraction of the self-training iterations."""
    pretrain_mix: bool = True
    """Pre-train on copy-pasted labeled pairs with ``(Dice + CE)/2`` (the reference). False: pre-train as
    nnUNetTrainer trains (its Dice + CE on the labeled patches as they come), ``nnUNetTrainerBCP_PlainPretrain``."""

    teacher_sources = {"teacher": "network"}
    unused_hyperparameters = ("consistency_weight",)  # BCP weighs regions (u_weight), not a loss term
    e2e_configurations = ("3d_fullres", "2d")
    cost_model = {"forward": 3, "backward": 2}  # self-train: student on 2 mixed batches, teacher on unlabeled
    activation_factor = 2  # self-train: student graph on both mixed batches (activation_memory.md)
    # (pre-train, e.g. epoch 0 of a 1000-epoch run: 1 forward + 1 backward, as nnUNetTrainer)

    self_training = False
    """Phase flag (instance state, saved in the checkpoint): True once self-training has begun."""
    self_training_start = None
    """(epoch, global step) at which the teacher was initialised from the student."""

    def initialize(self):
        super().initialize()
        self.mix_loss = self.deep_supervised(WeightedDiceCE(
            ce_weight=0.5, dice_weight=0.5, batch_dice=self.configuration_manager.batch_dice,
            ignore_index=self.label_manager.ignore_label))

    @property
    def num_pretrain_epochs(self) -> int:
        return pretrain_epochs(self.num_epochs, self.pretrain_fraction)

    def on_train_start(self):
        super().on_train_start()
        k = self.num_pretrain_epochs
        self.print_to_log_file(f"BCP: pre-train epochs 0..{k - 1}, self-training from epoch {k}" if k else
                               "BCP: no pre-training, self-training from epoch 0")

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        if not self.self_training and self.current_epoch >= self.num_pretrain_epochs:
            self.start_self_training()

    def start_self_training(self) -> None:
        """Phase boundary: the teacher becomes the pre-trained student."""
        self.teachers["teacher"].copy_from(self.network)
        self.self_training = True
        self.self_training_start = (int(self.current_epoch), int(self.global_step))
        self.print_to_log_file(f"BCP: self-training starts at epoch {self.current_epoch} (step {self.global_step}); "
                               f"teacher initialised from the student")

    def uses_unlabeled_batch(self) -> bool:
        return self.self_training and super().uses_unlabeled_batch()  # pre-train: labeled patches only

    def _box(self, x: torch.Tensor) -> torch.Tensor:
        return box_mask(x.shape[2:], self.box_beta, self.generator, device=x.device)

    def compute_losses(self, data, target, unlabeled) -> Dict[str, object]:
        y_l = full_resolution(target).long()
        if not self.self_training:
            if not self.pretrain_mix:
                return self.supervised_pretrain_losses(data, target)
            return self.pretrain_losses(data, y_l)
        return self.self_training_losses(data, y_l, unlabeled)

    def pretrain_losses(self, x_l: torch.Tensor, y_l: torch.Tensor) -> Dict[str, object]:
        if x_l.shape[0] < 2:
            raise ValueError(f"BCP pre-training pastes labeled patches onto each other and needs a batch size >= 2, "
                             f"got {x_l.shape[0]}; raise batch_size in the plans")
        mixed = pretrain_mix(x_l, y_l, self._box(x_l))
        loss = self.mixed_loss(self.network(mixed.image), mixed.label)
        return {"loss": loss, "loss_mix_l": loss, "self_training": 0.0}

    def supervised_pretrain_losses(self, x_l: torch.Tensor, target) -> Dict[str, object]:
        """nnUNetTrainer's step: its loss (Dice + CE, deep supervision) on the labeled patches, unmixed."""
        output = self.network(x_l)
        if isinstance(output, (list, tuple)) and not isinstance(target, (list, tuple)):
            target = downsample_like(target, output)
        loss = self.loss(output, target)
        return {"loss": loss, "loss_sup": loss, "self_training": 0.0}

    def mixed_loss(self, output, label: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Region-weighted ``(Dice + CE)/2`` of a (deep-supervised) output against a full-resolution mixed
        label ``(B, 1, *spatial)`` and voxel weights (same layout), resized to every output scale."""
        outs = list(output) if isinstance(output, (list, tuple)) else [output]
        extras = [downsample_like(t, outs) for t in (label, weight) if t is not None]
        if isinstance(output, (list, tuple)):
            return self.mix_loss(outs, *extras)
        return self.mix_loss(outs[0], *[e[0] for e in extras])

    def current_u_weight(self) -> float:
        """``u_weight`` ramped up (sigmoid) from the first self-training step."""
        start = self.self_training_start[1] if self.self_training_start is not None else 0
        length = int(self.rampup_fraction * max(self.total_iterations - start, 0))
        return sigmoid_rampup(self.global_step - start, length, self.u_weight)

    @torch.no_grad()
    def pseudo_labels(self, x_u: torch.Tensor) -> torch.Tensor:
        """Teacher argmax ``(n, 1, *spatial)`` long, optionally its largest component per class."""
        labels = hard_pseudo_labels(full_resolution(self.teachers["teacher"](x_u)))
        if self.largest_cc:
            labels = largest_connected_component_per_class(labels, self.label_manager.num_segmentation_heads)
        return labels.unsqueeze(1)

    def self_training_losses(self, x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor) -> Dict[str, object]:
        n = min(x_l.shape[0], x_u.shape[0])
        if n < 2:
            raise ValueError(f"BCP self-training mixes two labeled and two unlabeled patches per input and needs "
                             f">= 2 of each per step, got {x_l.shape[0]} labeled and {x_u.shape[0]} unlabeled; "
                             f"raise batch_size (plans) or unlabeled_batch_size")
        x_l, y_l, x_u = x_l[:n], y_l[:n], x_u[:n]
        y_u_hat = self.pseudo_labels(x_u)
        u_weight = self.current_u_weight()
        mixed_in, mixed_out = self_training_mix(x_l, y_l, x_u, y_u_hat, self._box(x_l), u_weight)
        out_in, out_out = split_output(self.network(torch.cat([mixed_in.image, mixed_out.image])), n)
        loss_in = self.mixed_loss(out_in, mixed_in.label, mixed_in.weight)
        loss_out = self.mixed_loss(out_out, mixed_out.label, mixed_out.weight)
        return {"loss": loss_in + loss_out, "loss_mix_in": loss_in, "loss_mix_out": loss_out,
                "pseudo_fg": (y_u_hat > 0).float().mean(), "u_weight": u_weight, "self_training": 1.0}

    def extra_state_dict(self) -> dict:
        return {"self_training": bool(self.self_training),
                "self_training_start": None if self.self_training_start is None else list(self.self_training_start)}

    def load_extra_state_dict(self, state: dict) -> None:
        self.self_training = bool(state.get("self_training", False))
        start = state.get("self_training_start")
        self.self_training_start = None if start is None else tuple(int(v) for v in start)


class nnUNetTrainerBCP_PlainPretrain(nnUNetTrainerBCP):
    """BCP whose pre-training is nnUNetTrainer's own training (Dice + CE on unmixed labeled patches, loss
    scale 1), then BCP's self-training as usual. On ACDC 10% (cpu-2d, seed 0) the default's pre-training on
    copy-pasted pairs with ``(Dice + CE)/2`` had not found the right ventricle when self-training began at
    epoch 20 (validation Dice 0 on every epoch before 28; nnUNetTrainer: 0.23 at epoch 10, 0.50 at epoch
    18), so the teacher's first pseudo-labels carried no RV. Measured (same split and seed): this variant
    had the RV at 0.53 when self-training began and ended with RV 0.653 against the default's 0.622, but the same
    mean Dice (0.721 against 0.719; nnUNetTrainer 0.755): both over-segment (benchmarks/results/README.md)."""
    pretrain_mix = False


class nnUNetTrainerBCP_TeacherInference(nnUNetTrainerBCP):
    """BCP, trained identically, validating and exporting the EMA teacher."""

    inference_model = "teacher"
