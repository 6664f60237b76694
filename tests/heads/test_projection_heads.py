import math

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from torch import nn

from nnunet_ssl.heads.projection import (
    ClassificationHead,
    EncoderTaps,
    MultiScaleProjectionHeads,
    encoder_conv_op,
    encoder_stage_channels,
    global_average_pool,
)
from nnunet_ssl.losses.contrastive import multiscale_supcon_loss, positive_pair_mask


def tiny_unet(dim: int, cls=PlainConvUNet) -> nn.Module:
    conv = nn.Conv2d if dim == 2 else nn.Conv3d
    norm = nn.InstanceNorm2d if dim == 2 else nn.InstanceNorm3d
    n_per_stage = {"n_conv_per_stage": 1} if cls is PlainConvUNet else {"n_blocks_per_stage": 1}
    torch.manual_seed(0)
    return cls(input_channels=3 if dim == 2 else 1, n_stages=3, features_per_stage=(4, 8, 16), conv_op=conv,
               kernel_sizes=3, strides=(1, 2, 2), num_classes=4, n_conv_per_stage_decoder=1, conv_bias=True,
               norm_op=norm, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU,
               nonlin_kwargs={"inplace": True}, deep_supervision=True, **n_per_stage)


def test_global_average_pool():
    x = torch.arange(8.0).reshape(1, 2, 2, 2)  # channel 0: 0,1,2,3 -> 1.5; channel 1: 4..7 -> 5.5
    assert global_average_pool(x).tolist() == [[1.5, 5.5]]


@pytest.mark.parametrize("dim, shape", [(2, (2, 3, 16, 16)), (3, (2, 1, 8, 16, 16))])
def test_shapes_2d_3d(dim, shape):
    net = tiny_unet(dim)
    assert encoder_stage_channels(net) == [4, 8, 16]
    assert encoder_conv_op(net) is (nn.Conv2d if dim == 2 else nn.Conv3d)
    msph = MultiScaleProjectionHeads.for_network(net, proj_dim=5, hidden=7)
    norm = nn.BatchNorm2d if dim == 2 else nn.BatchNorm3d  # the seed's MSPH; see test_pooled_features_differ...
    assert all(isinstance(h.norm, norm) for h in msph.heads)
    cls = ClassificationHead(16, 3)
    with EncoderTaps(net) as taps:
        out = net(torch.randn(*shape))
        feats = taps.pop()
    spatial = shape[2:]
    assert out[0].shape == (2, 4, *spatial)
    assert [tuple(f.shape) for f in feats] == [
        (2, 4, *spatial), (2, 8, *(s // 2 for s in spatial)), (2, 16, *(s // 4 for s in spatial))]
    z = msph(feats)
    assert [tuple(e.shape) for e in z] == [(2, 5)] * 3
    for e in z:
        assert torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
    assert cls(feats[-1]).shape == (2, 3)


def test_residual_encoder_unet_stages():
    net = tiny_unet(2, ResidualEncoderUNet)
    with EncoderTaps(net) as taps:
        net(torch.randn(1, 3, 16, 16))
        assert [f.shape[1] for f in taps.features] == encoder_stage_channels(net) == [4, 8, 16]


def test_gradient_reaches_encoder_and_network_stays_plain():
    net = tiny_unet(2)
    keys_before = list(net.state_dict())
    taps = EncoderTaps(net)
    msph = MultiScaleProjectionHeads.for_network(net, proj_dim=8, hidden=8)
    cls = ClassificationHead(16, 3)
    net(torch.randn(4, 3, 16, 16))
    feats = taps.pop()
    targets = torch.tensor([[1.0, 0, 1], [1, 0, 1], [0, 1, 0], [0, 1, 0]])
    loss = multiscale_supcon_loss(msph(feats), positive_pair_mask(targets)) + \
        nn.functional.binary_cross_entropy_with_logits(cls(feats[-1]), targets)
    loss.backward()
    first_conv = net.encoder.stages[0][0].convs[0].conv.weight
    deepest_conv = net.encoder.stages[2][0].convs[0].conv.weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    assert deepest_conv.grad is not None and deepest_conv.grad.abs().sum() > 0
    # the heads are not part of the network: its checkpoint is a plain nnU-Net network
    assert list(net.state_dict()) == keys_before
    taps.remove()
    net(torch.randn(1, 3, 16, 16))
    with pytest.raises(RuntimeError, match=r"no features captured .*needs its EncoderTaps before its first forward"):
        taps.features


def test_taps_through_compile_wrapper():
    net = tiny_unet(2)
    compiled = torch.compile(net, backend="eager")
    taps = EncoderTaps(compiled)  # attached by name to the unwrapped network, before the first forward
    compiled(torch.randn(2, 3, 16, 16))
    feats = taps.pop()
    assert [f.shape[1] for f in feats] == [4, 8, 16]
    sum(f.sum() for f in feats).backward()
    assert net.encoder.stages[0][0].convs[0].conv.weight.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="no features captured"):
        taps.features  # popped


def test_taps_through_ddp_wrapper(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        net = tiny_unet(2)
        ddp = nn.parallel.DistributedDataParallel(net)
        taps = EncoderTaps(ddp)
        assert encoder_stage_channels(ddp) == [4, 8, 16]
        ddp(torch.randn(2, 3, 16, 16))
        assert [f.shape[1] for f in taps.pop()] == [4, 8, 16]
    finally:
        dist.destroy_process_group()


def test_errors():
    with pytest.raises(ValueError, match="has no submodule 'encoder.stages'"):
        EncoderTaps(nn.Sequential(nn.Conv2d(1, 1, 3)))
    msph = MultiScaleProjectionHeads([4, 8], nn.Conv2d)
    with pytest.raises(ValueError, match="got 1 feature maps for 2 projection heads"):
        msph([torch.randn(1, 4, 8, 8)])


def _spread(pooled: torch.Tensor) -> float:
    """How much pooled features ``(B, C)`` differ between images: std over the batch, mean over channels."""
    return pooled.std(0).mean().item()


def test_pooled_features_differ_between_images():
    """MSPH pools right after its norm. InstanceNorm there gives every image the same channel means and
    variances, so the pooled features hardly differ between images; the default (BatchNorm, as the seed)
    keeps the differences."""
    # exact: features that differ only in contrast (image 1 = 3 x image 0) pool to the same vector under
    # InstanceNorm (conv without bias is linear, InstanceNorm removes the scale), not under the default
    f = torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    f = torch.cat([f, 3 * f])
    torch.manual_seed(0)
    default = MultiScaleProjectionHeads([8], nn.Conv2d, proj_dim=8, hidden=16).heads[0]
    torch.manual_seed(0)
    instance = MultiScaleProjectionHeads([8], nn.Conv2d, proj_dim=8, hidden=16, norm_op=nn.InstanceNorm2d).heads[0]
    assert _spread(instance.pooled(f)) < 1e-4
    assert _spread(default.pooled(f)) > 0.1

    # encoder features of four different images (noise; a large, a small, two discs) at every stage
    net = tiny_unet(2)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    disc = lambda cy, cx, r: (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float()
    x = torch.stack([torch.zeros(32, 32), disc(16, 16, 10), disc(8, 24, 3), disc(16, 16, 10) + disc(26, 6, 4)])
    x = x[:, None].repeat(1, 3, 1, 1) + 0.2 * torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with EncoderTaps(net) as taps:
        net(x)
        feats = taps.pop()
    torch.manual_seed(0)
    default = MultiScaleProjectionHeads.for_network(net, proj_dim=8, hidden=16)
    torch.manual_seed(0)
    instance = MultiScaleProjectionHeads.for_network(net, proj_dim=8, hidden=16, norm_op=nn.InstanceNorm2d)
    with torch.no_grad():
        for d, i, f in zip(default.heads, instance.heads, feats):
            assert _spread(d.pooled(f)) > 2 * _spread(i.pooled(f))  # measured 2.4x, 2.4x, 3.1x


def _category_batch(g: torch.Generator, size: int = 32):
    """8 RGB images, 2 per each of 4 random category sets; class k adds a bright disc to channel k."""
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    sets = torch.randperm(8, generator=g)[:4].repeat_interleave(2)
    vectors = torch.tensor([[(s >> k) & 1 for k in range(3)] for s in sets.tolist()], dtype=torch.float32)
    x = 0.3 * torch.randn(len(vectors), 3, size, size, generator=g)
    for i, v in enumerate(vectors):
        for k in v.nonzero().flatten().tolist():
            cy, cx = (torch.rand(2, generator=g) * (size - 8) + 4).tolist()
            r = 3 + 4 * torch.rand(1, generator=g).item()
            x[i, k] += 1.5 * (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).float()
    return x, vectors


def test_supcon_on_msph_learns_well_below_chance():
    """Encoder + MSPH + multi-scale SupCon, trained with nnU-Net's SGD (lr 0.01, momentum 0.99): on images
    whose category set is visible, the loss must fall well below chance, 3 scales · ln(8 − 1) = 5.84 for
    batches of 8 (what embeddings that cannot tell the images apart score). Measured: 5.82 → 3.49."""
    net = tiny_unet(2)
    torch.manual_seed(0)
    heads = MultiScaleProjectionHeads.for_network(net, proj_dim=16, hidden=32)
    params = list(net.parameters()) + list(heads.parameters())
    opt = torch.optim.SGD(params, 0.01, momentum=0.99, nesterov=True, weight_decay=3e-5)
    g, losses = torch.Generator().manual_seed(0), []
    with EncoderTaps(net) as taps:
        for _ in range(60):
            x, vectors = _category_batch(g)
            net(x)
            loss = multiscale_supcon_loss(heads(taps.pop()), positive_pair_mask(vectors), temperature=0.1)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 12)
            opt.step()
            losses.append(loss.item())
    chance = 3 * math.log(7)
    assert sum(losses[:5]) / 5 == pytest.approx(chance, abs=0.3)
    assert sum(losses[-10:]) / 10 < chance - 1.5
