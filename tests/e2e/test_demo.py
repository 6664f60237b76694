"""The README's first command (``nnunet-ssl demo``) runs end to end, here on a minimal budget."""
import json
import os

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
    # the workdir remembers its data settings: other ones are refused before anything is touched
    p3 = run_cmd(["nnunet-ssl", "demo", "--workdir", str(wd), "--epochs", "1", "--iters", "2", "--labeled", "3",
                  "--unlabeled", "2", "--test", "1"], env, check=False)
    assert p3.returncode != 0 and "holds a demo made with other data settings (labeled: 2 -> 3)" in p3.stderr
    assert json.load(open(wd / "demo_results.json")) == res


@pytest.mark.e2e
def test_demo_2d_category_labels(tmp_path):
    """``--dim 2``: RGB PNG frames with category labels, nnUNetTrainer vs nnUNetTrainerDCLCls."""
    wd = tmp_path / "demo2d"
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("nnUNet_")}
    p = run_cmd(["nnunet-ssl", "demo", "--dim", "2", "--workdir", str(wd), "--epochs", "1", "--iters", "2",
                 "--labeled", "2", "--unlabeled", "4", "--test", "2"], env)
    assert "Test-set Dice (2 held-out RGB frames; 2 labeled + 4 category-labeled" in p.stdout
    res = json.load(open(wd / "demo_results.json"))
    assert set(res["dice"]) == {"nnUNetTrainer", "nnUNetTrainerDCLCls"} and res["dim"] == 2
    for per_class in res["dice"].values():
        assert set(per_class) == {"organ", "vessel", "lesion", "mean"}
        assert all(0.0 <= v <= 1.0 for v in per_class.values())
    # each case's mean Dice and, per class, Dice where present / false positives where absent
    assert sorted(res["per_case"]["nnUNetTrainer"]) == ["case_0006.png", "case_0007.png"]
    for presence in res["presence"].values():
        assert set(presence) == {"organ", "vessel", "lesion"}
        assert all(p["n_present"] + p["n_absent"] == 2 for p in presence.values())
    raw = wd / "nnUNet_raw" / "Dataset989_SSLDemo2D"
    assert len(json.load(open(raw / "categoryLabels.json"))) == 6
    pngs = sorted(f for f in os.listdir(wd / "predictions" / "nnUNetTrainerDCLCls") if f.endswith(".png"))
    assert pngs == ["case_0006.png", "case_0007.png"]
