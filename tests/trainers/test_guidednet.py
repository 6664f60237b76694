"""nnUNetTrainerGuidedNet: KT-CPS direction, loss terms per ablation, finiteness with absent classes,
exact resume of the CGMM and KT-weight state."""
from __future__ import annotations

import math
import os
import re

import pytest
import torch
import torch.nn.functional as F

from conftest import CPU_PLANS

from nnunet_ssl.trainers import guidednet as guidednet_module
from nnunet_ssl.trainers.guidednet import CGMM_TERMS, nnUNetTrainerGuidedNet

BUDGET = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}


def test_kt_cps_weighs_each_direction_with_the_pseudo_labelling_network():
    ln3, ln4 = math.log(3.0), math.log(4.0)
    # (B=1, K=2, 2 voxels): a -> p(v0) = (.75, .25), p(v1) = (.5, .5), argmax (0, 0)
    a = torch.tensor([[[ln3, 0.0], [0.0, 0.0]]])
    # b -> p(v0) = (.75, .25), p(v1) = (.25, .75), argmax (0, 1)
    b = torch.tensor([[[ln3, 0.0], [0.0, ln3]]])
    w = {"a": torch.tensor([2.0, 1.0]), "b": torch.tensor([1.0, 3.0])}
    # A against argmax b = (0, 1) with w_b: (1·CE(a_v0, 0) + 3·CE(a_v1, 1)) / 4 = (ln 4/3 + 3 ln 2) / 4
    # B against argmax a = (0, 0) with w_a (one class: plain mean): (ln 4/3 + ln 4) / 2
    expected = (math.log(4 / 3) + 3 * math.log(2)) / 4 + (math.log(4 / 3) + ln4) / 2
    got = nnUNetTrainerGuidedNet.cps_loss(None, {"a": a, "b": b}, w)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # swapped weights give another value: the direction matters
    swapped = nnUNetTrainerGuidedNet.cps_loss(None, {"a": a, "b": b}, {"a": w["b"], "b": w["a"]})
    assert swapped.item() == pytest.approx((2 * math.log(4 / 3) + math.log(2)) / 3 + (math.log(4 / 3) + ln4) / 2)
    # no weights: plain CPS
    plain = nnUNetTrainerGuidedNet.cps_loss(None, {"a": a, "b": b}, {"a": None, "b": None})
    assert plain.item() == pytest.approx((math.log(4 / 3) + math.log(2)) / 2 + (math.log(4 / 3) + ln4) / 2)


# ---------------------------------------------------------------------------------------------
# trainer-level checks on an initialised trainer (no data loading): one compute_losses call
# ---------------------------------------------------------------------------------------------


def _trainer(name, tiny_3d, configuration="3d_fullres", deep_supervision=True):
    from nnunet_ssl.runner import build_trainer

    t = build_trainer(tiny_3d["id"], configuration, 0, name, CPU_PLANS, "cpu", budget=BUDGET)
    t.enable_deep_supervision = deep_supervision
    t.initialize()
    for net in t.trainable_networks().values():
        net.train()
    return t


def _batch(t, labels):
    """Random images, targets from ``labels`` (B, *patch) (a deep-supervision list, or one tensor
    (B, 1, *patch) without deep supervision, as nnU-Net's loader gives them), and an unlabeled batch."""
    g = torch.Generator().manual_seed(0)
    lab = labels[:, None].float()
    shape = lab.shape[2:]
    scales = t._get_deep_supervision_scales()
    target = lab if scales is None else [
        F.interpolate(lab, size=[round(s * f) for s, f in zip(shape, scale)], mode="nearest") for scale in scales]
    data = torch.randn((lab.shape[0], t.num_input_channels, *shape), generator=g)
    unlabeled = torch.randn((2, t.num_input_channels, *shape), generator=g)
    return data, target, unlabeled


def _labels(t, classes=None):
    """(2, *patch) label map: left half background, right half cycles through ``classes``."""
    patch = tuple(t.configuration_manager.patch_size)
    k = t.label_manager.num_segmentation_heads
    classes = list(range(k)) if classes is None else classes
    y = torch.zeros((2, *patch), dtype=torch.long)
    idx = torch.arange(patch[-1] // 2, patch[-1])
    y[..., patch[-1] // 2:] = torch.tensor(classes)[idx % len(classes)]
    return y




@pytest.fixture(scope="module")
def guidednet(tiny_3d):
    """One initialised nnUNetTrainerGuidedNet, its trackers rebuilt fresh for every test."""
    t = _trainer("nnUNetTrainerGuidedNet", tiny_3d)
    yield t
    for tap in t.taps.values():
        tap.remove()


def _fresh(t):
    t.trackers.clear()
    t.build_trackers()
    t.optimizer.zero_grad(set_to_none=True)
    return t


@pytest.mark.e2e
def test_main_trainer_logs_every_term_and_its_total_is_their_weighted_sum(guidednet):
    t = _fresh(guidednet)
    terms = t.compute_losses(*_batch(t, _labels(t)))
    k = t.label_manager.num_segmentation_heads
    assert k >= 3
    expected_keys = {"loss", "loss_sup", "loss_cps", "w_unsup", "kt_weights_a", "kt_weights_b", "rect_rate"}
    assert set(terms) == expected_keys | {f"loss_{x}" for x in CGMM_TERMS}
    assert set(t.trackers) == {"kt_a", "kt_b", "cgmm_a", "cgmm_b"}
    r = terms["w_unsup"]
    assert 0 < r <= 1  # the sigmoid ramp-up factor (budget of 2 iterations: no ramp-up, r = 1)
    total = (terms["loss_sup"] + r * t.consistency_weight * terms["loss_cps"]
             + t.gt_weight * terms["loss_gt"] + t.self_weight * terms["loss_self"] + t.max_weight * terms["loss_max"]
             + r * (t.cons_weight * terms["loss_cons"] + t.rectify_weight * terms["loss_rectify"]))
    assert terms["loss"].item() == pytest.approx(total.item(), rel=1e-6)
    assert 0.0 <= terms["rect_rate"].item() <= 1.0
    assert terms["kt_weights_a"].shape == (k,) and not terms["kt_weights_a"].requires_grad
    # the loss trains both networks (nnU-Net gives the coarsest deep-supervision output weight 0,
    # so its segmentation layer alone gets no gradient)
    terms["loss"].backward()
    for net in t.trainable_networks().values():
        named = dict(net.named_parameters())
        assert all(torch.isfinite(p.grad).all() for p in named.values() if p.grad is not None)
        assert all(p.grad is not None for n, p in named.items() if not n.startswith("decoder.seg_layers"))
    # the mixtures were fitted on the labeled batch (all classes present)
    assert all(bool(t.trackers[f"cgmm_{s}"].seen.all()) for s in "ab")


def _loss_rows():
    """Loss-ablation trainers ``nnUNetTrainerGuidedNet_L<term>L<term>...`` of the module -> the CGMM terms
    their name lists, plus L_rectify (on in every row of the paper's loss table, whose gt+self+max+cons
    row is the full model)."""
    rows = {}
    for name, cls in vars(guidednet_module).items():
        m = re.fullmatch(r"nnUNetTrainerGuidedNet_((?:L[a-z]+)+)", name)
        if m and isinstance(cls, type):
            rows[name] = tuple(re.findall(r"L([a-z]+)", m.group(1))) + ("rectify",)
    return rows


def test_loss_ablations_match_the_papers_table():
    rows = _loss_rows()
    assert {n[len("nnUNetTrainerGuidedNet_"):] for n in rows} == {
        "Lgt", "LgtLself", "LgtLmax", "LgtLselfLmax", "LgtLselfLmaxLcons"}
    for name, terms in rows.items():
        cls = getattr(guidednet_module, name)
        assert set(cls.cgmm_terms) == set(terms), name
        assert cls.kt_cps is True, name
    # the full row trains exactly as the method's own trainer
    assert set(getattr(guidednet_module, "nnUNetTrainerGuidedNet_LgtLselfLmaxLcons").cgmm_terms) == set(
        nnUNetTrainerGuidedNet.cgmm_terms) == set(CGMM_TERMS)


def test_guidednet_declares_the_base_hyperparameters_it_ignores():
    # no EMA teacher, no draw from the trainer's generator
    assert nnUNetTrainerGuidedNet.unused_hyperparameters == ("ema_decay", "seed")
    assert not nnUNetTrainerGuidedNet.teacher_sources


ABLATIONS = [("nnUNetTrainerGuidedNet_NoCGMM", (), True), ("nnUNetTrainerGuidedNet_NoKT", CGMM_TERMS, False)] + [
    (name, terms, True) for name, terms in _loss_rows().items()]


@pytest.mark.e2e
@pytest.mark.parametrize("name,cgmm_terms,kt", ABLATIONS, ids=[a[0] for a in ABLATIONS])
def test_ablation_computes_the_terms_its_name_says(name, cgmm_terms, kt, tiny_3d):
    t = _trainer(name, tiny_3d)
    terms = t.compute_losses(*_batch(t, _labels(t)))
    assert set(t.cgmm_terms) == set(cgmm_terms) and t.kt_cps is kt
    logged_cgmm = {k[len("loss_"):] for k in terms if k[len("loss_"):] in CGMM_TERMS}
    assert logged_cgmm == set(cgmm_terms)
    assert ("rect_rate" in terms) == ("rectify" in cgmm_terms)
    assert ("kt_weights_a" in terms) == kt and ("kt_a" in t.trackers) == kt
    assert ("cgmm_a" in t.trackers) == bool(cgmm_terms) and bool(t.taps) == bool(cgmm_terms)
    r = terms["w_unsup"]
    weights = {"gt": t.gt_weight, "self": t.self_weight, "max": t.max_weight,
               "cons": r * t.cons_weight, "rectify": r * t.rectify_weight}
    total = terms["loss_sup"] + r * t.consistency_weight * terms["loss_cps"]
    total = total + sum(weights[x] * terms[f"loss_{x}"] for x in cgmm_terms)
    assert terms["loss"].item() == pytest.approx(total.item(), rel=1e-6)


@pytest.mark.e2e
@pytest.mark.parametrize("classes", [[0, 1], [0]], ids=["one-class-absent", "background-only"])
def test_losses_stay_finite_when_classes_are_absent_from_the_labeled_batch(classes, guidednet):
    t = _fresh(guidednet)
    terms = t.compute_losses(*_batch(t, _labels(t, classes)))
    for k, v in terms.items():
        assert torch.isfinite(torch.as_tensor(v)).all(), k
    terms["loss"].backward()
    for net in t.trainable_networks().values():
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    k = t.label_manager.num_segmentation_heads
    seen = t.trackers["cgmm_a"].seen
    assert seen.tolist() == [c in classes for c in range(k)]
    if classes == [0]:  # one class: its posterior is 1 everywhere, no pair of means to push apart
        assert terms["loss_gt"].item() == pytest.approx(0.0, abs=1e-6)
        assert terms["loss_max"].item() == 0.0
        assert terms["loss_cons"].item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.e2e
def test_without_deep_supervision_the_cgmm_sees_the_whole_labeled_batch(tiny_3d):
    # nnU-Net's target is then one tensor (B, 1, *patch): its full-resolution labels are the tensor
    # itself, not target[0] (the first sample). Each sample here has its own labels: sample 0 is all
    # background, sample 1 has every class, so a mixture fitted on target[0] alone would see class 0 only.
    t = _trainer("nnUNetTrainerGuidedNet", tiny_3d, deep_supervision=False)
    try:
        labels = _labels(t)
        labels[0] = 0
        data, target, unlabeled = _batch(t, labels)
        assert torch.is_tensor(target) and target.shape[:2] == (2, 1)
        terms = t.compute_losses(data, target, unlabeled)
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in terms.values())
        k = t.label_manager.num_segmentation_heads
        assert t.trackers["cgmm_a"].seen.tolist() == [True] * k
        # the labeled voxels of both samples were counted: class frequencies of the whole batch
        counts = torch.stack([(labels == c).sum() for c in range(k)]).float()
        torch.testing.assert_close(t.trackers["cgmm_a"].prior, counts / counts.sum())
    finally:
        for tap in t.taps.values():
            tap.remove()


@pytest.mark.e2e
def test_unknown_cgmm_term_is_rejected(tiny_3d):
    from nnunet_ssl.runner import build_trainer

    t = build_trainer(tiny_3d["id"], "3d_fullres", 0, "nnUNetTrainerGuidedNet", CPU_PLANS, "cpu", budget=BUDGET)
    t.cgmm_terms = ("gt", "lmax")
    with pytest.raises(ValueError, match="lmax"):
        t.initialize()


# ---------------------------------------------------------------------------------------------
# resume
# ---------------------------------------------------------------------------------------------


def _assert_same_state(a: dict, b: dict, where: str) -> None:
    """Flat state dicts of tensors and numbers are bit-identical (None entries on both sides)."""
    assert a.keys() == b.keys(), where
    assert [k for k in a if a[k] is None] == [k for k in b if b[k] is None], where
    torch.testing.assert_close({k: v for k, v in a.items() if v is not None},
                               {k: v for k, v in b.items() if v is not None}, rtol=0, atol=0, msg=where)


@pytest.mark.e2e
def test_resume_restores_cgmm_and_kt_state_exactly(tiny_3d):
    from nnunetv2.run.run_training import maybe_load_checkpoint

    from nnunet_ssl.runner import build_trainer, train
    from nnunet_ssl.utils.modules import unwrap

    name = "nnUNetTrainerGuidedNet"
    t1 = train(tiny_3d["id"], "3d_fullres", 0, name, CPU_PLANS, "cpu", validate=False, budget=BUDGET)
    assert os.path.isfile(os.path.join(t1.output_folder, "checkpoint_final.pth"))
    kt = t1.trackers["kt_a"].state_dict()
    assert kt["num_updates"] == 2
    assert t1.trackers["cgmm_a"].mu.shape[1] > 0 and bool(t1.trackers["cgmm_b"].seen.any())
    for term in ("loss_gt", "loss_rectify", "rect_rate", "loss_cps"):
        assert len(t1.logger.get_value(f"ssl/{term}", step=None)) == 1

    t2 = build_trainer(tiny_3d["id"], "3d_fullres", 0, name, CPU_PLANS, "cpu", continue_training=True,
                       budget={**BUDGET, "num_epochs": 2})
    maybe_load_checkpoint(t2, True, False, None)
    assert set(t2.trackers) == set(t1.trackers) == {"kt_a", "kt_b", "cgmm_a", "cgmm_b"}
    for k in t1.trackers:
        _assert_same_state(t1.trackers[k].state_dict(), t2.trackers[k].state_dict(), k)
    for n, net in t1.trainable_networks().items():
        _assert_same_state(unwrap(net).state_dict(), unwrap(t2.trainable_networks()[n]).state_dict(), n)
    assert t2.global_step == 2
    # the restored mixture predicts exactly like the saved one
    feats = torch.randn(1, t1.trackers["cgmm_a"].mu.shape[1], 4, 4, 4)
    assert torch.equal(t1.trackers["cgmm_a"].log_posterior(feats), t2.trackers["cgmm_a"].log_posterior(feats))
