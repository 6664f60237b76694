"""Distributed helpers: every statistic a trainer derives from a batch (class counts, Dice,
confidences) goes through these, so that all DDP ranks compute identical weights.

All functions are no-ops when ``torch.distributed`` is not initialised (single process, CPU tests).
"""
from __future__ import annotations

import torch
from torch import distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks (returns a new tensor; the input is not modified)."""
    t = t.detach().clone()
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Average ``t`` over all ranks (returns a new tensor)."""
    return all_reduce_sum(t) / world_size()
