import pytest
import torch

from nnunet_ssl.losses.deep_supervision import downsample_like


def test_downsample_like_takes_every_second_voxel_by_nearest_exact():
    # nearest-exact from 4 to 2 samples source index floor((i + 0.5) * 2) = 1, 3
    label = torch.arange(16).reshape(1, 1, 4, 4)
    outs = [torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 2, 2)]
    full, half = downsample_like(label, outs)
    assert full is label
    assert half.dtype == label.dtype and half.tolist() == [[[[5, 7], [13, 15]]]]


def test_downsample_like_voxel_weights_without_channel():
    w = torch.tensor([[[1.0, 1.0, 0.5, 0.5], [1.0, 1.0, 0.5, 0.5]]])  # (B=1, 2, 4)
    _, low = downsample_like(w, [torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 1, 2)])
    assert low.shape == (1, 1, 2) and low.tolist() == [[[1.0, 0.5]]]


def test_downsample_like_commutes_with_a_mix():
    torch.manual_seed(0)
    a, b = torch.randint(0, 3, (2, 1, 8, 8)), torch.randint(0, 3, (2, 1, 8, 8))
    m = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    m[..., 2:6, 1:5] = 1
    outs = [torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 4, 4)]
    mixed_low = downsample_like(a * m + b * (1 - m), outs)[1]
    a_l, b_l = downsample_like(a, outs)[1], downsample_like(b, outs)[1]
    m_l = downsample_like(m.expand(2, 1, 8, 8), outs)[1]
    assert torch.equal(mixed_low, a_l * m_l + b_l * (1 - m_l))


def test_downsample_like_rejects_wrong_rank():
    with pytest.raises(ValueError, match="expected"):
        downsample_like(torch.zeros(4, 4), [torch.zeros(1, 2, 4, 4)])
