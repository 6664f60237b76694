"""UA-MT: entropy, threshold ramp, masked MSE (hand-computed), batched noisy teacher passes."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nnunet_ssl.methods.mean_teacher import MeanTeacherTrainer
from nnunet_ssl.losses.consistency import masked_probability_mse
from nnunet_ssl.trainers.uamt import nnUNetTrainerUAMT, predictive_entropy, uncertainty_threshold


def test_predictive_entropy_hand_computed():
    # three voxels of a (1, 2, 3) map: p = (.5, .5), (1, 0), (.25, .75)
    probs = torch.tensor([[[0.5, 1.0, 0.25], [0.5, 0.0, 0.75]]])
    # ln 2 = 0.693147; 0; -(.25 ln .25 + .75 ln .75) = .346574 + .215762 = 0.562335
    expected = torch.tensor([[0.693147, 0.0, 0.562335]])
    assert torch.allclose(predictive_entropy(probs), expected, atol=1e-6)
    assert predictive_entropy(probs).shape == (1, 3)


def test_uncertainty_threshold_ramps_from_three_quarters_to_ln_c():
    # step 0 of 100: (0.75 + 0.25·exp(-5))·ln 2 = 0.7516845·0.6931472 = 0.5210279
    assert uncertainty_threshold(0, 100, 2) == pytest.approx(0.5210279, abs=1e-6)
    # halfway: (0.75 + 0.25·exp(-1.25))·ln 4 = (0.75 + 0.0716262)·1.3862944 = 1.1390158
    assert uncertainty_threshold(50, 100, 4) == pytest.approx(1.1390158, abs=1e-6)
    assert uncertainty_threshold(100, 100, 4) == pytest.approx(math.log(4))
    assert uncertainty_threshold(500, 100, 4) == pytest.approx(math.log(4))
    assert uncertainty_threshold(0, 0, 3) == pytest.approx(math.log(3))  # no ramp-up
    with pytest.raises(ValueError, match=">= 2 classes"):
        uncertainty_threshold(0, 10, 1)


def test_masked_probability_mse_hand_computed():
    logits = torch.zeros(1, 2, 2, 1, requires_grad=True)        # softmax = 0.5 everywhere
    target = torch.tensor([[[[1.0], [0.5]], [[0.0], [0.5]]]])   # voxel 0: (1, 0), voxel 1: (.5, .5)
    # squared errors: voxel 0: .25 + .25 = .5, voxel 1: 0
    assert masked_probability_mse(logits, target).item() == pytest.approx(0.5 / 4)
    assert masked_probability_mse(logits, target, torch.tensor([[[1.0], [1.0]]])).item() == pytest.approx(0.5 / 4)
    assert masked_probability_mse(logits, target, torch.tensor([[[1.0], [0.0]]])).item() == pytest.approx(0.5 / 2)
    assert masked_probability_mse(logits, target, torch.tensor([[[[0.0], [1.0]]]])).item() == 0.0
    empty = masked_probability_mse(logits, target, torch.zeros(1, 2, 1))
    assert empty.item() == 0.0
    empty.backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="differ in shape"):
        masked_probability_mse(logits, target[:, :1])
    with pytest.raises(ValueError, match="mask must be"):
        masked_probability_mse(logits, target, torch.ones(2, 2, 1))


class _Teacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)

    def forward(self, x):
        return [self.conv(x), self.conv(x)[..., ::2, ::2]]  # deep-supervised output


def _fake(std, passes=4, per_forward=0):
    fake = SimpleNamespace(uncertainty_passes=passes, uncertainty_passes_per_forward=per_forward,
                           teacher_noise_std=std, teacher_noise_clip=0.2, generator=torch.Generator().manual_seed(0),
                           teachers={"teacher": _Teacher().eval()})
    fake.teacher_input = lambda x: MeanTeacherTrainer.teacher_input(fake, x)
    return fake


def test_noisy_teacher_passes_are_batched_and_distinct():
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    fake = _fake(std=0.0)
    probs = nnUNetTrainerUAMT.noisy_teacher_probs(fake, x)
    assert probs.shape == (4, 2, 3, 4, 4)
    expected = torch.softmax(fake.teachers["teacher"](x)[0], 1)
    for t in range(4):  # without noise every pass is the teacher's prediction, sample order kept
        assert torch.allclose(probs[t], expected, atol=1e-6)
    chunked = _fake(std=0.0, per_forward=3)
    chunked.teachers = fake.teachers
    assert torch.allclose(nnUNetTrainerUAMT.noisy_teacher_probs(chunked, x), probs, atol=1e-6)
    noisy = _fake(std=0.1)
    noisy.teachers = fake.teachers
    p = nnUNetTrainerUAMT.noisy_teacher_probs(noisy, x)
    assert not torch.allclose(p[0], p[1]) and torch.allclose(p.sum(2), torch.ones(4, 2, 4, 4))
    with pytest.raises(ValueError, match="uncertainty_passes must be >= 1"):
        nnUNetTrainerUAMT.noisy_teacher_probs(_fake(0.1, passes=0), x)
