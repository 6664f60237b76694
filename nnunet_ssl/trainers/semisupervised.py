"""``nnUNetTrainerSemiSupervised``: the base every nnunet_ssl trainer builds on.

It adds to :class:`nnUNetTrainer`, through nnU-Net's own hooks only (``run_training`` stays nnU-Net's):

- an unlabeled batch stream (random crops of ``<data_identifier>_unlabeled``, augmented by nnU-Net's
  training transforms), preprocessed on demand from ``nnUNet_raw/<dataset>/imagesUnlabeled``;
- extra trainable networks (same builder, same torch.compile/DDP wrapping as nnU-Net's network) and
  EMA teachers, all in nnU-Net's optimizer (SGD + poly LR, or an nnU-Net variant's) and scheduler;
- a consistency ramp-up, a global step counter, a torch.Generator for mixes;
- one log line per epoch with every semi-supervised term, the terms in ``progress_ssl.png``;
- a checkpoint extension of nnU-Net's checkpoint: every network, teacher, tracker, the step counter and RNG states are
  saved and restored, so ``--c`` continues as if never stopped; ``network_weights`` holds the
  inference network, so ``nnUNetv2_predict`` and ``nnUNetv2_find_best_configuration`` work unchanged;
- ``-pretrained_weights`` (which nnU-Net loads into ``self.network`` only) reach every extra network of
  the same architecture and every teacher (:meth:`~nnUNetTrainerSemiSupervised.share_pretrained_weights`);
- clear failure: a :class:`~nnunet_ssl.errors.UserError` raised in any entry point nnU-Net calls
  (:data:`ENTRY_POINTS`) ends the run with one line ``nnunet_ssl: error: ...`` and exit code 1; so do a
  region-based dataset (unless the method declares ``supports_regions``) and a non-finite loss (before
  the optimizer step, naming the term).

A method subclass declares its networks/teachers and implements :meth:`compute_losses`.
"""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_ssl.data import stream
from nnunet_ssl.data.unlabeled import prepare_unlabeled_for_training, unlabeled_preprocessed_folder
from nnunet_ssl.errors import UserError
from nnunet_ssl.losses.consistency import hard_pseudo_labels
from nnunet_ssl.networks.ensemble import SoftmaxEnsemble, ensemble_builder
from nnunet_ssl.overrides import NNUNET_BUDGET_KEYS, apply_overrides, read_overrides
from nnunet_ssl.schedules import sigmoid_rampup
from nnunet_ssl.teachers.ema import EMATeacher
from nnunet_ssl.utils.distributed import all_reduce_sum
from nnunet_ssl.utils.modules import full_resolution, repeatable_per_sample, set_deep_supervision, unwrap

CHECKPOINT_KEY = "nnunet_ssl"

ENTRY_POINTS = ("__init__", "initialize", "load_checkpoint", "on_train_start", "run_training",
                "perform_actual_validation")
"""The trainer methods nnU-Net calls (nnunetv2/run/run_training.py: ``get_trainer_from_args``,
``maybe_load_checkpoint``, ``run_training``, ``perform_actual_validation``; ``on_train_start`` is the
first hook of ``run_training``). Every definition of them, in the base and in every subclass, is
wrapped by :func:`exit_on_user_error`, so a UserError raised anywhere inside, also in an override
before it calls ``super()``, reaches the user as one line."""


def split_output(output, n: int):
    """Split a (deep-supervised) network output along the batch: first ``n`` samples, rest."""
    if isinstance(output, (list, tuple)):
        return [o[:n] for o in output], [o[n:] for o in output]
    return output[:n], output[n:]


def _to_numpy(v):
    if isinstance(v, torch.Tensor):
        v = v.detach().float().cpu().numpy()
    return np.asarray(v, dtype=np.float64)


def exit_on_user_error(method):
    """``method`` with a :class:`UserError` turned into ``SystemExit("nnunet_ssl: error: <message>")``:
    Python prints that one line, no traceback, and exits with code 1 (in-process callers can catch the
    SystemExit; the UserError is its ``__cause__``). The one place where trainers convert UserErrors."""
    if getattr(method, "exits_on_user_error", False):
        return method

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except UserError as e:
            raise SystemExit(f"nnunet_ssl: error: {e}") from e

    wrapper.exits_on_user_error = True
    return wrapper


def _wrap_entry_points(cls, inherited: bool = False) -> None:
    for name in ENTRY_POINTS:
        if name in cls.__dict__ or inherited:
            setattr(cls, name, exit_on_user_error(getattr(cls, name)))


def refuse_regions(trainer_name: str, plans: dict, dataset_json: dict) -> None:
    """UserError if ``dataset_json`` defines regions (nnU-Net's ``label_manager.has_regions``: overlapping
    sigmoid outputs instead of one softmax over classes)."""
    if PlansManager(plans).get_label_manager(dataset_json).has_regions:
        names = ", ".join(k for k, v in dataset_json["labels"].items() if v != 0)
        raise UserError(f"{trainer_name} trains on one class label per voxel and does not support region-based "
                        f"datasets, but {plans.get('dataset_name', 'the dataset')} defines the regions {names} in "
                        f"its dataset.json; train this dataset with nnUNetTrainer, or convert its labels to plain "
                        f"classes")


def non_finite_loss_message(trainer_name: str, value: float, terms: Dict[str, object], iteration: int,
                            epoch: int) -> str:
    """The sentence for a non-finite training loss: which logged terms are non-finite (or that none is)."""
    bad = []
    for k, v in terms.items():
        arr = _to_numpy(v)
        if not np.isfinite(arr).all():
            shown = float(arr) if arr.ndim == 0 else [float(x) for x in arr.ravel()]
            bad.append(f"{k} = {shown}")
    cause = ", ".join(bad) if bad else "the total loss (every logged term is finite)"
    return (f"{trainer_name}: the training loss is {value} at iteration {iteration} (epoch {epoch}), caused by "
            f"{cause}; training stopped before the optimizer step, so no weights were changed and no checkpoint "
            f"with non-finite weights was written; lower the learning rate or the weight of that term, or check "
            f"the input images for NaN/inf")


def plans_fit_gpu(activation_factor: float, per_network_gb: float, plans_gb: float, gpu_gb: float) -> bool:
    """Whether a step holding ``activation_factor`` x one network's activations fits, when nnU-Net's planner
    gave one network ``per_network_gb`` of plans meant to fill ``plans_gb`` (nnU-Net's own plans: both its
    target; ``nnunet-ssl plan`` for a trainer of factor f on G GB: G/f and G) on a GPU of ``gpu_gb``:
    ``activation_factor * per_network_gb <= max(plans_gb, gpu_gb)``. So plans made for this trainer (or a
    hungrier one) always fit, and nnU-Net's own plans fit a larger GPU when the factor times their target
    stays within it. The 1e-6 slack keeps ``f * (G/f)`` from exceeding G by a rounding error."""
    return activation_factor * per_network_gb <= max(plans_gb, gpu_gb) * (1 + 1e-6)


def weight_fingerprint(module: nn.Module) -> Tuple[List[str], torch.Tensor]:
    """State-dict keys and, per entry, (sum, sum of squares) in float64: a row changes when the entry is
    overwritten (e.g. by nnU-Net's ``load_pretrained_weights``)."""
    state = module.state_dict()
    rows = [torch.stack([v.detach().double().sum(), v.detach().double().square().sum()]) for v in state.values()]
    return list(state), torch.stack(rows) if rows else torch.zeros(0, 2)


def share_loaded_weights(source_state: Dict[str, torch.Tensor], keys: Sequence[str],
                         targets: Dict[str, nn.Module]) -> Tuple[List[str], List[str]]:
    """Copy the entries ``keys`` of ``source_state`` into every target that has all of them with the same
    shapes (its other entries, e.g. its own segmentation layers, are kept); return (loaded, skipped) names."""
    loaded, skipped = [], []
    for name, module in targets.items():
        target = unwrap(module)
        state = target.state_dict()
        if all(k in state and state[k].shape == source_state[k].shape for k in keys):
            target.load_state_dict({k: source_state[k] for k in keys}, strict=False)
            loaded.append(name)
        else:
            skipped.append(name)
    return loaded, skipped


class nnUNetTrainerSemiSupervised(nnUNetTrainer):
    """Base class: labeled stream (nnU-Net's) + unlabeled stream, extra networks, teachers, trackers.

    Subclasses set the class attributes below and implement :meth:`compute_losses`.
    """

    # ---- hyper-parameters (typed, documented; per run: env nnUNet_ssl_overrides, see nnunet_ssl.overrides)
    unlabeled_batch_size: int = 0
    """Unlabeled patches per step (0: the labeled batch size). Under DDP, per GPU."""
    consistency_weight: float = 0.1
    """w_max of the unsupervised term."""
    rampup_fraction: float = 0.4
    """Ramp-up length T as a fraction of all training iterations (sigmoid ramp-up)."""
    ema_decay: float = 0.99
    """a_max of the EMA teachers: a = min(1 - 1/(t+1), a_max)."""
    seed: int = 0
    """Seed of the trainer's torch.Generator used for mixes and other sampling."""

    # ---- structure (set by subclasses; not per-run settings)
    requires_unlabeled: bool = True
    supports_regions: bool = False
    """Whether the method is correct on region-based datasets (dataset.json regions: overlapping sigmoid
    outputs). The shipped methods treat the output as one softmax over classes (argmax pseudo-labels,
    softmax consistency, class weights), so they refuse such datasets before anything is created."""
    extra_network_names: Tuple[str, ...] = ()
    """Trainable networks besides ``self.network`` (built like it, trained by the same optimizer)."""
    teacher_sources: Dict[str, str] = {}
    """EMA teachers: teacher name -> name of the network it follows ('network' or an extra name)."""
    inference_model: Union[str, Tuple[str, ...]] = "network"
    """Which network or teacher is written as ``network_weights``, validates during training and picks
    ``checkpoint_best``. A tuple of names is the mean of their softmax (:class:`SoftmaxEnsemble`); the
    class's ``build_network_architecture`` then builds that ensemble, so ``nnUNetv2_predict`` runs it."""
    unused_hyperparameters: Tuple[str, ...] = ()
    """Hyper-parameters declared by a base class that this method ignores: not printed, and refused as
    overrides. ``ema_decay`` is left out automatically for methods without EMA teachers."""
    cost_model: Dict[str, float] = {}
    """Expected compute per step for benchmarks/iteration_cost.py: {"forward": f, "backward": b}, passes
    in units of one labeled batch (nnUNetTrainer: 1 and 1); optionally "held": the graphs (networks x
    batches) alive at once for backward, when the step backpropagates part by part (default: "backward")."""
    activation_factor: float = 1
    """Activation memory of a training step as a multiple of nnUNetTrainer's on the same plans and labeled
    batch (networks x batches held for backward, measured by benchmarks/activation_memory.py, rounded up).
    nnU-Net plans one network per GPU memory target; ``nnunet-ssl plan -tr <trainer>`` plans with the target
    divided by this factor, and :meth:`warn_if_plans_exceed_gpu` checks it at the start of a CUDA run."""

    STRUCTURAL = ("requires_unlabeled", "extra_network_names", "teacher_sources", "inference_model", "cost_model",
                  "activation_factor", "requires_category_labels", "e2e_configurations", "unused_hyperparameters",
                  "supports_regions")
    """Annotated class attributes that describe the method's structure, not per-run settings."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if isinstance(cls.__dict__.get("inference_model"), tuple) and "build_network_architecture" not in cls.__dict__:
            # nnU-Net's predictor builds the inference network from the class: make it the ensemble
            cls.build_network_architecture = staticmethod(ensemble_builder(cls.build_network_architecture,
                                                                           len(cls.inference_model)))
        _wrap_entry_points(cls)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if not self.supports_regions:  # before nnU-Net creates the output folder
            refuse_regions(type(self).__name__, plans, dataset_json)
        member_builder = getattr(type(self).build_network_architecture, "member_builder", None)
        if member_builder is not None:  # ensemble inference: training still builds one network at a time
            self.build_network_architecture = member_builder
        super().__init__(plans, configuration, fold, dataset_json, device)
        try:
            self.applied_overrides = apply_overrides(self, self.hyperparameter_names() + list(NNUNET_BUDGET_KEYS),
                                                     read_overrides())
        except ValueError as e:
            raise UserError(str(e)) from None
        self.unlabeled_folder = (unlabeled_preprocessed_folder(self.preprocessed_dataset_folder_base,
                                                               self.configuration_manager.data_identifier)
                                 if self.preprocessed_dataset_folder_base is not None else None)
        self.dataloader_unlabeled = None
        self.extra_networks: Dict[str, nn.Module] = {}
        self.teachers: Dict[str, EMATeacher] = {}
        self.trackers: Dict[str, object] = {}  # anything with state_dict()/load_state_dict()
        self.global_step = 0
        self.generator = torch.Generator().manual_seed(int(self.seed))
        self._validating_with_inference_network = False
        self._initial_weights: Optional[Tuple[List[str], torch.Tensor]] = None  # fingerprint, see initialize
        self._checkpoint_restored = False
        self.batch_keys: Dict[str, List[str]] = {"labeled": [], "unlabeled": []}
        """Case ids of the current step's labeled and unlabeled patches (for image-level labels)."""

    # ------------------------------------------------------------------ hyper-parameters
    @classmethod
    def hyperparameter_names(cls) -> List[str]:
        unused = set(cls.unused_hyperparameters) | (set() if cls.teacher_sources else {"ema_decay"})
        names = []
        for klass in reversed(cls.__mro__):
            if isinstance(klass, type) and issubclass(klass, nnUNetTrainerSemiSupervised):
                for name in getattr(klass, "__annotations__", {}):
                    if (name not in cls.STRUCTURAL and not name.startswith("_") and name not in names
                            and name not in unused):
                        names.append(name)
        return names

    def hyperparameters(self) -> Dict[str, object]:
        return {n: getattr(self, n) for n in self.hyperparameter_names()}

    # ------------------------------------------------------------------ networks
    def _wrap_like_nnunet(self, net: nn.Module, trainable: bool = True) -> nn.Module:
        """torch.compile and DDP exactly as nnU-Net does for ``self.network``."""
        if self._do_i_compile():
            net = torch.compile(net)
        if self.is_ddp and trainable:
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            net = nn.parallel.DistributedDataParallel(net, device_ids=[self.local_rank])
        return net

    def build_extra_network(self, name: str) -> nn.Module:
        """Build extra network ``name``; default: the same architecture as ``self.network``, freshly
        initialised (so two students start from different weights). Override for heterogeneous pairs."""
        return self.build_network_architecture(self.plans_manager, self.configuration_manager,
                                               self.num_input_channels,
                                               self.label_manager.num_segmentation_heads,
                                               self.enable_deep_supervision)

    def trainable_networks(self) -> Dict[str, nn.Module]:
        return {"network": self.network, **self.extra_networks}

    def all_models(self) -> Dict[str, nn.Module]:
        return {**self.trainable_networks(), **self.teachers}

    def inference_module(self) -> nn.Module:
        """The network validated and exported: one network or teacher, or the :class:`SoftmaxEnsemble` of
        several (built around the live networks, so it always holds their current weights)."""
        models = self.all_models()
        names = self.inference_model if isinstance(self.inference_model, tuple) else (self.inference_model,)
        missing = [n for n in names if n not in models]
        if missing:
            raise RuntimeError(f"inference_model {self.inference_model!r}: {missing} not among {list(models)}")
        nets = [models[n].module if isinstance(models[n], EMATeacher) else models[n] for n in names]
        if isinstance(self.inference_model, tuple):
            return SoftmaxEnsemble([unwrap(n) for n in nets])
        return nets[0]

    def initialize(self):
        super().initialize()  # builds, compiles and DDP-wraps self.network; optimizer over it
        for name in self.extra_network_names:  # consecutive random initialisations: distinct weights
            net = self.build_extra_network(name).to(self.device)
            self.extra_networks[name] = self._wrap_like_nnunet(net)
        for name, source in self.teacher_sources.items():
            teacher = EMATeacher(unwrap(self.trainable_networks()[source]), max_decay=self.ema_decay).to(self.device)
            if self._do_i_compile():
                teacher.module = torch.compile(teacher.module)
            self.teachers[name] = teacher
        self.build_trackers()
        # nnU-Net's optimizer, now over every trainable network
        self.optimizer, self.lr_scheduler = self.configure_optimizers()
        self._initial_weights = weight_fingerprint(unwrap(self.network))  # see share_pretrained_weights

    def build_trackers(self) -> None:
        """Hook: create stateful weight trackers etc. in ``self.trackers`` (called in initialize)."""

    def configure_optimizers(self):
        """nnU-Net's optimizer and LR scheduler (``nnUNetTrainer.configure_optimizers``: SGD + poly LR, or a
        variant's such as ``nnUNetTrainerAdam`` earlier in the MRO), built over ``self.network.parameters()``,
        with the parameters of every extra network joining its first parameter group: one group with the
        same hyper-parameters as before, and ``PolyLRScheduler`` sets the lr of every group. nnU-Net calls
        this in ``initialize`` (no extra networks yet); :meth:`initialize` calls it again once they exist."""
        optimizer, lr_scheduler = super().configure_optimizers()
        extra = [p for net in self.extra_networks.values() for p in net.parameters()]
        if extra:
            groups = optimizer.param_groups
            first = groups.pop(0)
            optimizer.add_param_group({**first, "params": list(first["params"]) + extra})
            groups.insert(0, groups.pop())  # back in first place
        return optimizer, lr_scheduler

    def deep_supervised(self, loss: nn.Module) -> nn.Module:
        """``loss`` wrapped in nnU-Net's ``DeepSupervisionWrapper`` with the scale weights nnU-Net chose for
        ``self.loss`` (its DDP-safe weight for the lowest head included), or ``loss`` itself when the
        network has no deep supervision. The wrapper calls ``loss(output_i, target_i, *extras_i)`` per scale."""
        built = unwrap(self.loss)
        if isinstance(built, DeepSupervisionWrapper):
            return DeepSupervisionWrapper(loss, built.weight_factors)
        return loss

    def set_deep_supervision_enabled(self, enabled: bool):
        for m in self.all_models().values():
            set_deep_supervision(m.module if isinstance(m, EMATeacher) else m, enabled)

    # ------------------------------------------------------------------ unlabeled data
    def ensure_unlabeled_preprocessed(self) -> List[str]:
        """Check the unlabeled folder against the current plans at every start and return the valid case
        ids: rank 0 preprocesses new raw cases and redoes stale ones (made with other plans), bad cases are
        logged and left out; the other ranks read the folder after rank 0 is done."""
        kwargs = dict(dataset_name=self.plans_manager.dataset_name, configuration=self.configuration_name,
                      plans_identifier=self.plans_manager.plans_name, log=self.print_to_log_file,
                      needed_by=type(self).__name__)
        cases = None
        if self.local_rank == 0:
            cases = prepare_unlabeled_for_training(num_processes=max(1, get_allowed_n_proc_DA() // 2), **kwargs)
        if self.is_ddp:
            dist.barrier()
        return cases if cases is not None else prepare_unlabeled_for_training(preprocess=False, **kwargs)

    def get_unlabeled_dataloader(self, cases: Sequence[str]):
        rotation, do_dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = self.get_training_transforms(
            self.configuration_manager.patch_size, rotation, self._get_deep_supervision_scales(), mirror_axes,
            do_dummy_2d, use_mask_for_norm=self.configuration_manager.use_mask_for_norm,
            is_cascaded=self.is_cascaded, foreground_labels=self.label_manager.foreground_labels,
            regions=self.label_manager.foreground_regions if self.label_manager.has_regions else None,
            ignore_label=self.label_manager.ignore_label)
        batch_size = self.unlabeled_batch_size or self.batch_size
        loader = stream.UnlabeledDataLoader(stream.unlabeled_dataset(self.unlabeled_folder, cases), batch_size,
                                            initial_patch_size, self.configuration_manager.patch_size,
                                            self.label_manager, transforms=transforms)
        augmenter = stream.make_augmenter(loader, get_allowed_n_proc_DA(), self.device.type == "cuda")
        _ = next(augmenter)
        return augmenter

    def get_dataloaders(self):
        stream.exit_with_parent()  # nnU-Net's augmentation workers and ours exit when this process dies
        dl_tr, dl_val = super().get_dataloaders()
        if self.requires_unlabeled:
            self.dataloader_unlabeled = self.get_unlabeled_dataloader(self._unlabeled_cases)
        return dl_tr, dl_val

    # ------------------------------------------------------------------ training
    def on_train_start(self):
        self._unlabeled_cases = self.ensure_unlabeled_preprocessed() if self.requires_unlabeled else []
        super().on_train_start()
        self.warn_if_plans_exceed_gpu()
        self.print_to_log_file(f"nnunet_ssl {type(self).__name__} hyper-parameters: {self.hyperparameters()}")
        if self.applied_overrides:
            self.print_to_log_file(f"nnunet_ssl overrides from nnUNet_ssl_overrides: {self.applied_overrides}")
        if self.requires_unlabeled:
            self.print_to_log_file(f"unlabeled cases: {len(self._unlabeled_cases)} in {self.unlabeled_folder}")
        if self.global_step == 0:  # fresh start (possibly from -pretrained_weights): teachers = their students
            self.share_pretrained_weights()
            for name, source in self.teacher_sources.items():
                self.teachers[name].copy_from(self.trainable_networks()[source])

    def warn_if_plans_exceed_gpu(self) -> None:
        """On CUDA, a WARNING with the ``nnunet-ssl plan`` command when this trainer's activations
        (``activation_factor`` x one network's, per GPU's share of the batch) do not fit the plans
        (:func:`plans_fit_gpu`; what the plans were made for: :func:`nnunet_ssl.commands.plan.plans_memory`)."""
        if self.device.type != "cuda" or self.activation_factor <= 1:
            return
        from nnunet_ssl.commands.plan import plan_command, plans_memory

        plans = self.plans_manager.plans
        per_network, plans_gb, how = plans_memory(plans, self.configuration_name)
        per_network *= self.batch_size / self.configuration_manager.batch_size  # under DDP: this GPU's share
        gpu_gb = torch.cuda.get_device_properties(self.device).total_memory / 2 ** 30
        if not plans_fit_gpu(self.activation_factor, per_network, plans_gb, gpu_gb):
            self.print_to_log_file(
                f"WARNING: {type(self).__name__} holds about {self.activation_factor:g}x the activations of "
                f"nnUNetTrainer, but plans {self.plans_manager.plans_name} give one network {per_network:.3g} GB "
                f"({how}): about {self.activation_factor * per_network:.3g} GB, more than this GPU's "
                f"{gpu_gb:.3g} GB, so training may run out of GPU memory mid-run. Plans sized for this trainer: "
                f"{plan_command(self.plans_manager.dataset_name, type(self).__name__, self.configuration_name, plans)}")

    def share_pretrained_weights(self) -> None:
        """Give every extra network the ``-pretrained_weights`` nnU-Net loaded into ``self.network``.

        nnUNetv2_train passes the file only to ``load_pretrained_weights(trainer.network, ...)``, between
        :meth:`initialize` and ``run_training``, and tells the trainer nothing. The signal used here: the
        entries of ``self.network`` that changed since :meth:`initialize` built it, on a fresh start (no
        checkpoint restored). Exactly those entries (nnU-Net skips the segmentation layers) are copied into
        every extra network that has them with the same shapes, as if ``load_pretrained_weights`` had been
        applied to it; the others keep their initialisation. Teachers are then copied from their students.
        One log line says which networks were loaded and which were not."""
        if self._initial_weights is None or self._checkpoint_restored:
            return
        keys, before = self._initial_weights
        changed = [k for k, c in zip(keys, (weight_fingerprint(unwrap(self.network))[1] != before).any(1).tolist())
                   if c]
        if not changed:
            return
        loaded, skipped = share_loaded_weights(unwrap(self.network).state_dict(), changed, self.extra_networks)
        parts = [f"pretrained weights (loaded into network by nnU-Net) also loaded into "
                 f"{', '.join(loaded) or 'no other network'}"]
        if self.teacher_sources:
            parts.append(f"teachers copied from their students: {', '.join(self.teacher_sources)}")
        if skipped:
            parts.append(f"not into {', '.join(skipped)} (architecture differs)")
        self.print_to_log_file("; ".join(parts))

    def on_train_end(self):
        super().on_train_end()
        finish = getattr(self.dataloader_unlabeled, "_finish", None)
        if finish is not None:
            finish()

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        for net in self.extra_networks.values():
            net.train()

    @property
    def total_iterations(self) -> int:
        return self.num_epochs * self.num_iterations_per_epoch

    def rampup_weight(self, max_value: Optional[float] = None) -> float:
        """Sigmoid ramp-up of the unsupervised weight at the current step."""
        max_value = self.consistency_weight if max_value is None else max_value
        return sigmoid_rampup(self.global_step, int(self.rampup_fraction * self.total_iterations), max_value)

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast(self.device.type, enabled=True)
        return dummy_context()

    def _to_device(self, x):
        if x is None:
            return None
        if isinstance(x, list):
            return [i.to(self.device, non_blocking=True) for i in x]
        return x.to(self.device, non_blocking=True)

    def compute_losses(self, data: torch.Tensor, target, unlabeled: Optional[torch.Tensor]) -> Dict[str, object]:
        """Return ``{'loss': total, <term>: value, ...}``. Terms (floats, tensors, per-class lists)
        are averaged per epoch, logged and plotted. Called under autocast on CUDA."""
        raise NotImplementedError

    def backward_part(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (through the grad scaler) now, accumulating into the parameters' gradients.
        A trainer whose loss separates into parts that reach disjoint graphs (e.g. one per network, pseudo-labels
        detached) calls it once per part inside :meth:`compute_losses`, so only one part's graph is alive at a
        time, and returns ``{'loss': <detached sum of the parts>, ...}``; the step then clips and steps as
        usual. The gradients are those of the sum."""
        (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()
        self._parts_backpropagated = True

    one_graph_per_network = True
    """Whether a trainer that can (:meth:`backward_part`) backpropagates network by network. Tools that need
    every loss term's graph at once (benchmarks/term_gradients.py) set it to False on the instance; the
    gradients are the same."""

    def one_graph_step(self, *networks: nn.Module) -> bool:
        """Whether this step backpropagates network by network: ``one_graph_per_network`` is on and every
        network gives each sample the same output whatever else is in its batch (no BatchNorm, no active
        dropout: :func:`~nnunet_ssl.utils.modules.repeatable_per_sample`), so a gradient-free repeat of a
        network's pass equals its pass in the joint step."""
        return self.one_graph_per_network and repeatable_per_sample(*networks)

    def cross_supervised_parts(self, net_a: nn.Module, net_b: nn.Module, x: torch.Tensor,
                               pseudo_input: torch.Tensor, part) -> list:
        """Two networks that supervise each other with hard pseudo-labels (CPS and its relatives), one
        network's graph alive at a time: B's pseudo-labels for A come from a gradient-free pass of B over
        ``pseudo_input``; ``part(index, output, partner_pseudo_labels)`` (index 0 for A, 1 for B, ``output``
        the network's output on ``x``) returns ``(loss, terms, own_pseudo_labels)``; A's loss is backpropagated
        (:meth:`backward_part`) before B runs, then B's with A's pseudo-labels. Returns both parts' ``terms``.

        The gradients are the joint step's only when B's output for a sample does not depend on the rest of
        the batch or on chance: the caller checks :meth:`one_graph_step`."""
        with torch.no_grad():
            pseudo = hard_pseudo_labels(full_resolution(net_b(pseudo_input)))
        results = []
        for index, net in enumerate((net_a, net_b)):
            loss, terms, pseudo_next = part(index, net(x), pseudo)
            self.backward_part(loss)  # frees what this network's graph saved before the next network runs
            results.append(terms)
            pseudo = pseudo_next
        return results

    def after_optimizer_step(self) -> None:
        """Hook after each optimizer step: default updates every EMA teacher from its source."""
        for name, source in self.teacher_sources.items():
            self.teachers[name].update(self.trainable_networks()[source], self.global_step)

    def uses_unlabeled_batch(self) -> bool:
        """Hook: whether this step draws an unlabeled batch (e.g. False in a supervised pre-train phase)."""
        return self.dataloader_unlabeled is not None

    def train_step(self, batch: dict) -> dict:
        """One optimisation step. Mirrors ``nnUNetTrainer.train_step`` (device transfer, ``zero_grad``,
        autocast, backward through the grad scaler, unscale, gradient-norm clipping at 12, step, update),
        which cannot be called because the loss is the method's (:meth:`compute_losses`, on the labeled and
        the unlabeled batch), clipping runs per trainable network, and the step is refused on a non-finite
        loss. Returns nnU-Net's ``{'loss': ...}`` plus the method's terms for the epoch log."""
        data = self._to_device(batch["data"])
        target = self._to_device(batch["target"])
        unlabeled = None
        self.batch_keys = {"labeled": [str(k) for k in batch.get("keys", ())], "unlabeled": []}
        if self.uses_unlabeled_batch():
            unlabeled_batch = next(self.dataloader_unlabeled)
            self.batch_keys["unlabeled"] = [str(k) for k in unlabeled_batch.get("keys", ())]
            unlabeled = self._to_device(unlabeled_batch["data"])
        self.optimizer.zero_grad(set_to_none=True)
        self._parts_backpropagated = False
        with self.autocast():
            terms = self.compute_losses(data, target, unlabeled)
        loss = terms.pop("loss")
        if self._parts_backpropagated:  # compute_losses backpropagated its parts; `loss` is their detached sum
            if loss.requires_grad:
                raise RuntimeError(f"{type(self).__name__}.compute_losses called backward_part and returned a loss "
                                   f"with a graph: return the detached sum of the parts")
        else:
            self.backward_part(loss)
        # the step's one host sync, logged anyway; the backward kernels are already queued
        loss_value = loss.detach().float().cpu()
        if not torch.isfinite(loss_value):  # only then look for the term responsible
            raise UserError(non_finite_loss_message(type(self).__name__, loss_value.item(), terms, self.global_step,
                                                    self.current_epoch))
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        for net in self.trainable_networks().values():
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        self.after_optimizer_step()
        self.global_step += 1
        return {"loss": loss_value.numpy(), "ssl_terms": {k: _to_numpy(v) for k, v in terms.items()}}

    # ------------------------------------------------------------------ logging
    def _ssl_log(self) -> Dict[str, list]:
        return self.logger.local_logger.my_fantastic_logging

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end([{"loss": o["loss"]} for o in train_outputs])
        sums: Dict[str, np.ndarray] = {}
        counts: Dict[str, int] = {}
        for o in train_outputs:
            for k, v in o.get("ssl_terms", {}).items():
                sums[k] = sums.get(k, 0) + v
                counts[k] = counts.get(k, 0) + 1
        log = self._ssl_log()
        known = sorted({k[4:] for k in log if k.startswith("ssl/")} | set(sums))
        if self.is_ddp:  # ranks agree on the set of terms only if every rank produced them; all do by construction
            for k in sorted(sums):
                packed = torch.as_tensor(np.append(np.ravel(sums[k]), counts[k]), dtype=torch.float64,
                                         device=self.device)
                packed = all_reduce_sum(packed).cpu().numpy()
                sums[k], counts[k] = packed[:-1].reshape(np.shape(sums[k])), int(packed[-1])
        parts = []
        for k in known:
            key = "ssl/" + k
            if k in sums:
                value = sums[k] / max(counts[k], 1)
                value = float(value) if np.ndim(value) == 0 else [float(x) for x in np.ravel(value)]
            else:
                value = float("nan")
            log.setdefault(key, [])
            while len(log[key]) < self.current_epoch:  # a term that appears later: earlier epochs are NaN
                log[key].append(float("nan"))
            self.logger.log(key, value, self.current_epoch)
            if k in sums:
                parts.append(f"{k} {np.round(value, 4) if np.ndim(value) == 0 else np.round(value, 3).tolist()}")
        if parts:
            self.print_to_log_file("ssl: " + " | ".join(parts))

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.local_rank == 0:
            from nnunet_ssl.plotting import plot_ssl_progress

            try:
                plot_ssl_progress(self._ssl_log(), self.output_folder)
            except Exception as e:  # a plot must never stop training
                self.print_to_log_file(f"could not draw progress_ssl.png: {e}")

    # ------------------------------------------------------------------ validation with the inference network
    @contextmanager
    def _inference_network_as_network(self):
        if self.inference_model == "network" or self._validating_with_inference_network:
            yield
            return
        trained = self.network
        self.network = self.inference_module()
        self._validating_with_inference_network = True
        try:
            yield
        finally:
            self.network = trained
            self._validating_with_inference_network = False

    def on_validation_epoch_start(self):
        self._val_ctx = self._inference_network_as_network()
        self._val_ctx.__enter__()
        super().on_validation_epoch_start()

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        try:
            super().on_validation_epoch_end(val_outputs)
        finally:
            self._val_ctx.__exit__(None, None, None)
            self.network.train()

    def perform_actual_validation(self, save_probabilities: bool = False):
        with self._inference_network_as_network():
            super().perform_actual_validation(save_probabilities)

    # ------------------------------------------------------------------ checkpoints
    def extra_state_dict(self) -> dict:
        """Hook: method-specific state (e.g. a phase flag) saved with the checkpoint."""
        return {}

    def load_extra_state_dict(self, state: dict) -> None:
        """Hook: restore what :meth:`extra_state_dict` saved."""

    def ssl_state_dict(self) -> dict:
        return {
            "networks": {n: unwrap(m).state_dict() for n, m in self.trainable_networks().items()},
            "teachers": {n: unwrap(t.module).state_dict() for n, t in self.teachers.items()},
            "trackers": {n: t.state_dict() for n, t in self.trackers.items()},
            "global_step": self.global_step,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "inference_model": self.inference_model,
            "hyperparameters": self.hyperparameters(),
            "extra": self.extra_state_dict(),
        }

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, extended: ``nnUNetTrainer.save_checkpoint`` writes its schema to a temporary
        file, which is read back (on the CPU), given ``network_weights`` = the inference
        network (so ``nnUNetv2_predict`` runs it) and the ``nnunet_ssl`` entry (:meth:`ssl_state_dict`), and
        written again; it replaces ``filename`` only when complete, so a crash never leaves a truncated file.
        Ranks other than 0 and disabled checkpointing are nnU-Net's (nothing written)."""
        if self.local_rank != 0 or self.disable_checkpointing:
            super().save_checkpoint(filename)
            return
        nnunet_file, tmp = filename + ".nnunet.tmp", filename + ".tmp"
        super().save_checkpoint(nnunet_file)
        try:
            checkpoint = torch.load(nnunet_file, map_location="cpu", weights_only=False)
            checkpoint["network_weights"] = unwrap(self.inference_module()).state_dict()
            checkpoint[CHECKPOINT_KEY] = self.ssl_state_dict()
            torch.save(checkpoint, tmp)
        finally:
            os.remove(nnunet_file)
        os.replace(tmp, filename)

    @contextmanager
    def _inference_network_for_nnunet(self):
        """``self.network`` temporarily the (unwrapped) inference network, shaped as nnU-Net's
        ``load_checkpoint`` expects it (under DDP: a module holding it as ``.module``)."""
        trained = self.network
        target = unwrap(self.inference_module())
        self.network = _HeldAsModule(target) if self.is_ddp else target
        try:
            yield
        finally:
            self.network = trained

    def load_checkpoint(self, filename_or_checkpoint: str) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint`: ``nnUNetTrainer.load_checkpoint`` restores
        its part (bookkeeping, logger, optimizer, grad scaler; ``network_weights`` into the inference network,
        which is what it holds), then every network, teacher, tracker, the step counter and RNG states come
        from the ``nnunet_ssl`` entry. A checkpoint without that entry (e.g. written by ``nnUNetTrainer``) is
        refused with a UserError naming ``-pretrained_weights``, the way to start from nnU-Net weights."""
        if not isinstance(filename_or_checkpoint, str):  # nnU-Net's load_checkpoint reads files only
            raise TypeError(f"load_checkpoint expects a file name, got {type(filename_or_checkpoint).__name__}")
        checkpoint = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False, mmap=True)
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:
            raise UserError(f"{filename_or_checkpoint} was not written by an nnunet_ssl trainer (it has no "
                            f"'{CHECKPOINT_KEY}' entry), so {type(self).__name__} cannot continue from it; to start "
                            f"from the weights of an nnU-Net run, pass the file as -pretrained_weights (without --c)")
        if not self.was_initialized:
            self.initialize()
        self._checkpoint_restored = True  # weights come from the checkpoint, not from -pretrained_weights
        with self._inference_network_for_nnunet():
            super().load_checkpoint(filename_or_checkpoint)
        for name, net in self.trainable_networks().items():
            unwrap(net).load_state_dict(state["networks"][name])
        for name, t in self.teachers.items():
            unwrap(t.module).load_state_dict(state["teachers"][name])
        for name, tracker in self.trackers.items():
            if name in state["trackers"]:
                tracker.load_state_dict(state["trackers"][name])
        self.global_step = int(state["global_step"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        self.load_extra_state_dict(state.get("extra", {}))


class _HeldAsModule(nn.Module):
    """``module`` as its ``.module``, the shape of a DDP-wrapped network (what nnU-Net's checkpoint code
    unwraps under DDP)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


_wrap_entry_points(nnUNetTrainerSemiSupervised, inherited=True)
