"""Stateful class-weight trackers: DisW, DifW, CDifW, CDisW (DHC / DMPF) and KT weights (GuidedNet).

A tracker is updated once per iteration from the batch the trainer already has and exposes
``.weights``: a detached float32 ``(C,)`` tensor on the device of the last update. Everything a
tracker reads from a batch (counts, Dice sums, confidence sums) is all-reduced across DDP ranks
before any formula, so all ranks hold identical weights. Classes a batch says nothing about keep
their previous state. ``state_dict()``/``load_state_dict()`` round-trip exactly (plain tensors and
ints, nested one level for the confidence-scaled trackers).

Common call: ``tracker.update(logits, target, unlabeled_logits=None)`` with ``logits``
``(B, C, *spatial)`` of the labeled batch (or a deep-supervision list: its first entry is used),
``target`` ``(B, 1, *spatial)`` or ``(B, *spatial)`` integer-valued, and ``unlabeled_logits``
``(B_u, C, *spatial)`` (used by DisW only). A trainer also calls ``tracker.end_epoch()`` once at the
end of every training epoch (the DMPF confidence is smoothed per epoch). The formulas live in
:mod:`.functional`.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import torch
from torch import Tensor

from nnunet_ssl.utils.distributed import all_reduce_sum
from nnunet_ssl.utils.modules import full_resolution
from nnunet_ssl.utils.tensors import class_argmax
from nnunet_ssl.weighting.functional import (
    class_counts,
    confidence_from_stats,
    confidence_scaled_weights,
    confidence_stats,
    correct_counts,
    dice_from_stats,
    difficulty_step,
    distribution_weights,
    hard_dice_stats,
    information_scores,
    kt_weights,
    to_label_map,
)

__all__ = [
    "ClassWeightTracker",
    "DisWTracker",
    "DifWTracker",
    "ConfidenceTracker",
    "ConfidenceScaledTracker",
    "CDifWTracker",
    "CDisWTracker",
    "KTWeightTracker",
    "TRACKERS",
    "build_tracker",
]

Output = Union[Tensor, Sequence[Tensor]]


def _ema(old: Tensor, new: Tensor, momentum: float, where: Optional[Tensor] = None) -> Tensor:
    """``m·old + (1−m)·new`` on the classes in ``where`` (all if None); the others keep ``old``."""
    mixed = momentum * old + (1 - momentum) * new
    return mixed if where is None else torch.where(where, mixed, old)


class ClassWeightTracker:
    """Base: holds named ``(C,)`` state tensors, parses batches, (de)serialises.

    Subclasses set their state in ``__init__`` via ``self._state[...]`` and implement
    ``_update(logits, labels, valid, unlabeled_logits)`` and ``_weights()``.
    """

    def __init__(self, num_classes: int, ignore_index: Optional[int] = None):
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.num_updates = 0
        self._state: Dict[str, Tensor] = {}

    # --- public API -------------------------------------------------------------------------
    @property
    def weights(self) -> Tensor:
        """Current class weights ``(C,)``, float32, detached (a copy)."""
        return self._weights().detach().float().clone()

    @property
    def device(self) -> torch.device:
        return next(iter(self._state.values())).device

    def update(
        self,
        logits: Optional[Output] = None,
        target: Optional[Output] = None,
        unlabeled_logits: Optional[Output] = None,
    ) -> Tensor:
        """Update from one iteration's batch; returns the new :attr:`weights`."""
        logits = None if logits is None else full_resolution(logits)
        target = None if target is None else full_resolution(target)
        unlabeled_logits = None if unlabeled_logits is None else full_resolution(unlabeled_logits)
        for name, x in (("logits", logits), ("unlabeled_logits", unlabeled_logits)):
            if x is not None and (x.dim() < 3 or x.shape[1] != self.num_classes):
                raise ValueError(
                    f"{name} must have shape (B, {self.num_classes}, *spatial), got {tuple(x.shape)}"
                )
        labels = valid = None
        if target is not None:
            spatial = None if logits is None else logits.shape[2:]
            labels, valid = to_label_map(target, self.num_classes, spatial, self.ignore_index)
        ref = next(x for x in (logits, labels, unlabeled_logits, torch.zeros(())) if x is not None)
        self._to(ref.device)
        with torch.no_grad():
            self._update(logits, labels, valid, unlabeled_logits)
        self.num_updates += 1
        return self.weights

    def end_epoch(self) -> None:
        """Hook called once at the end of every training epoch; most trackers need nothing here
        (the DMPF confidence applies its once-per-epoch smoothing)."""

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates, **{k: v.detach().clone() for k, v in self._state.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self._state) - set(state)
        if missing:
            raise ValueError(f"{type(self).__name__} state is missing {sorted(missing)}; got keys {sorted(state)}")
        for k, v in self._state.items():
            new = torch.as_tensor(state[k])
            if new.shape != v.shape:
                raise ValueError(f"{type(self).__name__} state {k!r}: expected shape {tuple(v.shape)}, got {tuple(new.shape)}")
            self._state[k] = new.detach().clone().to(device=v.device, dtype=v.dtype)
        self.num_updates = int(state["num_updates"])

    def to(self, device) -> "ClassWeightTracker":
        self._to(torch.device(device))
        return self

    def __repr__(self) -> str:
        w = ", ".join(f"{x:.3f}" for x in self._weights().tolist())
        return f"{type(self).__name__}(num_classes={self.num_classes}, weights=[{w}])"

    # --- for subclasses ---------------------------------------------------------------------
    def _to(self, device: torch.device) -> None:
        self._state = {k: v.to(device) for k, v in self._state.items()}

    def _full(self, value: float) -> Tensor:
        return torch.full((self.num_classes,), float(value))

    def _require(self, **inputs) -> None:
        missing = [k for k, v in inputs.items() if v is None]
        if missing:
            raise ValueError(f"{type(self).__name__}.update needs {' and '.join(missing)}")

    def _weights(self) -> Tensor:
        return self._state["weights"]

    def _update(self, logits, labels, valid, unlabeled_logits) -> None:  # pragma: no cover
        raise NotImplementedError


class DisWTracker(ClassWeightTracker):
    """Distribution-aware weights (DisW, DHC): log-ratio of class voxel counts, EMA-smoothed.

    Counts come from the labeled ground truth (``count_labeled``) plus the model's argmax on the
    unlabeled batch (``count_unlabeled``; the DHC reference counts only the latter). Initialised
    from ``class_histogram`` ``(C,)`` (the labeled training set's voxel counts) if given, else all
    equal (``C``). Classes missing from a batch are handled by the formula's +1 smoothing (they
    count as rarest), not by keeping their old value.
    """

    def __init__(
        self,
        num_classes: int,
        class_histogram: Optional[Union[Tensor, Sequence[float]]] = None,
        momentum: float = 0.99,
        floor: float = 0.0,
        smoothing: float = 1.0,
        count_labeled: bool = True,
        count_unlabeled: bool = True,
        ignore_index: Optional[int] = None,
    ):
        super().__init__(num_classes, ignore_index)
        if not (count_labeled or count_unlabeled):
            raise ValueError("DisWTracker needs count_labeled or count_unlabeled (or both) to be True")
        self.momentum, self.floor, self.smoothing = float(momentum), float(floor), float(smoothing)
        self.count_labeled, self.count_unlabeled = count_labeled, count_unlabeled
        self._state["weights"] = self._full(self.num_classes).clamp_min(self.floor)
        if class_histogram is not None:
            self.initialise(class_histogram)

    def initialise(self, class_histogram: Union[Tensor, Sequence[float]]) -> Tensor:
        """Set the weights to DisW of the labeled set's class histogram ``(C,)``."""
        hist = torch.as_tensor(class_histogram, dtype=torch.float32).flatten()
        if hist.numel() != self.num_classes:
            raise ValueError(f"class_histogram must have {self.num_classes} entries, got {hist.numel()}")
        self._state["weights"] = distribution_weights(hist, self.floor, self.smoothing).to(self.device)
        return self.weights

    def _update(self, logits, labels, valid, unlabeled_logits) -> None:
        counts = torch.zeros(self.num_classes, device=self.device)
        used = False
        if self.count_labeled and labels is not None:
            counts += class_counts(labels, self.num_classes, valid)
            used = True
        if self.count_unlabeled and unlabeled_logits is not None:
            counts += class_counts(class_argmax(unlabeled_logits), self.num_classes)
            used = True
        if not used:
            raise ValueError(
                "DisWTracker.update got nothing to count: pass target (count_labeled=True) "
                "and/or unlabeled_logits (count_unlabeled=True)"
            )
        current = distribution_weights(all_reduce_sum(counts), self.floor, self.smoothing)
        self._state["weights"] = _ema(self._state["weights"], current, self.momentum)


class DifWTracker(ClassWeightTracker):
    """Difficulty-aware weights (DifW, DHC) from the hard Dice of the model on its labeled batch.

    ``tau`` sets the accumulation momentum ``(τ−1)/τ`` of learning speeds and mean Dice; ``form``
    ``"paper"`` (default) or ``"reference"`` picks the speed increments (see
    :func:`~nnunet_ssl.weighting.functional.learning_speed_increments`). A class's first Dice only
    sets its previous value (no speed from nothing); classes absent from prediction and target
    keep their state. Initial weights all equal (``C``).
    """

    def __init__(
        self,
        num_classes: int,
        tau: float = 50,
        alpha: float = 0.2,
        eps: float = 1e-8,
        form: str = "paper",
        ignore_index: Optional[int] = None,
    ):
        super().__init__(num_classes, ignore_index)
        if form not in ("paper", "reference"):
            raise ValueError(f"form must be 'paper' or 'reference', got {form!r}")
        if tau < 1:
            raise ValueError(f"tau must be >= 1 iteration, got {tau}")
        self.tau, self.alpha, self.eps, self.form = float(tau), float(alpha), float(eps), form
        self._state.update(
            weights=self._full(self.num_classes),
            last_dice=self._full(0.0),
            has_prev=torch.zeros(self.num_classes, dtype=torch.bool),
            learned=self._full(0.0),
            unlearned=self._full(0.0),
            mean_dice=self._full(0.0),
        )

    @property
    def momentum(self) -> float:
        return (self.tau - 1) / self.tau

    def _update(self, logits, labels, valid, unlabeled_logits) -> None:
        self._require(logits=logits, target=labels)
        stats = torch.stack(hard_dice_stats(class_argmax(logits), labels, self.num_classes, valid))
        dice, present = dice_from_stats(*all_reduce_sum(stats))
        s = self._state
        new = difficulty_step(
            s["last_dice"], dice, s["learned"], s["unlearned"], s["mean_dice"], valid=present,
            has_prev=s["has_prev"], momentum=self.momentum, alpha=self.alpha, eps=self.eps, form=self.form,
        )
        s.update(learned=new.learned, unlearned=new.unlearned, mean_dice=new.mean_dice, weights=new.weights)
        s["last_dice"] = torch.where(present, dice, s["last_dice"])
        s["has_prev"] = s["has_prev"] | present


class ConfidenceTracker(ClassWeightTracker):
    """DMPF confidence factor: ``.weights`` is the per-epoch smoothed mean of ``i^β``.

    Per batch: ``r_c`` the mean softmax probability of class c over its ground-truth voxels,
    ``i_c = (1 − r_c + s)/(max_k(1 − r_k) + s)`` (see
    :func:`~nnunet_ssl.weighting.functional.information_scores`), and ``i_c^β`` is added to this
    epoch's sum of every class present in the batch. At :meth:`end_epoch` the epoch mean of ``i^β``
    enters an EMA (``momentum``) once, and the sums restart. This is the DMPF reference's schedule
    (lzhang30/Double-Mix: i^0.2 averaged over the epoch, EMA 0.99 per epoch, smoothing 1e-2), which
    METHODS.md adopts: per-iteration smoothing with 0.99 would follow single batches, 1% per step.
    A class never seen has ``r = 0``; a class absent from a batch keeps its last ``r`` and adds
    nothing to the sums; a class absent for a whole epoch keeps its factor. Initial factor 1.
    The partial sums are part of the state, so a mid-epoch checkpoint resumes exactly.
    """

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.99,
        beta: float = 0.2,
        smooth: float = 1e-2,
        ignore_index: Optional[int] = None,
    ):
        super().__init__(num_classes, ignore_index)
        self.momentum, self.beta, self.smooth = float(momentum), float(beta), float(smooth)
        self._state.update(confidence=self._full(0.0), factor=self._full(1.0), epoch_sum=self._full(0.0),
                           epoch_count=self._full(0.0))

    def _weights(self) -> Tensor:
        return self._state["factor"]

    def _update(self, logits, labels, valid, unlabeled_logits) -> None:
        self._require(logits=logits, target=labels)
        probs = torch.softmax(logits.float(), dim=1)
        stats = torch.stack(confidence_stats(probs, labels, self.num_classes, valid))
        r, present = confidence_from_stats(*all_reduce_sum(stats))
        s = self._state
        s["confidence"] = torch.where(present, r, s["confidence"])
        information = information_scores(s["confidence"], self.smooth)
        i_beta = confidence_scaled_weights(torch.ones_like(information), information, self.beta)
        s["epoch_sum"] = s["epoch_sum"] + torch.where(present, i_beta, torch.zeros_like(i_beta))
        s["epoch_count"] = s["epoch_count"] + present.float()

    def end_epoch(self) -> None:
        s = self._state
        seen = s["epoch_count"] > 0
        mean = s["epoch_sum"] / s["epoch_count"].clamp_min(1)
        s["factor"] = _ema(s["factor"], mean, self.momentum, seen)
        s["epoch_sum"], s["epoch_count"] = torch.zeros_like(s["epoch_sum"]), torch.zeros_like(s["epoch_count"])


class ConfidenceScaledTracker(ClassWeightTracker):
    """``i^β · w_base``: a base tracker's weights scaled by a :class:`ConfidenceTracker`'s factor (DMPF),
    the epoch-smoothed mean of ``i^β``."""

    def __init__(self, base: ClassWeightTracker, confidence: ConfidenceTracker):
        if base.num_classes != confidence.num_classes:
            raise ValueError(f"base has {base.num_classes} classes but confidence has {confidence.num_classes}")
        super().__init__(base.num_classes, base.ignore_index)
        self.base, self.confidence = base, confidence

    @property
    def device(self) -> torch.device:
        return self.base.device

    def _to(self, device: torch.device) -> None:
        self.base._to(device)
        self.confidence._to(device)

    def _weights(self) -> Tensor:
        return self.confidence._weights() * self.base._weights()

    def update(self, logits=None, target=None, unlabeled_logits=None) -> Tensor:
        self.base.update(logits, target, unlabeled_logits)
        self.confidence.update(logits, target)
        self.num_updates += 1
        return self.weights

    def end_epoch(self) -> None:
        self.base.end_epoch()
        self.confidence.end_epoch()

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates, "base": self.base.state_dict(), "confidence": self.confidence.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "base" not in state or "confidence" not in state:
            raise ValueError(f"{type(self).__name__} state needs 'base' and 'confidence', got keys {sorted(state)}")
        self.base.load_state_dict(state["base"])
        self.confidence.load_state_dict(state["confidence"])
        self.num_updates = int(state["num_updates"])


class CDifWTracker(ConfidenceScaledTracker):
    """Confidence-difficulty weights (CDifW, DMPF): ``i^β · DifW``."""

    def __init__(
        self,
        num_classes: int,
        tau: float = 50,
        alpha: float = 0.2,
        form: str = "paper",
        momentum: float = 0.99,
        beta: float = 0.2,
        smooth: float = 1e-2,
        ignore_index: Optional[int] = None,
    ):
        super().__init__(
            DifWTracker(num_classes, tau=tau, alpha=alpha, form=form, ignore_index=ignore_index),
            ConfidenceTracker(num_classes, momentum=momentum, beta=beta, smooth=smooth, ignore_index=ignore_index),
        )


class CDisWTracker(ConfidenceScaledTracker):
    """Confidence-distribution weights (CDisW, DMPF): ``i^β · DisW``."""

    def __init__(
        self,
        num_classes: int,
        class_histogram: Optional[Union[Tensor, Sequence[float]]] = None,
        momentum: float = 0.99,
        floor: float = 0.0,
        count_labeled: bool = True,
        count_unlabeled: bool = True,
        confidence_momentum: float = 0.99,
        beta: float = 0.2,
        smooth: float = 1e-2,
        ignore_index: Optional[int] = None,
    ):
        super().__init__(
            DisWTracker(num_classes, class_histogram, momentum=momentum, floor=floor, count_labeled=count_labeled,
                        count_unlabeled=count_unlabeled, ignore_index=ignore_index),
            ConfidenceTracker(num_classes, momentum=confidence_momentum, beta=beta, smooth=smooth, ignore_index=ignore_index),
        )

    def initialise(self, class_histogram) -> Tensor:
        self.base.initialise(class_histogram)
        return self.weights


class KTWeightTracker(ClassWeightTracker):
    """Knowledge-transfer weights of GuidedNet's KT-CPS: DisW's log-ratio over the counts of
    labeled voxels the network predicts correctly, EMA-smoothed. Classes without labeled voxels
    in the batch keep their weight. Initial weights all equal (``C``)."""

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.99,
        floor: float = 0.0,
        smoothing: float = 1.0,
        ignore_index: Optional[int] = None,
    ):
        super().__init__(num_classes, ignore_index)
        self.momentum, self.floor, self.smoothing = float(momentum), float(floor), float(smoothing)
        self._state["weights"] = self._full(self.num_classes)

    def _update(self, logits, labels, valid, unlabeled_logits) -> None:
        self._require(logits=logits, target=labels)
        stats = torch.stack(
            [correct_counts(class_argmax(logits), labels, self.num_classes, valid), class_counts(labels, self.num_classes, valid)]
        )
        correct, counts = all_reduce_sum(stats)
        present = counts > 0
        current = kt_weights(correct, present, self.floor, self.smoothing)
        self._state["weights"] = _ema(self._state["weights"], current, self.momentum, present)


TRACKERS = {
    "disw": DisWTracker,
    "difw": DifWTracker,
    "cdifw": CDifWTracker,
    "cdisw": CDisWTracker,
    "kt": KTWeightTracker,
}


def build_tracker(name: str, num_classes: int, **kwargs) -> ClassWeightTracker:
    """Tracker by (case-insensitive) name: one of ``disw, difw, cdifw, cdisw, kt``."""
    key = name.lower()
    if key not in TRACKERS:
        raise ValueError(f"unknown class-weight tracker {name!r}; expected one of {sorted(TRACKERS)}")
    return TRACKERS[key](num_classes, **kwargs)
