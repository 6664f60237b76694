import json
import os

import numpy as np
import pytest

from nnunet_ssl.data.synthetic import LABELS, SyntheticSpec, generate_dataset, make_case
from nnunet_ssl.errors import UserError


def test_case_has_three_structures_of_very_different_size():
    rng = np.random.default_rng(0)
    image, label = make_case(SyntheticSpec(), rng)
    counts = [int((label == c).sum()) for c in range(4)]
    assert image.shape == label.shape == (32, 32, 32) and image.dtype == np.float32
    assert counts[1] > 3 * counts[2] > 0 and counts[2] > 3 * counts[3] > 0  # large >> medium >> tiny


def test_generate_3d_layout(tmp_path):
    out = tmp_path / "Dataset999_T"
    s = generate_dataset(str(out), SyntheticSpec(num_labeled=2, num_unlabeled=3, num_test=1, shape=(16, 16, 16)))
    assert len(os.listdir(out / "imagesTr")) == 2 and len(os.listdir(out / "imagesUnlabeled")) == 3
    assert os.listdir(out / "labelsTs") == [f"{s['test'][0]}.nii.gz"]
    dj = json.load(open(out / "dataset.json"))
    assert dj["labels"] == LABELS and dj["numTraining"] == 2
    with pytest.raises(UserError, match="not empty"):
        generate_dataset(str(out), SyntheticSpec())


def test_generate_2d_rgb_with_categories(tmp_path):
    out = tmp_path / "Dataset998_T"
    generate_dataset(str(out), SyntheticSpec(num_labeled=2, num_unlabeled=2, num_test=1, dim=2, shape=(24, 24),
                                             spacing=(1.0, 1.0), category_labels=True))
    from skimage import io

    img = io.imread(out / "imagesTr" / "case_0000_0000.png")
    assert img.shape == (24, 24, 3)
    cats = json.load(open(out / "categoryLabels.json"))
    assert set(cats) == {"case_0000", "case_0001", "case_0002", "case_0003"}
    lab = io.imread(out / "labelsTr" / "case_0000.png")
    present = {n for n, v in LABELS.items() if v > 0 and (lab == v).any()}
    assert set(cats["case_0000"]["classes"]) == present
