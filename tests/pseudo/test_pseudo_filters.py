import numpy as np
import pytest
import torch

from nnunet_ssl.pseudo.filters import largest_connected_component_per_class

# class 1: a 3-voxel blob (top left) and a 2-voxel blob (row 4); class 2: a single voxel (row 0)
# and a 4-voxel blob (left column). Only the larger blob of each class survives.
DRAWN = torch.tensor([
    [1, 1, 0, 0, 2, 0],
    [1, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],
    [2, 2, 0, 0, 0, 0],
    [2, 0, 0, 0, 1, 1],
    [2, 0, 0, 0, 0, 0],
])
EXPECTED = torch.tensor([
    [1, 1, 0, 0, 0, 0],
    [1, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],
    [2, 2, 0, 0, 0, 0],
    [2, 0, 0, 0, 0, 0],
    [2, 0, 0, 0, 0, 0],
])


def test_largest_component_per_class_2d_hand_drawn():
    out = largest_connected_component_per_class(DRAWN[None], num_classes=3)
    assert torch.equal(out, EXPECTED[None])


def test_layouts_batch_dtype_and_numpy():
    other = torch.zeros(6, 6, dtype=torch.long)
    other[5, 5] = 1  # a lone voxel is its class's largest component: kept
    batch = torch.stack([DRAWN, other]).to(torch.int16)
    out = largest_connected_component_per_class(batch, 3)
    assert out.dtype == torch.int16 and out.device == batch.device
    assert torch.equal(out, torch.stack([EXPECTED, other]).to(torch.int16))
    out_c = largest_connected_component_per_class(batch[:, None], 3)  # (B, 1, H, W)
    assert out_c.shape == (2, 1, 6, 6) and torch.equal(out_c[:, 0], out)
    out_np = largest_connected_component_per_class(batch.numpy(), 3)
    assert isinstance(out_np, np.ndarray) and np.array_equal(out_np, out.numpy())


def test_connectivity_full_versus_face():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 0, 0] = labels[0, 1, 1] = labels[0, 3, 3] = 1
    full = largest_connected_component_per_class(labels, 2, connectivity="full")
    # diagonal neighbours connect: {(0,0), (1,1)} (size 2) beats (3,3)
    assert full[0].nonzero().tolist() == [[0, 0], [1, 1]]
    face = largest_connected_component_per_class(labels, 2, connectivity="face")
    # three single voxels tie: the first in scan order, (0,0), is kept
    assert face[0].nonzero().tolist() == [[0, 0]]


def test_largest_component_3d():
    labels = torch.zeros(1, 1, 3, 3, 3, dtype=torch.long)  # (B, 1, Z, Y, X)
    labels[0, 0, 0, 0, 0] = labels[0, 0, 0, 0, 1] = 1      # class 1, 2 voxels in slice 0
    labels[0, 0, 2, 2, 2] = 1                              # class 1, 1 voxel in slice 2
    labels[0, 0, 0, 2, 0] = labels[0, 0, 1, 2, 0] = labels[0, 0, 2, 2, 0] = 2  # class 2 across slices
    labels[0, 0, 2, 0, 2] = 2                              # class 2, isolated voxel
    expected = labels.clone()
    expected[0, 0, 2, 2, 2] = 0
    expected[0, 0, 2, 0, 2] = 0
    assert torch.equal(largest_connected_component_per_class(labels, 3), expected)
    assert torch.equal(largest_connected_component_per_class(labels[:, 0], 3), expected[:, 0])


def test_values_outside_the_classes_are_untouched():
    labels = DRAWN.clone()[None]
    labels[0, 2, 2] = 255  # ignore label
    labels[0, 5, 5] = 7    # not among the 3 classes
    out = largest_connected_component_per_class(labels, 3)
    expected = EXPECTED.clone()[None]
    expected[0, 2, 2], expected[0, 5, 5] = 255, 7
    assert torch.equal(out, expected)


def test_fill_value_and_empty_labels():
    out = largest_connected_component_per_class(DRAWN[None], 3, fill_value=9)
    assert out[0, 0, 4].item() == 9 and out[0, 4, 4].item() == 9 and (out == 9).sum().item() == 3
    empty = torch.zeros(2, 3, 3, dtype=torch.long)
    assert torch.equal(largest_connected_component_per_class(empty, 3), empty)


def test_errors():
    with pytest.raises(ValueError, match="integer label map"):
        largest_connected_component_per_class(torch.zeros(1, 4, 4), 2)
    with pytest.raises(ValueError, match="connectivity"):
        largest_connected_component_per_class(torch.zeros(1, 4, 4, dtype=torch.long), 2, connectivity="edge")
    with pytest.raises(ValueError, match="spatial dims"):
        largest_connected_component_per_class(torch.zeros(1, 2, 2, 2, 2, dtype=torch.long), 2)
