"""Shared check of the ensemble tests: the predictor's network is the mean softmax of the trainer's two."""
from __future__ import annotations

import torch


def assert_mean_softmax_of(net, a, b, patch_size) -> None:
    """``net`` (eval, no deep supervision) outputs the mean softmax of trained networks ``a`` and ``b``
    on a random patch; ``a`` and ``b`` are switched to eval without deep supervision."""
    net.eval()
    for m in (a, b):
        m.eval()
        m.decoder.deep_supervision = False
    x = torch.randn(1, 1, *patch_size)
    with torch.no_grad():
        expected = (torch.softmax(a(x), 1) + torch.softmax(b(x), 1)) / 2
        assert torch.allclose(torch.softmax(net(x), 1), expected, atol=1e-5)
