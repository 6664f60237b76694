"""Label-fraction splits: turn a fully labeled nnU-Net raw dataset into a semi-supervised one.

``make_split`` writes a *new* raw dataset whose ``imagesTr``/``labelsTr`` hold the labeled subset
and ``imagesUnlabeled`` the images of the hidden cases; optionally a held-out test set goes to
``imagesTs``/``labelsTs``. ``nnunet_ssl_split.json`` records the source, seed and case lists. The
source dataset is never modified; files are hard-linked when possible (same file system) and
copied otherwise.

Cases can be grouped (``group_regex``) so that all frames of one patient land on the same side:
ACDC's ``patient003_frame01``/``patient003_frame02`` with ``group_regex=r"(patient\\d+)"``; a
fraction then counts groups (10% of 70 patients = 7 patients), as the literature does.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from nnunet_ssl.data.unlabeled import UNLABELED_FOLDER, cases_in_folder
from nnunet_ssl.errors import UserError
from nnunet_ssl.utils.files import link_or_copy

RECORD_FILE = "nnunet_ssl_split.json"


def parse_amount(text: Union[str, int, float], total: int, what: str) -> int:
    """``"10%"`` -> round(0.1·total) (at least 1 when the fraction is > 0); ``"7"`` -> 7.

    Raises :class:`UserError` (one sentence naming ``what``) for text that is neither, a negative
    count or a percentage outside 0%-100%.
    """
    s = str(text).strip()
    try:
        if s.endswith("%"):
            frac = float(s[:-1]) / 100.0
            if not 0 <= frac <= 1:
                raise UserError(f"{what} must be a percentage from 0% to 100%, got {text!r}")
            n = int(round(frac * total))
            return max(n, 1) if frac > 0 else 0
        n = int(s)
    except ValueError:
        raise UserError(f"{what} must be a count like 7 or a percentage like 10%, got {text!r}") from None
    if n < 0:
        raise UserError(f"{what} must not be negative, got {str(text)!r}")
    return n


def group_cases(cases: Sequence[str], group_regex: Optional[str]) -> Dict[str, List[str]]:
    groups: Dict[str, List[str]] = {}
    pattern = re.compile(group_regex) if group_regex else None
    for c in sorted(cases):
        if pattern is None:
            key = c
        else:
            m = pattern.search(c)
            if m is None:
                raise UserError(f"case {c!r} does not match --group-regex {group_regex!r}")
            key = m.group(1) if m.groups() else m.group(0)
        groups.setdefault(key, []).append(c)
    return groups


def choose_split(cases: Sequence[str], labeled: Union[str, int], test: Union[str, int] = 0, seed: int = 0,
                 group_regex: Optional[str] = None) -> Dict[str, List[str]]:
    """Seeded choice of labeled / unlabeled / test case ids (groups kept together)."""
    groups = group_cases(cases, group_regex)
    keys = sorted(groups)
    n_test = parse_amount(test, len(keys), "--test")
    n_lab = parse_amount(labeled, len(keys), "--labeled")
    if n_lab < 1:
        raise UserError(f"--labeled must select at least one case, got {str(labeled)!r}")
    if n_lab + n_test > len(keys):
        unit = "groups" if group_regex else "cases"
        raise UserError(f"--labeled ({n_lab}) plus --test ({n_test}) exceed the {len(keys)} {unit} of the dataset")
    order = np.random.RandomState(seed).permutation(len(keys))
    picked = [keys[i] for i in order]
    test_keys, lab_keys, unl_keys = picked[:n_test], picked[n_test:n_test + n_lab], picked[n_test + n_lab:]
    expand = lambda ks: sorted(c for k in ks for c in groups[k])  # noqa: E731
    return {"labeled": expand(lab_keys), "unlabeled": expand(unl_keys), "test": expand(test_keys)}


def make_split(source_folder: str, target_folder: str, labeled: Union[str, int], seed: int = 0,
               test: Union[str, int] = 0, group_regex: Optional[str] = None) -> Dict:
    """Write the semi-supervised dataset ``target_folder`` from ``source_folder`` (see module doc).

    Refuses to touch an existing ``target_folder`` unless it holds the very same split (then it is a
    no-op, so scripted benchmarks can call this repeatedly).
    """
    src_json = os.path.join(source_folder, "dataset.json")
    if not os.path.isfile(src_json):
        raise UserError(f"{src_json} not found; --d must name an nnU-Net raw dataset")
    with open(src_json) as f:
        dataset_json = json.load(f)
    if "dataset" in dataset_json:
        raise UserError("datasets that list their files in dataset.json ('dataset' key) are not supported by split; "
                        "use the standard imagesTr/labelsTr layout")
    ending = dataset_json["file_ending"]
    images, misfits = cases_in_folder(os.path.join(source_folder, "imagesTr"), ending)
    if misfits:
        raise UserError(f"imagesTr of {source_folder} has files not named <case>_XXXX{ending}, e.g. {misfits[0]!r}")
    missing = [c for c in images if not os.path.isfile(os.path.join(source_folder, "labelsTr", c + ending))]
    if missing:
        raise UserError(f"{len(missing)} case(s) of imagesTr have no label in labelsTr (e.g. {missing[0]!r}); "
                        f"split needs a fully labeled source")
    split = choose_split(sorted(images), labeled, test, seed, group_regex)
    record = {"source": os.path.abspath(source_folder), "seed": seed, "labeled_arg": str(labeled),
              "test_arg": str(test), "group_regex": group_regex, **split}

    record_path = os.path.join(target_folder, RECORD_FILE)
    if os.path.exists(target_folder) and os.listdir(target_folder):
        if os.path.isfile(record_path):
            with open(record_path) as f:
                old = json.load(f)
            if all(old.get(k) == record[k] for k in ("labeled", "unlabeled", "test")):
                return record
        raise UserError(f"{target_folder} already exists with other content; choose another --id or remove it "
                        f"yourself (split never deletes data)")

    tmp = target_folder.rstrip("/") + ".tmp_split"
    shutil.rmtree(tmp, ignore_errors=True)  # our own leftover from an interrupted run
    for sub in ("imagesTr", "labelsTr", UNLABELED_FOLDER) + (("imagesTs", "labelsTs") if split["test"] else ()):
        os.makedirs(os.path.join(tmp, sub))
    for role, img_dir, lab_dir in (("labeled", "imagesTr", "labelsTr"), ("unlabeled", UNLABELED_FOLDER, None),
                                   ("test", "imagesTs", "labelsTs")):
        for case in split[role]:
            for f in images[case]:
                link_or_copy(f, os.path.join(tmp, img_dir, os.path.basename(f)))
            if lab_dir:
                link_or_copy(os.path.join(source_folder, "labelsTr", case + ending),
                              os.path.join(tmp, lab_dir, case + ending))
    new_json = dict(dataset_json)
    new_json["numTraining"] = len(split["labeled"])
    new_json["nnunet_ssl_split"] = {"source": os.path.basename(os.path.normpath(source_folder)),
                                    "labeled": len(split["labeled"]), "unlabeled": len(split["unlabeled"]),
                                    "test": len(split["test"]), "seed": seed}
    with open(os.path.join(tmp, "dataset.json"), "w") as f:
        json.dump(new_json, f, indent=1)
    for extra in ("categoryLabels.json",):
        if os.path.isfile(os.path.join(source_folder, extra)):
            link_or_copy(os.path.join(source_folder, extra), os.path.join(tmp, extra))
    with open(os.path.join(tmp, RECORD_FILE), "w") as f:
        json.dump(record, f, indent=1)
    if os.path.isdir(target_folder):  # exists but empty
        os.rmdir(target_folder)
    os.replace(tmp, target_folder)
    return record
