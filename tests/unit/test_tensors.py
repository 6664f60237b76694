"""class_argmax: the class-axis argmax every pseudo-labelling path uses."""
import pytest
import torch

from nnunet_ssl.utils.tensors import class_argmax


def test_hand_computed_with_ties_first_wins():
    x = torch.tensor([[[1.0, 5.0, 2.0],     # class 0
                       [3.0, 5.0, 2.0],     # class 1
                       [2.0, 0.0, 2.0]]])   # class 2   -> (1, 3, 3)
    assert class_argmax(x).tolist() == [[1, 0, 0]]
    assert class_argmax(x).dtype == torch.long


@pytest.mark.parametrize("shape", [(2, 4, 7, 5), (3, 3, 4, 6, 5)])
def test_matches_argmax_2d_3d_with_many_ties(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, shape, generator=g).float()  # small integers: ties everywhere
    assert torch.equal(class_argmax(x), x.argmax(1))
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    assert torch.equal(class_argmax(x), x.argmax(1))


def test_rejects_tensors_without_a_class_axis():
    with pytest.raises(ValueError, match=r"expected \(B, C, ...\)"):
        class_argmax(torch.zeros(5))
