"""Slice-to-volume mask propagation (FLARE22 challenge pipeline, last stage): an STCN-style space-time
memory network trained per organ as a binary task on nnU-Net's 2d configuration.

Training samples sequences of ``sequence_length`` consecutive slices of nnU-Net's preprocessed volumes
(:mod:`nnunet_ssl.propagation.sequences`); frame 0 carries the organ's ground-truth mask, every later
frame reads the memory of the frames before it (the annotated one and its predecessors with their
predicted probabilities) and is supervised with ``OHEM-CE + lovasz_weight · Lovász hinge``. The share
of pixels OHEM keeps falls linearly from 1 (before ``ohem_warm_start``) to ``ohem_top_p`` (from
``ohem_warm_end``; both fractions of all iterations), STCN's schedule.

Optimizer: STCN trains with Adam; so does this trainer, through nnU-Net's own ``nnUNetTrainerVanillaAdam``
(Adam + poly LR, mixed in after the base) at ``initial_lr = 1e-3``. On the synthetic sequences of the tests,
nnU-Net's default SGD (lr 1e-2, momentum 0.99) learned the propagation more slowly from scratch.

Why a subclass of ``nnUNetTrainerSemiSupervised``: it brings what this trainer needs unchanged — typed
hyper-parameters and per-run overrides (``nnUNet_ssl_overrides``, also for the budget), one-line
errors from every entry point, the region-dataset refusal, a checkpoint extension restoring the step
counter (the OHEM schedule) and RNG states on ``--c``, the non-finite-loss stop and one log line per
epoch with every loss term. Its unlabeled stream is off (``requires_unlabeled = False``); nnU-Net's
``run_training``, poly LR, logger and checkpoints are kept. (Deriving from ``nnUNetTrainer`` directly would
mean re-writing those parts of the base for one trainer.)

What differs from a segmentation trainer:

- the network is :class:`~nnunet_ssl.propagation.network.SpaceTimeMemoryNetwork`, not the plans' U-Net
  (the plans give the data: 2d spacing, normalisation, patch and batch size); its architecture is saved in
  the checkpoint (``nnunet_ssl.extra.propagator``), so ``nnunet-ssl propagate`` rebuilds it as trained;
- validation during training propagates validation sequences and logs a per-organ pseudo Dice (nnU-Net's
  ``dice_per_class_or_region`` / ``ema_fg_dice``, so ``checkpoint_best`` works as usual);
- the final validation (``nnUNetv2_train`` after training, or ``--val``) propagates every validation case
  from its ground-truth reference slices (the ``validation_references_per_organ`` largest slices per organ),
  exports with nnU-Net's export and scores with nnU-Net's ``compute_metrics_on_folder``
  (``validation/summary.json``); ``validation/propagation_vs_copy.json`` adds each organ's binary Dice of
  propagation and of copying the reference masks to every slice, the baseline propagation must beat;
- ``nnUNetv2_predict`` does not apply (a propagator needs reference masks): it stops with one line naming
  ``nnunet-ssl propagate``. ``nnunet_predict_compatible = False`` keeps the trainer out of the registry of
  segmentation trainers (:func:`nnunet_ssl.catalog.shipped_trainers`) and its predict-based end-to-end test.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import distributed as dist

from nnunetv2.configuration import default_num_processes
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.nnUNetTrainer.variants.optimizer.nnUNetTrainerAdam import nnUNetTrainerVanillaAdam
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_ssl.data import stream
from nnunet_ssl.errors import UserError
from nnunet_ssl.evaluation.metrics import overlap_metrics
from nnunet_ssl.losses.ohem import ohem_keep_fraction
from nnunet_ssl.propagation.inference import PROPAGATOR_KEY, export_case
from nnunet_ssl.propagation.loss import PropagationLoss
from nnunet_ssl.propagation.merge import export_scores
from nnunet_ssl.propagation.network import SpaceTimeMemoryNetwork
from nnunet_ssl.propagation.propagate import copy_references, propagate_organs
from nnunet_ssl.propagation.references import reference_masks
from nnunet_ssl.propagation.sequences import SliceSequenceLoader
from nnunet_ssl.trainers.semisupervised import nnUNetTrainerSemiSupervised
from nnunet_ssl.utils.files import write_json_atomic
from nnunet_ssl.utils.modules import unwrap


def _propagator_builder(features_per_stage, key_dim, value_dim, blocks_per_stage):
    """nnU-Net's ``build_network_architecture`` signature, building the propagator (the plans' U-Net and
    output count are not used: the propagator predicts one binary mask)."""
    def build(plans_manager, configuration_manager, num_input_channels, num_output_channels,
              enable_deep_supervision=False):
        return SpaceTimeMemoryNetwork(num_input_channels, features_per_stage, key_dim, value_dim, blocks_per_stage)
    return build


class nnUNetTrainerMaskPropagation(nnUNetTrainerSemiSupervised, nnUNetTrainerVanillaAdam):
    """STCN-style mask propagator on nnU-Net's 2d configuration (module docstring)."""

    sequence_length: int = 5
    """Slices per training sequence: the annotated one and ``T − 1`` propagated ones. STCN trains on 3 video
    frames; through a volume a mask travels many slices and organs end, which longer sequences show more
    often (on the synthetic test volumes, 5 slices reached a better propagation than 3 in the same time)."""
    features_per_stage: Tuple[int, ...] = (16, 32, 64, 128)
    """Features of the key and value encoders per stage (stage s has stride 2^s)."""
    key_dim: int = 64
    """Channels of the keys (STCN: 64)."""
    value_dim: int = 128
    """Channels of the values."""
    blocks_per_stage: int = 1
    """Residual blocks per encoder stage."""
    lovasz_weight: float = 1.0
    """Weight of the Lovász hinge next to OHEM cross-entropy."""
    ohem_top_p: float = 0.15
    """Share of the hardest pixels OHEM keeps after the warm-up (STCN: 0.15)."""
    ohem_warm_start: float = 0.1
    """Fraction of all iterations before which OHEM keeps every pixel (plain cross-entropy)."""
    ohem_warm_end: float = 0.5
    """Fraction of all iterations from which OHEM keeps ``ohem_top_p``."""
    memory_every: int = 5
    """Propagation (validation and default of ``nnunet-ssl propagate``): every n-th propagated slice stays in
    memory; the others only until the next slice (STCN: 5)."""
    max_memory_frames: int = 0
    """Propagation: at most this many propagated slices in memory besides the reference (0: no bound)."""
    validation_references_per_organ: int = 1
    """Final validation: ground-truth reference slices per organ (the largest)."""
    adam_initial_lr = 1e-3
    """Learning rate of Adam (nnU-Net's ``initial_lr`` unless overridden by name in nnUNet_ssl_overrides)."""

    requires_unlabeled = False
    unused_hyperparameters = ("unlabeled_batch_size", "consistency_weight", "rampup_fraction")
    nnunet_predict_compatible = False
    """Read by :mod:`nnunet_ssl.catalog`: checkpoints of this trainer are not image-to-segmentation networks,
    so ``nnUNetv2_predict`` (and the registry tests built on it) do not apply."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        patch = PlansManager(plans).get_configuration(configuration).patch_size
        if len(patch) != 2:
            raise UserError(f"{type(self).__name__} trains on a 2d configuration (it propagates masks from slice to "
                            f"slice), but {configuration!r} has a {len(patch)}d patch size; train it with "
                            f"configuration 2d")
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.sequence_length < 2:
            raise UserError(f"sequence_length must be >= 2 (the annotated slice and at least one to propagate to), "
                            f"got {self.sequence_length}")
        if not 0 <= self.ohem_warm_start <= self.ohem_warm_end <= 1 or not 0 < self.ohem_top_p <= 1:
            raise UserError(f"OHEM schedule needs 0 <= ohem_warm_start <= ohem_warm_end <= 1 and 0 < ohem_top_p <= 1, "
                            f"got {self.ohem_warm_start}, {self.ohem_warm_end}, {self.ohem_top_p}")
        divisor = 2 ** (len(self.features_per_stage) - 1)
        if any(p % divisor for p in self.configuration_manager.patch_size):
            raise UserError(f"the patch size {list(self.configuration_manager.patch_size)} of {configuration!r} is not "
                            f"divisible by {divisor}, the propagator's total stride with {len(self.features_per_stage)} "
                            f"stages (features_per_stage); use fewer stages or a patch size divisible by {divisor}")
        self.enable_deep_supervision = False
        if "initial_lr" not in self.applied_overrides:
            self.initial_lr = self.adam_initial_lr
        self.build_network_architecture = _propagator_builder(self.features_per_stage, self.key_dim, self.value_dim,
                                                              self.blocks_per_stage)

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision=True):
        """Called by ``nnUNetv2_predict`` (training builds the network per instance, see ``__init__``): a
        propagator cannot segment an image on its own, so prediction stops here with one line."""
        raise SystemExit("nnunet_ssl: error: nnUNetTrainerMaskPropagation is a mask propagator and needs reference "
                         "masks, so nnUNetv2_predict cannot run it; predict with nnunet-ssl propagate -i IMAGES -o OUT "
                         "--reference <2d nnU-Net model folder> --propagator <this model folder>")

    def _build_loss(self):
        return PropagationLoss(self.lovasz_weight)

    def _do_i_compile(self):
        """No ``torch.compile``: the propagator's forward loops over slices with a memory that grows per slice
        (and per volume at validation), which compiled graphs would be rebuilt for."""
        return False

    # ------------------------------------------------------------------ data
    def get_dataloaders(self):
        stream.exit_with_parent()
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        patch = self.configuration_manager.patch_size
        rotation, do_dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        labels = self.label_manager.foreground_labels
        ignore = self.label_manager.ignore_label
        # slices are stacked as channels: mask-for-norm (which reads the first slice's mask) is left out; the
        # preprocessed images are already zero outside that mask
        tr_transforms = self.get_training_transforms(patch, rotation, None, mirror_axes, do_dummy_2d,
                                                     use_mask_for_norm=None, is_cascaded=False,
                                                     foreground_labels=labels, regions=None, ignore_label=ignore)
        val_transforms = self.get_validation_transforms(None, is_cascaded=False, foreground_labels=labels,
                                                        regions=None, ignore_label=ignore)
        organs = [c for c in labels if c != ignore]
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        dl_tr = SliceSequenceLoader(dataset_tr, self.batch_size, self.sequence_length, initial_patch_size, patch,
                                    organs, tr_transforms)
        dl_val = SliceSequenceLoader(dataset_val, self.batch_size, self.sequence_length, patch, patch, organs,
                                     val_transforms)
        n = get_allowed_n_proc_DA()
        pin = self.device.type == "cuda"
        train = stream.make_augmenter(dl_tr, n, pin)
        val = stream.make_augmenter(dl_val, max(1, n // 2) if n else 0, pin)
        _ = next(train)
        _ = next(val)
        return train, val

    # ------------------------------------------------------------------ training
    def ohem_keep(self) -> float:
        total = self.total_iterations
        return ohem_keep_fraction(self.global_step, int(self.ohem_warm_start * total), int(self.ohem_warm_end * total),
                                  self.ohem_top_p)

    def compute_losses(self, data, target, unlabeled) -> Dict[str, object]:
        logits = self.network(data, target[:, 0])
        keep = self.ohem_keep()
        loss, ce, lovasz = self.loss(logits, target[:, 1:], keep)
        return {"loss": loss, "ohem_ce": ce.detach(), "lovasz": lovasz.detach(), "ohem_keep": keep}

    def validation_step(self, batch: dict) -> dict:
        """Loss and per-organ hard tp/fp/fn of the propagated frames (nnU-Net's pseudo Dice inputs)."""
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        with self.autocast():
            logits = self.network(data, target[:, 0])
            loss, _, _ = self.loss(logits, target[:, 1:], 1.0)
        pred = (logits.float() > 0).flatten(1)
        truth = target[:, 1:].flatten(1) > 0.5
        labels = list(self.label_manager.foreground_labels)
        tp, fp, fn = (np.zeros(len(labels)) for _ in range(3))
        for i, organ in enumerate(batch["organ"]):
            c = labels.index(int(organ))
            tp[c] += (pred[i] & truth[i]).sum().item()
            fp[c] += (pred[i] & ~truth[i]).sum().item()
            fn[c] += (~pred[i] & truth[i]).sum().item()
        return {"loss": loss.detach().float().cpu().numpy(), "tp_hard": tp, "fp_hard": fp, "fn_hard": fn}

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        with np.errstate(invalid="ignore"):  # organs not drawn this epoch: Dice 0/0 = NaN, left out of the mean
            super().on_validation_epoch_end(val_outputs)

    # ------------------------------------------------------------------ checkpoint
    def extra_state_dict(self) -> dict:
        return {PROPAGATOR_KEY: {"architecture": dict(unwrap(self.network).architecture)}}

    def load_extra_state_dict(self, state: dict) -> None:
        saved = (state.get(PROPAGATOR_KEY) or {}).get("architecture")
        current = dict(unwrap(self.network).architecture)
        if saved is not None and saved != current:
            raise UserError(f"the checkpoint's propagator has the architecture {saved}, this run builds {current}; "
                            f"continue with the same architecture settings (nnUNet_ssl_overrides) as the first run")

    # ------------------------------------------------------------------ final validation
    def perform_actual_validation(self, save_probabilities: bool = False):
        """Propagate every validation case from its ground-truth reference slices, export with nnU-Net and score
        with nnU-Net's ``compute_metrics_on_folder`` (module docstring). ``save_probabilities`` is not supported
        (the propagator has no class softmax) and ignored with a log line."""
        if save_probabilities:
            self.print_to_log_file("--npz: a propagator writes no probabilities; label maps only")
        if self.local_rank == 0:
            self._validate_by_propagation()
        if self.is_ddp:
            dist.barrier()

    def _validate_by_propagation(self) -> dict:
        from tqdm import tqdm

        network = unwrap(self.network)
        network.eval()
        folder = os.path.join(self.output_folder, "validation")
        os.makedirs(folder, exist_ok=True)
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        _, val_keys = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, val_keys)
        organs = [c for c in self.label_manager.foreground_labels if c != self.label_manager.ignore_label]
        num_classes = self.label_manager.num_segmentation_heads
        per_case = {}
        for key in tqdm(dataset.identifiers, desc="propagating validation cases", disable=len(val_keys) < 2):
            data, seg, _, properties = dataset.load_case(key)
            volume = torch.from_numpy(np.ascontiguousarray(data[:])).to(self.device)
            seg = np.asarray(seg[:])[0]
            z_count = seg.shape[0]
            references = reference_masks(seg, list(range(z_count)), organs, self.validation_references_per_organ)
            probabilities = propagate_organs(
                [network], volume, {c: {z: torch.from_numpy(m) for z, m in r.items()} for c, r in references.items()},
                self.memory_every, self.max_memory_frames)
            copied = copy_references(references, z_count)
            row = {}
            for name, probs in (("propagation", probabilities), ("copy_reference", copied)):
                row[name] = {str(c): overlap_metrics(probs[c] > 0.5, seg == c)[0] for c in probs}
            row["reference_slices"] = {str(c): sorted(r) for c, r in references.items()}
            per_case[key] = row
            export_case(export_scores(probabilities, num_classes, seg.shape), properties, self.configuration_manager,
                        self.plans_manager, self.dataset_json, folder, key)
        metrics = compute_metrics_on_folder(
            os.path.join(self.preprocessed_dataset_folder_base, "gt_segmentations"), folder,
            os.path.join(folder, "summary.json"), self.plans_manager.image_reader_writer_class(),
            self.dataset_json["file_ending"], self.label_manager.foreground_labels, self.label_manager.ignore_label,
            chill=True, num_processes=default_num_processes)
        means = {name: {str(c): float(np.mean(v)) if v else float("nan")
                        for c in organs for v in [[r[name][str(c)] for r in per_case.values() if str(c) in r[name]]]}
                 for name in ("propagation", "copy_reference")}
        report = {"note": "binary Dice per organ (its probability > 0.5 against its ground truth, before the merge) "
                          "in the preprocessed (2d plans) space, over the cases containing the organ; reference "
                          "slices from the ground truth; copy_reference copies each reference mask to every slice "
                          "of its range",
                  "mean": means, "per_case": per_case}
        write_json_atomic(os.path.join(folder, "propagation_vs_copy.json"), report)
        for label in metrics["mean"]:
            self.logger.log_summary(f"final_val/class_{label}_dice", metrics["mean"][label]["Dice"])
        self.logger.log_summary("final_val/foreground_dice", metrics["foreground_mean"]["Dice"])
        self.print_to_log_file("Validation complete (propagation from ground-truth reference slices)",
                               also_print_to_console=True)
        self.print_to_log_file("Mean Validation Dice: ", metrics["foreground_mean"]["Dice"],
                               also_print_to_console=True)
        self.print_to_log_file(f"Mean Dice per organ, propagation {means['propagation']}, copying the reference "
                               f"{means['copy_reference']}", also_print_to_console=True)
        return report
