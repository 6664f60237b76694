"""Weighted CE / weighted soft Dice / WeightedDiceCE: hand values, invariants, deep supervision."""
import math

import pytest
import torch
import torch.nn.functional as F
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from nnunet_ssl.losses.weighted import WeightedDiceCE, weighted_cross_entropy, weighted_soft_dice

LN2 = math.log(2.0)


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol, rtol=tol)


# two voxels, two classes (B=1, C=2, 2):
#   voxel a: logits [0, 0],     target 1 -> p = 1/2, CE = ln 2
#   voxel b: logits [0, ln 3],  target 0 -> p = 1/4, CE = ln 4 = 2 ln 2
LOGITS = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)]]])
TARGET = torch.tensor([[[1.0, 0.0]]])  # (B, 1, 2) like nnU-Net


def test_weighted_ce_hand_values():
    assert close(weighted_cross_entropy(LOGITS, TARGET), 1.5 * LN2)  # (ln2 + 2 ln2)/2
    # class weights [1, 3]: (3·ln2 + 1·2ln2)/(3 + 1) = 5 ln2 / 4
    assert close(weighted_cross_entropy(LOGITS, TARGET, class_weights=[1.0, 3.0]), 1.25 * LN2)
    # × voxel weights [.5, 1] (a from an unlabeled image): (1.5 ln2 + 2 ln2)/(1.5 + 1) = 1.4 ln2
    vw = torch.tensor([[0.5, 1.0]])
    assert close(weighted_cross_entropy(LOGITS, TARGET, [1.0, 3.0], vw), 1.4 * LN2)
    # voxel weights alone: (.5 ln2 + 2 ln2)/1.5 = 5/3 ln2
    assert close(weighted_cross_entropy(LOGITS, TARGET, voxel_weights=vw.unsqueeze(1)), 5 / 3 * LN2)


def test_weighted_ce_matches_torch_and_invariants():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, 3, generator=g)  # 3D
    target = torch.randint(0, 4, (2, 1, 5, 6, 3), generator=g).float()
    ref = F.cross_entropy(logits, target[:, 0].long())
    assert close(weighted_cross_entropy(logits, target, torch.ones(4)), ref)
    assert close(weighted_cross_entropy(logits, target, voxel_weights=torch.ones(2, 5, 6, 3)), ref)
    w = torch.tensor([0.1, 2.0, 0.5, 3.0])
    ref_w = F.cross_entropy(logits, target[:, 0].long(), weight=w)
    assert close(weighted_cross_entropy(logits, target, w), ref_w)
    assert close(weighted_cross_entropy(logits, target, 7 * w), ref_w)  # scale-free


def test_weighted_ce_all_zero_weights_is_zero_with_finite_grad():
    logits = LOGITS.clone().requires_grad_(True)
    loss = weighted_cross_entropy(logits, TARGET, class_weights=[0.0, 0.0])
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_class_weights_are_detached():
    w = torch.tensor([1.0, 3.0], requires_grad=True)
    loss = weighted_cross_entropy(LOGITS.clone().requires_grad_(True), TARGET, w) + weighted_soft_dice(
        LOGITS, TARGET, w
    )
    loss.backward()
    assert w.grad is None


# soft Dice on probabilities (softmax=False), B=1, C=2, 2 voxels, target [1, 0]:
#   p1 = [.8, .4] -> tp = .8, Σp = 1.2, Σy = 1 -> d1 = 1.6/2.2 = 8/11
#   p0 = [.2, .6] -> tp = .6, Σp = .8,  Σy = 1 -> d0 = 1.2/1.8 = 2/3
PROBS = torch.tensor([[[0.2, 0.6], [0.8, 0.4]]])


def test_weighted_soft_dice_hand_values():
    assert close(weighted_soft_dice(PROBS, TARGET, softmax=False, smooth=0), 3 / 11)  # 1 - 8/11
    # background included, weights [1, 3]: (1·(1/3) + 3·(3/11)) / 4 = 38/132
    got = weighted_soft_dice(PROBS, TARGET, [1.0, 3.0], include_background=True, softmax=False, smooth=0)
    assert close(got, 38 / 132)
    # voxel weights [1, .5]: class 1 tp = .8, Σvp = .8 + .2 = 1, Σvy = 1 -> d1 = .8 -> loss .2
    got = weighted_soft_dice(PROBS, TARGET, voxel_weights=torch.tensor([[1.0, 0.5]]), softmax=False, smooth=0)
    assert close(got, 0.2)


def test_voxel_weight_enters_the_dice_once():
    """A voxel weight v multiplies each voxel once in every sum: Σv·p·y, Σv·p, Σv·y (never v²)."""
    # the foreground voxel a (target 1) is down-weighted to v = .5; voxel b (background) keeps v = 1
    v = torch.tensor([[0.5, 1.0]])
    # perfect prediction: class 1 tp = .5·1, Σvp = .5, Σvy = .5 -> d1 = 1 -> loss 0
    #   (with v² in the intersection: tp = .25 -> d1 = .5/1 = .5 -> loss .5)
    perfect = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    assert weighted_soft_dice(perfect, TARGET, voxel_weights=v, softmax=False, smooth=0).item() == pytest.approx(0.0, abs=1e-6)
    # p1 = [.8, .4]: tp = .5·.8 = .4, Σvp = .5·.8 + 1·.4 = .8, Σvy = .5 -> d1 = .8/1.3 = 8/13 -> loss 5/13
    got = weighted_soft_dice(PROBS, TARGET, voxel_weights=v, softmax=False, smooth=0)
    assert close(got, 5 / 13)


# three classes, B=1, 2 voxels, target [1, 0]; probabilities per voxel (columns sum to 1):
#   voxel a: [.2, .7, .1] -> argmax 1;  voxel b: [.6, .3, .1] -> argmax 0
#   class 1: tp = .7, Σp = 1.0, Σy = 1 -> d1 = 1.4/2 = .7
#   class 2: no target voxel and never the argmax -> absent from the batch
PROBS3 = torch.tensor([[[0.2, 0.6], [0.7, 0.3], [0.1, 0.1]]])


def test_class_absent_from_target_and_prediction_is_left_out():
    # weights [1, 1, 5]: class 2 weighs most but is absent -> loss = 1·(1 − .7)/1 = .3
    #   (kept in the denominator: (.3 + 5·(1 − 0))/6 = .883)
    got = weighted_soft_dice(PROBS3, TARGET, [1.0, 1.0, 5.0], softmax=False, smooth=0)
    assert close(got, 0.3)
    # any weight of the absent class gives the same loss
    assert close(weighted_soft_dice(PROBS3, TARGET, [1.0, 1.0, 100.0], softmax=False, smooth=0), 0.3)
    # with nnU-Net's smoothing 1e-5: d2 = 1e-5/(.2 + 1e-5) ≈ 0 would add ≈ 5 to the numerator; still .3
    assert close(weighted_soft_dice(PROBS3, TARGET, [1.0, 1.0, 5.0], softmax=False), 0.3, tol=1e-4)


def test_class_predicted_but_not_labeled_stays_in():
    # voxel b now predicts class 2: [.1, .3, .6] -> a false positive of class 2, which the loss must penalise
    #   class 1: tp = .7, Σp = 1.0, Σy = 1 -> d1 = .7; class 2: tp = 0 -> d2 = 0
    #   weights [1, 1, 5]: (1·.3 + 5·1)/(1 + 5) = 5.3/6
    probs = torch.tensor([[[0.2, 0.1], [0.7, 0.3], [0.1, 0.6]]])
    assert close(weighted_soft_dice(probs, TARGET, [1.0, 1.0, 5.0], softmax=False, smooth=0), 5.3 / 6)
    # a class present only where the voxel weight is 0 (e.g. CutOut's erased box) counts as absent:
    #   v = [1, 0] drops voxel b -> class 2 absent; class 1: tp = .7, Σvp = .7, Σvy = 1 -> d1 = 1.4/1.7
    v = torch.tensor([[1.0, 0.0]])
    got = weighted_soft_dice(probs, TARGET, [1.0, 1.0, 5.0], v, softmax=False, smooth=0)
    assert close(got, 1 - 1.4 / 1.7)


def test_absent_classes_per_sample_without_batch_dice():
    # sample 0 = PROBS3 / TARGET (class 2 absent -> .3); sample 1: target [2, 0], probs a [.1, .1, .8], b [.9, 0, .1]
    #   sample 1 argmax [2, 0]: class 1 absent; class 2: tp = .8, Σp = .9, Σy = 1 -> d2 = 1.6/1.9
    #   loss_1 = 5·(1 − 1.6/1.9)/5 = .3/1.9; batch_dice=False averages the two samples
    probs = torch.cat([PROBS3, torch.tensor([[[0.1, 0.9], [0.1, 0.0], [0.8, 0.1]]])])
    target = torch.tensor([[[1.0, 0.0]], [[2.0, 0.0]]])
    got = weighted_soft_dice(probs, target, [1.0, 1.0, 5.0], softmax=False, smooth=0, batch_dice=False)
    assert close(got, (0.3 + 0.3 / 1.9) / 2)


def test_weighted_soft_dice_invariants():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 3, (2, 1, 8, 8), generator=g).float()
    perfect = 50.0 * F.one_hot(target[:, 0].long(), 3).movedim(-1, 1).float()
    assert weighted_soft_dice(perfect, target, [0.0, 1.0, 5.0]) < 1e-5
    logits = torch.randn(2, 3, 8, 8, generator=g)
    plain = weighted_soft_dice(logits, target)
    assert close(weighted_soft_dice(logits, target, voxel_weights=torch.ones(2, 8, 8)), plain)
    assert close(weighted_soft_dice(logits, target, torch.ones(3)), plain)
    # per-sample Dice is the mean of the single-sample losses
    per = weighted_soft_dice(logits, target, batch_dice=False)
    assert close(per, (weighted_soft_dice(logits[:1], target[:1]) + weighted_soft_dice(logits[1:], target[1:])) / 2)
    # all foreground weights 0: nothing to weigh -> 0
    assert weighted_soft_dice(logits, target, [1.0, 0.0, 0.0]).item() == 0.0


def test_ignore_index_leaves_ignored_voxels_out():
    target = torch.tensor([[[1.0, 0.0, 9.0]]])  # 9 = ignore label
    a = torch.tensor([[[0.0, 0.0, 5.0], [0.0, math.log(3.0), -5.0]]])
    b = a.clone()
    b[..., 2] = torch.tensor([-3.0, 7.0])  # only the ignored voxel differs
    for fn in (weighted_cross_entropy, weighted_soft_dice):
        assert close(fn(a, target, ignore_index=9), fn(b, target, ignore_index=9))
    assert close(weighted_cross_entropy(a, target, ignore_index=9), 1.5 * LN2)


def test_input_errors():
    with pytest.raises(ValueError, match="2 entries"):
        weighted_cross_entropy(LOGITS, TARGET, class_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="voxel_weights"):
        weighted_soft_dice(LOGITS, TARGET, voxel_weights=torch.ones(1, 3))
    with pytest.raises(ValueError, match="outside"):
        weighted_cross_entropy(LOGITS, torch.tensor([[[1.0, 2.0]]]))


def test_weighted_dice_ce_module():
    loss = WeightedDiceCE(ce_weight=0.5)
    expected = weighted_soft_dice(LOGITS, TARGET) + 0.5 * weighted_cross_entropy(LOGITS, TARGET)
    assert close(loss(LOGITS, TARGET), expected)
    w = torch.tensor([1.0, 3.0])
    loss.set_class_weights(w)
    w[:] = 0  # the module keeps its own copy
    assert close(loss(LOGITS, TARGET), weighted_soft_dice(LOGITS, TARGET, [1.0, 3.0]) + 0.5 * 1.25 * LN2)
    # per-call weights override the stored ones
    assert close(loss(LOGITS, TARGET, class_weights=torch.ones(2)), expected)


def test_weighted_dice_ce_in_nnunet_deep_supervision_wrapper():
    g = torch.Generator().manual_seed(2)
    logits = [torch.randn(2, 3, 8, 8, generator=g, requires_grad=True), torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)]
    full = torch.randint(0, 3, (2, 1, 8, 8), generator=g).float()
    targets = [full, full[:, :, ::2, ::2]]  # nnU-Net: (B, 1, *spatial) float per scale
    base = WeightedDiceCE(class_weights=[0.0, 1.0, 2.0])
    ds = DeepSupervisionWrapper(base, [1.0, 0.5])
    total = ds(logits, targets)
    assert close(total, base(logits[0], targets[0]) + 0.5 * base(logits[1], targets[1]))
    total.backward()
    assert all(torch.isfinite(x.grad).all() for x in logits)
    # BCP region weights travel as a third list, one map per scale
    vw = torch.ones(2, 1, 8, 8)
    vw[:, :, :4] = 0.5
    with_vw = ds(logits, targets, [vw, vw[:, :, ::2, ::2]])
    assert close(with_vw, base(logits[0], targets[0], vw) + 0.5 * base(logits[1], targets[1], vw[:, :, ::2, ::2]))


def _ddp_dice_worker(rank, port, results):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        logits = torch.randn(4, 3, 5, 5)
        target = torch.randint(0, 3, (4, 1, 5, 5))
        part = slice(2 * rank, 2 * rank + 2)
        x = logits[part].clone().requires_grad_(True)
        loss = weighted_soft_dice(x, target[part], batch_dice=True)
        loss.backward()
        results[rank] = (loss.item(), x.grad.clone())
    finally:
        dist.destroy_process_group()


def test_batch_dice_is_pooled_over_ddp_ranks():
    """Two gloo ranks with half a batch each get the single-process batch Dice of the whole batch."""
    import socket

    import torch.multiprocessing as mp

    torch.manual_seed(0)
    logits = torch.randn(4, 3, 5, 5, requires_grad=True)
    target = torch.randint(0, 3, (4, 1, 5, 5))
    full = weighted_soft_dice(logits, target, batch_dice=True)
    full.backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_ddp_dice_worker, args=(port, results), nprocs=2, join=True)
    assert results[0][0] == pytest.approx(full.item(), rel=1e-5)
    assert results[1][0] == pytest.approx(full.item(), rel=1e-5)
    # each rank's gradient is its part of the full gradient (AllGatherGrad scales by world size)
    grad = torch.cat([results[0][1], results[1][1]])
    torch.testing.assert_close(grad / grad.abs().sum(), logits.grad / logits.grad.abs().sum(), rtol=1e-4, atol=1e-6)
