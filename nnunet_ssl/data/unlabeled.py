"""Unlabeled cases: discovery in ``nnUNet_raw``, validation and preprocessing with nnU-Net's own
preprocessor and the dataset's existing plans.

Layout (new folders only; everything else is standard nnU-Net)::

    nnUNet_raw/DatasetXXX/imagesUnlabeled/<case>_0000<file_ending>     same naming/channels as imagesTr
    nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/          written by preprocess_unlabeled

Preprocessed unlabeled cases are stored exactly like nnU-Net's labeled ones (blosc2 image, a
segmentation file holding only the nonzero mask, a properties pickle with empty
``class_locations``), so nnU-Net's dataset classes and data loader read them unchanged.

Every case's properties carry a stamp, the fingerprint of the plans it was made with
(:func:`plans_fingerprint`). A case is done only when its three files are present and its stamp
matches the current plans, so re-planning or an interrupted ``--overwrite`` never leaves a folder
that silently mixes two geometries: stale cases are redone. ``<folder>.json`` beside the folder is
written last, for people (plans, valid cases, rejected raw cases); decisions never read it.
:func:`prepare_unlabeled_for_training` is what a trainer calls at every start.

Raw images are checked before preprocessing (:mod:`nnunet_ssl.data.integrity`: truncated files,
dimensionality, spacing and size against the labeled cases' fingerprint, NaN/inf); a bad case is
reported by name and skipped, the others are kept.

Writing is idempotent and atomic: a case is written to a temporary folder and moved into place
(data file last, after removing the case's old data file), nothing in the raw folder is touched,
and a case that fails does not stop the others (all failures are reported together at the end,
one line each). Ctrl-C terminates the worker processes at once; finished cases are kept.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from nnunet_ssl.data.integrity import (FINGERPRINT_FILE, BadCase, GeometryReference, check_compressed_files,
                                       check_finite, check_image, first_line, load_reference, summarize_failures)
from nnunet_ssl.errors import UserError
from nnunet_ssl.utils.files import write_json_atomic
from nnunet_ssl.utils.pool import run_case_jobs

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


STAMP_KEY = "nnunet_ssl_plans_fingerprint"  # in each case's properties pickle: the plans it was made with
CASE_FILES = ("_seg.b2nd", ".pkl", ".b2nd")  # written in this order; the data file marks the case as present


def case_stamp(folder: str, case: str) -> Optional[str]:
    """The plans fingerprint a preprocessed case was written with: None when the case is absent or
    incomplete, ``""`` for a complete case without a stamp (written by an older nnunet_ssl)."""
    if not all(os.path.isfile(os.path.join(folder, case + s)) for s in CASE_FILES):
        return None
    try:
        with open(os.path.join(folder, case + ".pkl"), "rb") as f:
            return str(pickle.load(f).get(STAMP_KEY, ""))
    except Exception:  # an unreadable properties file: the case is redone
        return ""


def present_cases(folder: str) -> Dict[str, str]:
    """Case id -> stamp of every complete case in a preprocessed unlabeled folder."""
    if not os.path.isdir(folder):
        return {}
    ids = sorted(f[:-5] for f in os.listdir(folder)
                 if f.endswith(".b2nd") and not f.endswith("_seg.b2nd") and not f.startswith("."))
    stamps = {c: case_stamp(folder, c) for c in ids}
    return {c: s for c, s in stamps.items() if s is not None}


def unlabeled_case_ids(folder: str, fingerprint: Optional[str] = None) -> List[str]:
    """Identifiers of the finished cases in a preprocessed unlabeled folder; with ``fingerprint``, only
    those preprocessed with exactly those plans (see :func:`plans_fingerprint`)."""
    return [c for c, s in present_cases(folder).items() if fingerprint is None or s == fingerprint]


def _preprocess_one(case: str, files: List[str], out_folder: str, plans: dict, configuration: str,
                    dataset_json: dict, fingerprint: str, reference: Optional[GeometryReference],
                    tmp_prefix: str) -> Tuple[str, Optional[str]]:
    """Worker: check and preprocess one case atomically. Returns (case, error message or None).

    The case is written to a temporary folder, then an existing data file of the case is removed,
    the segmentation and the stamped properties are moved into place and the data file last: a case
    interrupted at any point is absent (no data file) or complete with its stamp.

    Preprocessing is nnU-Net's own (``preprocessor.run_case``); writing mirrors nnU-Net's
    ``DefaultPreprocessor.run_case_save`` (float32 data, blosc2 parameters from the patch size,
    ``nnUNetDatasetBlosc2.save_case``), which cannot be called as is because the properties must be
    changed before they are written (no ``class_locations``, the plans stamp) and the write must be
    atomic. tests/test_nnunet_contract.py checks the signatures this relies on."""
    try:
        import numpy as np
        from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        pm = PlansManager(plans)
        cm = pm.get_configuration(configuration)
        check_compressed_files(files)
        image, properties = pm.image_reader_writer_class().read_images(files)
        check_image(image, properties["spacing"], reference, pm.transpose_forward, cm.spacing)
        preprocessor = cm.preprocessor_class(verbose=False)
        data, seg, properties = preprocessor.run_case_npy(image, None, properties, pm, cm, dataset_json)
        del image
        check_finite(data, "the preprocessed image")
        properties["class_locations"] = {}  # unlabeled: random crops only
        properties["nnunet_ssl_unlabeled"] = True
        properties[STAMP_KEY] = fingerprint
        data = data.astype(np.float32, copy=False)
        seg = seg.astype(np.int16 if np.max(seg) > 127 else np.int8, copy=False)
        patch = tuple(cm.patch_size)
        blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)
        tmp = tempfile.mkdtemp(prefix=f"{tmp_prefix}{case}_", dir=out_folder)
        try:
            nnUNetDatasetBlosc2.save_case(data, seg, properties, os.path.join(tmp, case), chunks=chunks,
                                          blocks=blocks, chunks_seg=chunks_seg, blocks_seg=blocks_seg)
            try:
                os.remove(os.path.join(out_folder, case + ".b2nd"))
            except FileNotFoundError:
                pass
            for suffix in CASE_FILES:
                os.replace(os.path.join(tmp, case + suffix), os.path.join(out_folder, case + suffix))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return case, None
    except BadCase as e:
        return case, str(e)
    except Exception as e:  # reported per case, the others go on
        return case, f"{type(e).__name__}: {e}"


def _star(args):
    return _preprocess_one(*args)


@dataclass
class PreprocessResult:
    output_folder: str
    written: List[str]            # preprocessed in this run (stale ones included)
    skipped: List[str]            # already done with the current plans
    failed: Dict[str, str]        # case -> why it was skipped (bad file, reader error)
    stale: List[str] = field(default_factory=list)  # found preprocessed with other plans, redone
    fingerprint: str = ""

    @property
    def cases(self) -> List[str]:
        """Every case of the folder that is valid for the current plans."""
        return sorted(self.written + self.skipped)


@dataclass
class _Setup:
    dataset_name: str
    preprocessed_base: str
    plans: dict
    configuration: str
    plans_identifier: str
    dataset_json: dict
    output_folder: str
    fingerprint: str


def _setup(dataset_name_or_id, configuration: str, plans_identifier: str) -> _Setup:
    """Resolve the dataset and load its plans and dataset.json; clear errors for what is missing."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

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
    dataset_json_file = os.path.join(pre_base, "dataset.json")
    if not os.path.isfile(dataset_json_file):
        raise UserError(f"{dataset_json_file} not found; run nnUNetv2_plan_and_preprocess for {dataset_name} first")
    out = unlabeled_preprocessed_folder(pre_base, pm.get_configuration(configuration).data_identifier)
    return _Setup(dataset_name, pre_base, plans, configuration, plans_identifier, load_json(dataset_json_file),
                  out, plans_fingerprint(plans, configuration))


def _write_record(setup: _Setup, failed: Dict[str, str]) -> None:
    """``<folder>.json`` beside the folder (nnU-Net infers the dataset class from the files inside),
    written last, for people: which plans the folder's valid cases were made with, which cases they
    are, which raw cases were rejected. Decisions use the per-case stamps, never this record."""
    write_json_atomic(setup.output_folder + ".json", {
        "plans_identifier": setup.plans_identifier, "configuration": setup.configuration,
        "plans_fingerprint": setup.fingerprint,
        "cases": unlabeled_case_ids(setup.output_folder, setup.fingerprint),
        "rejected": {c: first_line(e) for c, e in sorted(failed.items())}})


def _run_pool(jobs: list, num_processes: int, progress: bool, desc: str, out_folder: str,
              tmp_prefix: str) -> Dict[str, Optional[str]]:
    """Run the jobs (:func:`~nnunet_ssl.utils.pool.run_case_jobs`); on Ctrl-C the temporary folders of the
    interrupted cases are removed."""
    def remove_partial() -> None:
        for name in os.listdir(out_folder):
            if name.startswith(tmp_prefix):
                shutil.rmtree(os.path.join(out_folder, name), ignore_errors=True)

    return run_case_jobs(_star, jobs, num_processes, progress, desc, on_abort=remove_partial)


def _preprocess(setup: _Setup, raw: str, all_cases: Dict[str, List[str]], num_processes: int, overwrite: bool,
                progress: bool, log: Callable[[str], None]) -> PreprocessResult:
    """Preprocess the cases of ``all_cases`` not done with the current plans (all with ``overwrite``)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    out = setup.output_folder
    os.makedirs(out, exist_ok=True)
    present = present_cases(out)
    stale = sorted(c for c in all_cases if c in present and present[c] != setup.fingerprint)
    if stale and not overwrite:
        log(f"WARNING: {len(stale)} unlabeled case(s) in {out} were preprocessed with other plans (re-planned "
            f"since, or an interrupted run); preprocessing them again with the current plans")
    todo = [c for c in all_cases if overwrite or present.get(c) != setup.fingerprint]
    skipped = [c for c in all_cases if c not in todo]
    pm = PlansManager(setup.plans)
    cm = pm.get_configuration(setup.configuration)
    reference = load_reference(setup.preprocessed_base, pm.transpose_forward, cm.spacing) if todo else None
    if todo and reference is None:
        log(f"WARNING: no readable {FINGERPRINT_FILE} in {setup.preprocessed_base}; the geometry of unlabeled "
            f"images is not checked against the labeled cases (run nnUNetv2_extract_fingerprint to check it)")
    tmp_prefix = f".tmp_{uuid.uuid4().hex[:8]}_"
    jobs = [(c, all_cases[c], out, setup.plans, setup.configuration, setup.dataset_json, setup.fingerprint,
             reference, tmp_prefix) for c in todo]
    results = _run_pool(jobs, num_processes, progress, f"Preprocessing unlabeled cases ({setup.configuration})",
                        out, tmp_prefix)
    failed = {c: e for c, e in results.items() if e}
    written = sorted(c for c, e in results.items() if not e)
    _write_record(setup, failed)
    return PreprocessResult(out, written, skipped, failed, stale, setup.fingerprint)


def _failure_message(result: PreprocessResult, raw: str) -> str:
    lines = summarize_failures(result.failed)
    return (f"{len(lines)} unlabeled case(s) could not be preprocessed and were skipped ({len(result.written)} "
            f"written, {len(result.skipped)} already done, all kept); fix or remove their files in "
            f"{raw}/{UNLABELED_FOLDER} and run again:\n  " + "\n  ".join(lines))


def preprocess_unlabeled(dataset_name_or_id, configuration: str, plans_identifier: str = "nnUNetPlans",
                         num_processes: int = 2, overwrite: bool = False, progress: bool = True,
                         cases: Optional[Sequence[str]] = None,
                         log: Callable[[str], None] = print) -> PreprocessResult:
    """Preprocess ``imagesUnlabeled`` with the plans ``plans_identifier`` of configuration ``configuration``.

    A case counts as done only when its stamp matches the current plans, so cases preprocessed with
    other plans (re-planned since, an interrupted ``overwrite``) are redone with a warning; the others
    are skipped unless ``overwrite``, which replaces cases one by one (it never empties the folder first).
    Raises :class:`UserError` for a missing plans file, a configuration the plans lack, bad raw file
    names, or cases that are bad or failed to load (after finishing all the others; one line per case).
    """
    setup = _setup(dataset_name_or_id, configuration, plans_identifier)
    raw = raw_dataset_folder(setup.dataset_name)
    all_cases = find_unlabeled_cases(raw, setup.dataset_json)
    if cases is not None:
        missing = sorted(set(cases) - set(all_cases))
        if missing:
            raise UserError(f"unknown unlabeled case(s) {missing[:3]} (not in {raw}/{UNLABELED_FOLDER})")
        all_cases = {c: all_cases[c] for c in cases}
    result = _preprocess(setup, raw, all_cases, num_processes, overwrite, progress, log)
    if result.failed:
        raise UserError(_failure_message(result, raw))
    return result


def prepare_unlabeled_for_training(dataset_name: str, configuration: str, plans_identifier: str,
                                   num_processes: int = 1, log: Callable[[str], None] = print,
                                   preprocess: bool = True, needed_by: str = "this trainer") -> List[str]:
    """What a trainer calls at every start: the ids of the unlabeled cases valid for the current plans.

    With ``preprocess`` (rank 0), every raw case of ``imagesUnlabeled`` that is missing, incomplete or
    stale (its stamp differs from the current plans: re-planned since, or an interrupted run) is
    preprocessed now, stale ones with a logged warning. Stale cases are repaired rather than refused
    because the plans they were made with are gone (the plans file was replaced), the raw images are
    at hand, and repairing is exactly what ``preprocess-unlabeled`` would do; training on them as they
    are would mix two geometries. Bad cases (truncated file, wrong dimensionality, implausible
    spacing/size, NaN/inf) are logged one line each and left out; the others train.

    Without ``preprocess`` (other DDP ranks, after rank 0 finished) the folder is only read.
    Raises :class:`UserError` when no valid case remains, or when stale cases cannot be redone because
    ``imagesUnlabeled`` is missing.
    """
    from nnunetv2.paths import nnUNet_raw

    setup = _setup(dataset_name, configuration, plans_identifier)
    raw = os.path.join(nnUNet_raw.get(), setup.dataset_name) if nnUNet_raw.is_set() else None
    raw_images = os.path.join(raw, UNLABELED_FOLDER) if raw else f"nnUNet_raw/{setup.dataset_name}/{UNLABELED_FOLDER}"
    failed: Dict[str, str] = {}
    if raw is not None and os.path.isdir(raw_images):
        if preprocess:
            result = _preprocess(setup, raw, find_unlabeled_cases(raw, setup.dataset_json), num_processes,
                                 overwrite=False, progress=True, log=log)
            failed = result.failed
            if result.written:
                log(f"preprocessed {len(result.written)} unlabeled case(s) into {setup.output_folder}")
            for line in summarize_failures(failed):
                log(f"WARNING: unlabeled case skipped (fix or remove its files in {raw_images}): {line}")
    else:
        stale = sorted(c for c, s in present_cases(setup.output_folder).items() if s != setup.fingerprint)
        if stale:
            raise UserError(f"{len(stale)} unlabeled case(s) in {setup.output_folder} (e.g. {stale[0]!r}) were "
                            f"preprocessed with other plans and {raw_images} is missing to redo them; restore "
                            f"the raw unlabeled images or rerun 'nnunet-ssl preprocess-unlabeled'")
    cases = unlabeled_case_ids(setup.output_folder, setup.fingerprint)
    if not cases:
        why = (f"all {len(failed)} raw unlabeled case(s) are bad" if failed else
               f"{raw_images} does not exist and {setup.output_folder} holds no preprocessed cases")
        raise UserError(f"{needed_by} needs unlabeled images, but {why}. Put unlabeled images in "
                        f"imagesUnlabeled/ (named like imagesTr) or create a semi-supervised dataset with "
                        f"'nnunet-ssl split'")
    return cases
