"""DMPF: the double mix pairs each model with its own weights and pseudo-labels, the loss is
``L_sup + L_m + θ·L_u``, and ``--c`` restores the class-weight trackers exactly (DHC and DMPF share
the tracker base; one ablation also runs train → resume → predict in-process)."""
from __future__ import annotations

import copy
import math
import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import CPU_PLANS
from nnunet_ssl.trainers.dmpf import (dmpf_total_loss, foreground_samples, nnUNetTrainerDMPF,
                                      nnUNetTrainerDMPF_CutMix, nnUNetTrainerDMPF_CutOut, nnUNetTrainerDMPF_MixCE)

BUDGET = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}


def _bare(cls, seed=0):
    """A trainer object without nnU-Net's set-up: enough for the mixing and tracker hooks."""
    t = object.__new__(cls)
    t.label_manager = SimpleNamespace(num_segmentation_heads=4, ignore_label=None, has_regions=False)
    t.trackers = {}
    t.generator = torch.Generator().manual_seed(seed)
    return t


# ---------------------------------------------------------------------------------------- double mix
def _mix_inputs():
    # one sample, patch (2, 2, 1): unlabeled image 10, labeled image -10, labeled label 3 everywhere
    x_u, x_l = torch.full((1, 1, 2, 2, 1), 10.0), torch.full((1, 1, 2, 2, 1), -10.0)
    y_l = torch.full((1, 2, 2, 1), 3)
    pseudo_a = torch.tensor([[[0, 2], [2, 1]]]).unsqueeze(-1)  # classes {0, 1, 2}
    pseudo_b = torch.tensor([[[1, 1], [0, 3]]]).unsqueeze(-1)  # classes {0, 1, 3}
    return x_u, x_l, y_l, pseudo_a, pseudo_b


def test_dmp_uses_model_a_weights_and_pseudo_labels_for_a_and_b_for_b():
    x_u, x_l, y_l, pseudo_a, pseudo_b = _mix_inputs()
    w_a = torch.tensor([0.0, 0.0, 1.0, 0.0])  # only class 2 can be drawn for A: S_A = {2}
    w_b = torch.tensor([0.0, 1.0, 0.0, 0.0])  # only class 1 for B: S_B = {1}
    t = _bare(nnUNetTrainerDMPF)
    mix_a, mix_b = (t.strong_mix_one(x_u, x_l, y_l, p, w) for p, w in ((pseudo_a, w_a), (pseudo_b, w_b)))
    assert mix_a.classes[0].tolist() == [2] and mix_b.classes[0].tolist() == [1]
    # A: M = 1[ŷ_A ∈ {2}] = [[0, 1], [1, 0]]; B: M = 1[ŷ_B ∈ {1}] = [[1, 1], [0, 0]]
    assert mix_a.mask[0, :, :, 0].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert mix_b.mask[0, :, :, 0].tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert mix_a.image[0, 0, :, :, 0].tolist() == [[-10.0, 10.0], [10.0, -10.0]]
    assert mix_b.image[0, 0, :, :, 0].tolist() == [[10.0, 10.0], [-10.0, -10.0]]
    # ŷ^m = ŷ^u·M + y_l·(1−M)
    assert mix_a.label[0, :, :, 0].tolist() == [[3, 2], [2, 3]]
    assert mix_b.label[0, :, :, 0].tolist() == [[1, 1], [3, 3]]
    assert torch.all(mix_a.weight == 1) and torch.all(mix_b.weight == 1)


def test_strong_mix_pairs_sample_i_and_uses_the_smaller_batch():
    g = torch.Generator().manual_seed(0)
    x_u, x_l = torch.randn(3, 1, 4, 4, 4, generator=g), torch.randn(2, 1, 4, 4, 4, generator=g)
    y_l = torch.randint(0, 4, (2, 4, 4, 4), generator=g)
    pseudo = torch.randint(0, 4, (3, 4, 4, 4), generator=g)
    w = torch.ones(4)
    mix_a = _bare(nnUNetTrainerDMPF).strong_mix_one(x_u, x_l, y_l, pseudo, w)
    assert mix_a.image.shape == (2, 1, 4, 4, 4)
    m = mix_a.mask.bool()
    for i in range(2):  # unlabeled sample i onto labeled sample i
        assert torch.equal(mix_a.image[i, 0][m[i]], x_u[i, 0][m[i]])
        assert torch.equal(mix_a.image[i, 0][~m[i]], x_l[i, 0][~m[i]])
        assert torch.equal(mix_a.label[i], torch.where(m[i], pseudo[i], y_l[i]))


def test_strong_mix_is_reproducible_from_the_generator():
    x_u, x_l, y_l, pseudo_a, pseudo_b = _mix_inputs()
    w = torch.tensor([1.0, 1.0, 1.0, 1.0])
    first, again = ([t.strong_mix_one(x_u, x_l, y_l, p, w) for p in (pseudo_a, pseudo_b)]
                    for t in (_bare(nnUNetTrainerDMPF, seed=7), _bare(nnUNetTrainerDMPF, seed=7)))
    for a, b in zip(first, again):
        assert torch.equal(a.mask, b.mask)


def test_cutmix_ablation_swaps_the_class_mask_for_one_box():
    g = torch.Generator().manual_seed(1)
    x_u, x_l = torch.randn(2, 1, 4, 4, 4, generator=g), torch.randn(2, 1, 4, 4, 4, generator=g)
    y_l = torch.randint(0, 4, (2, 4, 4, 4), generator=g)
    pseudo = torch.randint(0, 4, (2, 4, 4, 4), generator=g)
    t = _bare(nnUNetTrainerDMPF_CutMix)
    t.box_beta = 0.5
    mix_a, mix_b = (t.strong_mix_one(x_u, x_l, y_l, pseudo, torch.ones(4)) for _ in range(2))
    for mx in (mix_a, mix_b):
        zeros = (mx.mask[0] == 0).nonzero()  # one 2×2×2 box from the labeled patch, shared by the batch
        assert len(zeros) == 8 and (zeros.max(0).values - zeros.min(0).values).tolist() == [1, 1, 1]
        assert torch.equal(mx.mask[0], mx.mask[1])
        assert torch.equal(mx.label, torch.where(mx.mask.bool(), pseudo, y_l))


def test_cutout_ablation_erases_a_box_that_carries_no_loss():
    x_u = torch.ones(1, 1, 4, 4, 4)
    pseudo = torch.ones(1, 4, 4, 4, dtype=torch.long)
    t = _bare(nnUNetTrainerDMPF_CutOut)
    t.box_beta = 0.5
    mix_a = t.strong_mix_one(x_u, -x_u, pseudo * 0, pseudo, torch.ones(4))
    box = mix_a.mask == 0
    assert box.sum() == 8
    assert torch.all(mix_a.image[:, 0][box] == 0) and torch.all(mix_a.image[:, 0][~box] == 1)
    assert torch.all(mix_a.weight[box] == 0) and torch.all(mix_a.weight[~box] == 1)
    assert torch.all(mix_a.label == 1)  # the pseudo-label, kept (weight 0 in the box)


def test_default_and_ablation_weight_pairs():
    t = _bare(nnUNetTrainerDMPF)
    t.build_trackers()
    assert type(t.trackers["weights_A"]).__name__ == "CDifWTracker"
    assert type(t.trackers["weights_B"]).__name__ == "DisWTracker"
    from nnunet_ssl.trainers import dmpf

    pairs = {name: (cls.weights_a, cls.weights_b, cls.strong_mix) for name, cls in vars(dmpf).items()
             if isinstance(cls, type) and issubclass(cls, nnUNetTrainerDMPF)}
    assert pairs == {
        "nnUNetTrainerDMPF": ("cdifw", "disw", "dmp"),
        "nnUNetTrainerDMPF_DisWDifW": ("disw", "difw", "dmp"),
        "nnUNetTrainerDMPF_CDifWCDifW": ("cdifw", "cdifw", "dmp"),
        "nnUNetTrainerDMPF_CDifWCDisW": ("cdifw", "cdisw", "dmp"),
        "nnUNetTrainerDMPF_DisWDisW": ("disw", "disw", "dmp"),
        "nnUNetTrainerDMPF_CDisWCDisW": ("cdisw", "cdisw", "dmp"),
        "nnUNetTrainerDMPF_UnsupervisedNoFloor": ("cdifw", "disw", "dmp"),
        "nnUNetTrainerDMPF_MixUnweighted": ("cdifw", "disw", "dmp"),
        "nnUNetTrainerDMPF_FullRampup": ("cdifw", "disw", "dmp"),
        "nnUNetTrainerDMPF_CutMix": ("cdifw", "disw", "cutmix"),
        "nnUNetTrainerDMPF_CutOut": ("cdifw", "disw", "cutout"),
        "nnUNetTrainerDMPF_ClassMix": ("cdifw", "disw", "classmix"),
        "nnUNetTrainerDMPF_TeacherInference": ("cdifw", "disw", "dmp"),
        "nnUNetTrainerDMPF_Ensemble": ("cdifw", "disw", "dmp"),
        "nnUNetTrainerDMPF_MixCE": ("cdifw", "disw", "dmp"),
    }
    assert nnUNetTrainerDMPF.mix_dice_weight == 1.0 and nnUNetTrainerDMPF_MixCE.mix_dice_weight == 0.0


def test_inference_network_is_student_a_and_teacher_a_is_a_variant():
    """The reference code evaluates the students; teacher inference is a named variant."""
    from nnunet_ssl.trainers.dmpf import nnUNetTrainerDMPF_TeacherInference

    assert nnUNetTrainerDMPF.inference_model == "network"
    assert nnUNetTrainerDMPF_TeacherInference.inference_model == "teacher_a"
    assert nnUNetTrainerDMPF_TeacherInference.teacher_sources == nnUNetTrainerDMPF.teacher_sources


def test_dmpf_uses_every_hyperparameter_it_declares():
    # teachers (ema_decay), mixes (seed), θ, μ: nothing the base declares is ignored
    assert getattr(nnUNetTrainerDMPF, "unused_hyperparameters", ()) == ()
    assert {"ema_decay", "seed", "mix_weight", "weight_floor"} <= set(nnUNetTrainerDMPF.hyperparameter_names())


def test_unsupervised_class_weights_by_hand():
    """DHC's CPS and DMPF's L_m / L_u weigh classes by ``floor + w/mean(w)``: 0 keeps the trackers' ratios
    (as the papers), 1 gives background at least the average weight."""
    t = _bare(nnUNetTrainerDMPF)
    w = torch.tensor([0.0, 1.0, 3.0, 4.0])  # mean 2
    t.unsupervised_weight_floor = 0.0
    assert t.unsupervised_class_weights(w).tolist() == [0.0, 0.5, 1.5, 2.0]
    t.unsupervised_weight_floor = 1.0
    assert t.unsupervised_class_weights(w).tolist() == [1.0, 1.5, 2.5, 3.0]
    assert "unsupervised_weight_floor" in nnUNetTrainerDMPF.hyperparameter_names()


def test_default_floor_charges_pseudo_labelled_background_and_the_reference_variant_does_not():
    """Default DMPF floors the unlabeled terms' weights (1 + w/mean(w)); ``_UnsupervisedNoFloor`` keeps the
    trackers' weights, with which a voxel pseudo-labelled background (DisW 0) adds nothing to L_m's CE."""
    from nnunet_ssl.losses.weighted import weighted_cross_entropy
    from nnunet_ssl.trainers.dmpf import nnUNetTrainerDMPF_UnsupervisedNoFloor

    w = torch.tensor([0.0, 3.0])  # DisW-like: background 0; mean 1.5
    default, reference = _bare(nnUNetTrainerDMPF), _bare(nnUNetTrainerDMPF_UnsupervisedNoFloor)
    assert default.unsupervised_class_weights(w).tolist() == pytest.approx([1.0, 3.0])  # 1 + [0, 2]
    assert reference.unsupervised_class_weights(w).tolist() == pytest.approx([0.0, 2.0])  # [0, 2]
    # logits [0, 0] at two voxels pseudo-labelled background (voxel 0) and class 1 (voxel 1): CE = ln 2 each;
    # floored: (1·ln2 + 3·ln2) / (1 + 3) = ln 2 and a gradient at voxel 0; unfloored: (0 + 2·ln2) / 2 = ln 2,
    # no gradient at voxel 0
    label = torch.tensor([[0, 1]])
    for trainer, background_gradient in ((reference, False), (default, True)):
        logits = torch.zeros(1, 2, 2, requires_grad=True)
        loss = weighted_cross_entropy(logits, label, trainer.unsupervised_class_weights(w))
        assert loss.item() == pytest.approx(math.log(2))
        loss.backward()
        assert bool(logits.grad[0, :, 0].abs().sum() > 0) == background_gradient


def test_unknown_strong_mix_is_a_value_error():
    t = _bare(nnUNetTrainerDMPF)
    t.strong_mix = "mixup"
    with pytest.raises(ValueError, match="strong_mix must be one of"):
        t.initialize()


def test_total_loss_by_hand():
    # L = (1 − μ)·L_sup + μ·L_m + θ·L_u; μ = .25 (the reference's 0.75/0.25 split), θ = .1
    #   .75·1.5 + .25·.5 + .1·2 = 1.125 + .125 + .2 = 1.45
    total = dmpf_total_loss(torch.tensor(1.5), torch.tensor(0.5), torch.tensor(2.0), 0.1, 0.25)
    assert total.item() == pytest.approx(1.45)
    # μ = 0 (start of the ramp): the supervised term alone, plus θ·L_u: 1.5 + .2
    assert dmpf_total_loss(torch.tensor(1.5), torch.tensor(0.5), torch.tensor(2.0), 0.1, 0.0).item() == pytest.approx(1.7)


def test_foreground_samples_by_hand():
    pseudo = torch.tensor([[[0, 0], [0, 0]], [[0, 2], [0, 0]], [[1, 1], [1, 1]]])  # (3, 2, 2)
    assert foreground_samples(pseudo).tolist() == [False, True, True]
    assert foreground_samples(pseudo.unsqueeze(-1)).tolist() == [False, True, True]  # 3D


def test_mixed_loss_skips_samples_whose_pseudo_label_is_background_only():
    from nnunet_ssl.mixing.mixes import MixResult

    t = _bare(nnUNetTrainerDMPF_MixCE)  # CE alone (the Dice: the next test)
    # two samples, two voxels, two classes; sample 0's pseudo-label is all background -> no loss
    # sample 1: voxel a logits [0, 0] label 1 -> CE ln 2; voxel b logits [0, ln 3] label 0 -> CE ln 4
    #   equal weights: (ln 2 + 2 ln 2)/2 = 1.5 ln 2
    logits = torch.tensor([[[5.0, -5.0], [-5.0, 5.0]], [[0.0, 0.0], [0.0, math.log(3.0)]]])
    label = torch.tensor([[1, 0], [1, 0]])
    mixed = MixResult(image=torch.zeros(2, 1, 2), label=label, mask=torch.ones(2, 2), weight=torch.ones(2, 2))
    pseudo = torch.tensor([[0, 0], [0, 1]])
    loss, skipped = t.mixed_loss(logits, mixed, pseudo, torch.ones(2))
    assert loss.item() == pytest.approx(1.5 * math.log(2.0), rel=1e-6) and skipped.item() == 0.5
    # every pseudo-label background only: nothing is learned from the mix (0, not NaN), all skipped
    loss, skipped = t.mixed_loss(logits, mixed, torch.zeros(2, 2, dtype=torch.long), torch.ones(2))
    assert loss.item() == 0.0 and skipped.item() == 1.0
    # a pseudo-label batch larger than the mixed batch (B_u > B): only the mixed samples count
    loss, skipped = t.mixed_loss(logits, mixed, torch.tensor([[0, 0], [1, 0], [0, 0]]), torch.ones(2))
    assert loss.item() == pytest.approx(1.5 * math.log(2.0), rel=1e-6) and skipped.item() == 0.5


def test_mixed_loss_with_dice_adds_the_unweighted_foreground_dice_of_the_kept_samples():
    from nnunet_ssl.losses.weighted import WeightedDiceCE
    from nnunet_ssl.mixing.mixes import MixResult

    t = _bare(nnUNetTrainerDMPF)
    t.seg_loss, t.mix_dice_weight = WeightedDiceCE(ce_weight=0.5, batch_dice=True), 1.0
    logits = torch.tensor([[[5.0, -5.0], [-5.0, 5.0]], [[0.0, 0.0], [0.0, math.log(3.0)]]])
    label = torch.tensor([[1, 0], [1, 0]])
    mixed = MixResult(image=torch.zeros(2, 1, 2), label=label, mask=torch.ones(2, 2), weight=torch.ones(2, 2))
    pseudo = torch.tensor([[0, 0], [0, 1]])  # sample 0 skipped (background only)
    # sample 1, class 1: p1 = (.5, .75), y1 = (1, 0): tp = .5, Σp = 1.25, Σy = 1 -> Dice 1/2.25, loss 5/9
    loss, _ = t.mixed_loss(logits, mixed, pseudo, torch.ones(2))
    assert loss.item() == pytest.approx(1.5 * math.log(2.0) + 5 / 9, rel=1e-4)
    # class weights reach the CE only (voxel a, class 1: ln 2); the Dice stays unweighted
    loss, _ = t.mixed_loss(logits, mixed, pseudo, torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx(math.log(2.0) + 5 / 9, rel=1e-4)


# ------------------------------------------------------------------------ the step on a real trainer
def _conv(c_in, c_out, seed):
    conv = nn.Conv3d(c_in, c_out, 1)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
    return conv


@pytest.mark.e2e
def test_compute_losses_composes_the_paper_formula(tiny_3d):
    """With 1×1×1-conv stand-ins for students and teachers, every term equals the library formula fed
    with the right model's weights, pseudo-labels and mix."""
    from nnunet_ssl.losses.weighted import WeightedDiceCE, weighted_cross_entropy
    from nnunet_ssl.mixing.mixes import dmp_mix
    from nnunet_ssl.runner import build_trainer

    t = build_trainer(tiny_3d["id"], "3d_fullres", 0, "nnUNetTrainerDMPF", CPU_PLANS, "cpu", budget=BUDGET)
    t.initialize()
    t.one_graph_per_network = False  # every term keeps its graph (the one-graph step: test_cps_one_graph.py)
    t.mix_dice_weight = 0.0  # L_m's CE alone here; its Dice: test_mixed_loss_with_dice_...
    C, c_in = t.label_manager.num_segmentation_heads, t.num_input_channels
    a, b, ta, tb = (_conv(c_in, C, s) for s in range(4))
    # teacher A: class 0 wins where input channel 0 is very negative, class 1 elsewhere, so that
    #   unlabeled sample 0 (shifted to -100) has an all-background pseudo-label and sample 1 (+10) none
    with torch.no_grad():
        ta.weight.zero_()
        ta.weight[0, 0] = -1.0
        ta.bias.copy_(torch.tensor([0.0, 1.0] + [0.0] * (C - 2)))
    t.network, t.extra_networks["network_b"] = a, b
    t.teachers = {"teacher_a": ta, "teacher_b": tb}
    t.trackers["weights_B"].initialise(torch.tensor([1000.0, 100.0, 10.0, 1.0]))  # B's weights non-uniform
    t.global_step = t.total_iterations  # ramp-up done: θ = consistency_weight
    g = torch.Generator().manual_seed(5)
    data, unlabeled = torch.randn(2, c_in, 4, 4, 4, generator=g), torch.randn(2, c_in, 4, 4, 4, generator=g)
    unlabeled[0] -= 100.0
    unlabeled[1] += 10.0
    target = [torch.randint(0, C, (2, 1, 4, 4, 4), generator=g).float()]

    trackers, gen_state = copy.deepcopy(t.trackers), t.generator.get_state()
    terms = t.compute_losses(data, target, unlabeled)

    with torch.no_grad():
        x = torch.cat([data, unlabeled])
        w_a = trackers["weights_A"].update(a(x)[:2], target[0], a(x)[2:])
        w_b = trackers["weights_B"].update(b(x)[:2], target[0], b(x)[2:])
        pa, pb = ta(unlabeled).argmax(1), tb(unlabeled).argmax(1)
        gen = torch.Generator().set_state(gen_state)
        y = target[0][:, 0].long()
        mix_a, mix_b = dmp_mix(unlabeled, pa, data, y, w_a, gen), dmp_mix(unlabeled, pb, data, y, w_b, gen)
        seg = WeightedDiceCE(ce_weight=0.5, batch_dice=t.configuration_manager.batch_dice)
        # samples whose pseudo-label is background only carry no mixed loss
        keep_a = (pa.flatten(1) > 0).any(1).float().view(-1, 1, 1, 1)
        keep_b = (pb.flatten(1) > 0).any(1).float().view(-1, 1, 1, 1)
        assert keep_a.flatten().tolist() == [0.0, 1.0]
        # every term weighs classes with 1 + w/mean(w) (weight_floor and unsupervised_weight_floor 1); DMP's
        # class sampling above takes the trackers' weights as they are
        fa, fb = 1 + w_a / w_a.mean(), 1 + w_b / w_b.mean()
        l_m = (weighted_cross_entropy(a(mix_a.image), mix_a.label, fa, keep_a.expand_as(mix_a.label).float())
               + weighted_cross_entropy(b(mix_b.image), mix_b.label, fb, keep_b.expand_as(mix_b.label).float()))
        l_u = seg(a(unlabeled), pb, class_weights=fa) + seg(b(unlabeled), pa, class_weights=fb)
        l_sup = seg(a(data), target[0], class_weights=fa) + seg(b(data), target[0], class_weights=fb)

    assert not torch.allclose(w_a, w_b)
    assert torch.allclose(terms["w_A"], w_a) and torch.allclose(terms["w_B"], w_b)
    assert terms["theta"] == pytest.approx(t.consistency_weight)
    for name, expected in (("loss_sup", l_sup), ("loss_mix", l_m), ("loss_u", l_u)):
        assert terms[name].item() == pytest.approx(expected.item(), rel=1e-5), name
    # after the ramp-up: L = .75·L_sup + .25·L_m + θ·L_u (the reference's 0.75/0.25 split)
    assert terms["mix_weight"] == pytest.approx(0.25)
    assert terms["loss"].item() == pytest.approx((0.75 * l_sup + 0.25 * l_m + t.consistency_weight * l_u).item(),
                                                 rel=1e-5)
    assert terms["mix_ratio_A"].item() == pytest.approx(mix_a.mask.mean().item())
    assert terms["mix_skipped_A"].item() == 0.5
    assert terms["mix_skipped_B"].item() == pytest.approx(1 - keep_b.mean().item())
    terms["loss"].backward()  # gradients reach both students
    assert a.weight.grad.abs().sum() > 0 and b.weight.grad.abs().sum() > 0

    # at step 0 the teachers are random: L_m enters with μ = .25·exp(−5) ≈ .0017, L_sup with 1 − μ
    t.global_step, t.num_iterations_per_epoch = 0, 100  # a ramp of int(.4·100) = 40 steps (BUDGET's is 0)
    terms = t.compute_losses(data, target, unlabeled)
    mu = 0.25 * math.exp(-5.0)
    assert terms["mix_weight"] == pytest.approx(mu)
    expected = (1 - mu) * terms["loss_sup"] + mu * terms["loss_mix"] + terms["theta"] * terms["loss_u"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------- resume
def _assert_same(a, b, where=""):
    """Nested tracker state dicts are identical (tensors bit for bit)."""
    assert type(a) is type(b) or (torch.is_tensor(a) and torch.is_tensor(b)), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif torch.is_tensor(a):
        assert a.dtype == b.dtype and torch.equal(a, b.to(a.device)), where
    else:
        assert a == b, where


@pytest.mark.e2e
@pytest.mark.parametrize("trainer", ["nnUNetTrainerDMPF", "nnUNetTrainerDHC", "nnUNetTrainerDMPF_CDisWCDisW"])
def test_resume_restores_trackers_exactly(trainer, tiny_3d, tmp_path, monkeypatch):
    from nnunetv2.run.run_training import maybe_load_checkpoint

    from nnunet_ssl.runner import build_trainer, train

    t1 = train(tiny_3d["id"], "3d_fullres", 0, trainer, CPU_PLANS, "cpu", validate=False, budget=BUDGET)
    C = t1.label_manager.num_segmentation_heads
    # per-class weights of both models are logged per epoch and drawn next to progress.png
    log = t1._ssl_log()
    for key in ("ssl/w_A", "ssl/w_B"):
        assert len(log[key]) == 1 and len(log[key][0]) == C
        assert all(w == w and w >= 0 for w in log[key][0])
    assert os.path.isfile(os.path.join(t1.output_folder, "progress_ssl.png"))
    assert all(t.num_updates == 2 for t in t1.trackers.values())

    t2 = build_trainer(tiny_3d["id"], "3d_fullres", 0, trainer, CPU_PLANS, "cpu", continue_training=True,
                       budget={**BUDGET, "num_epochs": 2})
    maybe_load_checkpoint(t2, True, False, None)
    assert t1.trackers.keys() == t2.trackers.keys() == {"weights_A", "weights_B"}
    for name in t1.trackers:
        _assert_same(t1.trackers[name].state_dict(), t2.trackers[name].state_dict(), name)
        assert torch.equal(t1.trackers[name].weights, t2.trackers[name].weights.to(t1.trackers[name].weights.device))
    if trainer != "nnUNetTrainerDMPF_CDisWCDisW":
        return

    # one ablation: continue (the histogram initialisation must not run again) and predict with nnU-Net
    def must_not_run(self):
        raise AssertionError("a resumed run re-initialised its class weights")

    monkeypatch.setattr(type(t2), "initialise_distribution_weights", must_not_run)
    t2.run_training()
    assert t2.global_step == 4 and t2.current_epoch == 2
    assert all(t.num_updates == 4 for t in t2.trackers.values())
    assert len(t2._ssl_log()["ssl/w_B"]) == 2

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(os.path.dirname(t2.output_folder), use_folds=(0,))
    predictor.predict_from_files_sequential(os.path.join(tiny_3d["raw"], "imagesTs"), str(tmp_path))
    predicted = sorted(f for f in os.listdir(tmp_path) if f.endswith(".nii.gz"))
    assert predicted == sorted(f"{c}.nii.gz" for c in tiny_3d["summary"]["test"])


@pytest.mark.e2e
@pytest.mark.parametrize("name,weighted", [("nnUNetTrainerDMPF", True), ("nnUNetTrainerDMPF_MixUnweighted", False)])
def test_mixed_term_gets_class_weights_unless_unweighted(tiny_3d, monkeypatch, name, weighted):
    """L_m receives the unlabeled terms' class weights by default and none (plain CE) in _MixUnweighted,
    whose DMP still samples classes by the trackers' weights."""
    from nnunet_ssl.losses.deep_supervision import downsample_like
    from nnunet_ssl.runner import build_trainer

    monkeypatch.delenv("nnUNet_ssl_overrides", raising=False)
    t = build_trainer(tiny_3d["id"], "3d_fullres", 0, name, CPU_PLANS, "cpu", budget=BUDGET)
    t.initialize()
    t.one_graph_per_network = False
    seen, mix_weights = [], []
    mixed_loss, strong_mix_one = t.mixed_loss, t.strong_mix_one
    monkeypatch.setattr(t, "mixed_loss", lambda logits, mixed, pseudo, w: seen.append(w) or
                        mixed_loss(logits, mixed, pseudo, w))
    monkeypatch.setattr(t, "strong_mix_one", lambda x_u, x_l, y_l, pseudo, w: mix_weights.append(w) or
                        strong_mix_one(x_u, x_l, y_l, pseudo, w))
    g = torch.Generator().manual_seed(0)
    shape = (2, t.num_input_channels, *t.configuration_manager.patch_size)
    data, unlabeled = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    y = torch.randint(0, t.label_manager.num_segmentation_heads, (2, 1, *shape[2:]), generator=g).float()
    with torch.no_grad():
        target = downsample_like(y, t.network(data))  # nnU-Net's deep-supervision targets
    terms = t.compute_losses(data, target, unlabeled)
    assert torch.isfinite(terms["loss"])
    assert len(seen) == 2 and all((w is not None) == weighted for w in seen)
    assert len(mix_weights) == 2 and all(isinstance(w, torch.Tensor) for w in mix_weights)
