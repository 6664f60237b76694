import json
import os

import numpy as np
import pytest
import torch

from nnunet_ssl.data.category_labels import (
    CATEGORY_LABELS_FILE,
    CategoryLabel,
    category_vector,
    category_vectors,
    check_against_mask,
    classes_in_mask,
    discover_case_ids,
    foreground_classes,
    load_category_labels,
    parse_category_labels,
    read_mask_classes,
)
from nnunet_ssl.errors import UserError

LABELS = {"background": 0, "grasper": 1, "liver": 2, "gallbladder": 3}


def _dataset_json(file_ending=".png"):
    return {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": dict(LABELS), "numTraining": 2,
            "file_ending": file_ending}


def _write_png_dataset(root):
    """Two pixel-labeled 2D RGB frames (case_a: grasper+liver, case_b: liver) and two unlabeled frames."""
    from skimage import io

    for sub in ("imagesTr", "labelsTr", "imagesUnlabeled"):
        os.makedirs(root / sub)
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    masks = {"case_a": np.array([[0, 1], [2, 2]]), "case_b": np.array([[0, 2], [2, 0]])}
    for case, m in masks.items():
        io.imsave(root / "imagesTr" / f"{case}_0000.png", rgb, check_contrast=False)
        io.imsave(root / "labelsTr" / f"{case}.png", np.kron(m, np.ones((4, 4))).astype(np.uint8), check_contrast=False)
    for case in ("frame_1", "frame_2"):
        io.imsave(root / "imagesUnlabeled" / f"{case}_0000.png", rgb, check_contrast=False)
    with open(root / "dataset.json", "w") as f:
        json.dump(_dataset_json(), f)


def _write_labels(root, content):
    with open(root / CATEGORY_LABELS_FILE, "w") as f:
        f.write(content if isinstance(content, str) else json.dumps(content))


# ---------------------------------------------------------------- parsing (no files)

def test_parse_list_and_object_forms():
    values = foreground_classes(_dataset_json())
    assert values == {"grasper": 1, "liver": 2, "gallbladder": 3}
    parsed = parse_category_labels(
        {"a": ["grasper", "liver", "background"],
         "b": {"classes": ["gallbladder"], "stage": "dissection"},
         "c": {"stage": "clipping"},
         "d": []}, values)
    assert parsed == {"a": (frozenset({1, 2}), None), "b": (frozenset({3}), "dissection"),
                      "c": (None, "clipping"), "d": (frozenset(), None)}


def test_unknown_class_lists_valid_names():
    with pytest.raises(UserError, match=r"case 'a' lists unknown class 'spleen'; valid class names .*: "
                                        r"gallbladder, grasper, liver"):
        parse_category_labels({"a": ["liver", "spleen"]}, foreground_classes(_dataset_json()))


@pytest.mark.parametrize("data, message", [
    ([["liver"]], "must hold a JSON object"),
    ({"a": "liver"}, "maps to a str; expected a list of class names"),
    ({"a": [1, 2]}, "expected a list of class-name strings"),
    ({"a": {"classes": "liver"}}, "expected a list of class-name strings"),
    ({"a": {"classes": ["liver"], "phase": "x"}}, "unknown key.*'phase'"),
    ({"a": {"classes": ["liver"], "stage": 3}}, "stage must be a non-empty string"),
    ({"a": {"classes": ["liver"], "stage": " "}}, "stage must be a non-empty string"),
])
def test_wrong_types(data, message):
    with pytest.raises(UserError, match=message):
        parse_category_labels(data, foreground_classes(_dataset_json()))


def test_region_labels_rejected():
    dj = _dataset_json()
    dj["labels"] = {"background": 0, "whole": [1, 2], "core": [2]}
    with pytest.raises(UserError, match="'whole' is a region"):
        foreground_classes(dj)


# ---------------------------------------------------------------- masks and vectors

def test_classes_in_mask_excludes_background_and_ignore():
    mask = np.array([[0, 2], [4, 2]])  # 4 = an ignore label, not a class value
    assert classes_in_mask(mask, [1, 2, 3]) == frozenset({2})
    assert classes_in_mask(torch.tensor([[3.0, 0.0]]), [1, 2, 3]) == frozenset({3})


def test_check_against_mask():
    check_against_mask("a", {1, 2}, {2, 1})  # agreement: no error
    names = {1: "grasper", 2: "liver", 3: "gallbladder"}
    with pytest.raises(UserError, match=r"case 'a': its mask contains 'gallbladder' which categoryLabels.json "
                                        r"does not list; fix"):
        check_against_mask("a", {1, 2}, {1, 2, 3}, names)
    with pytest.raises(UserError, match=r"categoryLabels.json lists 'grasper' which its mask does not contain"):
        check_against_mask("a", {1, 2}, {2}, names)
    with pytest.raises(UserError, match=r"its mask contains 3 .* and .* lists 1 "):
        check_against_mask("a", {1, 2}, {2, 3})


def test_category_vector_excludes_background():
    # num_classes = 4 (background + 3): vector of length 3, entry c-1 for class c
    assert category_vector(CategoryLabel(frozenset({1, 3})), 4).tolist() == [1.0, 0.0, 1.0]
    assert category_vector(CategoryLabel(frozenset()), 4).tolist() == [0.0, 0.0, 0.0]
    batch = category_vectors([CategoryLabel(frozenset({2})), CategoryLabel(frozenset({1, 2}), "s")], 4)
    assert batch.tolist() == [[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="outside 1..3"):
        category_vector(CategoryLabel(frozenset({4})), 4)


# ---------------------------------------------------------------- loading from a raw dataset folder

def test_load_png_dataset(tmp_path):
    _write_png_dataset(tmp_path)
    assert discover_case_ids(str(tmp_path), _dataset_json()) == {"case_a", "case_b", "frame_1", "frame_2"}
    assert read_mask_classes(str(tmp_path), _dataset_json()) == {"case_a": frozenset({1, 2}),
                                                                  "case_b": frozenset({2})}
    _write_labels(tmp_path, {"case_a": {"stage": "dissection"},          # classes from the mask
                             "frame_1": {"classes": ["liver"], "stage": "clipping"},
                             "frame_2": []})
    labels = load_category_labels(tmp_path, _dataset_json())
    assert labels == {
        "case_a": CategoryLabel(frozenset({1, 2}), "dissection"),
        "case_b": CategoryLabel(frozenset({2}), None),                   # not in the file: from its mask
        "frame_1": CategoryLabel(frozenset({2}), "clipping"),
        "frame_2": CategoryLabel(frozenset(), None),
    }


def test_load_with_given_cases_and_mask_classes(tmp_path):
    # no image files needed when the caller knows the cases and the mask classes
    _write_labels(tmp_path, {"u1": ["grasper"], "l1": ["liver"]})
    labels = load_category_labels(tmp_path, _dataset_json(), ["u1", "u2", "l1"], mask_classes={"l1": [2]})
    assert labels == {"u1": CategoryLabel(frozenset({1})), "l1": CategoryLabel(frozenset({2}))}


def test_load_unknown_case_names_folders(tmp_path):
    _write_png_dataset(tmp_path)
    _write_labels(tmp_path, {"frame_9": ["liver"], "frame_1_0000.png": ["liver"]})
    with pytest.raises(UserError) as e:
        load_category_labels(tmp_path, _dataset_json())
    msg = str(e.value)
    assert "2 case id(s) are neither in " + str(tmp_path / "imagesTr") in msg
    assert str(tmp_path / "imagesUnlabeled") in msg
    assert "'frame_1_0000.png', 'frame_9'" in msg
    assert "without the _0000 channel suffix and the '.png' ending" in msg


def test_load_mask_contradiction(tmp_path):
    _write_png_dataset(tmp_path)
    _write_labels(tmp_path, {"case_b": ["liver", "gallbladder"]})
    with pytest.raises(UserError, match=r"case 'case_b': categoryLabels.json lists 'gallbladder' which its mask "
                                        r"does not contain"):
        load_category_labels(tmp_path, _dataset_json())


def test_load_malformed_json(tmp_path):
    _write_labels(tmp_path, '{"a": ["liver"],}')
    with pytest.raises(UserError, match=r"categoryLabels.json is not valid JSON \(.* at line 1, column \d+\)"):
        load_category_labels(tmp_path, _dataset_json(), ["a"], mask_classes={})


def test_load_unknown_class(tmp_path):
    _write_labels(tmp_path, {"a": ["Liver"]})
    with pytest.raises(UserError, match="unknown class 'Liver'; valid class names"):
        load_category_labels(tmp_path, _dataset_json(), ["a"], mask_classes={})


def test_load_missing_file_and_no_labels(tmp_path):
    with pytest.raises(UserError, match=r"no category labels: .*categoryLabels.json does not exist"):
        load_category_labels(tmp_path, _dataset_json(), ["a"], mask_classes={})
    _write_labels(tmp_path, {})
    with pytest.raises(UserError, match="gives no case a category label"):
        load_category_labels(tmp_path, _dataset_json(), ["a"], mask_classes={})


def test_load_entry_without_classes_needs_a_mask(tmp_path):
    _write_labels(tmp_path, {"u1": {"stage": "clipping"}})
    with pytest.raises(UserError, match="case 'u1' lists no 'classes' and has no mask"):
        load_category_labels(tmp_path, _dataset_json(), ["u1"], mask_classes={})


def test_load_nifti_volumes(tmp_path):
    import SimpleITK as sitk

    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(tmp_path / sub)
    mask = np.zeros((4, 5, 6), dtype=np.uint8)
    mask[1, 2, 3] = 3
    sitk.WriteImage(sitk.GetImageFromArray(mask.astype(np.float32)), str(tmp_path / "imagesTr" / "vol_0000.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(tmp_path / "labelsTr" / "vol.nii.gz"))
    dj = _dataset_json(".nii.gz")
    dj["channel_names"] = {"0": "CT"}
    _write_labels(tmp_path, {"vol": {"stage": "arterial"}})
    assert load_category_labels(tmp_path, dj) == {"vol": CategoryLabel(frozenset({3}), "arterial")}
