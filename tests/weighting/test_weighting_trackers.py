"""Class-weight trackers: first iterations by hand, absent classes, checkpoint round trip, DDP."""
import io
import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_ssl.weighting.trackers import (
    CDifWTracker,
    CDisWTracker,
    ConfidenceTracker,
    DifWTracker,
    DisWTracker,
    KTWeightTracker,
    build_tracker,
)


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol, rtol=tol)


def logits_of(pred, num_classes):
    """Logits ``(B, C, *spatial)`` whose argmax is the integer map ``pred`` ``(B, *spatial)``."""
    pred = torch.as_tensor(pred)
    return 10.0 * torch.nn.functional.one_hot(pred, num_classes).movedim(-1, 1).float()


def target_of(labels):
    """nnU-Net-style target ``(B, 1, *spatial)`` float."""
    return torch.as_tensor(labels).float().unsqueeze(1)


# --- DisW ---------------------------------------------------------------------------------------


def test_disw_init_and_first_updates_by_hand():
    t = DisWTracker(3, class_histogram=[99, 9, 0], momentum=0.5)
    # init: counts+1 = [100, 10, 1] -> 3·[0, .5, 1]
    assert close(t.weights, [0.0, 1.5, 3.0])
    # labeled batch all background (4 voxels): counts+1 = [5, 1, 1]; r = [1, 5, 5] -> [0, 3, 3]; EMA .5 -> [0, 2.25, 3]
    bg = target_of([[[0, 0], [0, 0]]])
    assert close(t.update(target=bg), [0.0, 2.25, 3.0])
    # + unlabeled argmax all class 1: counts+1 = [5, 5, 1]; r = [1, 1, 5] -> [0, 0, 3]; EMA -> [0, 1.125, 3]
    w = t.update(target=bg, unlabeled_logits=logits_of([[[1, 1], [1, 1]]], 3))
    assert close(w, [0.0, 1.125, 3.0])
    assert w.dtype == torch.float32 and not w.requires_grad and torch.isfinite(w).all()


def test_disw_count_sources_floor_and_errors():
    t = DisWTracker(3, momentum=0.0, count_labeled=False)
    # only the unlabeled argmax counts: [0, 4, 0]+1 = [1, 5, 1]; r = [5, 1, 5] -> [3, 0, 3]
    w = t.update(target=target_of([[[0, 0], [0, 0]]]), unlabeled_logits=logits_of([[[1, 1], [1, 1]]], 3))
    assert close(w, [3.0, 0.0, 3.0])
    with pytest.raises(ValueError, match="nothing to count"):
        t.update(target=target_of([[[0, 0]]]))
    floored = DisWTracker(3, class_histogram=[99, 9, 0], floor=0.5, momentum=0.5)
    assert close(floored.weights, [0.5, 1.5, 3.0])
    assert floored.update(target=target_of([[[0, 0], [0, 0]]])).min() >= 0.5
    with pytest.raises(ValueError, match="count_labeled"):
        DisWTracker(3, count_labeled=False, count_unlabeled=False)
    with pytest.raises(ValueError, match="3 entries"):
        DisWTracker(3, class_histogram=[1, 2])


# --- DifW ---------------------------------------------------------------------------------------


def test_difw_first_iterations_and_absent_class():
    t = DifWTracker(3, tau=2)  # EMA momentum (τ-1)/τ = .5
    assert close(t.weights, [3.0, 3.0, 3.0])
    target = target_of([[[0, 1, 2, 2]]])  # (1, 1, 1, 4)
    # 1) pred [0,1,1,2]: Dice [1, 2/3, 2/3]; no previous Dice -> speeds 0, s = 1
    #    d̄ = .5·Dice = [.5, 1/3, 1/3]; w = 1 - d̄ = [.5, 2/3, 2/3]; 3·w/max = [2.25, 3, 3]
    assert close(t.update(logits_of([[[0, 1, 1, 2]]], 3), target), [2.25, 3.0, 3.0])
    # 2) pred [0,1,2,2]: Dice [1, 1, 1]; Δ = [0, 1/3, 1/3] -> class 0 un-learned += |ln 1| = 0,
    #    classes 1, 2 learned = .5·ln(1.5); d̄ = [.75, 2/3, 2/3]
    #    s = [1, s1, s1] with s1 = (1e-8/(.5 ln1.5 + 1e-8))^.2; w = [.25, s1/3, s1/3]; 3·w/.25 = [3, 4 s1, 4 s1]
    w = t.update(logits_of([[[0, 1, 2, 2]]], 3), target)
    s1 = (1e-8 / (0.5 * math.log(1.5) + 1e-8)) ** 0.2
    assert close(w, [3.0, 4 * s1, 4 * s1])
    before = {k: v.clone() for k, v in t.state_dict().items() if k != "num_updates"}
    # 3) class 2 absent from prediction and target: its state is kept, no NaN/inf
    w = t.update(logits_of([[[0, 1, 1, 1]]], 3), target_of([[[0, 1, 1, 1]]]))
    after = t.state_dict()
    for key in ("learned", "unlearned", "mean_dice", "last_dice"):
        assert after[key][2] == before[key][2], key
    assert torch.isfinite(w).all()


def test_difw_reference_form():
    t = DifWTracker(3, tau=2, form="reference")
    target = target_of([[[0, 1, 2, 2]]])
    t.update(logits_of([[[0, 1, 1, 2]]], 3), target)
    t.update(logits_of([[[0, 1, 2, 2]]], 3), target)
    # reference learned increment is Δ·ln(d/d0) = (1/3)·ln1.5, EMA .5
    assert close(t.state_dict()["learned"], [0.0, math.log(1.5) / 6, math.log(1.5) / 6])
    with pytest.raises(ValueError, match="form"):
        DifWTracker(3, form="nope")


# --- confidence, CDifW, CDisW -------------------------------------------------------------------

# (B=1, C=3, 4 voxels), columns sum to 1, so softmax(log p) = p
PROBS = torch.tensor([[[0.8, 0.6, 0.3, 0.5], [0.1, 0.2, 0.5, 0.3], [0.1, 0.2, 0.2, 0.2]]])


def test_confidence_tracker_by_hand():
    """i^β is averaged over an epoch's updates, then smoothed once per epoch (DMPF reference)."""
    t = ConfidenceTracker(3, momentum=0.5, beta=1.0, smooth=0.0)
    # target [0,0,1,1]: r = [.7, .4, (never seen) 0]; 1 - r = [.3, .6, 1] -> i = [.3, .6, 1] (classes 0, 1)
    # within the epoch the factor stays at its start value 1
    assert close(t.update(PROBS.log(), target_of([[0, 0, 1, 1]])), [1.0, 1.0, 1.0])
    # target all 0: r0 = (.8+.6+.3+.5)/4 = .55, others kept -> 1 - r = [.45, .6, 1], i0 = .45 (class 0 only)
    assert close(t.update(PROBS.log(), target_of([[0, 0, 0, 0]])), [1.0, 1.0, 1.0])
    # epoch end: mean i^1 over the updates a class was in: [(.3 + .45)/2, .6, none] = [.375, .6, -]
    #   EMA .5 from 1: [.6875, .8, 1 (kept)]
    t.end_epoch()
    assert close(t.weights, [0.6875, 0.8, 1.0])
    assert close(t.state_dict()["epoch_count"], [0.0, 0.0, 0.0])  # the next epoch starts afresh


def test_confidence_tracker_averages_i_to_the_beta():
    # C = 2, one voxel per class; momentum 0 so the factor is the epoch mean of i^β, β = .5
    t = ConfidenceTracker(2, momentum=0.0, beta=0.5, smooth=0.0)
    # batch 1: r = [.85, .4] -> 1 - r = [.15, .6] -> i = [.25, 1] -> i^.5 = [.5, 1]
    t.update(torch.tensor([[[0.85, 0.6], [0.15, 0.4]]]).log(), target_of([[0, 1]]))
    # batch 2: r = [.4, .85] -> i = [1, .25] -> i^.5 = [1, .5]
    t.update(torch.tensor([[[0.4, 0.15], [0.6, 0.85]]]).log(), target_of([[0, 1]]))
    t.end_epoch()
    # mean of i^.5 = [.75, .75] (not (mean i)^.5 = .625^.5 = .79)
    assert close(t.weights, [0.75, 0.75])


def test_confidence_defaults_follow_the_reference():
    t = ConfidenceTracker(3)
    assert t.momentum == 0.99 and t.beta == 0.2 and t.smooth == 1e-2
    assert CDifWTracker(3).confidence.smooth == 1e-2 and CDisWTracker(3).confidence.smooth == 1e-2


def test_cdifw_first_update_by_hand():
    t = CDifWTracker(3, tau=2, momentum=0.5, beta=0.2, smooth=0.0)
    w = t.update(PROBS.log(), target_of([[0, 0, 1, 1]]))
    # DifW: argmax [0,0,1,0] vs [0,0,1,1]: Dice c0 = 2·2/(3+2) = .8, c1 = 2·1/(1+2) = 2/3, c2 absent
    #   d̄ = [.4, 1/3, 0]; w = [.6, 2/3, 1] -> 3·w/1 = [1.8, 2, 3]
    # the confidence factor is 1 during the first epoch: CDifW = DifW
    assert close(w, [1.8, 2.0, 3.0])
    assert close(t.base.weights, [1.8, 2.0, 3.0])
    # epoch end: information (as above) = [.3, .6, -]; factor = .5 + .5·i^.2 on classes 0, 1
    t.end_epoch()
    factor = [0.5 + 0.5 * 0.3**0.2, 0.5 + 0.5 * 0.6**0.2, 1.0]
    assert close(t.weights, [1.8 * factor[0], 2.0 * factor[1], 3.0])


def test_cdisw_is_confidence_times_disw():
    t = CDisWTracker(3, class_histogram=[99, 9, 0], momentum=0.5, confidence_momentum=0.5, beta=1.0, smooth=0.0)
    assert close(t.weights, [0.0, 1.5, 3.0])  # the factor starts at 1
    # DisW: labeled counts [2, 2, 0] + unlabeled argmax [3, 1, 0] = [5, 3, 0] + 1 = [6, 4, 1];
    #   log r = [0, ln1.5, ln6] -> 3·[0, ln1.5/ln6, 1]; EMA .5 with [0, 1.5, 3]
    disw = 0.5 * torch.tensor([0.0, 1.5, 3.0]) + 0.5 * torch.tensor([0.0, 3 * math.log(1.5) / math.log(6), 3.0])
    w = t.update(PROBS.log(), target_of([[0, 0, 1, 1]]), unlabeled_logits=PROBS.log())
    assert close(w, disw)
    # epoch end: i = [.3, .6, -] (β = 1), factor = .5 + .5·i = [.65, .8, 1]
    t.end_epoch()
    assert close(t.weights, disw * torch.tensor([0.65, 0.8, 1.0]))


# --- KT -----------------------------------------------------------------------------------------


def test_kt_tracker_by_hand_and_absent_class():
    t = KTWeightTracker(3, momentum=0.5)
    # correct [2, 1, 1] + 1 = [3, 2, 2]; r = [1, 1.5, 1.5] -> [0, 3, 3]; EMA from [3, 3, 3] -> [1.5, 3, 3]
    w = t.update(logits_of([[0, 0, 0, 1, 2, 2]], 3), target_of([[0, 0, 1, 1, 2, 0]]))
    assert close(w, [1.5, 3.0, 3.0])
    # class 2 has no labeled voxel: left out and kept. correct [2, 1] + 1 = [3, 2] -> [0, 3]; EMA -> [.75, 3, 3]
    w = t.update(logits_of([[0, 0, 1, 1]], 3), target_of([[0, 0, 1, 0]]))
    assert close(w, [0.75, 3.0, 3.0])


# --- common behaviour ---------------------------------------------------------------------------

C = 4
KWARGS = {"disw": {"class_histogram": [1000, 100, 10, 1]}, "cdisw": {"class_histogram": [1000, 100, 10, 1]}}


def random_batch(g, b=2, shape=(6, 5)):
    logits = torch.randn(b, C, *shape, generator=g)
    target = torch.randint(0, C - 1, (b, 1, *shape), generator=g).float()  # class 3 never labeled
    return logits, target, torch.randn(b, C, *shape, generator=g)


@pytest.mark.parametrize("name", ["disw", "difw", "cdifw", "cdisw", "kt"])
def test_state_dict_round_trip_gives_identical_updates(name):
    g = torch.Generator().manual_seed(0)
    a = build_tracker(name, C, **KWARGS.get(name, {}))
    for _ in range(3):
        a.update(*random_batch(g))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = build_tracker(name, C, **KWARGS.get(name, {}))
    b.load_state_dict(torch.load(buf))
    assert torch.equal(a.weights, b.weights) and a.num_updates == b.num_updates == 3
    for _ in range(2):
        batch = random_batch(g)
        wa, wb = a.update(*batch), b.update(*batch)
        assert torch.equal(wa, wb)
        assert torch.isfinite(wa).all() and wa.shape == (C,)
    a.end_epoch(), b.end_epoch()  # the epoch's sums (some from before the save) were restored too
    assert torch.equal(a.weights, b.weights)


def test_confidence_state_mid_epoch_round_trips():
    """A checkpoint taken mid-epoch carries the epoch's partial sums, so the epoch ends identically."""
    g = torch.Generator().manual_seed(3)
    a = build_tracker("cdifw", C)
    a.update(*random_batch(g)[:2])
    a.end_epoch()
    a.update(*random_batch(g)[:2])  # mid-epoch
    state = a.state_dict()["confidence"]
    assert {"confidence", "factor", "epoch_sum", "epoch_count"} <= set(state)
    assert state["epoch_count"].sum() > 0
    b = build_tracker("cdifw", C)
    b.load_state_dict(a.state_dict())
    batch = random_batch(g)[:2]
    a.update(*batch), b.update(*batch)
    a.end_epoch(), b.end_epoch()
    assert torch.equal(a.weights, b.weights) and not torch.equal(a.weights, a.base.weights)


def test_deep_supervision_lists_use_full_resolution_and_3d():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g).float()
    a, b = CDifWTracker(3), CDifWTracker(3)
    wa = a.update([logits, logits[:, :, ::2, ::2, ::2]], [target, target[:, :, ::2, ::2, ::2]])
    assert torch.equal(wa, b.update(logits, target[:, 0]))


def test_ignore_index_and_input_errors():
    t = DifWTracker(3, ignore_index=3)
    # the ignored voxel (label 3) is predicted as class 2 but does not count as a false positive
    t.update(logits_of([[0, 1, 2]], 3), target_of([[0, 1, 3]]))
    assert t.state_dict()["last_dice"].tolist() == [1.0, 1.0, 0.0] and not t.state_dict()["has_prev"][2]
    with pytest.raises(ValueError, match=r"\(B, 3, \*spatial\)"):
        t.update(torch.zeros(1, 4, 3), target_of([[0, 1, 2]]))
    with pytest.raises(ValueError, match="needs logits"):
        DifWTracker(3).update(target=target_of([[0, 1, 2]]))
    with pytest.raises(ValueError, match="num_classes"):
        DifWTracker(1)
    with pytest.raises(ValueError, match="unknown"):
        build_tracker("focal", 3)
    with pytest.raises(ValueError, match="missing"):
        DifWTracker(3).load_state_dict({"num_updates": 0})


# --- DDP: two gloo ranks on CPU -----------------------------------------------------------------

DDP_TRACKERS = ["disw", "cdifw", "kt", "cdisw"]


def _run(trackers, batches, rank=None, world=1):
    out = {}
    for name in trackers:
        t = build_tracker(name, C, **KWARGS.get(name, {}))
        for logits, target, unl in batches:
            if rank is not None:  # this rank's share of the batch
                logits, target, unl = (x.chunk(world)[rank] for x in (logits, target, unl))
            t.update(logits, target, unl)
        t.end_epoch()
        out[name] = t.weights
    return out


def _ddp_worker(rank, world, port, batches, path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(_run(DDP_TRACKERS, batches, rank, world), f"{path}.{rank}")
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_match_single_process_on_concatenated_batch(tmp_path):
    g = torch.Generator().manual_seed(2)
    batches = [random_batch(g, b=4) for _ in range(2)]  # each rank gets 2 of the 4 images
    path = str(tmp_path / "w")
    mp.spawn(_ddp_worker, args=(2, _free_port(), batches, path), nprocs=2, join=True)
    single = _run(DDP_TRACKERS, batches)
    ranks = [torch.load(f"{path}.{r}") for r in range(2)]
    for name in DDP_TRACKERS:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        assert torch.allclose(ranks[0][name], single[name], atol=1e-6), name
    # a rank alone (no all-reduce) would have seen different statistics
    lone = _run(["cdifw"], batches, rank=0, world=2)
    assert not torch.allclose(lone["cdifw"], single["cdifw"], atol=1e-6)
