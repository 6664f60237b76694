"""``nnunet-ssl split`` through the console command, on a generated dataset in the test nnUNet_raw."""
import json
import os

import pytest

from conftest import run_cmd
from nnunet_ssl.data.synthetic import SyntheticSpec, generate_dataset


@pytest.fixture(scope="module")
def source():
    raw = os.path.join(os.environ["nnUNet_raw"], "Dataset870_SplitSrc")
    if not os.path.isdir(raw):
        generate_dataset(raw, SyntheticSpec(num_labeled=10, num_unlabeled=0, num_test=0, shape=(8, 8, 8)))
    return raw


def test_split_command(source):
    p = run_cmd(["nnunet-ssl", "split", "-d", "870", "--labeled", "20%", "--test", "2", "--id", "871"])
    assert "Dataset871_SplitSrcL20pcts0: 2 labeled, 6 unlabeled, 2 test" in p.stdout
    out = os.path.join(os.environ["nnUNet_raw"], "Dataset871_SplitSrcL20pcts0")
    assert json.load(open(os.path.join(out, "dataset.json")))["numTraining"] == 2
    assert len(os.listdir(os.path.join(out, "imagesUnlabeled"))) == 6


def test_split_command_errors(source):
    p = run_cmd(["nnunet-ssl", "split", "-d", "870", "--labeled", "11", "--id", "872"], check=False)
    assert p.returncode == 2 and "exceed the 10 cases" in p.stderr and "Traceback" not in p.stderr
    p = run_cmd(["nnunet-ssl", "split", "-d", "870", "--labeled", "2", "--id", "870"], check=False)
    assert p.returncode == 2 and "already used by Dataset870_SplitSrc" in p.stderr
    p = run_cmd(["nnunet-ssl", "split", "-d", "869", "--labeled", "2", "--id", "873"], check=False)
    assert p.returncode == 2 and "not found" in p.stderr
