"""nnU-Net finds nnunet_ssl's trainers in a fresh interpreter with no set-up, and a user's own
nnUNet_extTrainer value is kept (and searched first)."""
from __future__ import annotations

import os
import subprocess
import sys

from nnunet_ssl._register import extended_value, trainer_folder

PROBE = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
         "import os; c = f('nnUNetTrainerMeanTeacher'); print('FOUND', c.__name__); "
         "print('VALUE', os.environ['nnUNet_extTrainer'])")


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(extra)
    return env


def test_found_without_any_setup():
    p = subprocess.run([sys.executable, "-c", PROBE], env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "FOUND nnUNetTrainerMeanTeacher" in p.stdout
    assert f"VALUE {trainer_folder()}" in p.stdout


def test_user_value_is_kept_first(tmp_path):
    user = str(tmp_path)
    p = subprocess.run([sys.executable, "-c", PROBE], env=_clean_env(nnUNet_extTrainer=user), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"VALUE {user}{os.pathsep}{trainer_folder()}" in p.stdout


def test_opt_out(tmp_path):
    code = "import os; print(repr(os.environ.get('nnUNet_extTrainer')))"
    p = subprocess.run([sys.executable, "-c", code], env=_clean_env(nnUNet_ssl_no_autoregister="1"),
                       capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "None"


def test_extended_value_is_idempotent():
    assert extended_value(None, "/a") == "/a"
    assert extended_value("/u", "/a") == f"/u{os.pathsep}/a"
    assert extended_value(f"/u{os.pathsep}/a", "/a") == f"/u{os.pathsep}/a"
    assert extended_value(f"{os.pathsep}/u{os.pathsep}", "/a") == f"/u{os.pathsep}/a"


def test_env_command_prints_export_line():
    p = subprocess.run(["nnunet-ssl", "env", "--export"], env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    assert p.stdout.strip() == f"export nnUNet_extTrainer={trainer_folder()}"


def test_pth_line_is_silent_when_the_package_is_gone(tmp_path):
    """The installed .pth runs in every interpreter; if the package's files were moved or deleted
    (a stale editable install), it must do nothing rather than print a traceback at start-up."""
    pth = os.path.join(os.path.dirname(trainer_folder()), "_nnunet_ssl_register.pth")
    line = open(pth).read().strip()
    assert line.startswith("import ")  # site.py executes only lines starting with 'import'
    # -S: no site-packages, so nnunet_ssl cannot be found; -I: ignore PYTHON* and the cwd
    p = subprocess.run([sys.executable, "-S", "-I", "-c", line + "; import os; print(os.environ.get('nnUNet_extTrainer'))"],
                       env=_clean_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stderr == "" and p.stdout.strip() == "None"
