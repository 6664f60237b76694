"""Space-time memory read-out (STCN, Cheng et al., NeurIPS 2021) and the memory bank of slices.

Affinity between memory position ``i`` and query position ``j`` is the negative squared Euclidean
distance of their keys, scaled by ``1/√C_k`` and normalised by a softmax over the memory:
``W_ij = softmax_i(−‖k_i − q_j‖² / √C_k)``; the read-out is ``r_j = Σ_i W_ij v_i``. Expanding
``−‖k_i − q_j‖² = 2 k_i·q_j − ‖k_i‖² − ‖q_j‖²``, the last term is constant over ``i`` and cancels in
the softmax, so it is left out (as in STCN); the result is the same.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

__all__ = ["memory_affinity", "memory_readout", "MemoryBank"]


def memory_affinity(memory_keys: Tensor, query_keys: Tensor) -> Tensor:
    """``W`` ``(B, N_m, N_q)``: softmax over the ``N_m`` memory positions of ``−‖k_i − q_j‖² / √C_k``.

    ``memory_keys`` ``(B, C_k, N_m)``, ``query_keys`` ``(B, C_k, N_q)`` (positions flattened)."""
    if memory_keys.dim() != 3 or query_keys.dim() != 3 or memory_keys.shape[:2] != query_keys.shape[:2]:
        raise ValueError(f"keys must be (B, C_k, N): memory {tuple(memory_keys.shape)}, query "
                         f"{tuple(query_keys.shape)}")
    mk, qk = memory_keys.float(), query_keys.float()
    c_k = mk.shape[1]
    similarity = 2 * torch.bmm(mk.transpose(1, 2), qk) - mk.pow(2).sum(1).unsqueeze(2)  # (B, N_m, N_q)
    return torch.softmax(similarity / c_k ** 0.5, dim=1)


def memory_readout(memory_keys: Tensor, memory_values: Tensor, query_keys: Tensor) -> Tensor:
    """``r`` ``(B, C_v, N_q)``: ``r_j = Σ_i W_ij v_i`` with ``W`` from :func:`memory_affinity`.

    ``memory_values`` ``(B, C_v, N_m)``, positions in the order of ``memory_keys``."""
    if memory_values.dim() != 3 or memory_values.shape[0] != memory_keys.shape[0] \
            or memory_values.shape[2] != memory_keys.shape[2]:
        raise ValueError(f"memory values {tuple(memory_values.shape)} must be (B, C_v, N_m) for memory keys "
                         f"{tuple(memory_keys.shape)}")
    affinity = memory_affinity(memory_keys, query_keys)
    return torch.bmm(memory_values.float(), affinity).to(memory_values.dtype)


class MemoryBank:
    """Keys and values of the slices a query may read from, for one propagation direction.

    STCN's policy: the annotated (reference) slices stay; every propagated slice whose distance to the
    reference is a multiple of ``memory_every`` is added for good; any other propagated slice is held
    only until the next one arrives (the "last frame" memory). ``max_frames`` > 0 bounds the permanent
    propagated slices (the oldest leaves first); references are never dropped.

    Frames are ``(C_k, h, w)`` keys and ``(C_v, h, w)`` values of one image (batch size 1).
    """

    def __init__(self, memory_every: int = 5, max_frames: int = 0):
        if memory_every < 1:
            raise ValueError(f"memory_every must be >= 1, got {memory_every}")
        self.memory_every = int(memory_every)
        self.max_frames = int(max_frames)
        self._references: List[tuple] = []
        self._permanent: List[tuple] = []
        self._temporary: Optional[tuple] = None

    def add_reference(self, key: Tensor, value: Tensor) -> None:
        self._references.append((key, value))

    def add_propagated(self, key: Tensor, value: Tensor, distance: int) -> None:
        """Add the slice ``distance`` slices away from the reference (``distance`` >= 1)."""
        if distance % self.memory_every == 0:
            self._permanent.append((key, value))
            if self.max_frames > 0 and len(self._permanent) > self.max_frames:
                self._permanent.pop(0)
            self._temporary = None
        else:
            self._temporary = (key, value)

    def frames(self) -> List[tuple]:
        return self._references + self._permanent + ([self._temporary] if self._temporary is not None else [])

    def __len__(self) -> int:
        return len(self.frames())

    def stacked(self) -> tuple:
        """(keys ``(1, C_k, M·h·w)``, values ``(1, C_v, M·h·w)``) of the ``M`` frames held."""
        frames = self.frames()
        if not frames:
            raise RuntimeError("the memory bank is empty: add a reference slice first")
        keys = torch.cat([k.flatten(1) for k, _ in frames], 1)[None]
        values = torch.cat([v.flatten(1) for _, v in frames], 1)[None]
        return keys, values
