"""Image-level (category) labels: which classes appear in an image, and optionally its stage.

File: ``nnUNet_raw/DatasetXXX/categoryLabels.json``, next to ``dataset.json``. One JSON object
mapping a case id (as in ``imagesTr`` or ``imagesUnlabeled``: the file name without the
``_0000`` channel suffix and the file ending) to either

- a list of class names (as in dataset.json's ``labels``), or
- an object ``{"classes": [...], "stage": "..."}``; both keys are optional, ``stage`` is any
  non-empty string (a surgical phase, a contrast phase, ...) or ``null``.

Example (a 2D RGB video-frame dataset with ``"labels": {"background": 0, "grasper": 1,
"liver": 2, "gallbladder": 3}``)::

    {
      "frame_0001": ["grasper", "gallbladder"],
      "frame_0002": {"classes": ["liver"], "stage": "dissection"},
      "frame_0003": {"classes": [], "stage": "preparation"},
      "video01_0007": {"stage": "clipping"}
    }

Rules:

- ``background`` is implicit: it may be listed and is ignored; the ``ignore`` label must not be
  listed. ``[]`` means "no foreground class in this image" (a valid label).
- For a pixel-labeled case (a mask in ``labelsTr``) an entry without ``classes`` (or no entry at
  all) takes its classes from the mask; listed classes must agree with the mask exactly.
- An image without any entry and without a mask has no category label; it stays usable as plain
  unlabeled data.
- Classes are identified by their integer value in dataset.json. Region-based datasets
  (labels given as lists of values) are not supported.

:func:`load_category_labels` validates everything up front and raises
:class:`~nnunet_ssl.errors.UserError` with one sentence saying what is wrong and how to fix it.
:func:`category_vector` turns a label into the multi-hot target of the classification head and
of :func:`nnunet_ssl.losses.contrastive.positive_pair_mask`; background is excluded, so the
vector has ``num_classes - 1`` entries and entry ``c - 1`` stands for class value ``c``.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from nnunet_ssl.data.unlabeled import UNLABELED_FOLDER as UNLABELED_IMAGES_FOLDER
from nnunet_ssl.errors import UserError

CATEGORY_LABELS_FILE = "categoryLabels.json"
_ENTRY_KEYS = ("classes", "stage")
_MAX_LISTED = 5


@dataclass(frozen=True)
class CategoryLabel:
    """Classes present in one image (dataset.json label values, background excluded) and its stage."""

    classes: frozenset
    stage: Optional[str] = None


def _listing(items: Iterable, most: int = _MAX_LISTED) -> str:
    items = [str(i) for i in items]
    shown = ", ".join(items[:most])
    return shown + (f" (and {len(items) - most} more)" if len(items) > most else "")


def foreground_classes(dataset_json: Mapping) -> Dict[str, int]:
    """Map foreground class name -> label value from dataset.json's ``labels`` (without
    ``background`` and ``ignore``). Raises :class:`UserError` for region-based labels."""
    labels = dataset_json.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise UserError("dataset.json has no 'labels' mapping of class names to values; category labels need one")
    out = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise UserError(f"dataset.json label {name!r} is a region {list(value)}; category labels support "
                                f"only plain (non-region) label values")
            value = value[0]
        if name in ("background", "ignore") or int(value) == 0:
            continue
        out[name] = int(value)
    return out


def parse_category_labels(data, class_values: Mapping[str, int], source: str = CATEGORY_LABELS_FILE
                          ) -> Dict[str, tuple]:
    """Validate the decoded JSON of a category-label file.

    Returns case id -> ``(classes, stage)`` where ``classes`` is a frozenset of label values, or
    ``None`` when the entry lists none (to be taken from the case's mask). ``class_values`` is
    :func:`foreground_classes`; ``source`` names the file in error messages.
    """
    if not isinstance(data, dict):
        raise UserError(f"{source} must hold a JSON object mapping case ids to class-name lists, "
                        f"but holds a {type(data).__name__}")
    valid = f"valid class names (dataset.json 'labels'): {', '.join(sorted(class_values))}"
    out = {}
    for case, entry in data.items():
        stage = None
        if isinstance(entry, list):
            names = entry
        elif isinstance(entry, dict):
            extra = sorted(set(entry) - set(_ENTRY_KEYS))
            if extra:
                raise UserError(f"{source}: case {case!r} has unknown key(s) {_listing(map(repr, extra))}; allowed keys are "
                                f"'classes' and 'stage'")
            names = entry.get("classes")
            stage = entry.get("stage")
            if stage is not None and (not isinstance(stage, str) or not stage.strip()):
                raise UserError(f"{source}: case {case!r} has stage {stage!r}; a stage must be a non-empty string "
                                f"or null")
        else:
            raise UserError(f"{source}: case {case!r} maps to a {type(entry).__name__}; expected a list of class "
                            f"names or an object with 'classes' and/or 'stage'")
        if names is None:
            out[case] = (None, stage)
            continue
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UserError(f"{source}: case {case!r} has classes {names!r}; expected a list of class-name strings")
        values = set()
        for name in names:
            if name == "background":
                continue
            if name not in class_values:
                raise UserError(f"{source}: case {case!r} lists unknown class {name!r}; {valid}")
            values.add(class_values[name])
        out[case] = (frozenset(values), stage)
    return out


def classes_in_mask(mask: Union[np.ndarray, torch.Tensor], class_values: Iterable[int]) -> frozenset:
    """Foreground classes present in a segmentation ``mask`` (any shape), restricted to
    ``class_values`` (so background and the ignore label never count)."""
    if isinstance(mask, torch.Tensor):
        present = set(torch.unique(mask).tolist())
    else:
        present = set(np.unique(np.asarray(mask)).tolist())
    return frozenset(int(v) for v in class_values if v in present)


def check_against_mask(case_id: str, listed: Iterable[int], mask_classes: Iterable[int],
                       class_names: Optional[Mapping[int, str]] = None) -> None:
    """Raise :class:`UserError` unless the classes listed for ``case_id`` equal the foreground
    classes of its mask (a class in the mask but not listed, or listed but absent from the mask).
    ``class_names`` (value -> name) makes the message use names instead of values."""
    listed, in_mask = set(listed), set(mask_classes)
    if listed == in_mask:
        return
    name = (lambda v: repr(class_names.get(v, v))) if class_names else repr
    problems = []
    if in_mask - listed:
        problems.append(f"its mask contains {_listing(name(v) for v in sorted(in_mask - listed))} which "
                        f"{CATEGORY_LABELS_FILE} does not list")
    if listed - in_mask:
        problems.append(f"{CATEGORY_LABELS_FILE} lists {_listing(name(v) for v in sorted(listed - in_mask))} which "
                        f"its mask does not contain")
    raise UserError(f"case {case_id!r}: {' and '.join(problems)}; fix the entry or drop its 'classes' to take them "
                    f"from the mask")


def category_vector(label: CategoryLabel, num_classes: int) -> torch.Tensor:
    """Multi-hot float32 vector ``(num_classes - 1,)``: entry ``c - 1`` is 1 if class value ``c``
    is present. ``num_classes`` counts background, like dataset.json's ``labels`` (without
    ``ignore``); background itself has no entry."""
    if num_classes < 2:
        raise ValueError(f"num_classes counts background and must be >= 2, got {num_classes}")
    bad = [c for c in label.classes if not 1 <= c < num_classes]
    if bad:
        raise ValueError(f"class values {sorted(bad)} are outside 1..{num_classes - 1} (num_classes={num_classes})")
    vec = torch.zeros(num_classes - 1, dtype=torch.float32)
    for c in label.classes:
        vec[c - 1] = 1.0
    return vec


def category_vectors(labels: Sequence[CategoryLabel], num_classes: int) -> torch.Tensor:
    """Stack :func:`category_vector` for a batch: ``(B, num_classes - 1)``."""
    if len(labels) == 0:
        return torch.zeros(0, num_classes - 1)
    return torch.stack([category_vector(lab, num_classes) for lab in labels])


def _training_cases(raw_dataset_folder: str, dataset_json: Mapping) -> Dict[str, dict]:
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    # nnU-Net rewrites the paths of a 'dataset' entry in place: hand it a copy
    return get_filenames_of_train_images_and_targets(raw_dataset_folder, copy.deepcopy(dict(dataset_json)))


def discover_case_ids(raw_dataset_folder: str, dataset_json: Mapping) -> set:
    """Case ids of ``imagesTr`` (or dataset.json's ``dataset`` entry) and of ``imagesUnlabeled``."""
    from nnunetv2.utilities.utils import get_identifiers_from_splitted_dataset_folder

    ids = set(_training_cases(raw_dataset_folder, dataset_json))
    unlabeled = os.path.join(raw_dataset_folder, UNLABELED_IMAGES_FOLDER)
    if os.path.isdir(unlabeled):
        ids.update(get_identifiers_from_splitted_dataset_folder(unlabeled, dataset_json["file_ending"]))
    return ids


def read_mask_classes(raw_dataset_folder: str, dataset_json: Mapping,
                      case_ids: Optional[Iterable[str]] = None) -> Dict[str, frozenset]:
    """Foreground classes of every pixel-labeled case (a mask file exists), read with the dataset's
    nnU-Net reader (PNG, NIfTI, ...). ``case_ids`` restricts the cases read."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    values = foreground_classes(dataset_json).values()
    cases = {c: v["label"] for c, v in _training_cases(raw_dataset_folder, dataset_json).items()
             if os.path.isfile(v["label"])}
    if case_ids is not None:
        wanted = set(case_ids)
        cases = {c: p for c, p in cases.items() if c in wanted}
    if not cases:
        return {}
    reader = determine_reader_writer_from_dataset_json(dict(dataset_json), next(iter(cases.values())))()
    return {c: classes_in_mask(reader.read_seg(p)[0], values) for c, p in sorted(cases.items())}


def load_category_labels(raw_dataset_folder: Union[str, os.PathLike], dataset_json: Mapping,
                         known_case_ids: Optional[Iterable[str]] = None, *,
                         mask_classes: Optional[Mapping[str, Iterable[int]]] = None) -> Dict[str, CategoryLabel]:
    """Read and validate ``<raw_dataset_folder>/categoryLabels.json`` (format: module docstring).

    Returns case id -> :class:`CategoryLabel` for every case with a category label: the file's
    entries, completed and checked with the masks of pixel-labeled cases, plus every
    pixel-labeled case the file does not mention (classes from its mask, no stage).

    ``known_case_ids``: the case ids of ``imagesTr`` and ``imagesUnlabeled`` (discovered when
    ``None``); an entry for any other id is an error. ``mask_classes``: case id -> foreground
    classes of its mask, for all pixel-labeled cases (e.g. from preprocessed data); read from
    ``labelsTr`` with :func:`read_mask_classes` when ``None``, which reads every mask once.
    """
    raw_dataset_folder = os.fspath(raw_dataset_folder)
    path = os.path.join(raw_dataset_folder, CATEGORY_LABELS_FILE)
    if not os.path.isfile(path):
        raise UserError(f"no category labels: {path} does not exist; create it as a JSON object mapping case ids "
                        f"to the class names they contain (see nnunet_ssl/data/category_labels.py)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); fix the file")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; save it as UTF-8 JSON")
    class_values = foreground_classes(dataset_json)
    entries = parse_category_labels(data, class_values, source=path)

    known = set(known_case_ids) if known_case_ids is not None else discover_case_ids(raw_dataset_folder, dataset_json)
    unknown = sorted(set(entries) - known)
    if unknown:
        ending = dataset_json.get("file_ending", "")
        hint = (f"; use case ids without the _0000 channel suffix and the '{ending}' ending"
                if ending and any(u.endswith(ending) for u in unknown) else "")
        raise UserError(f"{path}: {len(unknown)} case id(s) are neither in "
                        f"{os.path.join(raw_dataset_folder, 'imagesTr')} nor in "
                        f"{os.path.join(raw_dataset_folder, UNLABELED_IMAGES_FOLDER)}: {_listing(map(repr, unknown))}"
                        f"{hint}")

    if mask_classes is None:
        mask_classes = read_mask_classes(raw_dataset_folder, dataset_json, known)
    names = {v: n for n, v in class_values.items()}
    labels = {}
    for case in sorted(set(entries) | (set(mask_classes) & known)):
        classes, stage = entries.get(case, (None, None))
        if case in mask_classes:
            in_mask = frozenset(int(v) for v in mask_classes[case])
            if classes is None:
                classes = in_mask
            else:
                check_against_mask(case, classes, in_mask, names)
        elif classes is None:
            raise UserError(f"{path}: case {case!r} lists no 'classes' and has no mask in labelsTr to take them "
                            f"from; add its class names")
        labels[case] = CategoryLabel(classes=classes, stage=stage)
    if not labels:
        raise UserError(f"{path} gives no case a category label and no case has a mask; add entries")
    return labels
