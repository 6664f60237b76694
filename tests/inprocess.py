"""nnU-Net's console commands run inside the test process.

``nnUNetv2_train`` and ``nnUNetv2_predict`` are the functions ``run_training_entry`` and
``predict_entry_point`` (nnU-Net's console-script entry points); calling them with ``sys.argv`` set
runs the same argument parsing and the same code as the command, without a new interpreter that
imports torch and nnU-Net again (about 12 s per command on the test machine). The process state a
command touches is put back afterwards, so tests can run such commands one after another in one
pytest worker: ``sys.argv``, the environment variables given to the command, torch's thread count
(both entry points set it for ``-device cpu``). A command that exits (``SystemExit``, e.g. a trainer's
one-line user error) fails the test with its message instead of stopping the worker.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys

import torch


@contextlib.contextmanager
def as_command(argv, env=None):
    """Run the body as the command line ``argv`` with ``env`` added to the environment."""
    env = {k: str(v) for k, v in (env or {}).items()}
    saved_argv, saved_threads = sys.argv, torch.get_num_threads()
    saved_env = {k: os.environ.get(k) for k in env}
    sys.argv = [str(a) for a in argv]
    os.environ.update(env)
    try:
        yield
    except SystemExit as e:
        if e.code not in (None, 0):
            raise AssertionError(f"{' '.join(sys.argv)} exited ({e.code})") from e
    finally:
        sys.argv = saved_argv
        torch.set_num_threads(saved_threads)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    # nnU-Net's worker pools (validation export) are closed when the command returns
    assert not multiprocessing.active_children(), f"{argv[0]} left worker processes running"


def nnunet_train(*args, env=None) -> None:
    """``nnUNetv2_train *args`` in this process."""
    from nnunetv2.run.run_training import run_training_entry

    with as_command(["nnUNetv2_train", *args], env):
        run_training_entry()


def nnunet_train_without_validation(dataset: str, configuration: str, fold: str, trainer: str, plans: str,
                                    env=None):
    """``nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER -p PLANS -device cpu`` in this process,
    without the final validation: nnU-Net's steps up to ``run_training`` (``nnunet_ssl.runner.train``)."""
    from nnunet_ssl.runner import train

    with as_command(["nnUNetv2_train", dataset, configuration, fold, "-tr", trainer, "-p", plans, "-device", "cpu"],
                    env):
        train(dataset, configuration, fold, trainer, plans, "cpu", validate=False)


def nnunet_predict(*args, env=None) -> None:
    """``nnUNetv2_predict *args`` in this process (pass ``-npp 0 -nps 0`` for nnU-Net's sequential
    prediction, which starts no worker processes)."""
    from nnunetv2.inference.predict_from_raw_data import predict_entry_point

    with as_command(["nnUNetv2_predict", *args], env):
        predict_entry_point()
