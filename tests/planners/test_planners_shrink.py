import json

import pytest

from nnunet_ssl.errors import UserError
from nnunet_ssl.planners.shrink import shrink_configuration, write_shrunk_plans


def _plans():
    return {"plans_name": "nnUNetPlans", "configurations": {"3d_fullres": {
        "data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 2, "patch_size": [64, 64, 64],
        "architecture": {"network_class_name": "x", "arch_kwargs": {
            "n_stages": 4, "features_per_stage": [32, 64, 128, 256],
            "kernel_sizes": [[3, 3, 3]] * 4, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
            "n_conv_per_stage": [2, 2, 2, 2], "n_conv_per_stage_decoder": [2, 2, 2]}}}}}


def test_shrink_keeps_data_identifier_and_trims_stages():
    p = shrink_configuration(_plans(), "3d_fullres", patch_size=(16, 16, 16), features_per_stage=(4, 8, 16),
                             batch_size=1, plans_name="small")
    c = p["configurations"]["3d_fullres"]
    a = c["architecture"]["arch_kwargs"]
    assert c["data_identifier"] == "nnUNetPlans_3d_fullres" and c["batch_size"] == 1 and c["patch_size"] == [16] * 3
    assert a["n_stages"] == 3 and len(a["strides"]) == 3 and len(a["n_conv_per_stage_decoder"]) == 2
    assert p["plans_name"] == "small"
    assert _plans()["configurations"]["3d_fullres"]["patch_size"] == [64] * 3  # input not modified


def test_shrink_errors(tmp_path):
    with pytest.raises(UserError, match="not divisible"):
        shrink_configuration(_plans(), "3d_fullres", patch_size=(18, 16, 16), features_per_stage=(4, 8, 16))
    with pytest.raises(UserError, match="not in plans"):
        shrink_configuration(_plans(), "2d")
    json.dump(_plans(), open(tmp_path / "nnUNetPlans.json", "w"))
    with pytest.raises(UserError, match="never overwritten"):
        write_shrunk_plans(str(tmp_path), "3d_fullres", "nnUNetPlans", "nnUNetPlans")
    ident = write_shrunk_plans(str(tmp_path), "3d_fullres", features_per_stage=(4, 8), patch_size=(8, 8, 8))
    assert ident == "nnUNetPlans_cpu"
    assert json.load(open(tmp_path / "nnUNetPlans.json")) == _plans()
