"""The two counters of benchmarks/activation_memory.py, hand-checked on tiny computations (float32: 4 bytes)."""
from __future__ import annotations

import torch

from conftest import load_benchmark


am = load_benchmark("activation_memory")


def _linear_relu():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3), torch.randn(2, 4)


def test_saved_bytes_linear_relu():
    lin, x = _linear_relu()
    with am.SavedTensorBytes(exclude=list(lin.parameters())) as saved:
        torch.relu(lin(x)).sum()
    # addmm saves its input x for the weight gradient: 2*4 floats = 32 B (the weight is saved only when x
    # needs a gradient); relu saves its output: 2*3 floats = 24 B; sum saves no tensor -> 56 B in 2 storages
    assert (saved.bytes, saved.count) == (56, 2)


def test_saved_bytes_parameters_counted_unless_excluded():
    lin, x = _linear_relu()
    x.requires_grad_()
    with am.SavedTensorBytes() as saved:
        torch.relu(lin(x)).sum()
    # now addmm also saves weight.t() (a view of the 3x4 weight, 48 B) for x's gradient: 32 + 24 + 48
    assert (saved.bytes, saved.count) == (104, 3)
    with am.SavedTensorBytes(exclude=list(lin.parameters())) as saved:
        torch.relu(lin(x)).sum()
    assert (saved.bytes, saved.count) == (56, 2)


def test_saved_bytes_count_each_storage_once():
    x = torch.randn(2, 4, requires_grad=True)
    with am.SavedTensorBytes() as saved:
        (x * x).sum()  # mul saves x twice (both factors): one storage of 8 floats = 32 B
    assert (saved.bytes, saved.count) == (32, 1)
    with am.SavedTensorBytes() as saved:
        (x[:1] * x[1:]).sum()  # two views of x's storage: still its 32 B once
    assert (saved.bytes, saved.count) == (32, 1)


def test_saved_bytes_peak_of_graphs_alive_at_once():
    w = torch.randn(1000, requires_grad=True)
    with am.SavedTensorBytes(exclude=[w]) as saved:
        for _ in range(2):  # two graphs one after the other: each saves exp's output (4000 B), freed by backward
            torch.exp(w).sum().backward()
    assert (saved.bytes, saved.total, saved.count) == (4000, 8000, 2)
    with am.SavedTensorBytes(exclude=[w]) as saved:
        both = torch.exp(w).sum() + torch.exp(w).sum()  # both graphs alive at once
        both.backward()
    assert (saved.bytes, saved.total, saved.count) == (8000, 8000, 2)


def test_live_bytes_track_allocation_and_release():
    before = torch.ones(10)
    with am.LiveTensorBytes() as live:
        a = torch.ones(1000)
        assert (live.current, live.peak) == (4000, 4000)
        b = a * 2
        assert (live.current, live.peak) == (8000, 8000)
        del a  # freed: 4000 B less, the peak stays
        assert (live.current, live.peak) == (4000, 8000)
        c = torch.ones(500)
        assert (live.current, live.peak) == (6000, 8000)
        b.mul_(2)  # in place, a view, and an in-place op on a tensor from before: nothing new
        _ = b[:10]
        before.add_(1)
        assert (live.current, live.peak) == (6000, 8000)
    del b, c


def test_live_bytes_include_backward():
    x = torch.zeros(1000, requires_grad=True)  # created before: not counted
    with am.LiveTensorBytes() as live:
        y = (x * 2).sum()
        # x*2 (4000 B) is not saved by mul-by-a-number and is freed once sum (4 B) has run: peak 4004, now 4
        assert (live.current, live.peak) == (4, 4004)
        y.backward()
        # backward: the seed gradient ones_like(y) (4 B) -> 8, then grad * 2 (4000 B) -> 4008 at the peak; that
        # tensor becomes x.grad and the seed is freed: y (4) + x.grad (4000) = 4004 remain
        assert (live.current, live.peak) == (4004, 4008)
    assert torch.equal(x.grad, torch.full((1000,), 2.0))


def test_design_ratio_from_cost_model():
    class T:
        cost_model = {"forward": 8, "backward": 6}

    assert am.design_ratio(T)[0] == 6.0

    class OneGraphAtATime:
        cost_model = {"forward": 5, "backward": 4, "held": 2}

    assert am.design_ratio(OneGraphAtATime)[0] == 2.0
    assert am.design_ratio(None)[0] == 1.0  # nnUNetTrainer


def test_suggested_factor_rounds_up():
    assert am.suggested_factor(3.85, 3.48) == 4  # 3.85 -> 4
    assert am.suggested_factor(2.0, 1.2) == 2
    assert am.suggested_factor(1.0, 4.62) == 5  # the larger ratio decides
    # up to 3% above a whole number rounds down to it: 2.04 / 1.03 = 1.98 -> 2; 2.1 / 1.03 = 2.04 -> 3
    assert am.suggested_factor(1.95, 2.04) == 2
    assert am.suggested_factor(2.1, 1.0) == 3
