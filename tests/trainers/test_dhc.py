"""DHC pieces: the labeled class histogram behind DisW's start, class-weighted CPS, tracker choice."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nnunet_ssl.methods.class_weighted_pair import ClassWeightedPairTrainer, labeled_class_histogram
from nnunet_ssl.trainers.dhc import nnUNetTrainerDHC, weighted_cps


class _Dataset:
    """nnU-Net dataset interface: identifiers and load_case -> (data, seg, seg_prev, properties)."""

    def __init__(self, segs):
        self.segs = segs
        self.identifiers = sorted(segs)

    def load_case(self, identifier):
        return None, self.segs[identifier], None, {}


def test_labeled_class_histogram_by_hand():
    # 3 classes, ignore label 3; -1 (outside nnU-Net's crop mask) is background
    ds = _Dataset({"a": np.array([[[-1, 0, 1], [2, 2, 3]]], dtype=np.int8),
                   "b": np.array([[[1, 1, 0]]], dtype=np.int16)})
    # background: -1, 0 (case a) + 0 (case b) = 3; class 1: 1 + 2 = 3; class 2: 2; the 3 is dropped
    np.testing.assert_array_equal(labeled_class_histogram(ds, 3), [3.0, 3.0, 2.0])
    # a class absent everywhere counts 0
    np.testing.assert_array_equal(labeled_class_histogram(ds, 5), [3.0, 3.0, 2.0, 1.0, 0.0])


def test_weighted_cps_by_hand():
    # one sample, two voxels, two classes (B, C, X) = (1, 2, 2)
    a = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # voxel 0: p = (1/4, 3/4); voxel 1: (1/2, 1/2)
    b = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # argmax: voxel 0 -> 0, voxel 1 -> 1
    # A against argmax b = (0, 1): CE = (log 4, log 2); weights (1, 3): (1·2 log2 + 3·log2) / 4 = 1.25 log 2
    # B against argmax a = (1, 0) (tie -> 0): CE = (log(1+e), log(1+e)); weights (0, 1): voxel 0 only
    expected = 1.25 * math.log(2.0) + math.log(1.0 + math.e)
    got = weighted_cps(a, b, torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0]))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # a model whose weights are 0 on all its pseudo-labels contributes 0, not NaN: only B's log(1+e) is left
    only_b = weighted_cps(a, b, torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]))
    assert only_b.item() == pytest.approx(math.log(1.0 + math.e), rel=1e-6)


def test_weighted_cps_gradient_reaches_both_models_only_through_logits():
    a = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    b = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    w = torch.tensor([0.5, 1.0, 2.0], requires_grad=True)
    weighted_cps(a, b, w, w).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    assert w.grad is None  # weights are detached


def _bare(cls, **attrs):
    t = object.__new__(cls)
    t.label_manager = SimpleNamespace(num_segmentation_heads=4, ignore_label=None, has_regions=False)
    t.trackers = {}
    for k, v in attrs.items():
        setattr(t, k, v)
    return t


def test_dhc_trackers_are_difw_for_a_and_disw_for_b():
    t = _bare(nnUNetTrainerDHC)
    t.build_trackers()
    assert type(t.trackers["weights_A"]).__name__ == "DifWTracker"
    assert type(t.trackers["weights_B"]).__name__ == "DisWTracker"
    assert t.trackers["weights_B"].floor == 0.0 and t.trackers["weights_A"].tau == 50.0


def test_supervised_loss_floors_the_class_weights():
    """Frequent classes are not starved: Seg_W uses ``weight_floor + w/mean(w)``, not the tracker's raw w."""
    from nnunet_ssl.losses.weighted import WeightedDiceCE

    # two voxels, two classes (B, C, X) = (1, 2, 2), target [1, 0]
    #   voxel a: logits [0, 0]     -> p1 = 1/2, CE = ln 2 (target 1)
    #   voxel b: logits [0, ln 3]  -> p1 = 3/4, a false positive, CE = ln 4 (target 0)
    #   Dice of class 1: tp = 1/2, Σp = 5/4, Σy = 1 -> d = 1/(9/4) = 4/9, 1 − d = 5/9
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)]]])
    target = torch.tensor([[[1.0, 0.0]]])
    w = torch.tensor([0.0, 3.0])  # DisW's pure weights: background 0
    t = _bare(nnUNetTrainerDHC, seg_loss=WeightedDiceCE(ce_weight=1.0, smooth=0.0), seg_loss_ds=None)
    ln2 = math.log(2.0)
    # default floor 1: weights 1 + w/mean(w) = 1 + [0, 3]/1.5 = [1, 3];
    #   CE = (3·ln 2 + 1·ln 4)/(3 + 1) = 1.25 ln 2: the false positive at b is paid for
    assert t.weight_floor == 1.0
    assert t.supervised_loss(logits, target, w).item() == pytest.approx(5 / 9 + 1.25 * ln2, rel=1e-6)
    # floor 0: [0, 2], the pure formula: CE = ln 2 (voxel a only), the false positive is free
    t.weight_floor = 0.0
    assert t.supervised_loss(logits, target, w).item() == pytest.approx(5 / 9 + ln2, rel=1e-6)


def test_epoch_end_smooths_the_confidence_once(monkeypatch):
    """on_train_epoch_end (after nnU-Net's logging) ends the epoch of every tracker: CDifW's confidence
    factor moves once per epoch, not per step."""
    from nnunet_ssl.trainers.semisupervised import nnUNetTrainerSemiSupervised

    logged = []
    monkeypatch.setattr(nnUNetTrainerSemiSupervised, "on_train_epoch_end", lambda self, outputs: logged.append(outputs))
    t = _bare(nnUNetTrainerDHC, weights_a="cdifw", confidence_beta=1.0)
    t.build_trackers()
    a = t.trackers["weights_A"]
    a.confidence.momentum = 0.5
    # 4 classes, one voxel each, p(true class) = .8 for class 0, .4 for class 1, .7 for 2, 1 for 3
    #   (softmax of the log-probabilities below gives them back, columns sum to 1)
    probs = torch.tensor([[[0.8, 0.2, 0.1, 0.0], [0.1, 0.4, 0.1, 0.0], [0.05, 0.2, 0.7, 0.0], [0.05, 0.2, 0.1, 1.0]]])
    target = torch.tensor([[[0.0, 1.0, 2.0, 3.0]]])
    a.update(probs.clamp_min(1e-12).log(), target)
    assert torch.equal(a.confidence.weights, torch.ones(4))  # unchanged within the epoch
    t.on_train_epoch_end(["outputs"])
    assert logged == [["outputs"]]  # the base's logging ran first
    # r = [.8, .4, .7, 1] -> 1 - r + .01 = [.21, .61, .31, .01], max(1 - r) + .01 = .61
    #   i = [.21, .61, .31, .01]/.61; factor = .5 + .5·i (β = 1)
    i = torch.tensor([0.21, 0.61, 0.31, 0.01]) / 0.61
    assert torch.allclose(a.confidence.weights, 0.5 + 0.5 * i, atol=1e-5)
    assert a.state_dict()["confidence"]["epoch_count"].sum() == 0


def test_dhc_lists_the_base_hyperparameters_it_ignores():
    """DHC has no EMA teacher (ema_decay) and draws nothing from the trainer's generator (seed)."""
    from nnunet_ssl.trainers.semisupervised import nnUNetTrainerSemiSupervised

    assert nnUNetTrainerDHC.unused_hyperparameters == ("ema_decay", "seed")
    assert set(nnUNetTrainerDHC.unused_hyperparameters) <= set(nnUNetTrainerSemiSupervised.__annotations__)
    assert not nnUNetTrainerDHC.teacher_sources
    names = nnUNetTrainerDHC.hyperparameter_names()
    assert "ema_decay" not in names and "seed" not in names and "consistency_weight" in names


def test_unknown_tracker_name_is_a_value_error():
    with pytest.raises(ValueError, match="weights_b must be one of"):
        _bare(ClassWeightedPairTrainer, weights_b="kt").build_trackers()
    with pytest.raises(ValueError, match="weights_a must be one of"):
        _bare(ClassWeightedPairTrainer, weights_a="dice").build_trackers()


def test_default_floor_charges_background_in_the_cps_term_and_the_reference_variant_does_not():
    from nnunet_ssl.trainers.dhc import nnUNetTrainerDHC_UnsupervisedNoFloor

    w = torch.tensor([0.0, 3.0])  # DisW: background 0; mean 1.5
    # default (floor 1): 1 + w/mean(w) = 1 + [0, 2] = [1, 3]
    default = _bare(nnUNetTrainerDHC)
    assert default.unsupervised_class_weights(w).tolist() == pytest.approx([1.0, 3.0])
    # reference variant (floor 0): w/mean(w) = [0, 2], pseudo-labelled background is free
    reference = _bare(nnUNetTrainerDHC_UnsupervisedNoFloor)
    assert reference.unsupervised_class_weights(w).tolist() == pytest.approx([0.0, 2.0])
    # A's logits [0, 0] at two voxels whose partner pseudo-labels are background (voxel 0) and class 1 (voxel 1):
    # only with the floored weights does the background voxel get a gradient
    partner = torch.tensor([[[5.0, -5.0], [-5.0, 5.0]]])  # argmax: voxel 0 -> class 0, voxel 1 -> class 1
    for trainer, background_gradient in ((reference, False), (default, True)):
        logits = torch.zeros(1, 2, 2, requires_grad=True)
        weights = trainer.unsupervised_class_weights(w)
        loss = weighted_cps(logits, partner, weights, weights)
        loss.backward()
        assert bool(logits.grad[0, :, 0].abs().sum() > 0) == background_gradient
