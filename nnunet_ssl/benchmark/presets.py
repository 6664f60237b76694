"""Benchmark presets: which plans a study trains with, for how long, and on what.

- ``default``: nnU-Net's own plans (``nnUNetPlans``) and every trainer's own budget (nnU-Net:
  1000 epochs of 250 iterations), test-time mirroring on, the GPU when there is one. What a paper
  reports; meant for a GPU cluster (``--write-commands``).
- ``cpu-quick``: CPU-sized plans ``nnUNetPlans_cpuquick`` (three stages of 8/16/32 features,
  patch 32×48×32 in 3D — sized for small volumes such as Hippocampus, ~36×50×35 voxels — or
  64×64 in 2D) and a short budget, so that a 2-fraction × 2-trainer × 1-seed study of
  Dataset904_HippocampusDev (200 cases, 20% test) finishes in under an hour on two CPU cores.
  Numbers from it rank methods roughly; they are not the methods' converged accuracy.
- ``cpu-2d``: for 2D configurations of larger images such as ACDC's short-axis slices (~256×208
  at 1.5 mm): four stages of 16/32/64/128 features, patch 128×128, batch 4, 80 epochs of 50
  iterations. The 64×64 patches of ``cpu-quick`` see too little context there: on
  Dataset927_ACDCDev at 10% both nnUNetTrainer and nnUNetTrainerBCP stayed at Dice 0 after
  40×25 iterations. On an idle 2-core machine an nnUNetTrainer iteration takes ~0.105 s, so
  its 4000 iterations train in ~7 min (BCP ~2.2× that).

  Estimate for that study (fractions 10% and 20%, nnUNetTrainer and nnUNetTrainerMeanTeacher, 40
  test cases), from short timings on an idle 2-core machine: an epoch of 25 iterations takes ~3.9 s
  (nnUNetTrainer) and ~6.9 s (Mean Teacher), so 40 epochs train in ~3 and ~5 min (with ~10 s process
  start-up); planning + preprocessing a split ~1–2.5 min, its unlabeled cases ~0.5 min; predicting the
  40 test cases without mirroring ~0.5 min per run (with mirroring ~5 min: hence off). Total ≈ 20–25
  min, about 45 min if the machine is shared and runs at half speed.

- ``cpu-3d``: for 3D studies of small volumes such as Hippocampus: ``cpu-quick``'s patch (32×48×32) and
  batch (2) with a fourth stage (8/16/32/64 features) and twice its budget (80 epochs of 25 iterations).
  ``cpu-quick`` is too short for Hippocampus' anterior/posterior distinction. nnUNetTrainer predicts no
  foreground for the first ~7 epochs, then one hippocampus blob labeled as one class, and separates the
  two classes only after another 10-25 epochs; on Dataset904_HippocampusDev at 10% a 40-epoch run often
  ends before that. Measured (test mean Dice, split seeds 0 / 1 / 2): three stages, 40 epochs 0.799 /
  0.761 / 0.371 and, repeated, 0.714 / 0.766 / 0.300; four stages, 40 epochs 0.598 / 0.792 / 0.737
  (another run of seed 2: 0.819); four stages, 80 epochs 0.837 / 0.849 / 0.843, repeated on seeds 0 and 2:
  0.833 / 0.833 (classes separated from epoch ~20; benchmarks/results/hippocampus_study_10pct_cpu3d).
  Semi-supervised methods compared at ``cpu-quick`` largely measured which run escaped
  the failure. An nnUNetTrainer epoch takes ~7 s on two idle cores (four stages cost no more than three).

A preset is plain data (:class:`Preset`); a study records it in its ``study.json`` and refuses to
continue with another one, because models in ``nnUNet_results`` are keyed by dataset, trainer,
plans and configuration only.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

from nnunet_ssl.errors import UserError

BUDGET_FLAGS: Dict[str, str] = {
    "num_epochs": "--epochs",
    "num_iterations_per_epoch": "--iters",
    "num_val_iterations_per_epoch": "--val-iters",
    "save_every": "--save-every",
}
"""nnU-Net budget attributes a preset may set -> the ``nnunet-ssl train`` flag that sets them."""


@dataclass(frozen=True)
class Preset:
    """Plans, budget and hardware settings of a benchmark study."""

    name: str
    description: str
    plans: str = "nnUNetPlans"
    """Plans identifier the runs train with (a shrunk copy of nnUNetPlans when ``shrink`` is set)."""
    shrink: Optional[Mapping[int, Mapping]] = None
    """Spatial dimensions (2 or 3) -> keyword arguments of ``planners.shrink.write_shrunk_plans``;
    None trains with nnU-Net's plans unchanged."""
    budget: Mapping[str, int] = field(default_factory=dict)
    """nnU-Net budget attributes (keys of :data:`BUDGET_FLAGS`); empty: each trainer's own."""
    device: Optional[str] = None
    """``cpu``, ``cuda`` or ``mps``; None: ``cuda`` when available, else ``cpu``."""
    use_mirroring: bool = True
    """Test-time mirroring when predicting the test set (nnU-Net's default)."""
    num_processes: int = 2
    """Worker processes for preprocessing, prediction and evaluation."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Environment defaults for the training processes (a variable the user set is kept)."""

    def __post_init__(self):
        unknown = sorted(set(self.budget) - set(BUDGET_FLAGS))
        if unknown:
            raise ValueError(f"preset {self.name!r}: unknown budget key(s) {unknown}; allowed: {sorted(BUDGET_FLAGS)}")
        bad = {k: v for k, v in self.budget.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1}
        if bad:
            raise ValueError(f"preset {self.name!r}: budget values must be integers >= 1, got {bad}")
        if self.shrink is not None and self.plans == "nnUNetPlans":
            raise ValueError(f"preset {self.name!r} shrinks the plans, so it needs its own plans identifier, "
                             f"not 'nnUNetPlans'")

    def shrink_for(self, configuration: str) -> Optional[dict]:
        """``write_shrunk_plans`` keyword arguments for ``configuration`` (None: nnU-Net's plans)."""
        if self.shrink is None:
            return None
        dims = 2 if configuration.startswith("2d") else 3
        if dims not in self.shrink:
            raise UserError(f"preset {self.name!r} has no plan sizes for {dims}D configurations like "
                            f"{configuration!r}")
        return dict(self.shrink[dims])

    def with_budget(self, **budget: Optional[int]) -> "Preset":
        """A copy with some budget values replaced (None values are ignored)."""
        given = {k: v for k, v in budget.items() if v is not None}
        return self if not given else dataclasses.replace(self, budget={**self.budget, **given})

    def train_flags(self) -> list:
        """The ``nnunet-ssl train`` flags that apply :attr:`budget`."""
        return [x for key, value in self.budget.items() for x in (BUDGET_FLAGS[key], str(value))]

    def as_dict(self) -> dict:
        """JSON-ready description (recorded in ``study.json``)."""
        shrink = None if self.shrink is None else {str(d): {k: list(v) if isinstance(v, (tuple, list)) else v
                                                            for k, v in kw.items()}
                                                   for d, kw in sorted(self.shrink.items())}
        return {"name": self.name, "plans": self.plans, "shrink": shrink, "budget": dict(self.budget)}


CPU_RUNS = dict(device="cpu", use_mirroring=False, num_processes=2,
                env={"nnUNet_n_proc_DA": "1", "nnUNet_compile": "false"})
"""Hardware settings shared by the CPU presets: no test-time mirroring (10x slower prediction on CPU),
one augmentation worker (planning needs >= 1), no torch.compile."""

PRESETS: Dict[str, Preset] = {
    "default": Preset(
        name="default",
        description="nnU-Net's plans and each trainer's own budget (1000 x 250 iterations); for GPUs",
    ),
    "cpu-quick": Preset(
        name="cpu-quick",
        description="CPU-sized plans (3 stages, 8/16/32 features, patch 32x48x32), 40 x 25 iterations, no test-time "
                    "mirroring; a 2-fraction x 2-trainer Hippocampus study in < 1 h on 2 cores",
        plans="nnUNetPlans_cpuquick",
        shrink={3: dict(patch_size=(32, 48, 32), features_per_stage=(8, 16, 32), batch_size=2),
                2: dict(patch_size=(64, 64), features_per_stage=(8, 16, 32), batch_size=4)},
        budget={"num_epochs": 40, "num_iterations_per_epoch": 25, "num_val_iterations_per_epoch": 2,
                "save_every": 5},
        **CPU_RUNS,
    ),
    "cpu-3d": Preset(
        name="cpu-3d",
        description="CPU-sized 3D plans (4 stages, 8/16/32/64 features, patch 32x48x32, batch 2), 80 x 25 "
                    "iterations, no test-time mirroring; for 3d studies of small volumes such as Hippocampus",
        plans="nnUNetPlans_cpu3d",
        shrink={3: dict(patch_size=(32, 48, 32), features_per_stage=(8, 16, 32, 64), batch_size=2)},
        budget={"num_epochs": 80, "num_iterations_per_epoch": 25, "num_val_iterations_per_epoch": 2,
                "save_every": 10},
        **CPU_RUNS,
    ),
    "cpu-2d": Preset(
        name="cpu-2d",
        description="CPU-sized 2D plans (4 stages, 16/32/64/128 features, patch 128x128, batch 4), 80 x 50 "
                    "iterations, no test-time mirroring; for 2d studies of images like ACDC's (~256x208)",
        plans="nnUNetPlans_cpu2d",
        shrink={2: dict(patch_size=(128, 128), features_per_stage=(16, 32, 64, 128), batch_size=4)},
        budget={"num_epochs": 80, "num_iterations_per_epoch": 50, "num_val_iterations_per_epoch": 4,
                "save_every": 10},
        **CPU_RUNS,
    ),
}


def get_preset(name_or_preset) -> Preset:
    """A preset by name (or a :class:`Preset` as is); UserError naming the known presets otherwise."""
    if isinstance(name_or_preset, Preset):
        return name_or_preset
    try:
        return PRESETS[str(name_or_preset)]
    except KeyError:
        raise UserError(f"unknown preset {name_or_preset!r}; known: {', '.join(PRESETS)}") from None
