"""Slice sampling, reference choice and ranges, the merge of per-organ probabilities, the copy baseline,
training sequences and the network's shapes."""
import numpy as np
import pytest
import torch

from nnunet_ssl.propagation.merge import export_scores, merge_organ_probabilities
from nnunet_ssl.propagation.network import SpaceTimeMemoryNetwork, pad_to_divisor
from nnunet_ssl.propagation.propagate import copy_references, propagate_organ
from nnunet_ssl.propagation.references import (largest_area_slices, reference_masks, reference_ranges,
                                               uniform_slices)
from nnunet_ssl.propagation.sequences import sequence_slices


def test_uniform_slices():
    # 10 slices, 4 bins of 2.5: centres floor(1.25), floor(3.75), floor(6.25), floor(8.75) = 1, 3, 6, 8
    assert uniform_slices(10, 4) == [1, 3, 6, 8]
    assert uniform_slices(3, 5) == [0, 1, 2]
    with pytest.raises(ValueError):
        uniform_slices(0, 3)


def test_largest_area_slices_and_masks():
    # three sampled slices (indices 2, 5, 9) of a 2x3 image; label 1 areas [1, 3, 3], label 2 areas [2, 0, 0]
    slices = np.array([[[1, 2, 2], [0, 0, 0]],
                       [[1, 1, 1], [0, 0, 0]],
                       [[0, 0, 0], [1, 1, 1]]])
    chosen = largest_area_slices(slices, [2, 5, 9], labels=[1, 2, 3], per_organ=2)
    assert chosen == {1: [5, 9], 2: [2]}  # ties in area: both kept; label 3 absent
    assert largest_area_slices(slices, [2, 5, 9], [1], per_organ=1) == {1: [5]}  # tie -> lower slice
    masks = reference_masks(slices, [2, 5, 9], [1, 2], per_organ=1)
    assert list(masks) == [1, 2] and list(masks[1]) == [5] and list(masks[2]) == [2]
    assert masks[2][2].tolist() == [[0, 1, 1], [0, 0, 0]] and masks[2][2].dtype == np.float32


def test_reference_ranges():
    # refs 3 and 8 in 12 slices meet at floor(11/2) = 5: 3 covers 0..5, 8 covers 6..11
    assert reference_ranges([8, 3], 12) == [(3, 0, 5), (8, 6, 11)]
    assert reference_ranges([4], 7) == [(4, 0, 6)]
    assert reference_ranges([2, 3], 6) == [(2, 0, 2), (3, 3, 5)]
    with pytest.raises(ValueError):
        reference_ranges([7], 7)


def test_merge_rule_and_export_scores_agree():
    # organs 1 and 3; voxel a: p = (0.4, 0.3) -> background; b: (0.6, 0.9) -> 3; c: (0.7, 0.2) -> 1;
    # d: (0.5, 0.5) -> background (no probability above 0.5)
    p = np.array([[0.4, 0.6, 0.7, 0.5], [0.3, 0.9, 0.2, 0.5]], dtype=np.float32)
    merged = merge_organ_probabilities(p, [1, 3])
    assert merged.tolist() == [0, 3, 1, 0]
    scores = export_scores({1: p[0], 3: p[1]}, num_classes=4)
    assert scores.shape == (4, 4) and scores[0].tolist() == [0.5] * 4 and scores[2].tolist() == [0] * 4
    assert scores.argmax(0).tolist() == merged.tolist()
    assert export_scores({}, 3, shape=(2,)).argmax(0).tolist() == [0, 0]
    assert merge_organ_probabilities(np.zeros((0, 2)), []).tolist() == [0, 0]


def test_copy_references_fills_each_range():
    refs = {2: {1: np.array([1.0, 0.0]), 4: np.array([0.0, 1.0])}}
    copied = copy_references(refs, 6)[2]  # ranges: 1 -> 0..2, 4 -> 3..5
    assert copied.tolist() == [[1, 0]] * 3 + [[0, 1]] * 3


def test_sequence_slices():
    assert sequence_slices(2, 10, 3, 1) == [2, 3, 4]
    assert sequence_slices(2, 10, 3, -1) == [2, 1, 0]
    assert sequence_slices(1, 10, 3, -1) == [1, 2, 3]  # would leave the volume: direction flips
    assert sequence_slices(0, 2, 3, 1) == [0, 1, 1]    # shorter than the sequence: clamped


def test_network_shapes_padding_and_propagation_keeps_references():
    torch.manual_seed(0)
    net = SpaceTimeMemoryNetwork(2, (4, 8, 8), key_dim=4, value_dim=8)
    assert net.divisor == 4
    out = net(torch.randn(2, 3, 2, 16, 12), torch.ones(2, 1, 16, 12))
    assert out.shape == (2, 2, 1, 16, 12)
    with pytest.raises(ValueError, match="divisible by 4"):
        net.encode_key(torch.randn(1, 2, 10, 12))
    assert pad_to_divisor(torch.zeros(1, 2, 10, 13), 4).shape == (1, 2, 12, 16)
    volume = torch.randn(2, 6, 10, 13)
    ref = (torch.rand(10, 13) > 0.5).float()
    p = propagate_organ(net, volume, {2: ref}, memory_every=2)
    assert p.shape == (6, 10, 13) and torch.equal(p[2], ref)
    assert ((p >= 0) & (p <= 1)).all()
