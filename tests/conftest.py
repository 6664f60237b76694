"""Shared fixtures. nnU-Net reads its folder variables when ``nnunetv2.paths`` is first imported,
so this file points them at a session temp folder before any test module imports nnU-Net."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

_ROOT = tempfile.mkdtemp(prefix="nnunet_ssl_tests_")
for _var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.environ[_var] = os.path.join(_ROOT, _var)
    os.makedirs(os.environ[_var], exist_ok=True)
os.environ["nnUNet_n_proc_DA"] = "0"  # single-threaded augmentation in training (tests only)
os.environ["nnUNet_def_n_proc"] = "1"
os.environ["nnUNet_compile"] = "false"
os.environ.pop("nnUNet_ssl_overrides", None)

TINY_3D_ID = 991
TINY_2D_RGB_ID = 992
TINY_3D_NAME = f"Dataset{TINY_3D_ID:03d}_SSLTiny"
TINY_2D_RGB_NAME = f"Dataset{TINY_2D_RGB_ID:03d}_SSLTinyRGB"
CPU_PLANS = "nnUNetPlans_cpu"
TEST_PRESETS = {
    "3d_fullres": dict(patch_size=(16, 16, 16), features_per_stage=(4, 8, 16), batch_size=2),
    "2d": dict(patch_size=(16, 16), features_per_stage=(4, 8, 16), batch_size=2),
}
E2E_BUDGET = {"num_epochs": 1, "num_iterations_per_epoch": 2, "num_val_iterations_per_epoch": 1}


def subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    env["nnUNet_n_proc_DA"] = "1"  # planning crashes with 0 (torch.set_num_threads(0))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def load_benchmark(name: str):
    """The module ``benchmarks/<name>.py`` (benchmarks are scripts, not a package)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_cmd(args, env=None, timeout=900, check=True) -> subprocess.CompletedProcess:
    """Run a command, returning its output; on failure show the tail of stdout/stderr."""
    p = subprocess.run(args, env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({p.returncode}):\n--- stdout\n{p.stdout[-4000:]}"
                             f"\n--- stderr\n{p.stderr[-4000:]}")
    return p


def _prepare(dataset_id: int, name: str, spec, configurations) -> dict:
    """Generate, plan and preprocess a dataset with nnU-Net's planning functions (those that
    ``nnUNetv2_plan_and_preprocess -d ID -c CONFIGS -npfp 1 -np 1`` calls), in this process: no
    interpreter start-up, one worker process per step."""
    from nnunet_ssl.data.synthetic import generate_dataset
    from nnunet_ssl.pipeline import plan_and_preprocess
    from nnunet_ssl.planners.shrink import write_shrunk_plans

    raw = os.path.join(os.environ["nnUNet_raw"], name)
    summary = generate_dataset(raw, spec)
    plan_and_preprocess(dataset_id, configurations, num_processes=1, verify=False)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], name)
    for c in configurations:
        write_shrunk_plans(pre, c, "nnUNetPlans", CPU_PLANS, **TEST_PRESETS[c])
    # a fixed split: every labeled case but one trains, one validates (fold 0)
    labeled = sorted(summary["labeled"])
    with open(os.path.join(pre, "splits_final.json"), "w") as f:
        json.dump([{"train": labeled[:-1], "val": labeled[-1:]}], f)
    return {"id": dataset_id, "name": name, "raw": raw, "preprocessed": pre, "summary": summary}


@pytest.fixture(scope="session")
def tiny_3d():
    """A planned synthetic 3D dataset (20^3 volumes, 4 labeled, 6 unlabeled, 2 test), 2d and 3d_fullres."""
    from nnunet_ssl.data.synthetic import SyntheticSpec

    spec = SyntheticSpec(num_labeled=4, num_unlabeled=6, num_test=2, shape=(20, 20, 20), seed=1)
    return _prepare(TINY_3D_ID, TINY_3D_NAME, spec, ("3d_fullres", "2d"))


@pytest.fixture(scope="session")
def tiny_2d_rgb():
    """A planned synthetic 2D RGB (PNG) dataset with image-level category labels."""
    from nnunet_ssl.data.synthetic import SyntheticSpec

    spec = SyntheticSpec(num_labeled=4, num_unlabeled=8, num_test=2, dim=2, shape=(32, 32), spacing=(1.0, 1.0),
                         category_labels=True, seed=2)
    return _prepare(TINY_2D_RGB_ID, TINY_2D_RGB_NAME, spec, ("2d",))


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable
