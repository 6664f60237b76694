"""Memory read-out (affinity by negative squared Euclidean distance) and the memory bank policy."""
import math

import pytest
import torch

from nnunet_ssl.propagation.memory import MemoryBank, memory_affinity, memory_readout


def test_readout_two_memory_positions_one_query():
    # C_k = 1: memory keys k1 = 0, k2 = 1; query q = 1; values v1 = 2, v2 = 4
    # -‖k - q‖² / √1 = [-1, 0] -> softmax: w1 = e^-1 / (e^-1 + 1) = 0.268941, w2 = 1 / (e^-1 + 1) = 0.731059
    # read-out = 2·0.268941 + 4·0.731059 = 3.462117
    mk = torch.tensor([[[0.0, 1.0]]])      # (B=1, C_k=1, N_m=2)
    mv = torch.tensor([[[2.0, 4.0]]])      # (1, C_v=1, 2)
    q = torch.tensor([[[1.0]]])            # (1, 1, N_q=1)
    w1 = math.exp(-1) / (math.exp(-1) + 1)
    assert memory_affinity(mk, q)[0, :, 0].tolist() == pytest.approx([w1, 1 - w1], abs=1e-6)
    assert memory_readout(mk, mv, q).item() == pytest.approx(2 * w1 + 4 * (1 - w1), abs=1e-6)
    assert memory_readout(mk, mv, q).item() == pytest.approx(3.462117, abs=1e-6)


def test_readout_scales_by_root_key_dim():
    # C_k = 2: keys (0, 0) and (1, 1), query (1, 1): ‖k - q‖² = [2, 0] -> [-2/√2, 0] = [-1.414214, 0]
    # w1 = e^-1.414214 / (e^-1.414214 + 1) = 0.243117 / 1.243117 = 0.195570; values (C_v = 2): v1 = (1, 0), v2 = (0, 1)
    # read-out = (w1, 1 - w1) = (0.195570, 0.804430)
    mk = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    mv = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    q = torch.tensor([[[1.0], [1.0]]])
    assert memory_readout(mk, mv, q)[0, :, 0].tolist() == pytest.approx([0.195570, 0.804430], abs=1e-6)


def test_affinity_equals_explicit_distance_softmax():
    g = torch.Generator().manual_seed(0)
    mk, q = torch.randn(2, 8, 30, generator=g), torch.randn(2, 8, 7, generator=g)
    explicit = torch.softmax(-torch.cdist(mk.transpose(1, 2), q.transpose(1, 2)) ** 2 / math.sqrt(8), dim=1)
    assert torch.allclose(memory_affinity(mk, q), explicit, atol=1e-5)
    assert torch.allclose(memory_affinity(mk, q).sum(1), torch.ones(2, 7))


def test_readout_checks_shapes():
    with pytest.raises(ValueError, match="keys must be"):
        memory_affinity(torch.zeros(1, 2, 3), torch.zeros(1, 3, 3))
    with pytest.raises(ValueError, match="memory values"):
        memory_readout(torch.zeros(1, 2, 3), torch.zeros(1, 4, 5), torch.zeros(1, 2, 1))


def _frame(v: float):
    return torch.full((1, 1, 1), v), torch.full((1, 1, 1), v)


def test_memory_bank_policy():
    bank = MemoryBank(memory_every=2, max_frames=2)
    bank.add_reference(*_frame(0))
    held = lambda: [k.item() for k, _ in bank.frames()]  # noqa: E731
    bank.add_propagated(*_frame(1), distance=1)   # not a multiple of 2: the temporary slot
    assert held() == [0, 1]
    bank.add_propagated(*_frame(2), distance=2)   # kept for good, temporary slot emptied
    assert held() == [0, 2]
    bank.add_propagated(*_frame(3), distance=3)
    assert held() == [0, 2, 3]
    bank.add_propagated(*_frame(4), distance=4)
    bank.add_propagated(*_frame(6), distance=6)   # max_frames = 2: the oldest propagated frame (2) leaves
    assert held() == [0, 4, 6]
    keys, values = bank.stacked()
    assert keys.shape == (1, 1, 3) and keys.flatten().tolist() == [0, 4, 6]
    with pytest.raises(RuntimeError, match="empty"):
        MemoryBank().stacked()
