"""Train any nnU-Net trainer (nnU-Net's own included) with an explicit budget.

``nnUNetv2_train`` fixes epochs and iterations inside each trainer class. Fair comparisons on a
CPU budget (the demo, ``cpu-quick`` benchmarks, iteration-cost measurements) need the same short
budget for ``nnUNetTrainer`` and for ours, so this runs nnU-Net's own steps
(``get_trainer_from_args`` → ``maybe_load_checkpoint`` → ``run_training`` →
``perform_actual_validation``) with the budget set on the trainer before it initialises.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Optional, Union

import torch


def build_trainer(dataset: Union[int, str], configuration: str, fold: Union[int, str], trainer: str = "nnUNetTrainer",
                  plans: str = "nnUNetPlans", device: str = "cpu", continue_training: bool = False,
                  budget: Optional[dict] = None):
    """Instantiate a trainer as nnUNetv2_train does and apply ``budget`` (nnU-Net budget attributes)."""
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_ssl.overrides import NNUNET_BUDGET_KEYS, apply_overrides

    fold = fold if fold == "all" else int(fold)
    t = get_trainer_from_args(str(dataset), configuration, fold, trainer, plans, continue_training,
                              device=torch.device(device))
    apply_overrides(t, NNUNET_BUDGET_KEYS, {k: v for k, v in (budget or {}).items() if v is not None})
    return t


@contextlib.contextmanager
def _quiet_with_progress(trainer, log_path: str):
    """Send nnU-Net's console output to ``log_path`` and show one progress bar over epochs instead."""
    from tqdm import tqdm

    bar = tqdm(total=trainer.num_epochs, desc=type(trainer).__name__, unit="epoch", file=sys.stderr,
               dynamic_ncols=True)
    original = trainer.on_epoch_end

    def on_epoch_end():
        original()
        log = trainer.logger
        bar.n = trainer.current_epoch
        bar.set_postfix(loss=f"{log.get_value('train_losses', step=-1):.3f}",
                        pseudo_dice=f"{log.get_value('ema_fg_dice', step=-1):.3f}", refresh=False)
        bar.refresh()

    trainer.on_epoch_end = on_epoch_end  # this instance only; nnU-Net's class is untouched
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a") as f, contextlib.redirect_stdout(f):
        try:
            yield
        finally:
            bar.close()
            del trainer.on_epoch_end


def train(dataset: Union[int, str], configuration: str, fold: Union[int, str], trainer: str = "nnUNetTrainer",
          plans: str = "nnUNetPlans", device: str = "cpu", continue_training: bool = False,
          validate: bool = True, budget: Optional[dict] = None, progress: bool = False,
          pretrained_weights: Optional[str] = None):
    """Train (or continue) and run nnU-Net's final validation; returns the trainer.

    ``pretrained_weights`` is ``nnUNetv2_train -pretrained_weights`` (a fresh start only).

    With ``progress``, nnU-Net's console output goes to ``<output_folder>/console.log`` and a
    progress bar over epochs is shown instead.
    """
    from nnunetv2.run.run_training import maybe_load_checkpoint

    t = build_trainer(dataset, configuration, fold, trainer, plans, device, continue_training, budget)
    ctx = _quiet_with_progress(t, os.path.join(t.output_folder, "console.log")) if progress else contextlib.nullcontext()
    with ctx:
        maybe_load_checkpoint(t, continue_training, False, pretrained_weights)
        t.run_training()
        if validate:
            t.perform_actual_validation(False)
    return t
