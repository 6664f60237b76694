"""CPS, DHC_LowMemory, DMPF and co-learning backpropagate network by network (``cross_supervised_parts``, ``backward_part``): one
network's graph alive at a time, the same loss terms, class weights and gradients as the joint step that holds every
graph; CPS-like networks whose output for a sample depends on the rest of the batch (BatchNorm) or on chance
(dropout) keep the joint step (DMPF runs no pass twice, so it needs no such condition)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import CPU_PLANS
from nnunet_ssl.utils.modules import repeatable_per_sample

BUDGET = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}


def test_repeatable_per_sample_by_module_kind():
    assert repeatable_per_sample(nn.Sequential(nn.Conv3d(1, 2, 3), nn.InstanceNorm3d(2), nn.Dropout(0.0)))
    assert not repeatable_per_sample(nn.Sequential(nn.Conv3d(1, 2, 3), nn.BatchNorm3d(2)))
    assert not repeatable_per_sample(nn.Conv3d(1, 2, 3), nn.Sequential(nn.Dropout3d(0.2)))


def _trainer(name, tiny_3d):
    from nnunet_ssl.runner import build_trainer

    t = build_trainer(tiny_3d["id"], "3d_fullres", 0, name, CPU_PLANS, "cpu", budget=BUDGET)
    t.initialize()
    for net in t.trainable_networks().values():
        net.train()
    t.global_step = t.total_iterations  # ramp-up done: the CPS term at full weight
    return t


def _batch(t):
    """A labeled batch whose targets follow nnU-Net's deep-supervision scales, and an unlabeled batch."""
    g = torch.Generator().manual_seed(0)
    patch = tuple(t.configuration_manager.patch_size)
    k = t.label_manager.num_segmentation_heads
    labels = torch.randint(0, k, (2, 1, *patch), generator=g).float()
    target = [F.interpolate(labels, size=[round(s * f) for s, f in zip(patch, scale)], mode="nearest")
              for scale in t._get_deep_supervision_scales()]
    data = torch.randn((2, t.num_input_channels, *patch), generator=g)
    unlabeled = torch.randn((2, t.num_input_channels, *patch), generator=g)
    return data, target, unlabeled


def _gradients(t):
    return {f"{name}.{p}": q.grad.clone() for name, net in t.trainable_networks().items()
            for p, q in net.named_parameters() if q.grad is not None}


@pytest.mark.e2e
@pytest.mark.parametrize("name, supervised, unsupervised", [
    ("nnUNetTrainerCPS", "loss_sup", ["loss_cps"]),
    ("nnUNetTrainerCPSHetero", "loss_sup", ["loss_cps"]),
    ("nnUNetTrainerDHC_LowMemory", "loss_sup", ["loss_cps"]),
    ("nnUNetTrainerDMPF", "loss_sup", ["loss_mix", "loss_u"]),
    ("nnUNetTrainerCoLearning", "loss_labeled", ["loss_cps", "loss_teacher", "loss_mix"])])
def test_one_graph_at_a_time_matches_the_joint_step(name, supervised, unsupervised, tiny_3d):
    t = _trainer(name, tiny_3d)
    data, target, unlabeled = _batch(t)
    params = [q for net in t.trainable_networks().values() for q in net.parameters()]
    # class-weight trackers advance and DMPF's mixes draw from the generator on every call
    trackers = copy.deepcopy(getattr(t, "trackers", {}))
    generator = t.generator.get_state()

    t.one_graph_per_network = False
    t.optimizer.zero_grad(set_to_none=True)
    joint = t.compute_losses(data, target, unlabeled)
    joint["loss"].backward()
    expected = _gradients(t)

    t.one_graph_per_network = True
    t.trackers = trackers
    t.generator.set_state(generator)
    t.optimizer.zero_grad(set_to_none=True)
    t._parts_backpropagated = False
    parts = t.compute_losses(data, target, unlabeled)
    assert t._parts_backpropagated and not parts["loss"].requires_grad  # already backpropagated, part by part
    got = _gradients(t)

    for term in ("loss", supervised, *unsupervised):
        assert parts[term].item() == pytest.approx(joint[term].item(), rel=1e-5), term
        assert term == supervised or parts[term].item() > 0, term  # the unsupervised terms reach the gradients
    for weights in ("w_A", "w_B"):  # DHC: each student's class weights, from its own outputs
        if weights in joint:
            torch.testing.assert_close(parts[weights], joint[weights])
    if "w_A" in joint:
        assert not torch.allclose(joint["w_A"], joint["w_B"])  # DifW and DisW: the two parts differ
    assert set(got) == set(expected)
    assert {k.split(".")[0] for k in got} == {"network", "network_b"} and len(got) > 0.9 * len(params)
    for key in expected:  # both networks, every parameter
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.e2e
def test_batch_norm_networks_take_the_joint_step(tiny_3d, monkeypatch):
    t = _trainer("nnUNetTrainerCPS", tiny_3d)
    called = []
    monkeypatch.setattr(t, "_losses_one_graph_at_a_time", lambda *a: called.append(a))
    t.extra_networks["network_b"].add_module("bn", nn.BatchNorm3d(1))
    terms = t.compute_losses(*_batch(t))
    assert not called and terms["loss"].requires_grad  # the joint step: one loss, backpropagated by train_step


def test_dhc_takes_the_joint_step_and_its_low_memory_variant_one_graph_at_a_time():
    from nnunet_ssl.trainers.dhc import nnUNetTrainerDHC, nnUNetTrainerDHC_LowMemory

    assert not nnUNetTrainerDHC.one_graph_per_network and nnUNetTrainerDHC_LowMemory.one_graph_per_network
    assert nnUNetTrainerDHC_LowMemory.activation_factor < nnUNetTrainerDHC.activation_factor


def test_train_step_refuses_a_loss_with_a_graph_after_backward_part(tiny_3d):
    """A trainer that backpropagated its parts must return their detached sum: backpropagating the
    returned loss again would double the gradients."""
    from nnunet_ssl.trainers.semisupervised import nnUNetTrainerSemiSupervised

    class Twice(nnUNetTrainerSemiSupervised):
        def compute_losses(self, data, target, unlabeled):
            loss = (self.network(data) ** 2).mean()
            self.backward_part(loss)
            return {"loss": loss}

    t = object.__new__(Twice)
    t.network, t.grad_scaler = nn.Conv3d(1, 1, 1), None
    t.autocast = lambda: torch.autocast("cpu", enabled=False)
    t.optimizer = torch.optim.SGD(t.network.parameters(), lr=0.1)
    t.dataloader_unlabeled, t.device = None, torch.device("cpu")
    with pytest.raises(RuntimeError, match="return the detached sum of the parts"):
        t.train_step({"data": torch.randn(1, 1, 2, 2, 2), "target": torch.zeros(1, 1, 2, 2, 2), "keys": []})


def _pair(seed=0):
    torch.manual_seed(seed)
    return nn.Conv3d(1, 3, 1), nn.Conv3d(1, 3, 1)


def _cross_part(index, output, partner_pseudo):
    from nnunet_ssl.losses.consistency import hard_pseudo_labels, pseudo_label_ce

    loss = pseudo_label_ce(output, partner_pseudo) + output.mean()
    return loss, loss.detach(), hard_pseudo_labels(output)


def _ddp_parts_worker(rank, port, x, results):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from nnunet_ssl.trainers.semisupervised import nnUNetTrainerSemiSupervised

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        net_a, net_b = _pair()
        a, b = DDP(net_a), DDP(net_b)
        t = object.__new__(nnUNetTrainerSemiSupervised)
        t.grad_scaler = None
        part = x[2 * rank:2 * rank + 2]
        t.cross_supervised_parts(a, b, part, part, _cross_part)
        results[rank] = [p.grad.clone() for p in (*net_a.parameters(), *net_b.parameters())]
    finally:
        dist.destroy_process_group()


def test_cross_supervised_parts_under_ddp_match_the_joint_gradient():
    """Two gloo ranks with DDP-wrapped networks: B's gradient-free pass, then one forward with gradient and one
    backward per network per step; DDP's averaged gradients equal the single-process joint step's."""
    import socket

    import torch.multiprocessing as mp

    from nnunet_ssl.losses.consistency import hard_pseudo_labels, pseudo_label_ce

    x = torch.randn(4, 1, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    net_a, net_b = _pair()
    out_a, out_b = net_a(x), net_b(x)
    joint = (pseudo_label_ce(out_a, hard_pseudo_labels(out_b)) + out_a.mean()
             + pseudo_label_ce(out_b, hard_pseudo_labels(out_a)) + out_b.mean())
    joint.backward()
    expected = [p.grad for p in (*net_a.parameters(), *net_b.parameters())]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_ddp_parts_worker, args=(port, x, results), nprocs=2, join=True)
    for rank in (0, 1):
        for got, want in zip(results[rank], expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _ddp_two_passes_worker(rank, port, x, mix, results):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        net, _ = _pair()
        ddp = DDP(net)
        part = slice(2 * rank, 2 * rank + 2)
        for inputs in (x[part], mix[part]):  # DMPF / co-learning: a student's two passes, each backpropagated at once
            (ddp(inputs) ** 2).mean().backward()
        results[rank] = [p.grad.clone() for p in net.parameters()]
    finally:
        dist.destroy_process_group()


def test_two_passes_of_one_ddp_network_per_step_match_the_joint_gradient():
    """DMPF and co-learning run a student twice per step (labeled + unlabeled, then its mix), backpropagating
    each pass before the next forward: under DDP the averaged gradients equal the single-process joint step's."""
    import socket

    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(2)
    x, mix = torch.randn(4, 1, 2, 2, 2, generator=g), torch.randn(4, 1, 2, 2, 2, generator=g)
    expected = []
    for rank in (0, 1):  # each rank's loss on its half, averaged over ranks as DDP does
        net, _ = _pair()
        part = slice(2 * rank, 2 * rank + 2)
        ((net(x[part]) ** 2).mean() + (net(mix[part]) ** 2).mean()).backward()
        expected.append([p.grad for p in net.parameters()])
    expected = [(a + b) / 2 for a, b in zip(*expected)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_ddp_two_passes_worker, args=(port, x, mix, results), nprocs=2, join=True)
    for rank in (0, 1):
        for got, want in zip(results[rank], expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
