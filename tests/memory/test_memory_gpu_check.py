"""benchmarks/gpu_check.py: the sentence without CUDA, and its table on the CPU (``--device cpu --iters 2``)."""
from __future__ import annotations

import os
import sys

import pytest
import torch

from conftest import run_cmd, subprocess_env

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks", "gpu_check.py")


def test_without_cuda_one_sentence_exit_0(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.syspath_prepend(os.path.dirname(SCRIPT))
    import gpu_check

    out = tmp_path / "table.md"
    assert gpu_check.main(["--trainers", "nnUNetTrainerCPS", "--out", str(out)]) == 0
    assert not out.exists() and not os.listdir(tmp_path)  # nothing prepared, nothing written
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [gpu_check.NO_CUDA]


def test_without_cuda_cli():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal path is tested with a patched torch above")
    p = run_cmd([sys.executable, SCRIPT, "--iters", "1"])
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0]


@pytest.mark.e2e
def test_cpu_table(tiny_3d):
    root = os.path.dirname(os.environ["nnUNet_raw"])  # the session's nnU-Net folders, where tiny_3d lives
    p = run_cmd([sys.executable, SCRIPT, "--device", "cpu", "--iters", "2", "-d", str(tiny_3d["id"]),
                 "--workdir", root, "--trainers", "nnUNetTrainerMeanTeacher", "-np", "1"],
                subprocess_env(nnUNet_n_proc_DA=0))
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in p.stdout.splitlines() if line.startswith("| nnUNetTrainer")}
    assert set(rows) == {"nnUNetTrainer", "nnUNetTrainerMeanTeacher"}
    base, mt = rows["nnUNetTrainer"], rows["nnUNetTrainerMeanTeacher"]
    assert base[3] == "1.00" and base[5] == "1.00"  # the baseline's own ratios
    assert mt[6] == "yes" and mt[7] == "ok" and float(mt[5]) > 1  # finite loss; more live memory than nnU-Net's
    assert os.path.isdir(root)  # a given workdir is kept
