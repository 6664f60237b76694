"""Unlabeled cases: stale after re-planning, bad raw images, Ctrl-C, many failures (issue 13: 1, 2, 6, 9).

Every test works on its own copy of the tiny 3D dataset (a new dataset id), so the shared one is untouched.
Bad inputs tried, and what the user now gets:

- re-planning (new spacing) after the unlabeled cases were preprocessed: the trainer's start redoes
  them, logging "N unlabeled case(s) in <folder> were preprocessed with other plans (re-planned since,
  or an interrupted run); preprocessing them again with the current plans";
- ``preprocess-unlabeled --overwrite`` interrupted half-way after re-planning: the next run redoes the
  cases still made with the old plans (each case carries the fingerprint of its plans), it does not
  report them as done;
- a 2D image in the 3D dataset: "<case>: is a 2D image (shape (1, 20, 20)) but the labeled cases are 3D volumes";
- a truncated ``.nii.gz``: "<case>: <file> is truncated (the gzip stream ends early); the file was not copied
  completely";
- NaN or inf voxels read by nnU-Net's NibabelIO (SimpleITK reads NIfTI NaN as 0): "<case>: image holds
  10 NaN/inf voxel(s) of 8000; fix or remove the image";
- a spacing of 0.001 next to labeled 1.0: "<case>: has spacing (0.001, 0.001, 0.001), implausible next to the
  labeled cases' (1, 1, 1)..(1, 1, 1); fix the image header";
- a volume that resampling would blow up (40^3 at spacing 8 -> 320^3): "<case>: would be resampled to shape
  (320, 320, 320), more than 10x the largest labeled case (20, 20, 20); check its size and spacing";
- three files the reader rejects with multi-line C++ messages: one UserError, "3 unlabeled case(s) could not
  be preprocessed and were skipped (...); fix or remove their files in <raw>/imagesUnlabeled and run again:"
  followed by one line per case, "<case>: RuntimeError: Exception thrown in SimpleITK ImageFileReader_Execute: ...";
- Ctrl-C on ``nnunet-ssl preprocess-unlabeled -np 2`` mid-way: it stops within seconds with
  "nnunet-ssl preprocess-unlabeled: interrupted; finished work is kept.", no worker left, every case
  counted as done loads.

In every case the good cases are preprocessed and kept; a bad case is named and skipped.
"""
import gzip
import json
import os
import shutil
import signal
import subprocess
import time
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import CPU_PLANS, subprocess_env
from nnunet_ssl.data import unlabeled
from nnunet_ssl.data.unlabeled import (case_stamp, plans_fingerprint, prepare_unlabeled_for_training,
                                       preprocess_unlabeled, unlabeled_case_ids)
from nnunet_ssl.errors import UserError

pytestmark = pytest.mark.e2e
CONFIG = "3d_fullres"


def clone(tiny_3d, dataset_id: int, keep_unlabeled: bool = True) -> dict:
    """A copy of the planned tiny 3D dataset under a new id: raw images and the files preprocessing needs
    (plans, dataset.json, nnU-Net's fingerprint), no preprocessed cases."""
    name = f"Dataset{dataset_id:03d}_SSLIntegrity"
    raw = os.path.join(os.environ["nnUNet_raw"], name)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], name)
    for folder in (raw, pre):
        shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(tiny_3d["raw"], raw)
    if not keep_unlabeled:
        shutil.rmtree(os.path.join(raw, "imagesUnlabeled"))
        os.makedirs(os.path.join(raw, "imagesUnlabeled"))
    os.makedirs(pre)
    for f in ("dataset.json", "dataset_fingerprint.json"):
        shutil.copy(os.path.join(tiny_3d["preprocessed"], f), pre)
    with open(os.path.join(tiny_3d["preprocessed"], CPU_PLANS + ".json")) as f:
        plans = json.load(f)
    plans["dataset_name"] = name
    write_plans(pre, plans)
    return {"id": dataset_id, "name": name, "raw": raw, "pre": pre, "plans": plans,
            "images": os.path.join(raw, "imagesUnlabeled"), "folder": os.path.join(pre, "nnUNetPlans_3d_fullres_unlabeled")}


def write_plans(pre: str, plans: dict) -> None:
    with open(os.path.join(pre, CPU_PLANS + ".json"), "w") as f:
        json.dump(plans, f, indent=1)


def replan(ds: dict, spacing) -> dict:
    """What a second nnUNetv2_plan_and_preprocess with a new target spacing leaves: a new plans file."""
    plans = json.loads(json.dumps(ds["plans"]))
    plans["configurations"][CONFIG]["spacing"] = list(spacing)
    write_plans(ds["pre"], plans)
    ds["plans"] = plans
    return plans


def write_volume(path: str, array: np.ndarray, spacing) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    img.SetSpacing([float(s) for s in spacing[::-1]])
    sitk.WriteImage(img, path, useCompression=True)


def load_case(folder: str, case: str):
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    data, _, _, props = nnUNetDatasetBlosc2(folder).load_case(case)
    return np.asarray(data[:]), props


def fake_trainer(ds: dict, logs: list):
    """The attributes nnUNetTrainerSemiSupervised.ensure_unlabeled_preprocessed reads, for a CPU-cheap call."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    with open(os.path.join(ds["pre"], "dataset.json")) as f:
        dataset_json = json.load(f)
    return SimpleNamespace(plans_manager=PlansManager(ds["plans"]), configuration_name=CONFIG, local_rank=0,
                           is_ddp=False, dataset_json=dataset_json, unlabeled_folder=ds["folder"],
                           print_to_log_file=lambda *a, **k: logs.append(" ".join(map(str, a))))


def test_trainer_start_redoes_cases_made_with_old_plans(tiny_3d):
    """Item 1: re-planning changes the spacing; the next trainer start must not train on the old geometry."""
    from nnunet_ssl.trainers.semisupervised import nnUNetTrainerSemiSupervised

    ds = clone(tiny_3d, 961)
    first = preprocess_unlabeled(ds["id"], CONFIG, CPU_PLANS, num_processes=1, progress=False)
    assert sorted(first.written) == sorted(tiny_3d["summary"]["unlabeled"])
    assert load_case(ds["folder"], first.written[0])[0].shape == (1, 20, 20, 20)

    plans = replan(ds, (2.0, 2.0, 2.0))
    logs = []
    cases = nnUNetTrainerSemiSupervised.ensure_unlabeled_preprocessed(fake_trainer(ds, logs))
    assert sorted(cases) == sorted(tiny_3d["summary"]["unlabeled"])
    for case in cases:  # 20 voxels of 1 mm -> 10 voxels of 2 mm
        data, props = load_case(ds["folder"], case)
        assert data.shape == (1, 10, 10, 10), case
        assert props[unlabeled.STAMP_KEY] == plans_fingerprint(plans, CONFIG)
    assert any("6 unlabeled case(s)" in line and "other plans" in line for line in logs), logs
    # a start with nothing stale does no work and says nothing about stale cases
    logs.clear()
    assert sorted(nnUNetTrainerSemiSupervised.ensure_unlabeled_preprocessed(fake_trainer(ds, logs))) == sorted(cases)
    assert not [line for line in logs if "other plans" in line or "preprocessed" in line], logs


def test_interrupted_overwrite_is_redone_not_counted_as_done(tiny_3d, monkeypatch):
    """Item 1: --overwrite after re-planning, interrupted after 2 of 6 cases; the rerun must redo the other 4."""
    ds = clone(tiny_3d, 962)
    preprocess_unlabeled(ds["id"], CONFIG, CPU_PLANS, num_processes=1, progress=False)
    replan(ds, (2.0, 2.0, 2.0))

    real, calls = unlabeled._preprocess_one, []

    def interrupted_after_two(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(unlabeled, "_preprocess_one", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        preprocess_unlabeled(ds["id"], CONFIG, CPU_PLANS, num_processes=1, overwrite=True, progress=False)
    monkeypatch.setattr(unlabeled, "_preprocess_one", real)
    fingerprint = plans_fingerprint(ds["plans"], CONFIG)
    assert unlabeled_case_ids(ds["folder"], fingerprint) == sorted(calls)  # only the two redone count as done

    again = preprocess_unlabeled(ds["id"], CONFIG, CPU_PLANS, num_processes=1, progress=False)
    assert sorted(again.skipped) == sorted(calls)
    assert sorted(again.stale) == sorted(again.written) == sorted(set(tiny_3d["summary"]["unlabeled"]) - set(calls))
    for case in tiny_3d["summary"]["unlabeled"]:
        assert load_case(ds["folder"], case)[0].shape == (1, 10, 10, 10), case
    with open(ds["folder"] + ".json") as f:  # the record, written last, lists exactly the valid cases
        record = json.load(f)
    assert record["plans_fingerprint"] == fingerprint
    assert record["cases"] == sorted(tiny_3d["summary"]["unlabeled"])


def _good_volume(tiny_3d) -> np.ndarray:
    import SimpleITK as sitk

    path = os.path.join(tiny_3d["raw"], "imagesUnlabeled", tiny_3d["summary"]["unlabeled"][0] + "_0000.nii.gz")
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def test_bad_unlabeled_images_are_named_and_skipped(tiny_3d):
    """Item 2: each bad image is reported by name and left out, the good ones are kept (command and trainer)."""
    ds = clone(tiny_3d, 963)
    good = _good_volume(tiny_3d)
    img = lambda case: os.path.join(ds["images"], f"{case}_0000.nii.gz")  # noqa: E731
    write_volume(img("bad_2d"), good[10], (1.0, 1.0))
    write_volume(img("bad_trunc"), good, (1.0, 1.0, 1.0))
    with open(img("bad_trunc"), "rb") as f:
        whole = f.read()
    with open(img("bad_trunc"), "wb") as f:
        f.write(whole[:len(whole) // 2])
    write_volume(img("bad_spacing"), good, (0.001, 0.001, 0.001))
    write_volume(img("bad_huge"), np.tile(good, (2, 2, 2)), (8.0, 8.0, 8.0))
    expected = {"bad_2d": "is a 2D image (shape (1, 20, 20)) but the labeled cases are 3D volumes",
                "bad_trunc": "bad_trunc_0000.nii.gz is truncated",
                "bad_spacing": "has spacing (0.001, 0.001, 0.001), implausible next to the labeled cases' "
                               "(1, 1, 1)..(1, 1, 1)",
                "bad_huge": "would be resampled to shape (320, 320, 320), more than 10x the largest labeled "
                            "case (20, 20, 20)"}

    with pytest.raises(UserError) as e:
        preprocess_unlabeled(ds["id"], CONFIG, CPU_PLANS, num_processes=1, progress=False)
    message = str(e.value)
    assert message.startswith("4 unlabeled case(s) could not be preprocessed and were skipped (6 written")
    for case, why in expected.items():
        assert f"\n  {case}: {why}" in message, (case, message)
    good_cases = sorted(tiny_3d["summary"]["unlabeled"])
    assert unlabeled_case_ids(ds["folder"]) == good_cases
    for case in good_cases:
        data, _ = load_case(ds["folder"], case)
        assert data.shape == (1, 20, 20, 20) and np.isfinite(data).all()

    # the trainer's start: the same checks, the bad cases logged one line each, training goes on without them
    logs = []
    cases = prepare_unlabeled_for_training(ds["name"], CONFIG, CPU_PLANS, num_processes=1, log=logs.append)
    assert cases == good_cases
    skipped = [line for line in logs if line.startswith("WARNING: unlabeled case skipped")]
    assert len(skipped) == 4 and all(any(f": {c}: " in line for line in skipped) for c in expected), logs


def test_nan_voxels_with_nibabel_reader(tiny_3d):
    """Item 2: nnU-Net's NibabelIO passes NaN/inf voxels through (SimpleITK reads NIfTI NaN as 0); the cases
    are refused, the good one kept."""
    ds = clone(tiny_3d, 964, keep_unlabeled=False)
    ds["plans"]["image_reader_writer"] = "NibabelIO"
    write_plans(ds["pre"], ds["plans"])
    good = _good_volume(tiny_3d)
    inf, nan = good.copy(), good.copy()
    inf[0, 0, :3] = np.inf
    nan[5, 5, :10] = np.nan
    write_volume(os.path.join(ds["images"], "ok_0000.nii.gz"), good, (1.0, 1.0, 1.0))
    write_volume(os.path.join(ds["images"], "inf_0000.nii.gz"), inf, (1.0, 1.0, 1.0))
    write_volume(os.path.join(ds["images"], "nan_0000.nii.gz"), nan, (1.0, 1.0, 1.0))
    with pytest.raises(UserError) as e:
        preprocess_unlabeled(ds["id"], CONFIG, CPU_PLANS, num_processes=1, progress=False)
    assert "\n  inf: image holds 3 NaN/inf voxel(s) of 8000;" in str(e.value)
    assert "\n  nan: image holds 10 NaN/inf voxel(s) of 8000;" in str(e.value)
    assert unlabeled_case_ids(ds["folder"]) == ["ok"]
    assert np.isfinite(load_case(ds["folder"], "ok")[0]).all()


def test_failure_message_names_every_failed_case(tiny_3d):
    """Item 9: three files the reader rejects with multi-line C++ messages -> one UserError, one line per case."""
    ds = clone(tiny_3d, 965, keep_unlabeled=False)
    write_volume(os.path.join(ds["images"], "ok_0000.nii.gz"), _good_volume(tiny_3d), (1.0, 1.0, 1.0))
    bad = ["junk_a", "junk_b", "junk_c"]
    for case in bad:  # a valid gzip stream that holds no image: SimpleITK's multi-line reader error
        with open(os.path.join(ds["images"], f"{case}_0000.nii.gz"), "wb") as f:
            f.write(gzip.compress(b"not an image " * 20))
    with pytest.raises(UserError) as e:
        preprocess_unlabeled(ds["id"], CONFIG, CPU_PLANS, num_processes=1, progress=False)
    lines = str(e.value).split("\n")
    assert lines[0].startswith("3 unlabeled case(s) could not be preprocessed and were skipped (1 written")
    assert lines[0].endswith(f"fix or remove their files in {ds['raw']}/imagesUnlabeled and run again:")
    assert [ln.split(":")[0].strip() for ln in lines[1:]] == bad
    for ln in lines[1:]:
        assert "SimpleITK" in ln and "sitk::ERROR" not in ln and len(ln) <= 170, ln
    assert unlabeled_case_ids(ds["folder"]) == ["ok"]


def _processes_in_group(pgid: int) -> list:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(pid))
    return found


def test_ctrl_c_stops_workers_and_keeps_finished_cases(tiny_3d, tmp_path):
    """Item 6: SIGINT to the process group (what a terminal's Ctrl-C does) of preprocess-unlabeled -np 2 mid-way."""
    ds = clone(tiny_3d, 966, keep_unlabeled=False)
    good = _good_volume(tiny_3d)
    n = 40
    for i in range(n):  # spacing 4 -> resampled to 80^3: slow enough to be caught mid-way
        write_volume(os.path.join(ds["images"], f"slow_{i:03d}_0000.nii.gz"), good, (4.0, 4.0, 4.0))
    fingerprint = plans_fingerprint(ds["plans"], CONFIG)
    out, err = open(tmp_path / "stdout", "w"), open(tmp_path / "stderr", "w")
    proc = subprocess.Popen(["nnunet-ssl", "preprocess-unlabeled", "-d", str(ds["id"]), "-c", CONFIG, "-p", CPU_PLANS,
                             "-np", "2"], env=subprocess_env(), stdout=out, stderr=err, start_new_session=True)
    pgid = proc.pid
    try:
        deadline = time.time() + 600
        while not unlabeled_case_ids(ds["folder"]) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "preprocess-unlabeled ended before it could be interrupted"
        os.killpg(pgid, signal.SIGINT)
        sent = time.time()
        try:  # prompt, not timed: the 39 other cases would take minutes; 60 s leaves room for a loaded machine
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"preprocess-unlabeled still running 60 s after Ctrl-C: "
                        f"{(tmp_path / 'stderr').read_text()[-2000:]}")
        stopped_after = time.time() - sent
        for _ in range(50):  # multiprocessing's resource tracker leaves once its parent is gone
            if not _processes_in_group(pgid):
                break
            time.sleep(0.1)
        assert _processes_in_group(pgid) == [], "worker processes left after Ctrl-C"
    finally:
        if proc.poll() is None or _processes_in_group(pgid):
            os.killpg(pgid, signal.SIGKILL)
            proc.wait()
        out.close()
        err.close()
    stderr = (tmp_path / "stderr").read_text()
    assert proc.returncode == 130 and "interrupted; finished work is kept" in stderr, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert stopped_after < 60
    done = unlabeled_case_ids(ds["folder"])
    assert 0 < len(done) < n, f"{len(done)} of {n} done: not interrupted mid-way"
    assert unlabeled_case_ids(ds["folder"], fingerprint) == done
    for case in done:  # every case counted as done is whole
        data, props = load_case(ds["folder"], case)
        assert data.shape == (1, 80, 80, 80) and np.isfinite(data).all() and props[unlabeled.STAMP_KEY] == fingerprint
    assert not [f for f in os.listdir(ds["folder"]) if f.startswith(".tmp")]
    assert all(case_stamp(ds["folder"], f"slow_{i:03d}") in (None, fingerprint) for i in range(n))
