import math

import pytest
import torch

from nnunet_ssl.mixing.masks import (
    box_mask,
    box_size,
    class_mask,
    classmix_classes,
    present_classes,
    sample_box,
    sample_classes,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _zero_box(mask: torch.Tensor):
    """Start and side of the zero region per dim; checks that it is one solid box."""
    zeros = (mask == 0).nonzero()
    lo, hi = zeros.min(0).values, zeros.max(0).values
    sides = (hi - lo + 1).tolist()
    assert zeros.shape[0] == math.prod(sides)  # the zero voxels fill their bounding box
    return lo.tolist(), sides


# ------------------------------------------------------------------------------------ box masks
def test_box_size_hand_values():
    assert box_size((6, 6), 0.5) == (3, 3)
    assert box_size((9, 12, 6), 2 / 3) == (6, 8, 4)
    assert box_size((5, 7), 0.5) == (3, 4)  # 2.5 -> 3, 3.5 -> 4: halves round up
    assert box_size((4, 4, 4), 2 / 3) == (3, 3, 3)  # 2.67 -> 3
    assert box_size((5, 5), 0.0) == (0, 0)
    assert box_size((5, 3), 1.0) == (5, 3)


@pytest.mark.parametrize("shape,beta", [((8, 10), 0.5), ((6, 9, 12), 2 / 3)])
def test_box_mask_size_and_placement(shape, beta):
    expected_sides = list(box_size(shape, beta))
    for seed in range(30):
        mask = box_mask(shape, beta, _gen(seed))
        assert mask.shape == shape and mask.dtype == torch.float32
        assert set(mask.unique().tolist()) == {0.0, 1.0}
        start, sides = _zero_box(mask)
        assert sides == expected_sides
        assert all(0 <= st and st + b <= s for st, b, s in zip(start, sides, shape))


def test_box_starts_cover_every_position_including_the_last():
    # side 5, beta 0.4 -> box side 2 -> starts 0..3
    starts = {sample_box((5, 5), 0.4, _gen(seed))[0].start for seed in range(200)}
    assert starts == {0, 1, 2, 3}


def test_box_mask_edge_betas():
    assert torch.equal(box_mask((3, 4), 0.0, _gen(0)), torch.ones(3, 4))
    assert torch.equal(box_mask((3, 4, 2), 1.0, _gen(0)), torch.zeros(3, 4, 2))


def test_box_mask_is_deterministic_under_a_seed():
    a = box_mask((16, 16, 16), 0.5, _gen(7))
    b = box_mask((16, 16, 16), 0.5, _gen(7))
    assert torch.equal(a, b)
    others = [box_mask((16, 16, 16), 0.5, _gen(s)) for s in range(8, 14)]
    assert any(not torch.equal(a, o) for o in others)


def test_box_mask_one_mask_shared_by_the_batch():
    mask = box_mask((6, 6), 0.5, _gen(1))
    assert mask.shape == (6, 6)  # spatial only: it broadcasts over batch and channels alike
    per_voxel = torch.zeros(3, 2, 6, 6) + mask
    for b in range(3):
        for c in range(2):
            assert torch.equal(per_voxel[b, c], mask)


def test_box_mask_errors():
    with pytest.raises(ValueError, match="beta"):
        box_mask((4, 4), 1.5, _gen(0))
    with pytest.raises(ValueError, match="2D or 3D"):
        box_mask((4,), 0.5, _gen(0))
    with pytest.raises(ValueError, match="2D or 3D"):
        box_mask((4, 4, 4, 4), 0.5, _gen(0))


# ---------------------------------------------------------------------------------- class masks
def test_class_mask_hand_example_per_sample_sets():
    labels = torch.tensor([[[0, 1], [2, 1]],
                           [[3, 3], [0, 2]]])
    mask = class_mask(labels, [torch.tensor([1]), [0, 2]])
    expected = torch.tensor([[[0., 1.], [0., 1.]],
                             [[0., 0.], [1., 1.]]])
    assert torch.equal(mask, expected)


def test_class_mask_shared_set_keeps_layout_and_empty_set_gives_zeros():
    labels = torch.tensor([[[[0, 1], [2, 1]]]])  # (B=1, 1, 2, 2)
    assert torch.equal(class_mask(labels, [1, 2]), torch.tensor([[[[0., 1.], [1., 1.]]]]))
    assert torch.equal(class_mask(labels, torch.tensor([2])), torch.tensor([[[[0., 0.], [1., 0.]]]]))
    assert torch.equal(class_mask(labels, []), torch.zeros(1, 1, 2, 2))


def test_class_mask_errors():
    with pytest.raises(ValueError, match="one class set per sample"):
        class_mask(torch.zeros(2, 3, 3, dtype=torch.long), [[0], [1], [2]])
    with pytest.raises(ValueError, match="integer label map"):
        class_mask(torch.zeros(2, 3, 3), [0])


def test_present_classes_excludes_ignore_label():
    labels = torch.tensor([[[0, 4], [4, 255]], [[1, 1], [1, 1]]])
    out = present_classes(labels, ignore_label=255)
    assert [c.tolist() for c in out] == [[0, 4], [1]]


# ------------------------------------------------------------------------------ DMP class sets
def test_sample_classes_frequencies_follow_weights():
    # present {1, 2, 3} with weights 1, 2, 5 -> single-draw probabilities 1/8, 2/8, 5/8; three draws,
    # so P(c in S) = 1 - (1 - p_c)^3 = 0.3301, 0.5781, 0.9473.
    weights = torch.tensor([9.0, 1.0, 2.0, 5.0])  # class 0 is not present: its weight must not matter
    g = _gen(0)
    n = 4000
    counts = torch.zeros(4)
    for _ in range(n):
        s = sample_classes(weights, torch.tensor([1, 2, 3]), g)
        assert 1 <= s.numel() <= 3 and torch.equal(s, s.unique())
        counts[s] += 1
    freq = counts / n
    expected = torch.tensor([0.0, 1 - (7 / 8) ** 3, 1 - (6 / 8) ** 3, 1 - (3 / 8) ** 3])
    assert torch.allclose(freq, expected, atol=0.03)


def test_sample_classes_degenerate_weights():
    g = _gen(3)
    one_hot = torch.tensor([0.0, 0.0, 1.0, 0.0])
    for _ in range(50):  # one-hot weights -> always exactly that class
        assert sample_classes(one_hot, [0, 1, 2, 3], g).tolist() == [2]
    # every present class weighs 0 -> uniform over the present classes
    seen = set()
    for _ in range(100):
        s = sample_classes(torch.tensor([0.0, 0.0, 0.0, 1.0]), [0, 1], g).tolist()
        assert s and set(s) <= {0, 1}
        seen.update(s)
    assert seen == {0, 1}
    assert sample_classes(torch.ones(4), [], g).numel() == 0  # nothing present -> empty S
    assert sample_classes(torch.ones(4), [3], g).tolist() == [3]


def test_sample_classes_is_deterministic_and_accepts_weights_with_grad():
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    a = [sample_classes(w, [0, 1, 2, 3], g).tolist() for g in [_gen(5)] for _ in range(10)]
    b = [sample_classes(w, [0, 1, 2, 3], g).tolist() for g in [_gen(5)] for _ in range(10)]
    assert a == b


def test_sample_classes_errors():
    g = _gen(0)
    with pytest.raises(ValueError, match="non-negative"):
        sample_classes(torch.tensor([1.0, -1.0]), [0, 1], g)
    with pytest.raises(ValueError, match="non-negative"):
        sample_classes(torch.tensor([1.0, float("nan")]), [0, 1], g)
    with pytest.raises(ValueError, match="shape"):
        sample_classes(torch.ones(2, 2), [0, 1], g)
    with pytest.raises(ValueError, match="outside"):
        sample_classes(torch.ones(3), [0, 3], g)


# ------------------------------------------------------------------------------------- ClassMix
def test_classmix_picks_half_of_the_present_classes():
    labels = torch.zeros(3, 4, 4, dtype=torch.long)
    labels[0] = torch.arange(4).repeat(4, 1)      # classes {0, 1, 2, 3} -> 2 picked
    labels[1, 0, :3] = torch.tensor([0, 2, 5])    # classes {0, 2, 5}    -> ceil(3/2) = 2
    labels[2] = 4                                 # classes {4}          -> 1
    g = _gen(0)
    seen0 = set()
    for _ in range(40):
        sets = classmix_classes(labels, g)
        assert [s.numel() for s in sets] == [2, 2, 1]
        assert set(sets[0].tolist()) <= {0, 1, 2, 3} and set(sets[1].tolist()) <= {0, 2, 5}
        assert sets[2].tolist() == [4]
        seen0.update(sets[0].tolist())
    assert seen0 == {0, 1, 2, 3}  # every class gets picked sometimes


def test_classmix_classes_ignore_label_and_determinism():
    labels = torch.tensor([[[0, 1], [2, 255]]])
    sets = classmix_classes(labels, _gen(2), ignore_label=255)
    assert sets[0].numel() == 2 and 255 not in sets[0].tolist()
    again = classmix_classes(labels, _gen(2), ignore_label=255)
    assert torch.equal(sets[0], again[0])
