"""The base calls nnU-Net and extends it: ``configure_optimizers`` adds the extra networks to the optimizer
nnU-Net (or a variant such as ``nnUNetTrainerAdam``) builds, ``save_checkpoint``/``load_checkpoint`` keep
nnU-Net's checkpoint (every key it writes) and add the ``nnunet_ssl`` entry. In-process, on bare trainers
with 1x1x1-conv networks (no dataset)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from nnunetv2.training.logging.nnunet_logger import MetaLogger
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.optimizer.nnUNetTrainerAdam import nnUNetTrainerAdam

from nnunet_ssl.trainers.cps import nnUNetTrainerCPS, nnUNetTrainerCPS_Ensemble


class _AdamCPS(nnUNetTrainerCPS, nnUNetTrainerAdam):
    """CPS with nnU-Net's AdamW variant: the combination the base must allow."""


def _conv(seed):
    torch.manual_seed(seed)
    return nn.Conv3d(1, 2, 1)


def _bare(cls, seed=0):
    """A trainer object without nnU-Net's set-up: networks, optimizer and what the checkpoint code reads."""
    t = object.__new__(cls)
    t.network, t.extra_networks = _conv(seed), {"network_b": _conv(seed + 1)}
    t.teachers, t.trackers = {}, {}
    t.initial_lr, t.weight_decay, t.num_epochs = 1e-2, 3e-5, 10
    t.local_rank, t.is_ddp, t.disable_checkpointing, t.was_initialized = 0, False, False, True
    t.device = torch.device("cpu")
    t.grad_scaler, t.logger, t._best_ema, t.current_epoch = None, MetaLogger(None, False), None, 0
    t.my_init_kwargs, t.inference_allowed_mirroring_axes = {"fold": 0}, (0, 1, 2)
    t.global_step, t.generator = 0, torch.Generator().manual_seed(seed)
    t._checkpoint_restored = False
    t.print_to_log_file = lambda *a, **k: None
    t.optimizer, t.lr_scheduler = t.configure_optimizers()
    return t


def _step(t, seed=5):
    g = torch.Generator().manual_seed(seed)
    t.optimizer.zero_grad()
    for net in t.trainable_networks().values():
        for p in net.parameters():
            p.grad = torch.randn(p.shape, generator=g)
    t.optimizer.step()
    t.lr_scheduler.step()
    t.global_step += 1


def test_optimizer_of_two_networks_is_nnunets_sgd_over_both():
    t = _bare(nnUNetTrainerCPS)
    # the optimizer the base built before it called nnU-Net: one SGD over every trainable network
    nets = {n: copy.deepcopy(m) for n, m in t.trainable_networks().items()}
    params = [p for m in nets.values() for p in m.parameters()]
    before = torch.optim.SGD(params, t.initial_lr, weight_decay=t.weight_decay, momentum=0.99, nesterov=True)
    before_scheduler = PolyLRScheduler(before, t.initial_lr, t.num_epochs)
    assert type(t.optimizer) is torch.optim.SGD and isinstance(t.lr_scheduler, PolyLRScheduler)
    assert t.optimizer.state_dict()["param_groups"] == before.state_dict()["param_groups"]
    ours = [p for g in t.optimizer.param_groups for p in g["params"]]
    assert len(ours) == len(params) == 4
    assert [id(p) for p in ours] == [id(p) for n in t.trainable_networks().values() for p in n.parameters()]
    # the same optimisation: three steps with the same gradients give the same weights and poly LR
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        grads = [torch.randn(p.shape, generator=g) for p in params]
        for p, q, grad in zip(ours, params, grads):
            p.grad, q.grad = grad.clone(), grad.clone()
        t.optimizer.step(), before.step()
        t.lr_scheduler.step(), before_scheduler.step()
        assert all(torch.equal(p, q) for p, q in zip(ours, params))
        assert [g["lr"] for g in t.optimizer.param_groups] == [g["lr"] for g in before.param_groups]
    assert t.optimizer.param_groups[0]["lr"] < t.initial_lr


def test_an_optimizer_variant_of_nnunet_combines_with_a_method():
    t = _bare(_AdamCPS)
    assert type(t.optimizer) is torch.optim.AdamW  # nnUNetTrainerAdam's choice ...
    group = t.optimizer.param_groups[0]
    assert group["amsgrad"] and group["lr"] == t.initial_lr and group["weight_decay"] == t.weight_decay
    ours = {id(p) for g in t.optimizer.param_groups for p in g["params"]}  # ... over both networks
    assert ours == {id(p) for n in t.trainable_networks().values() for p in n.parameters()}
    t.lr_scheduler.step()
    t.lr_scheduler.step()
    assert all(g["lr"] < t.initial_lr for g in t.optimizer.param_groups)


def test_one_network_optimizer_is_nnunets_own():
    t = _bare(nnUNetTrainerCPS)
    t.extra_networks = {}
    optimizer, _ = t.configure_optimizers()
    reference, _ = nnUNetTrainer.configure_optimizers(t)
    assert optimizer.state_dict()["param_groups"] == reference.state_dict()["param_groups"]


@pytest.mark.parametrize("cls", [nnUNetTrainerCPS, nnUNetTrainerCPS_Ensemble])
def test_checkpoint_round_trip_keeps_nnunets_keys_and_adds_ours(cls, tmp_path, monkeypatch):
    original = nnUNetTrainer.save_checkpoint

    def save_with_a_future_key(self, filename):  # an nnU-Net version that writes one key more
        original(self, filename)
        ckpt = torch.load(filename, weights_only=False)
        torch.save({**ckpt, "future_nnunet_key": 42}, filename)

    monkeypatch.setattr(nnUNetTrainer, "save_checkpoint", save_with_a_future_key)
    t1 = _bare(cls, seed=0)
    _step(t1)
    t1.current_epoch = 4
    path = str(tmp_path / "checkpoint.pth")
    t1.save_checkpoint(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]  # no temporary file left
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["future_nnunet_key"] == 42 and ckpt["trainer_name"] == cls.__name__ and ckpt["current_epoch"] == 5
    inference = t1.inference_module().state_dict()  # network A, or the ensemble of A and B
    assert ckpt["network_weights"].keys() == inference.keys()
    assert all(torch.equal(v, inference[k]) for k, v in ckpt["network_weights"].items())
    assert ckpt["nnunet_ssl"]["global_step"] == 1

    t2 = _bare(cls, seed=7)  # other weights, fresh optimizer
    t2.load_checkpoint(path)
    for name, net in t1.trainable_networks().items():
        other = t2.trainable_networks()[name].state_dict()
        assert all(torch.equal(v, other[k]) for k, v in net.state_dict().items()), name
    assert t2.optimizer.state_dict()["param_groups"] == t1.optimizer.state_dict()["param_groups"]
    for k, s in t1.optimizer.state_dict()["state"].items():
        assert torch.equal(s["momentum_buffer"], t2.optimizer.state_dict()["state"][k]["momentum_buffer"])
    assert t2.current_epoch == 5 and t2.global_step == 1 and t2._checkpoint_restored
    assert torch.equal(t2.generator.get_state(), t1.generator.get_state())


def test_a_checkpoint_without_nnunet_ssl_state_is_refused_with_one_line(tmp_path):
    t = _bare(nnUNetTrainerCPS)
    path = str(tmp_path / "plain.pth")
    nnUNetTrainer.save_checkpoint(t, path)  # what nnUNetTrainer writes
    before = {k: v.clone() for k, v in t.network.state_dict().items()}
    with pytest.raises(SystemExit, match=r"^nnunet_ssl: error: .*no 'nnunet_ssl' entry.*-pretrained_weights"):
        t.load_checkpoint(path)
    assert all(torch.equal(v, t.network.state_dict()[k]) for k, v in before.items())  # nothing loaded
