"""Exponential-moving-average teachers (Mean Teacher, Tarvainen & Valpola, NeurIPS 2017)."""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from nnunet_ssl.utils.modules import unwrap


def ema_decay(step: int, max_decay: float = 0.99) -> float:
    """``a = min(1 - 1/(t+1), a_max)``: averages uniformly early on, then with ``a_max``."""
    return min(1.0 - 1.0 / (step + 1), max_decay)


@torch.no_grad()
def ema_update_(teacher: nn.Module, students: Sequence[nn.Module], weights: Sequence[float]) -> None:
    """In place: ``θ_t ← (1 − Σw)·θ_t + Σ_i w_i·θ_i`` for parameters; buffers are copied from the
    first student (norm statistics are not averaged) unless all weights are 0, which keeps the
    teacher unchanged.

    One student with weight ``1 − a`` is the classic EMA; two students with weights α, β are the
    weighted multi-student EMA of co-learning. Students may be DDP/compile-wrapped.
    """
    if len(students) != len(weights):
        raise ValueError(f"got {len(students)} students but {len(weights)} weights")
    keep = 1.0 - float(sum(weights))
    if keep < -1e-8:
        raise ValueError(f"EMA weights sum to {sum(weights)} > 1; the teacher would get a negative share")
    t_params = dict(unwrap(teacher).named_parameters())
    s_params = [dict(unwrap(s).named_parameters()) for s in students]
    for name, tp in t_params.items():
        new = tp.detach().float() * keep
        for sp, w in zip(s_params, weights):
            if name not in sp:
                raise ValueError(f"student has no parameter {name!r}: teacher and students must share one architecture")
            new.add_(sp[name].detach().float(), alpha=float(w))
        tp.copy_(new.to(tp.dtype))
    if sum(weights) == 0:  # nothing taken from the students: the teacher is kept as it is
        return
    s_buffers = dict(unwrap(students[0]).named_buffers())
    for name, tb in unwrap(teacher).named_buffers():
        if name in s_buffers:
            tb.copy_(s_buffers[name])


class EMATeacher(nn.Module):
    """A gradient-free copy of a student, updated by :func:`ema_update_` and always in eval mode.

    Being an ``nn.Module``, its ``state_dict`` is the teacher network's, which the base trainer
    saves and restores. ``self.module`` is the plain network (what inference uses).
    """

    def __init__(self, student: nn.Module, max_decay: float = 0.99):
        super().__init__()
        self.module = copy.deepcopy(unwrap(student))
        self.module.requires_grad_(False)
        self.module.eval()
        self.max_decay = float(max_decay)

    def train(self, mode: bool = True):  # the teacher never trains
        return super().train(False)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def update(self, student: nn.Module, step: int) -> float:
        """EMA step after optimizer step ``step`` (0-based); returns the decay used."""
        a = ema_decay(step, self.max_decay)
        ema_update_(self.module, [student], [1.0 - a])
        return a

    def copy_from(self, student: nn.Module) -> None:
        """Make the teacher an exact copy of ``student`` (e.g. at a BCP phase boundary)."""
        ema_update_(self.module, [student], [1.0])
