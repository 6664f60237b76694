"""Unlabeled cases: discovery in ``nnUNet_raw``, validation and preprocessing with nnU-Net's own
preprocessor and the dataset's existing plans.

Layout (new folders only; everything else is standard nnU-Net)::

    nnUNet_raw/DatasetXXX/imagesUnlabeled/<case>_0000<file_ending>     same naming/channels as imagesTr
    nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/          written by preprocess_unlabeled

Preprocessed unlabeled cases are stored exactly like nnU-Net's labeled ones (blosc2 image, a
segmentation file holding only the nonzero mask, a properties pickle with empty
``class_locations``), so nnU-Net's dataset classes and data loader read them unchanged.

Writing is idempotent and atomic: a case is written to a temporary folder and moved into place
(data file last), finished cases are skipped, nothing in the raw folder is touched, and a case
that fails to load does not stop the others (all failures are reported together at the end).
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from nnunet_ssl.errors import UserError
from nnunet_ssl.utils.files import write_json_atomic

UNLABELED_FOLDER = "imagesUnlabeled"
UNLABELED_SUFFIX = "_unlabeled"


def raw_dataset_folder(dataset_name: str) -> str:
    from nnunetv2.paths import nnUNet_raw

    if not nnUNet_raw.is_set():
        raise UserError("nnUNet_raw is not set; export nnUNet_raw=/path/to/nnUNet_raw as for nnU-Net itself")
    return os.path.join(nnUNet_raw.get(), dataset_name)


def unlabeled_preprocessed_folder(preprocessed_dataset_folder_base: str, data_identifier: str) -> str:
    """``nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled``."""
    return os.path.join(preprocessed_dataset_folder_base, data_identifier + UNLABELED_SUFFIX)


def cases_in_folder(folder: str, file_ending: str) -> Tuple[Dict[str, List[str]], List[str]]:
    """Group ``<case>_XXXX<ending>`` files by case; return (cases, names that do not fit the pattern)."""
    pattern = re.compile(r"(.+)_(\d{4})" + re.escape(file_ending) + r"$")
    cases: Dict[str, List[str]] = {}
    misfits = []
    for name in sorted(os.listdir(folder)):
        if name.startswith("."):
            continue
        m = pattern.match(name)
        if m is None:
            misfits.append(name)
            continue
        cases.setdefault(m.group(1), []).append(os.path.join(folder, name))
    return cases, misfits


def find_unlabeled_cases(raw_folder: str, dataset_json: dict) -> Dict[str, List[str]]:
    """Map case id -> list of channel files of ``imagesUnlabeled``, validated against ``imagesTr``.

    Raises :class:`UserError` when the folder is missing or empty, a file does not follow the
    ``<case>_XXXX<file_ending>`` naming, or a case has a different number of channel files than
    the labeled cases.
    """
    folder = os.path.join(raw_folder, UNLABELED_FOLDER)
    ending = dataset_json["file_ending"]
    if not os.path.isdir(folder):
        raise UserError(f"no unlabeled images: {folder} does not exist. Put unlabeled images there, named like "
                        f"imagesTr (<case>_0000{ending}), or make a semi-supervised dataset with 'nnunet-ssl split'")
    cases, misfits = cases_in_folder(folder, ending)
    if misfits:
        raise UserError(f"{len(misfits)} file(s) in {folder} do not match <case>_XXXX{ending} (dataset.json "
                        f"file_ending), e.g. {misfits[0]!r}; rename or remove them")
    if not cases:
        raise UserError(f"{folder} holds no images ending in {ending}; add unlabeled images named <case>_0000{ending}")
    expected = _channels_per_case(raw_folder, dataset_json)
    for case, files in cases.items():
        found = sorted(int(f[-len(ending) - 4:-len(ending)]) for f in files)
        if found != list(range(expected)):
            raise UserError(f"unlabeled case {case!r} has channel files {found} but the labeled cases have "
                            f"{expected} (_0000.._{expected - 1:04d}); every unlabeled case needs the same channels")
    labeled = _labeled_case_ids(raw_folder, ending)
    clash = sorted(set(cases) & labeled)
    if clash:
        raise UserError(f"case id(s) {clash[:3]} appear in both imagesTr and {UNLABELED_FOLDER}; "
                        f"unlabeled case ids must be distinct from labeled ones")
    return cases


def _labeled_case_ids(raw_folder: str, ending: str) -> set:
    folder = os.path.join(raw_folder, "imagesTr")
    if not os.path.isdir(folder):
        return set()
    return set(cases_in_folder(folder, ending)[0])


def _channels_per_case(raw_folder: str, dataset_json: dict) -> int:
    """Number of channel files per case, read from imagesTr (RGB PNGs are one file, three channels)."""
    folder = os.path.join(raw_folder, "imagesTr")
    if os.path.isdir(folder):
        cases, _ = cases_in_folder(folder, dataset_json["file_ending"])
        if cases:
            return len(next(iter(cases.values())))
    return len(dataset_json["channel_names"])


def plans_fingerprint(plans: dict, configuration: str) -> str:
    """A hash of everything in the plans that changes what preprocessing writes."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    relevant = {
        "configuration": cm.configuration,
        "transpose_forward": pm.transpose_forward,
        "intensity": plans.get("foreground_intensity_properties_per_channel"),
        "reader": plans.get("image_reader_writer"),
    }
    relevant["configuration"] = {k: v for k, v in relevant["configuration"].items()
                                 if k not in ("batch_size", "architecture", "patch_size")}
    return hashlib.sha1(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _is_done(out_folder: str, case: str) -> bool:
    return all(os.path.isfile(os.path.join(out_folder, case + s)) for s in ("_seg.b2nd", ".pkl", ".b2nd"))


def _preprocess_one(case: str, files: List[str], out_folder: str, plans: dict, configuration: str,
                    dataset_json: dict) -> Tuple[str, Optional[str]]:
    """Worker: preprocess one case atomically. Returns (case, error message or None)."""
    try:
        import numpy as np
        from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        pm = PlansManager(plans)
        cm = pm.get_configuration(configuration)
        preprocessor = cm.preprocessor_class(verbose=False)
        data, seg, properties = preprocessor.run_case(files, None, pm, cm, dataset_json)
        properties["class_locations"] = {}  # unlabeled: random crops only
        properties["nnunet_ssl_unlabeled"] = True
        data = data.astype(np.float32, copy=False)
        seg = seg.astype(np.int16 if np.max(seg) > 127 else np.int8, copy=False)
        patch = tuple(cm.patch_size)
        blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)
        tmp = tempfile.mkdtemp(prefix=f".tmp_{case}_", dir=out_folder)
        try:
            nnUNetDatasetBlosc2.save_case(data, seg, properties, os.path.join(tmp, case), chunks=chunks,
                                          blocks=blocks, chunks_seg=chunks_seg, blocks_seg=blocks_seg)
            for suffix in ("_seg.b2nd", ".pkl", ".b2nd"):  # the data file last: it marks the case as present
                os.replace(os.path.join(tmp, case + suffix), os.path.join(out_folder, case + suffix))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return case, None
    except Exception as e:  # reported per case, the others go on
        return case, f"{type(e).__name__}: {e}"


def _star(args):
    return _preprocess_one(*args)


@dataclass
class PreprocessResult:
    output_folder: str
    written: List[str]
    skipped: List[str]
    failed: Dict[str, str]


def preprocess_unlabeled(dataset_name_or_id, configuration: str, plans_identifier: str = "nnUNetPlans",
                         num_processes: int = 2, overwrite: bool = False, progress: bool = True,
                         cases: Optional[Sequence[str]] = None) -> PreprocessResult:
    """Preprocess ``imagesUnlabeled`` with the plans ``plans_identifier`` of configuration ``configuration``.

    Finished cases are skipped unless ``overwrite``; ``overwrite`` replaces cases one by one (it never
    empties the folder first). Raises :class:`UserError` for a missing plans file, a configuration the
    plans lack, bad raw files, or cases that failed to load (after finishing all the others).
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from tqdm import tqdm

    if not nnUNet_preprocessed.is_set():
        raise UserError("nnUNet_preprocessed is not set; export it as for nnU-Net itself")
    try:
        dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    except RuntimeError as e:
        raise UserError(f"dataset {dataset_name_or_id!r} not found in nnUNet_raw/nnUNet_preprocessed ({e})") from None
    pre_base = os.path.join(nnUNet_preprocessed.get(), dataset_name)
    plans_file = os.path.join(pre_base, plans_identifier + ".json")
    if not os.path.isfile(plans_file):
        raise UserError(f"plans file {plans_file} not found; run 'nnUNetv2_plan_and_preprocess -d {dataset_name} "
                        f"-c {configuration}' first (or pass the plans identifier you used with -p)")
    plans = load_json(plans_file)
    pm = PlansManager(plans)
    if configuration not in pm.available_configurations:
        raise UserError(f"configuration {configuration!r} is not in {plans_file}; available: "
                        f"{', '.join(pm.available_configurations)}")
    cm = pm.get_configuration(configuration)
    dataset_json_file = os.path.join(pre_base, "dataset.json")
    if not os.path.isfile(dataset_json_file):
        raise UserError(f"{dataset_json_file} not found; run nnUNetv2_plan_and_preprocess for {dataset_name} first")
    dataset_json = load_json(dataset_json_file)
    raw = raw_dataset_folder(dataset_name)
    all_cases = find_unlabeled_cases(raw, dataset_json)
    if cases is not None:
        missing = sorted(set(cases) - set(all_cases))
        if missing:
            raise UserError(f"unknown unlabeled case(s) {missing[:3]} (not in {raw}/{UNLABELED_FOLDER})")
        all_cases = {c: all_cases[c] for c in cases}

    out = unlabeled_preprocessed_folder(pre_base, cm.data_identifier)
    os.makedirs(out, exist_ok=True)
    fingerprint = plans_fingerprint(plans, configuration)
    info_file = out + ".json"  # beside the folder: nnU-Net infers the dataset class from the files inside
    if os.path.isfile(info_file) and not overwrite:
        previous = load_json(info_file).get("plans_fingerprint")
        if previous != fingerprint and any(_is_done(out, c) for c in all_cases):
            raise UserError(f"{out} was preprocessed with different plans (re-planned since?); rerun with "
                            f"--overwrite to preprocess the unlabeled cases again with the current plans")
    write_json_atomic(info_file, {"plans_identifier": plans_identifier, "configuration": configuration,
                                  "plans_fingerprint": fingerprint})

    todo = [c for c in all_cases if overwrite or not _is_done(out, c)]
    skipped = [c for c in all_cases if c not in todo]
    jobs = [(c, all_cases[c], out, plans, configuration, dataset_json) for c in todo]
    failed: Dict[str, str] = {}
    written: List[str] = []
    bar = tqdm(total=len(jobs), desc=f"Preprocessing unlabeled cases ({configuration})", disable=not progress)
    if num_processes <= 1 or len(jobs) <= 1:
        results = map(_star, jobs)
        pool = None
    else:
        pool = multiprocessing.get_context("spawn").Pool(num_processes)
        results = pool.imap_unordered(_star, jobs)
    try:
        for case, err in results:
            (failed.__setitem__(case, err) if err else written.append(case))
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    if failed:
        first = next(iter(failed.items()))
        raise UserError(f"{len(failed)} unlabeled case(s) could not be preprocessed ({len(written)} written, kept); "
                        f"first: {first[0]}: {first[1]}. Fix or remove those files in {raw}/{UNLABELED_FOLDER} "
                        f"and run again")
    return PreprocessResult(out, written, skipped, failed)


def unlabeled_case_ids(folder: str) -> List[str]:
    """Identifiers of the finished cases in a preprocessed unlabeled folder."""
    if not os.path.isdir(folder):
        return []
    return sorted(f[:-5] for f in os.listdir(folder)
                  if f.endswith(".b2nd") and not f.endswith("_seg.b2nd") and _is_done(folder, f[:-5]))
