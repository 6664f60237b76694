"""CPU end-to-end run of mask propagation on generated volumes whose structures drift smoothly from slice
to slice (``SyntheticSpec(motion=...)``):

1. nnU-Net plans and preprocesses the dataset (2d), the plans are shrunk for the CPU;
2. ``nnUNetv2_train ... -tr nnUNetTrainerMaskPropagation`` trains two iterations (fold 1); the run is resumed
   (``--c``) for a second epoch; each run ends with the trainer's final validation (propagation from
   ground-truth reference slices, nnU-Net's export and metrics). A seeded run of 2 x 100 iterations (fold 0,
   the same split) is the propagator whose quality is checked: propagating from one reference slice per
   organ must beat copying that slice's mask to every slice by a wide margin (binary Dice per organ). The
   quality runs are seeded (torch, numpy, random) because one validation case scores noisily: unseeded,
   the same budget gave a mean organ Dice anywhere from ~0.4 to ~0.85 between runs;
3. ``nnunet-ssl propagate`` with a 2d ``nnUNetTrainer`` as the reference model writes label maps with the
   geometry of the input images, skips finished cases on a rerun, and refuses bad input (a 3d reference
   model, another label set or dataset, a propagator as reference, images with another channel count) with
   one sentence before predicting anything;
4. ``nnUNetv2_predict`` on the propagator stops with one line naming ``nnunet-ssl propagate``.

The subprocesses run with ``OMP_WAIT_POLICY=PASSIVE``: nnU-Net sets two torch threads on the CPU, and on a
loaded machine spinning OpenMP threads made each propagation step ~20× slower.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import CPU_PLANS, run_cmd, subprocess_env
from nnunet_ssl import cli
from nnunet_ssl.catalog import shipped_trainers

DATASET_ID = 986
DATASET_NAME = f"Dataset{DATASET_ID:03d}_PropagationTiny"
TRAINER = "nnUNetTrainerMaskPropagation"
# two stages: keys at half resolution (16 x 16 on 32 x 32 slices); Adam at 1e-3 (the trainer's default)
ARCHITECTURE = {"features_per_stage": [8, 16], "key_dim": 16, "value_dim": 32}
FIRST = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}
RESUMED = {"num_epochs": 2, "num_iterations_per_epoch": 4, "num_val_iterations_per_epoch": 1}
QUALITY = {"num_epochs": 2, "num_iterations_per_epoch": 100, "num_val_iterations_per_epoch": 1}
RESUME_FOLD, QUALITY_FOLD = 1, 0


@pytest.fixture(scope="module")
def propagation_dataset():
    """4 labeled (3 train, 1 validation) + 1 test volume of 24 x 32 x 32 voxels, structures drifting 0.6
    voxel per slice; planned (2d) and shrunk to 32 x 32 patches."""
    from nnunet_ssl.data.synthetic import SyntheticSpec, generate_dataset
    from nnunet_ssl.pipeline import plan_and_preprocess
    from nnunet_ssl.planners.shrink import write_shrunk_plans

    raw = os.path.join(os.environ["nnUNet_raw"], DATASET_NAME)
    spec = SyntheticSpec(num_labeled=4, num_unlabeled=0, num_test=1, shape=(24, 32, 32), spacing=(3.0, 1.0, 1.0),
                         motion=0.6, seed=3)
    summary = generate_dataset(raw, spec)
    pre = plan_and_preprocess(DATASET_ID, ("2d",), num_processes=1, verify=False)
    write_shrunk_plans(pre, "2d", "nnUNetPlans", CPU_PLANS, patch_size=(32, 32), features_per_stage=(8, 16, 32),
                       batch_size=4)
    labeled = sorted(summary["labeled"])
    with open(os.path.join(pre, "splits_final.json"), "w") as f:  # folds 0 and 1: the same split
        json.dump([{"train": labeled[:-1], "val": labeled[-1:]}] * 2, f)
    return {"raw": raw, "preprocessed": pre, "summary": summary}


def _model_folder(trainer: str) -> str:
    return os.path.join(os.environ["nnUNet_results"], DATASET_NAME, f"{trainer}__{CPU_PLANS}__2d")


def _env(**extra) -> dict:
    return subprocess_env(OMP_WAIT_POLICY="PASSIVE", nnUNet_n_proc_DA=0, **extra)


def _seed(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture(scope="module")
def trained_models(propagation_dataset):
    """The propagator: ``nnUNetv2_train`` for two iterations (fold 1), then resumed (``--c``, in this process
    with nnU-Net's own ``maybe_load_checkpoint`` + ``run_training`` + final validation, as ``nnunet-ssl train
    --c`` runs it) for a second epoch; a seeded run long enough for the quality check (fold 0); and a seeded
    2d nnUNetTrainer (fold 0) as the reference model."""
    from nnunet_ssl.overrides import ENV_VAR
    from nnunet_ssl.runner import train

    run_cmd(["nnUNetv2_train", str(DATASET_ID), "2d", str(RESUME_FOLD), "-tr", TRAINER, "-p", CPU_PLANS,
             "-device", "cpu"], _env(**{ENV_VAR: json.dumps({**FIRST, **ARCHITECTURE})}))
    resumed = os.path.join(_model_folder(TRAINER), f"fold_{RESUME_FOLD}")
    first = torch.load(os.path.join(resumed, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    threads, saved = torch.get_num_threads(), os.environ.get(ENV_VAR)
    torch.set_num_threads(1)  # in this process: one thread is several times faster on a loaded 2-core machine
    os.environ[ENV_VAR] = json.dumps(ARCHITECTURE)
    try:
        train(DATASET_ID, "2d", RESUME_FOLD, TRAINER, CPU_PLANS, "cpu", continue_training=True, budget=RESUMED)
        _seed(0)
        train(DATASET_ID, "2d", QUALITY_FOLD, TRAINER, CPU_PLANS, "cpu", budget=QUALITY)
        os.environ.pop(ENV_VAR)
        _seed(0)
        train(DATASET_ID, "2d", QUALITY_FOLD, "nnUNetTrainer", CPU_PLANS, "cpu", validate=False,
              budget={"num_epochs": 4, "num_iterations_per_epoch": 40, "num_val_iterations_per_epoch": 1})
    finally:
        torch.set_num_threads(threads)
        if saved is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = saved
    return {"propagator": _model_folder(TRAINER), "reference": _model_folder("nnUNetTrainer"), "first": first,
            "resumed": resumed, "quality": os.path.join(_model_folder(TRAINER), f"fold_{QUALITY_FOLD}")}


@pytest.mark.e2e
def test_train_resume_validate(trained_models):
    fold = trained_models["resumed"]
    first = trained_models["first"]
    assert first["current_epoch"] == 1 and first["trainer_name"] == TRAINER
    assert first["nnunet_ssl"]["global_step"] == FIRST["num_iterations_per_epoch"]
    assert first["nnunet_ssl"]["extra"]["propagator"]["architecture"]["features_per_stage"] == [8, 16]
    final = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2
    # resumed, not restarted: the step counter (OHEM schedule) continued from the first run
    assert final["nnunet_ssl"]["global_step"] == FIRST["num_iterations_per_epoch"] + RESUMED["num_iterations_per_epoch"]
    losses = final["logging"]["train_losses"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert len(final["logging"]["dice_per_class_or_region"]) == 2  # per-organ pseudo Dice of each epoch
    # final validation: nnU-Net's metrics of the exported label maps, and propagation vs copying
    summary = json.load(open(os.path.join(fold, "validation", "summary.json")))
    assert set(summary["mean"]) == {"1", "2", "3"} and len(summary["metric_per_case"]) == 1
    report = json.load(open(os.path.join(fold, "validation", "propagation_vs_copy.json")))
    assert set(report["mean"]["propagation"]) == set(report["mean"]["copy_reference"]) == {"1", "2", "3"}


@pytest.mark.e2e
def test_propagation_beats_copying(trained_models):
    report = json.load(open(os.path.join(trained_models["quality"], "validation", "propagation_vs_copy.json")))
    prop, copy = report["mean"]["propagation"], report["mean"]["copy_reference"]
    organs = sorted(prop)
    gain = np.mean([prop[c] for c in organs]) - np.mean([copy[c] for c in organs])
    print(f"propagation {prop}, copying the reference {copy}, mean gain {gain:.3f}")
    assert gain > 0.1, report  # mean over organs of the binary Dice, propagation minus copying
    assert prop["1"] > copy["1"], report  # the large organ, tracked over ~12 slices


@pytest.mark.e2e
def test_propagate_command_writes_input_geometry_and_resumes(trained_models, propagation_dataset, tmp_path,
                                                              capsys):
    import SimpleITK as sitk

    images = os.path.join(propagation_dataset["raw"], "imagesTs")
    out = tmp_path / "out"
    args = ["propagate", "-i", images, "-o", str(out), "--reference", trained_models["reference"],
            "--propagator", trained_models["propagator"], "-f", "0", "-device", "cpu", "--slices", "6",
            "--per-organ", "2", "--disable_tta"]
    assert cli.main(args) == 0
    case = propagation_dataset["summary"]["test"][0]
    written = sitk.ReadImage(str(out / f"{case}.nii.gz"))
    source = sitk.ReadImage(os.path.join(images, f"{case}_0000.nii.gz"))
    assert written.GetSize() == source.GetSize() and written.GetSpacing() == source.GetSpacing()
    assert written.GetOrigin() == source.GetOrigin() and written.GetDirection() == source.GetDirection()
    labels = set(np.unique(sitk.GetArrayFromImage(written)).tolist())
    assert 1 in labels and labels <= {0, 1, 2, 3}  # the reference model found the organ; it was propagated
    assert sorted(os.listdir(out)) == sorted(["propagate_settings.json", f"{case}.nii.gz"])  # no temporary file
    capsys.readouterr()
    assert cli.main(args) == 0  # rerun: the finished case is kept
    assert "0 case(s) written, 1 already done" in capsys.readouterr().out
    # other settings into the same folder: refused, the finished case untouched
    assert cli.main([*args[:-5], "--slices", "8", "--per-organ", "2", "--disable_tta"]) == 2
    assert "other settings (slices)" in capsys.readouterr().err


def _bad_reference(src: str, dst: str, edit) -> str:
    shutil.copytree(src, dst)
    edit(dst)
    return dst


def _edit_json(path: str, change) -> None:
    with open(path) as f:
        data = json.load(f)
    change(data)
    with open(path, "w") as f:
        json.dump(data, f)


def _as_3d(folder: str) -> None:
    def plans(p):
        cfg = dict(p["configurations"]["2d"], patch_size=[16, 32, 32])
        p["configurations"]["3d_fullres"] = cfg
    _edit_json(os.path.join(folder, "plans.json"), plans)
    path = os.path.join(folder, "fold_0", "checkpoint_final.pth")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt["init_args"]["configuration"] = "3d_fullres"
    torch.save(ckpt, path)


@pytest.mark.e2e
def test_propagate_refuses_bad_input_before_predicting(trained_models, propagation_dataset, tmp_path, capsys):
    ref, prop = trained_models["reference"], trained_models["propagator"]
    images = os.path.join(propagation_dataset["raw"], "imagesTs")
    case = propagation_dataset["summary"]["test"][0]
    two_channels = tmp_path / "two_channels"
    two_channels.mkdir()
    for c in ("0000", "0001"):
        shutil.copy(os.path.join(images, f"{case}_0000.nii.gz"), two_channels / f"{case}_{c}.nii.gz")
    cases = {
        "a 3d model": (_bad_reference(ref, str(tmp_path / "ref3d"), _as_3d), images, "is a 3d model"),
        "another label set": (_bad_reference(ref, str(tmp_path / "labels"), lambda d: _edit_json(
            os.path.join(d, "dataset.json"), lambda j: j["labels"].update(extra=4))), images, "label set"),
        "another dataset": (_bad_reference(ref, str(tmp_path / "dataset"), lambda d: _edit_json(
            os.path.join(d, "plans.json"), lambda p: p.update(dataset_name="Dataset001_Other"))), images,
            "trained on Dataset001_Other and the propagator on"),
        "a propagator as reference": (prop, images, "holds a mask propagator"),
        "two channels": (ref, str(two_channels), "has 2 channel file(s)"),
    }
    for what, (reference, inputs, message) in cases.items():
        out = tmp_path / f"out_{what.replace(' ', '_')}"
        code = cli.main(["propagate", "-i", inputs, "-o", str(out), "--reference", reference, "--propagator", prop,
                         "-f", "0", "-device", "cpu"])
        err = capsys.readouterr().err.strip()
        assert code == 2, what
        assert err.startswith("nnunet-ssl propagate: error: ") and "\n" not in err and message in err, (what, err)
        assert not out.exists() or not any(f.endswith(".nii.gz") for f in os.listdir(out)), what


@pytest.mark.e2e
def test_nnunet_predict_names_the_propagate_command(trained_models, propagation_dataset, tmp_path):
    p = run_cmd(["nnUNetv2_predict", "-d", str(DATASET_ID), "-c", "2d", "-tr", TRAINER, "-p", CPU_PLANS, "-f", "0",
                 "-i", os.path.join(propagation_dataset["raw"], "imagesTs"), "-o", str(tmp_path / "pred"),
                 "-device", "cpu", "-npp", "0", "-nps", "0"], _env(), check=False)
    assert p.returncode != 0
    assert "nnunet_ssl: error: nnUNetTrainerMaskPropagation is a mask propagator" in p.stderr
    assert "nnunet-ssl propagate" in p.stderr and "Traceback" not in p.stderr


def test_propagator_is_not_a_registry_segmentation_trainer():
    from nnunet_ssl.trainers.mask_propagation import nnUNetTrainerMaskPropagation

    assert TRAINER not in shipped_trainers()  # nnUNetv2_predict does not apply: not in the predict-based e2e test
    assert nnUNetTrainerMaskPropagation.nnunet_predict_compatible is False
    names = nnUNetTrainerMaskPropagation.hyperparameter_names()
    assert {"sequence_length", "features_per_stage", "ohem_top_p", "lovasz_weight", "memory_every"} <= set(names)
    assert not {"ema_decay", "consistency_weight", "rampup_fraction", "unlabeled_batch_size"} & set(names)
