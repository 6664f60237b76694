"""The raw dataset a self-training round trains its student on: the labeled cases plus the accepted
pseudo-labeled ones, marked as such.

Layout (nnU-Net's raw format plus this project's ``imagesUnlabeled``):

- ``imagesTr``/``labelsTr``: every labeled case of the source, and every accepted unlabeled case with
  its pseudo-label;
- ``imagesUnlabeled``: the rejected unlabeled cases (a semi-supervised student still uses them);
- ``imagesTs`` (and ``labelsTs``): linked from the source when present;
- ``pseudoLabels.json``: case → round, score and teachers, for every pseudo-labeled case;
- ``selftrain_round.json``: who wrote the folder (work folder and round), so a rerun recognises its own
  dataset and never touches another one.

Images are hard-linked where the file system allows (else copied). The folder is written under a
temporary name and renamed when complete, so an interrupted write leaves no half dataset.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List, Mapping, Sequence

from nnunet_ssl.data.unlabeled import UNLABELED_FOLDER
from nnunet_ssl.errors import UserError
from nnunet_ssl.utils.files import link_or_copy, write_json_atomic

OWNER_FILE = "selftrain_round.json"
PSEUDO_FILE = "pseudoLabels.json"


def owned_by(folder: str, owner: Mapping) -> bool:
    """Whether ``folder`` was written by ``owner`` (its :data:`OWNER_FILE` matches)."""
    path = os.path.join(folder, OWNER_FILE)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f) == dict(owner)


def write_round_dataset(source: str, target: str, owner: Mapping, labeled: Mapping[str, List[str]],
                        unlabeled: Mapping[str, List[str]], pseudo_labels: Mapping[str, str],
                        pseudo_info: Mapping[str, Mapping], dataset_json: Mapping) -> None:
    """Write ``target`` (see module doc). ``labeled``/``unlabeled``: case → image files of the source;
    ``pseudo_labels``: accepted case → its pseudo-label file; the other unlabeled cases go to
    ``imagesUnlabeled``. A ``target`` written by the same owner is rewritten; any other existing
    ``target`` is refused."""
    if os.path.exists(target) and os.listdir(target) and not owned_by(target, owner):
        raise UserError(f"{target} already exists and was not written by this self-training run; choose another "
                        f"--id-base or remove it yourself")
    ending = dataset_json["file_ending"]
    unknown = sorted(set(pseudo_labels) - set(unlabeled))
    if unknown:
        raise ValueError(f"pseudo-labels for cases that are not unlabeled cases: {unknown[:3]}")
    tmp = target.rstrip("/") + ".tmp_selftrain"
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr", UNLABELED_FOLDER):
        os.makedirs(os.path.join(tmp, sub))
    for case, files in labeled.items():
        for f in files:
            link_or_copy(f, os.path.join(tmp, "imagesTr", os.path.basename(f)))
        link_or_copy(os.path.join(source, "labelsTr", case + ending), os.path.join(tmp, "labelsTr", case + ending))
    for case, files in unlabeled.items():
        accepted = case in pseudo_labels
        for f in files:
            link_or_copy(f, os.path.join(tmp, "imagesTr" if accepted else UNLABELED_FOLDER, os.path.basename(f)))
        if accepted:
            shutil.copyfile(pseudo_labels[case], os.path.join(tmp, "labelsTr", case + ending))
    for sub in ("imagesTs", "labelsTs"):
        if os.path.isdir(os.path.join(source, sub)):
            os.makedirs(os.path.join(tmp, sub))
            for name in sorted(os.listdir(os.path.join(source, sub))):
                link_or_copy(os.path.join(source, sub, name), os.path.join(tmp, sub, name))
    out_json = {**dict(dataset_json), "numTraining": len(labeled) + len(pseudo_labels)}
    out_json.pop("dataset", None)
    write_json_atomic(os.path.join(tmp, "dataset.json"), out_json)
    write_json_atomic(os.path.join(tmp, PSEUDO_FILE), {c: dict(pseudo_info[c]) for c in sorted(pseudo_labels)})
    write_json_atomic(os.path.join(tmp, OWNER_FILE), dict(owner))
    if os.path.exists(target):
        shutil.rmtree(target)
    os.replace(tmp, target)


def splits_with_pseudo_labels(source_splits: Sequence[Mapping], pseudo_cases: Sequence[str]) -> List[dict]:
    """nnU-Net's folds of the source with the pseudo-labeled cases added to every fold's training part:
    validation stays on real labels only."""
    return [{"train": sorted(set(s["train"]) | set(pseudo_cases)), "val": sorted(s["val"])} for s in source_splits]


def case_files(folder: str, ending: str) -> Dict[str, List[str]]:
    """case → its image files (``<case>_XXXX<ending>``) in ``folder``; {} when the folder is absent."""
    from nnunet_ssl.data.unlabeled import cases_in_folder

    if not os.path.isdir(folder):
        return {}
    cases, _ = cases_in_folder(folder, ending)
    return cases
