import functools

import pytest
import torch

from nnunet_ssl.mixing.masks import box_mask
from nnunet_ssl.mixing.mixes import (
    STRONG_MIXES,
    MixResult,
    bidirectional_copy_paste,
    classmix,
    copy_paste,
    cutmix,
    cutout,
    dmp_mix,
    get_strong_mix,
    hybrid_crop,
    labeled_copy_paste,
    mix,
    one_hot,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(spatial, seed, classes=4, channels=2, with_channel=True):
    g = _gen(seed)
    x = torch.randn(2, channels, *spatial, generator=g)
    y = torch.randint(0, classes, (2, *spatial), generator=g)
    return x, (y.unsqueeze(1) if with_channel else y)


# ------------------------------------------------------------------------------------ mix()
def test_mix_hand_example_float_and_integer():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    b = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    m = torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert torch.equal(mix(a, b, m), torch.tensor([[1.0, 20.0, 30.0, 4.0]]))
    ya, yb = torch.tensor([[1, 1, 1, 1]]), torch.tensor([[2, 2, 2, 2]], dtype=torch.int16)
    out = mix(ya, yb, m)
    assert torch.equal(out, torch.tensor([[1, 2, 2, 1]])) and out.dtype == torch.int64


def test_mix_errors():
    with pytest.raises(ValueError, match="same|match"):
        mix(torch.zeros(1, 4), torch.zeros(1, 5), torch.ones(4))
    with pytest.raises(ValueError, match="broadcast"):
        mix(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4), torch.ones(2, 1, 4, 4))


# ------------------------------------------------------------------- invariant: label mixing
@pytest.mark.parametrize("spatial", [(6, 5), (4, 5, 6)])
@pytest.mark.parametrize("with_channel", [True, False])
@pytest.mark.parametrize("name", sorted(STRONG_MIXES))
def test_mixed_label_is_the_same_mix_of_the_labels(spatial, with_channel, name):
    x_u, y_u = _batch(spatial, 0, with_channel=with_channel)
    x_l, y_l = _batch(spatial, 1, with_channel=with_channel)
    res = STRONG_MIXES[name](x_u, y_u, x_l, y_l, torch.tensor([1.0, 2.0, 0.5, 3.0]), _gen(4))
    assert isinstance(res, MixResult)
    assert res.label.shape == y_u.shape and res.mask.shape == y_u.shape and res.weight.shape == y_u.shape
    s = len(spatial)
    m = res.mask if not with_channel else res.mask[:, 0]
    m = m.unsqueeze(1)  # (B, 1, *spatial)
    oh_mixed = one_hot(res.label, 4, s)
    if name == "cutout":  # cutout pastes y_u onto itself and zeros onto x_u
        assert torch.equal(oh_mixed, one_hot(y_u, 4, s))
        assert torch.equal(res.image, mix(x_u, torch.zeros_like(x_u), m))
    else:
        assert torch.equal(oh_mixed, mix(one_hot(y_u, 4, s), one_hot(y_l, 4, s), m))
        assert torch.equal(res.image, mix(x_u, x_l, m))


def test_extra_maps_are_mixed_with_the_same_mask():
    x_u, y_u = _batch((5, 6), 0)
    x_l, y_l = _batch((5, 6), 1)
    conf_u, conf_l = torch.rand(2, 1, 5, 6, generator=_gen(9)), torch.ones(2, 1, 5, 6)
    res = dmp_mix(x_u, y_u, x_l, y_l, None, _gen(3), extras={"conf": (conf_u, conf_l)})
    assert torch.equal(res.extras["conf"], torch.where(res.mask.bool(), conf_u, conf_l))


# ------------------------------------------------------------------------------------------ DMP
def test_dmp_hand_example():
    # unlabeled patch 2x2, pseudo-label [[0, 1], [2, 2]]; weights one-hot on class 2 -> S = {2}
    # -> M = [[0, 0], [1, 1]]: bottom row from the unlabeled patch, top row from the labeled one.
    x_u = torch.full((1, 1, 2, 2), 7.0)
    x_l = torch.full((1, 1, 2, 2), -1.0)
    y_u = torch.tensor([[[0, 1], [2, 2]]])
    y_l = torch.tensor([[[3, 3], [3, 0]]])
    res = dmp_mix(x_u, y_u, x_l, y_l, torch.tensor([0.0, 0.0, 1.0, 0.0]), _gen(0))
    assert [s.tolist() for s in res.classes] == [[2]]
    assert torch.equal(res.mask, torch.tensor([[[0.0, 0.0], [1.0, 1.0]]]))
    assert torch.equal(res.image, torch.tensor([[[[-1.0, -1.0], [7.0, 7.0]]]]))
    assert torch.equal(res.label, torch.tensor([[[3, 3], [2, 2]]]))
    assert torch.equal(res.weight, torch.ones(1, 2, 2))


def test_dmp_per_sample_sets_and_ignore_label():
    y_u = torch.tensor([[[1, 1], [1, 1]], [[2, 9], [2, 9]]])
    x = torch.zeros(2, 1, 2, 2)
    res = dmp_mix(x, y_u, x, torch.zeros_like(y_u), torch.ones(10), _gen(0), ignore_label=9)
    assert [s.tolist() for s in res.classes] == [[1], [2]]  # one class present -> S is that class
    assert torch.equal(res.mask, torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]]))


def test_dmp_is_deterministic_and_layout_independent():
    x_u, y_u = _batch((4, 4, 4), 0, with_channel=True)
    x_l, y_l = _batch((4, 4, 4), 1, with_channel=True)
    w = torch.tensor([0.1, 1.0, 2.0, 3.0])
    a = dmp_mix(x_u, y_u, x_l, y_l, w, _gen(11))
    b = dmp_mix(x_u, y_u[:, 0], x_l, y_l[:, 0], w, _gen(11))
    assert torch.equal(a.image, b.image) and torch.equal(a.label[:, 0], b.label)
    assert torch.equal(a.mask[:, 0], b.mask)


# ------------------------------------------------------------------------ CutMix/CutOut/ClassMix
def test_cutmix_shares_one_box_across_the_batch_and_is_deterministic():
    x_a, y_a = _batch((8, 8), 0)
    x_b, y_b = _batch((8, 8), 1)
    res = cutmix(x_a, y_a, x_b, y_b, _gen(5), beta=0.5)
    assert torch.equal(res.mask[0], res.mask[1])
    assert res.mask.sum().item() == 2 * (64 - 16)  # 4x4 box per sample
    again = cutmix(x_a, y_a, x_b, y_b, _gen(5), beta=0.5)
    assert torch.equal(res.image, again.image) and torch.equal(res.label, again.label)


def test_cutout_default_keeps_label_and_ignores_box_in_weight():
    x = torch.ones(2, 1, 6, 6)
    y = torch.full((2, 1, 6, 6), 3)
    conf = torch.full((2, 1, 6, 6), 0.9)
    res = cutout(x, y, _gen(2), beta=0.5, extras={"conf": conf})
    box = res.mask == 0
    assert box.sum().item() == 2 * 9
    assert torch.equal(res.image, res.mask)  # ones outside the box, zeros inside
    assert torch.equal(res.label, y)
    assert torch.equal(res.weight, res.mask)
    assert torch.equal(res.extras["conf"], conf)


def test_cutout_label_fill():
    x = torch.ones(1, 1, 4, 4, 4)
    y = torch.full((1, 4, 4, 4), 2)
    res = cutout(x, y, _gen(2), beta=0.5, label_fill=0)
    assert torch.equal(res.label, torch.where(res.mask.bool(), 2, 0))
    assert torch.equal(res.weight, torch.ones(1, 4, 4, 4))
    assert (res.label == 0).sum().item() == 8


def test_classmix_mask_is_the_chosen_half_of_classes():
    x_a, y_a = _batch((6, 6), 0, classes=4, with_channel=False)
    x_b, y_b = _batch((6, 6), 1, classes=4, with_channel=False)
    res = classmix(x_a, y_a, x_b, y_b, _gen(1))
    for b in range(2):
        assert res.classes[b].numel() == 2  # 4 classes present -> half of them
        assert torch.equal(res.mask[b], torch.isin(y_a[b], res.classes[b]).float())


def test_registry_and_uniform_signature():
    assert set(STRONG_MIXES) == {"dmp", "cutmix", "cutout", "classmix"}
    x_u, y_u = _batch((4, 4), 0)
    x_l, y_l = _batch((4, 4), 1)
    fn = functools.partial(get_strong_mix("cutmix"), beta=0.5)
    assert fn(x_u, y_u, x_l, y_l, torch.ones(4), _gen(0)).mask.sum().item() == 2 * 12
    with pytest.raises(ValueError, match="unknown strong mix"):
        get_strong_mix("mixup")


# ------------------------------------------------------------------------------------------ BCP
@pytest.mark.parametrize("spatial", [(6, 6), (6, 3, 6)])
def test_bcp_images_labels_and_region_weights(spatial):
    shape = (2, 1, *spatial)
    x_l1, x_u1, x_u2, x_l2 = (torch.full(shape, v) for v in (1.0, 2.0, 3.0, 4.0))
    y_l1, y_u1, y_u2, y_l2 = (torch.full((2, *spatial), v) for v in (1, 2, 3, 4))
    mask = box_mask(spatial, 2 / 3, _gen(0))
    x_in, x_out = bidirectional_copy_paste(x_l1, y_l1, x_u1, y_u1, x_u2, y_u2, x_l2, y_l2, mask, u_weight=0.5)
    m = mask.bool()
    n_m = int(m.sum())  # voxels where M = 1 (outside the box)
    n = mask.numel()
    assert torch.equal(x_in.image[:, 0], torch.where(m, 1.0, 2.0).expand(2, *spatial))
    assert torch.equal(x_out.image[:, 0], torch.where(m, 3.0, 4.0).expand(2, *spatial))
    assert torch.equal(x_in.label, torch.where(m, 1, 2).expand(2, *spatial))
    assert torch.equal(x_out.label, torch.where(m, 3, 4).expand(2, *spatial))
    # labeled-origin voxels weigh 1, unlabeled-origin 0.5
    assert x_in.weight.sum().item() == pytest.approx(2 * (n_m * 1.0 + (n - n_m) * 0.5))
    assert x_out.weight.sum().item() == pytest.approx(2 * (n_m * 0.5 + (n - n_m) * 1.0))
    assert torch.equal(x_in.weight == 1.0, x_in.label == 1)
    assert torch.equal(x_out.weight == 1.0, x_out.label == 4)


def test_bcp_pretrain_copy_paste_between_labeled_patches():
    x_a, y_a = torch.ones(1, 1, 2, 3), torch.tensor([[[1, 1, 1], [1, 1, 1]]])
    x_b, y_b = torch.zeros(1, 1, 2, 3), torch.tensor([[[2, 2, 2], [2, 2, 2]]])
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    res = labeled_copy_paste(x_a, y_a, x_b, y_b, mask)
    assert torch.equal(res.image[0, 0], mask)
    assert torch.equal(res.label, torch.tensor([[[1, 2, 2], [1, 1, 1]]]))
    assert torch.equal(res.weight, torch.ones(1, 2, 3))


# ---------------------------------------------------------------------------------- hybrid crops
def test_hybrid_crop_hand_example():
    # 1x1x1x2 patches: M = [1, 0] -> Mixed1 = [x_l, x_u], Mixed2 = [x_u, x_l]
    x_l = torch.tensor([[[[1.0, 1.0]]]])
    x_u = torch.tensor([[[[5.0, 5.0]]]])
    y_l = torch.tensor([[[2, 0]]])  # (B, 1, 2): class 2 then class 0
    probs = torch.tensor([[[[0.2, 0.5]], [[0.3, 0.25]], [[0.5, 0.25]]]])  # (B, K=3, 1, 2)
    mask = torch.tensor([[1.0, 0.0]])
    mix1, mix2 = hybrid_crop(x_l, y_l, x_u, probs, mask)
    assert torch.equal(mix1.image, torch.tensor([[[[1.0, 5.0]]]]))
    assert torch.equal(mix2.image, torch.tensor([[[[5.0, 1.0]]]]))
    # voxel 0 of Y_mix1 is one-hot(2); voxel 1 is the teacher's (0.5, 0.25, 0.25)
    assert torch.equal(mix1.label, torch.tensor([[[[0.0, 0.5]], [[0.0, 0.25]], [[1.0, 0.25]]]]))
    # voxel 0 of Y_mix2 is the teacher's (0.2, 0.3, 0.5); voxel 1 is one-hot(0)
    assert torch.equal(mix2.label, torch.tensor([[[[0.2, 1.0]], [[0.3, 0.0]], [[0.5, 0.0]]]]))
    assert mix1.mask.shape == (1, 1, 1, 2)


def test_hybrid_crop_targets_are_distributions_and_complementary():
    x_l, y_l = _batch((4, 4, 4), 0, classes=3)
    x_u, _ = _batch((4, 4, 4), 1)
    probs = torch.softmax(torch.randn(2, 3, 4, 4, 4, generator=_gen(2)), 1).requires_grad_(True)
    mask = box_mask((4, 4, 4), 0.5, _gen(3))
    mix1, mix2 = hybrid_crop(x_l, y_l, x_u, probs, mask)
    assert not mix1.label.requires_grad and not mix2.label.requires_grad
    assert torch.allclose(mix1.label.sum(1), torch.ones(2, 4, 4, 4))
    assert torch.allclose(mix1.image + mix2.image, x_l + x_u)
    oh = one_hot(y_l, 3, 3)
    assert torch.allclose(mix1.label + mix2.label, oh + probs.detach())
    # one-hot ground truth passed directly gives the same targets
    again, _ = hybrid_crop(x_l, oh, x_u, probs, mask)
    assert torch.equal(again.label, mix1.label)


# ----------------------------------------------------------------------------------------- errors
def test_copy_paste_errors():
    x, y = _batch((4, 4), 0)
    with pytest.raises(ValueError, match="same shape"):
        copy_paste(x, y, x[:1], y[:1], torch.ones(4, 4))
    with pytest.raises(ValueError, match="mask of shape"):
        copy_paste(x, y, x, y, torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"\(B, C, X, Y\)"):
        copy_paste(x[0], y, x[0], y, torch.ones(4, 4))
    with pytest.raises(ValueError, match="y_a"):
        copy_paste(x, y[:, :, :3], x, y[:, :, :3], torch.ones(4, 4))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        one_hot(torch.tensor([[[0, 3]]]), 3, 2)
