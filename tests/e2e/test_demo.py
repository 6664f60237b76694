"""The README's first command (``nnunet-ssl demo``) runs end to end, here on a minimal budget."""
import json

import pytest

from conftest import run_cmd, subprocess_env


@pytest.mark.e2e
def test_demo_runs(tmp_path):
    wd = tmp_path / "demo"
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("nnUNet_")}
    p = run_cmd(["nnunet-ssl", "demo", "--workdir", str(wd), "--epochs", "1", "--iters", "2", "--labeled", "2",
                 "--unlabeled", "2", "--test", "1"], env)
    assert "Test-set Dice" in p.stdout and "nnUNetTrainerMeanTeacher" in p.stdout
    res = json.load(open(wd / "demo_results.json"))
    assert set(res["dice"]) == {"nnUNetTrainer", "nnUNetTrainerMeanTeacher"}
    for per_class in res["dice"].values():
        assert set(per_class) == {"organ", "vessel", "lesion", "mean"}
        assert all(0.0 <= v <= 1.0 for v in per_class.values())
    # rerun reuses everything (no retraining) and prints the same table
    p2 = run_cmd(["nnunet-ssl", "demo", "--workdir", str(wd), "--epochs", "1", "--iters", "2", "--labeled", "2",
                  "--unlabeled", "2", "--test", "1"], env)
    assert "[3/4] training" not in p2.stdout
