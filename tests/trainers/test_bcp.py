"""BCP trainer: phase boundary, the two mixes (hand-computed), batch-size errors, and a resume that
crosses the pre-train / self-train boundary."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from nnunet_ssl.trainers.bcp import nnUNetTrainerBCP, pretrain_epochs, pretrain_mix, self_training_mix


def _img(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# two samples, one channel, 2x2 patches; M keeps the first source on the diagonal
X = torch.stack([_img([1, 2], [3, 4]), _img([5, 6], [7, 8])]).unsqueeze(1)          # (2, 1, 2, 2)
Y = torch.tensor([[[0, 1], [1, 0]], [[2, 2], [0, 0]]]).unsqueeze(1)                 # (2, 1, 2, 2)
M = _img([1, 0], [0, 1])


def test_pretrain_epochs():
    assert pretrain_epochs(1000, 0.1) == 100
    assert pretrain_epochs(30, 0.1) == 3  # 0.1 * 30 = 3.0000000000000004 in floating point
    assert pretrain_epochs(1, 0.1) == 1 and pretrain_epochs(2, 0.1) == 1  # any fraction > 0: >= 1 epoch
    assert pretrain_epochs(10, 0.0) == 0 and pretrain_epochs(3, 1.0) == 3
    assert pretrain_epochs(10, 0.25) == 3
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="pretrain_fraction"):
            pretrain_epochs(10, bad)


def test_pretrain_mix_pairs_neighbours_and_mixes_labels_alike():
    m = pretrain_mix(X, Y, M)
    # sample 0: x0 on the diagonal, x1 elsewhere; sample 1: x1 on the diagonal, x0 elsewhere
    assert torch.equal(m.image[:, 0], torch.stack([_img([1, 6], [7, 4]), _img([5, 2], [3, 8])]))
    assert torch.equal(m.label[:, 0], torch.tensor([[[0, 2], [0, 0]], [[2, 1], [1, 0]]]))
    # the mixed label is the same mix of the labels
    assert torch.equal(m.label, torch.where(M.bool(), Y, Y.roll(1, 0)))
    assert torch.equal(m.weight, torch.ones_like(m.weight))
    # every labeled voxel is used exactly once per step
    assert torch.equal(m.image.sum(0), X.sum(0))


def test_self_training_mix_hand_computed():
    x_u = X + 10                       # unlabeled images 11..18
    y_u = torch.tensor([[[3, 3], [3, 3]], [[1, 0], [0, 1]]]).unsqueeze(1)
    mixed_in, mixed_out = self_training_mix(X, Y, x_u, y_u, M, u_weight=0.5)
    # X_in_i = x_l[i]·M + x_u[i]·(1-M);  X_out_i = x_u[i-1]·M + x_l[i-1]·(1-M)
    assert torch.equal(mixed_in.image[:, 0], torch.stack([_img([1, 12], [13, 4]), _img([5, 16], [17, 8])]))
    assert torch.equal(mixed_out.image[:, 0], torch.stack([_img([15, 6], [7, 18]), _img([11, 2], [3, 14])]))
    assert torch.equal(mixed_in.label[:, 0], torch.tensor([[[0, 3], [3, 0]], [[2, 0], [0, 0]]]))
    assert torch.equal(mixed_out.label[:, 0], torch.tensor([[[1, 2], [0, 1]], [[3, 1], [1, 3]]]))
    # mixed labels are the same mixes of the labels
    assert torch.equal(mixed_in.label, torch.where(M.bool(), Y, y_u))
    assert torch.equal(mixed_out.label, torch.where(M.bool(), y_u.roll(1, 0), Y.roll(1, 0)))
    # region weights: 1 on labeled voxels, 0.5 on unlabeled ones
    assert torch.equal(mixed_in.weight[:, 0], _img([1, 0.5], [0.5, 1]).expand(2, 2, 2))
    assert torch.equal(mixed_out.weight[:, 0], _img([0.5, 1], [1, 0.5]).expand(2, 2, 2))
    # ... so each mixed image weighs 2·1 + 2·0.5 = 3, and every position 1 + 0.5 over the pair
    assert mixed_in.weight.sum().item() == mixed_out.weight.sum().item() == 2 * 3.0
    assert torch.equal(mixed_in.weight + mixed_out.weight, torch.full_like(mixed_in.weight, 1.5))
    # together the two mixes hold every labeled and unlabeled voxel exactly once
    assert torch.equal(mixed_in.image + mixed_out.image.roll(-1, 0), X + x_u)


def test_self_training_mix_3d_weights():
    g = torch.Generator().manual_seed(0)
    x_l, x_u = torch.randn(3, 2, 4, 4, 4, generator=g), torch.randn(3, 2, 4, 4, 4, generator=g)
    y_l, y_u = torch.randint(0, 3, (3, 1, 4, 4, 4), generator=g), torch.randint(0, 3, (3, 1, 4, 4, 4), generator=g)
    mask = torch.ones(4, 4, 4)
    mask[1:3, 0:2, 2:4] = 0  # 8 voxels from the second source
    mixed_in, mixed_out = self_training_mix(x_l, y_l, x_u, y_u, mask, u_weight=0.25)
    assert mixed_in.weight.sum().item() == 3 * (56 * 1 + 8 * 0.25)
    assert mixed_out.weight.sum().item() == 3 * (56 * 0.25 + 8 * 1)
    assert torch.equal(mixed_in.label, torch.where(mask.bool(), y_l, y_u))


def test_too_small_batches_raise():
    fake = SimpleNamespace()
    one = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="batch size >= 2, got 1"):
        nnUNetTrainerBCP.pretrain_losses(fake, one, one.long())
    with pytest.raises(ValueError, match="got 2 labeled and 1 unlabeled"):
        nnUNetTrainerBCP.self_training_losses(fake, torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4).long(), one)


class _Counting:
    """Wraps the unlabeled augmenter and counts the batches drawn from it."""

    def __init__(self, inner):
        self.inner, self.drawn = inner, 0

    def __next__(self):
        self.drawn += 1
        return next(self.inner)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _count_unlabeled_batches(trainer):
    original = trainer.get_unlabeled_dataloader
    trainer.counter = None

    def wrapped(cases):
        trainer.counter = _Counting(original(cases))
        return trainer.counter

    trainer.get_unlabeled_dataloader = wrapped


@pytest.mark.e2e
def test_resume_across_the_phase_boundary(tiny_3d, monkeypatch):
    """2d: epoch 0 pre-trains (ceil(0.25·1) = ceil(0.25·2) = 1 epoch), the run stops; --c continues
    with epoch 1, which must start self-training with the teacher set to the student."""
    from nnunetv2.run.run_training import maybe_load_checkpoint

    from conftest import CPU_PLANS
    from nnunet_ssl.runner import build_trainer
    from nnunet_ssl.utils.modules import unwrap

    monkeypatch.delenv("nnUNet_ssl_overrides", raising=False)
    budget = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}
    t1 = build_trainer(tiny_3d["id"], "2d", 0, "nnUNetTrainerBCP", CPU_PLANS, "cpu", budget=budget)
    maybe_load_checkpoint(t1, False, False, None)
    _count_unlabeled_batches(t1)
    t1.run_training()
    assert t1.num_pretrain_epochs == 1 and not t1.self_training and t1.self_training_start is None
    assert t1.counter.drawn == 0  # pre-training never reads the unlabeled stream
    ckpt = torch.load(os.path.join(t1.output_folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["nnunet_ssl"]["extra"] == {"self_training": False, "self_training_start": None}

    t2 = build_trainer(tiny_3d["id"], "2d", 0, "nnUNetTrainerBCP", CPU_PLANS, "cpu", continue_training=True,
                       budget={**budget, "num_epochs": 2})
    maybe_load_checkpoint(t2, True, False, None)
    assert t2.current_epoch == 1 and t2.global_step == 2 and not t2.self_training

    copies = []
    teacher = t2.teachers["teacher"]
    original_copy = teacher.copy_from

    def spy(student):
        original_copy(student)
        s, t = unwrap(student).state_dict(), teacher.module.state_dict()
        copies.append((t2.current_epoch, t2.global_step, all(torch.equal(s[k], t[k]) for k in t)))

    monkeypatch.setattr(teacher, "copy_from", spy)
    _count_unlabeled_batches(t2)
    t2.run_training()
    assert copies == [(1, 2, True)]  # once, at the boundary, an exact copy of the student
    assert t2.self_training and t2.self_training_start == (1, 2) and t2.global_step == 4
    assert t2.counter.drawn == 2
    log = t2._ssl_log()
    assert log["ssl/self_training"] == [0.0, 1.0]
    assert all(v == v for v in log["train_losses"])  # no NaN in either phase
    ckpt = torch.load(os.path.join(t2.output_folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["nnunet_ssl"]["extra"] == {"self_training": True, "self_training_start": [1, 2]}
    # the student is the inference network (as the reference code); the teacher follows it by EMA
    student = unwrap(t2.network).state_dict()
    assert all(torch.equal(ckpt["network_weights"][k], v) for k, v in student.items())
    assert ckpt["nnunet_ssl"]["inference_model"] == "network"


def test_defaults_follow_the_reference():
    from nnunet_ssl.trainers.bcp import nnUNetTrainerBCP_TeacherInference

    assert nnUNetTrainerBCP.inference_model == "network"  # the reference evaluates the student
    assert nnUNetTrainerBCP_TeacherInference.inference_model == "teacher"
    assert nnUNetTrainerBCP.pretrain_fraction >= 0.25  # reference: 10k of 40k iterations
    assert "consistency_weight" not in nnUNetTrainerBCP.hyperparameter_names()


def test_u_weight_ramps_up_from_the_start_of_self_training():
    fake = SimpleNamespace(self_training_start=(3, 100), total_iterations=600, rampup_fraction=0.4, u_weight=0.5)
    at = lambda step: nnUNetTrainerBCP.current_u_weight(SimpleNamespace(**vars(fake), global_step=step))  # noqa: E731
    # ramp length 0.4 * (600 - 100) = 200 steps; w = 0.5 * exp(-5 (1 - t/200)^2)
    assert at(100) == pytest.approx(0.5 * 2.718281828 ** -5)
    assert at(200) == pytest.approx(0.5 * 2.718281828 ** -1.25)
    assert at(300) == at(599) == 0.5


@pytest.mark.e2e
def test_both_phases_train_every_head_nnunet_trains(tiny_3d, monkeypatch):
    """Deep supervision is kept: pre-train and self-train losses reach the same parameters as nnU-Net's
    own supervised loss (before, the mixed losses used the full-resolution head only)."""
    from conftest import CPU_PLANS
    from nnunet_ssl.losses.deep_supervision import downsample_like
    from nnunet_ssl.runner import build_trainer

    monkeypatch.delenv("nnUNet_ssl_overrides", raising=False)
    t = build_trainer(tiny_3d["id"], "3d_fullres", 0, "nnUNetTrainerBCP", CPU_PLANS, "cpu",
                      budget={"num_epochs": 4, "num_iterations_per_epoch": 2})
    t.initialize()
    torch.manual_seed(0)
    shape = (2, 1, *t.configuration_manager.patch_size)
    x, x_u = torch.randn(shape), torch.randn(shape)
    y = torch.randint(0, t.label_manager.num_segmentation_heads, shape)

    def grads(loss):
        t.network.zero_grad(set_to_none=True)
        loss.backward()
        return {n for n, p in t.network.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}

    reference = grads(t.loss(t.network(x), downsample_like(y.float(), t.network(x))))
    assert any("seg_layers.1" in n for n in reference)  # a lower-resolution head is trained by nnU-Net
    assert grads(t.compute_losses(x, y.float(), None)["loss"]) == reference  # pre-train
    t.start_self_training()
    assert grads(t.compute_losses(x, y.float(), x_u)["loss"]) == reference  # self-train


@pytest.mark.e2e
def test_plain_pretrain_is_nnunet_trainers_step(tiny_3d, monkeypatch):
    """nnUNetTrainerBCP_PlainPretrain pre-trains with nnU-Net's own loss on the unmixed labeled batch (equal
    loss value), draws no box (the generator is untouched), and self-trains as BCP."""
    from conftest import CPU_PLANS
    from nnunet_ssl.losses.deep_supervision import downsample_like
    from nnunet_ssl.runner import build_trainer

    monkeypatch.delenv("nnUNet_ssl_overrides", raising=False)
    t = build_trainer(tiny_3d["id"], "3d_fullres", 0, "nnUNetTrainerBCP_PlainPretrain", CPU_PLANS, "cpu",
                      budget={"num_epochs": 4, "num_iterations_per_epoch": 2})
    t.initialize()
    t.network.eval()  # no dropout / batch statistics between the two forward passes
    torch.manual_seed(0)
    shape = (2, 1, *t.configuration_manager.patch_size)
    x, x_u = torch.randn(shape), torch.randn(shape)
    y = torch.randint(0, t.label_manager.num_segmentation_heads, shape).float()
    state = t.generator.get_state()
    with torch.no_grad():
        expected = t.loss(t.network(x), downsample_like(y, t.network(x)))
        terms = t.compute_losses(x, y, None)
        assert set(terms) == {"loss", "loss_sup", "self_training"}
        assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
        assert torch.equal(t.generator.get_state(), state)
        t.start_self_training()
        assert "loss_mix_in" in t.compute_losses(x, y, x_u)
