"""Category-level supervision trainers (nnunet_ssl/trainers/dcl.py, simclr.py): batch category targets, the
SimCLR second view, clear errors without category labels, exact resume of the heads, two-step freezing."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from conftest import CPU_PLANS, TINY_2D_RGB_ID, run_cmd, subprocess_env
from test_checkpoint_exact import _assert_same_optimizer, _state

from nnunet_ssl.data.category_labels import CategoryLabel
from nnunet_ssl.methods.contrastive import CLASSIFIER, PROJECTION
from nnunet_ssl.trainers.dcl import DECODER, PRETRAIN, batch_categories
from nnunet_ssl.trainers.simclr import flip_and_jitter, sample_view_parameters

BUDGET = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}
NO_CATEGORY_ID = 993


# ---------------------------------------------------------------------------------------------- pure parts
def test_batch_categories_hand_computed():
    # num_classes 4 (background + 3), ignore label 4. Labeled patch 0 holds classes 1 and 3; patch 1 only
    # background and the ignore label.
    target = torch.tensor([[[[0, 1], [3, 0]]], [[[0, 0], [0, 4]]]], dtype=torch.float32)
    labels = {"a": CategoryLabel(frozenset({2}), "prep"), "u1": CategoryLabel(frozenset({1, 2}))}
    vectors, stages, keep = batch_categories(target, ["a", "b"], ["u1", "u2"], labels, 4)
    # labeled classes come from the patch mask (not from "a"'s entry), the stage from the entry
    assert vectors.tolist() == [[1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert stages == ["prep", None, None, None]
    assert keep.tolist() == [True, True, True, False]  # u2 has no category label: left out
    # without keys (stages unknown) the labeled vectors are the same
    vectors2, stages2, _ = batch_categories(target, [], [], labels, 4)
    assert vectors2.tolist() == [[1, 0, 1], [0, 0, 0]] and stages2 == [None, None]
    with pytest.raises(ValueError, match="3 labeled keys for 2"):
        batch_categories(target, ["a", "b", "c"], [], labels, 4)


def test_flip_and_jitter_hand_computed():
    x = torch.arange(8.0).reshape(2, 1, 2, 2)  # sample 0: [[0,1],[2,3]], sample 1: [[4,5],[6,7]]
    flips = torch.tensor([[True, False], [False, True]])  # sample 0 flipped along H, sample 1 along W
    scale, shift = torch.tensor([[2.0], [1.0]]), torch.tensor([[0.0], [-1.0]])
    out = flip_and_jitter(x, flips, scale, shift)
    # sample 0: [[2,3],[0,1]]·2 = [[4,6],[0,2]]; sample 1: [[5,4],[7,6]] − 1 = [[4,3],[6,5]]
    assert out.tolist() == [[[[4, 6], [0, 2]]], [[[4, 3], [6, 5]]]]
    assert x.tolist()[0][0] == [[0, 1], [2, 3]]  # input untouched
    x3 = torch.randn(2, 3, 2, 3, 4)
    none = torch.zeros(2, 3, dtype=torch.bool)
    assert torch.equal(flip_and_jitter(x3, none, torch.ones(2, 3), torch.zeros(2, 3)), x3)
    assert torch.equal(flip_and_jitter(x3, torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 3), torch.zeros(2, 3)),
                       x3.flip(2, 3, 4))
    with pytest.raises(ValueError, match="flips must be"):
        flip_and_jitter(x3, torch.zeros(2, 2, dtype=torch.bool), torch.ones(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="scale and shift"):
        flip_and_jitter(x3, none, torch.ones(2, 1), torch.zeros(2, 3))


def test_sample_view_parameters_deterministic_and_in_range():
    draw = lambda: sample_view_parameters((4, 3, 8, 8), torch.Generator().manual_seed(5), 0.5, 0.2, 0.1)
    (f1, s1, b1), (f2, s2, b2) = draw(), draw()
    assert torch.equal(f1, f2) and torch.equal(s1, s2) and torch.equal(b1, b2)
    assert f1.shape == (4, 2) and s1.shape == b1.shape == (4, 3)
    assert bool(((s1 >= 0.8) & (s1 <= 1.2)).all())
    f, s, b = sample_view_parameters((2, 1, 4, 4, 4), torch.Generator().manual_seed(0), 0.0, 0.0, 0.0)
    assert not f.any() and f.shape == (2, 3) and bool((s == 1).all()) and bool((b == 0).all())


# ---------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def no_category_dataset(tiny_2d_rgb):
    """tiny_2d_rgb copied to another dataset id (raw and preprocessed), without categoryLabels.json."""
    name = f"Dataset{NO_CATEGORY_ID:03d}_SSLTinyRGBNoCategories"
    raw = os.path.join(os.environ["nnUNet_raw"], name)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], name)
    for src, dst in ((tiny_2d_rgb["raw"], raw), (tiny_2d_rgb["preprocessed"], pre)):
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
    os.remove(os.path.join(raw, "categoryLabels.json"))
    for plans in ("nnUNetPlans.json", f"{CPU_PLANS}.json"):
        path = os.path.join(pre, plans)
        with open(path) as f:
            p = json.load(f)
        p["dataset_name"] = name
        with open(path, "w") as f:
            json.dump(p, f)
    return {"id": NO_CATEGORY_ID, "name": name, "raw": raw}


def test_missing_category_labels_one_sentence_nothing_lost(no_category_dataset):
    ds = no_category_dataset
    fold = os.path.join(os.environ["nnUNet_results"], ds["name"], f"nnUNetTrainerDCL__{CPU_PLANS}__2d", "fold_0")
    os.makedirs(fold, exist_ok=True)
    earlier = os.path.join(fold, "checkpoint_final.pth")
    with open(earlier, "wb") as f:
        f.write(b"an earlier run")
    p = run_cmd(["nnUNetv2_train", str(ds["id"]), "2d", "0", "-tr", "nnUNetTrainerDCL", "-p", CPU_PLANS, "-device",
                 "cpu"], subprocess_env(nnUNet_ssl_overrides=json.dumps(BUDGET)), check=False)
    assert p.returncode != 0
    message = [line for line in p.stderr.splitlines() if line.startswith("nnunet_ssl: error:")]
    assert len(message) == 1, p.stderr[-2000:]
    assert "nnUNetTrainerDCL trains on image-level category labels" in message[0]
    assert os.path.join(ds["raw"], "categoryLabels.json") in message[0] and "does not exist" in message[0]
    assert "Traceback" not in p.stderr + p.stdout
    with open(earlier, "rb") as f:
        assert f.read() == b"an earlier run"
    assert [n for n in os.listdir(fold) if n.endswith(".pth")] == ["checkpoint_final.pth"]


def test_no_category_label_for_unlabeled_images(no_category_dataset):
    from nnunet_ssl.runner import build_trainer

    path = os.path.join(no_category_dataset["raw"], "categoryLabels.json")
    with open(path, "w") as f:
        json.dump({}, f)  # only the masks of the pixel-labeled cases would give category labels
    try:
        t = build_trainer(NO_CATEGORY_ID, "2d", 0, "nnUNetTrainerDCLCls", CPU_PLANS, "cpu", budget=BUDGET)
        with pytest.raises(SystemExit, match="gives no image without a pixel label"):
            t.on_train_start()
    finally:
        os.remove(path)


# ---------------------------------------------------------------------------------------------- resume, heads
@pytest.mark.e2e
def test_resume_restores_heads_and_network_weights_stay_plain(tiny_2d_rgb):
    from nnunet_ssl.runner import build_trainer, train
    from nnunet_ssl.utils.modules import unwrap
    from nnunetv2.run.run_training import maybe_load_checkpoint

    trainer = "nnUNetTrainerDCLCls"
    t1 = train(TINY_2D_RGB_ID, "2d", 0, trainer, CPU_PLANS, "cpu", validate=False, budget=BUDGET)
    ckpt = torch.load(os.path.join(t1.output_folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    # network_weights: exactly the plain nnU-Net network; the heads live in the nnunet_ssl state
    assert ckpt["network_weights"].keys() == unwrap(t1.network).state_dict().keys()
    assert set(ckpt["nnunet_ssl"]["networks"]) == {"network", PROJECTION, CLASSIFIER}
    assert len(t1.extra_networks[PROJECTION].heads) == len(t1.encoder_taps.taps) > 1  # one head per stage
    # heads are in the optimizer
    opt_params = {id(p) for g in t1.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in opt_params for name in (PROJECTION, CLASSIFIER) for p in t1.extra_networks[name].parameters())

    t2 = build_trainer(TINY_2D_RGB_ID, "2d", 0, trainer, CPU_PLANS, "cpu", continue_training=True,
                       budget={**BUDGET, "num_epochs": 2})
    maybe_load_checkpoint(t2, True, False, None)
    s1, s2 = _state(t1), _state(t2)
    assert s1.keys() == s2.keys() and any(k.startswith(f"net/{CLASSIFIER}/") for k in s1)
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    _assert_same_optimizer(t1, t2)
    assert t2.global_step == 2 and torch.equal(t1.generator.get_state(), t2.generator.get_state())


# ---------------------------------------------------------------------------------------------- two-step
def _parts(t):
    from nnunet_ssl.heads.projection import encoder_module
    from nnunet_ssl.utils.modules import unwrap

    enc = {id(p) for p in encoder_module(t.network).parameters()}
    net = unwrap(t.network)
    return {"encoder": [p.detach().clone() for p in net.parameters() if id(p) in enc],
            "decoder": [p.detach().clone() for p in net.parameters() if id(p) not in enc],
            "heads": [p.detach().clone() for n in (PROJECTION, CLASSIFIER) for p in t.extra_networks[n].parameters()]}


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.e2e
def test_two_step_freezes_and_resumes_across_the_boundary(tiny_2d_rgb, monkeypatch):
    from nnunet_ssl.heads.projection import encoder_module
    from nnunet_ssl.runner import build_trainer, train
    from nnunetv2.run.run_training import maybe_load_checkpoint

    trainer = "nnUNetTrainerDCLTwoStep"
    # run 1: 2 iterations, ceil(0.75·2) = 2 of them pre-train the encoder
    monkeypatch.setenv("nnUNet_ssl_overrides", json.dumps({"pretrain_fraction": 0.75}))
    t1 = train(TINY_2D_RGB_ID, "2d", 0, trainer, CPU_PLANS, "cpu", validate=False, budget=BUDGET)
    assert t1.phase == PRETRAIN and t1.global_step == 2

    # run 2 (--c, 4 iterations in all): ceil(0.75·4) = 3, so step 2 pre-trains and step 3 trains the decoder
    t2 = build_trainer(TINY_2D_RGB_ID, "2d", 0, trainer, CPU_PLANS, "cpu", continue_training=True,
                       budget={**BUDGET, "num_epochs": 2})
    maybe_load_checkpoint(t2, True, False, None)
    assert t2.phase == PRETRAIN and t2.global_step == 2
    t2.on_train_start()
    t2.on_train_epoch_start()
    before = _parts(t2)
    out = t2.train_step(next(t2.dataloader_train))
    after = _parts(t2)
    assert t2.phase == PRETRAIN and "loss_dcl" in out["ssl_terms"] and "loss_seg" not in out["ssl_terms"]
    assert _same(before["decoder"], after["decoder"])  # frozen in step 1: bit-identical
    assert not _same(before["encoder"], after["encoder"]) and not _same(before["heads"], after["heads"])

    out = t2.train_step(next(t2.dataloader_train))
    last = _parts(t2)
    assert t2.phase == DECODER and float(out["ssl_terms"]["phase"]) == 1.0
    assert _same(after["encoder"], last["encoder"]) and _same(after["heads"], last["heads"])  # frozen in step 2
    assert not _same(after["decoder"], last["decoder"])
    t2.on_train_epoch_start()
    assert not encoder_module(t2.network).training
    assert not any(p.requires_grad for p in encoder_module(t2.network).parameters())

    # a checkpoint written in step 2 resumes in step 2, encoder frozen again
    t2.current_epoch = 1
    t2.save_checkpoint(os.path.join(t2.output_folder, "checkpoint_final.pth"))  # --c prefers the final one
    t3 = build_trainer(TINY_2D_RGB_ID, "2d", 0, trainer, CPU_PLANS, "cpu", continue_training=True,
                       budget={**BUDGET, "num_epochs": 3})
    maybe_load_checkpoint(t3, True, False, None)
    assert t3.phase == DECODER and t3.global_step == 4
    assert not any(p.requires_grad for p in encoder_module(t3.network).parameters())
    assert _same(last["encoder"], _parts(t3)["encoder"])



# ---------------------------------------------------------------------------------------------- segmentation loss
def test_segmentation_loss_dice_ce_by_default_gdl_focal_as_paper_variant(tiny_2d_rgb):
    """L_seg is nnU-Net's own Dice + CE (its _build_loss, deep supervision) for every contrastive trainer;
    the seed's GDL + focal only in the named *_GDLFocal variants, inside the same deep-supervision wrapper."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    from nnunet_ssl.losses.segmentation import GeneralisedDiceFocalLoss
    from nnunet_ssl.runner import build_trainer

    expected = {"nnUNetTrainerDCL": DC_and_CE_loss, "nnUNetTrainerDCLCls": DC_and_CE_loss,
                "nnUNetTrainerDCLTwoStep": DC_and_CE_loss, "nnUNetTrainerSimCLR": DC_and_CE_loss,
                "nnUNetTrainerDCL_GDLFocal": GeneralisedDiceFocalLoss,
                "nnUNetTrainerDCLCls_GDLFocal": GeneralisedDiceFocalLoss}
    weights = None
    for name, loss_cls in expected.items():
        t = build_trainer(TINY_2D_RGB_ID, "2d", 0, name, CPU_PLANS, "cpu", budget=BUDGET)
        t.initialize()
        assert isinstance(t.loss, DeepSupervisionWrapper), name
        assert type(t.loss.loss) is loss_cls, (name, type(t.loss.loss).__name__)
        weights = weights if weights is not None else list(t.loss.weight_factors)
        assert list(t.loss.weight_factors) == weights, name  # nnU-Net's per-scale weights in both
    assert {"gdl_weight", "focal_weight", "focal_gamma"} & set(t.hyperparameter_names()) == \
        {"gdl_weight", "focal_weight", "focal_gamma"}


def test_unused_base_hyperparameters_declared():
    from nnunet_ssl.trainers.dcl import nnUNetTrainerDCL, nnUNetTrainerDCLCls_GDLFocal, nnUNetTrainerDCLTwoStep
    from nnunet_ssl.trainers.simclr import nnUNetTrainerSimCLR

    for cls in (nnUNetTrainerDCL, nnUNetTrainerDCLTwoStep, nnUNetTrainerDCLCls_GDLFocal):
        assert cls.unused_hyperparameters == ("consistency_weight", "rampup_fraction", "ema_decay", "seed")
        assert not {"gdl_weight", "consistency_weight", "seed"} & set(nnUNetTrainerDCL.hyperparameter_names())
    # SimCLR draws its second view from the trainer's generator: seed is used
    assert nnUNetTrainerSimCLR.unused_hyperparameters == ("consistency_weight", "rampup_fraction", "ema_decay")
    assert "seed" in nnUNetTrainerSimCLR.hyperparameter_names()
