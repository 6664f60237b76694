"""CT windowing as a dataset conversion: one CT channel (Hounsfield units) becomes one channel per
window, each clipped to the window and scaled to [0, 1].

The FLARE22 winning pipeline feeds the network three windows of the same CT (abdomen, chest,
bone) as three input channels. Done here as a conversion of the *raw* dataset, nnU-Net plans,
preprocesses, trains and predicts the windowed dataset unchanged.

Window (level ``L``, width ``W``, both in HU)::

    v = clip((HU - (L - W/2)) / W, 0, 1)        HU <= L - W/2 -> 0,  HU = L -> 0.5,  HU >= L + W/2 -> 1

Named windows (common radiology presets; published tables differ by tens of HU, and the values of
the FLARE22 pipeline are not reproduced here, so give ``L:W`` for other values):

    abdomen   L 40    W 400     [-160, 240] HU   soft tissue: fat vs organs, bone saturates at 1
    chest     L -600  W 1500    [-1350, 150] HU  lung: air vs lung parenchyma vs soft tissue
    bone      L 400   W 1800    [-500, 1300] HU  bone: cortical vs cancellous bone vs soft tissue

Normalisation: the converted channels are named ``noNorm`` in ``dataset.json``, which nnU-Net maps
to ``NoNormalization`` (``nnunetv2/preprocessing/normalization/map_channel_name_to_normalization``),
so the [0, 1] values reach the network as written. A window is already a fixed, dataset-wide
intensity mapping, which is what nnU-Net's ``CT`` scheme provides for raw HU. ``zscore`` would
instead re-standardise every image by its own mean and std, i.e. by how much air, fat or bone is
in the field of view, so the same tissue would get different values in different scans; and a
channel name that nnU-Net does not know (e.g. ``abdomen``) silently means ``zscore``. The windows
are recorded in ``dataset.json`` (``nnunet_ssl_ct_windows``, also in the sidecar
``nnunet_ssl_ct_windows.json``), so new scans are converted the same way before prediction
(:func:`convert_folder`). One effect of the conversion on nnU-Net: voxels below every window
(e.g. scanner padding at -2048 HU with the default windows) are 0 in all channels, and nnU-Net's
crop-to-nonzero may crop such a border away; it holds no anatomy.

Files are read with the reader nnU-Net picks for the dataset (``dataset.json`` file ending or
``overwrite_image_reader_writer``) and written as float32 with the geometry that reader returned
(spacing, origin, direction / affine; orientation restored for the reorienting readers). nnU-Net's
writers only write segmentations (they cast to uint8/uint16), so :func:`write_image` mirrors their
``write_seg`` without the cast. Labels and other files are hard-linked or copied unchanged.

Writing is per case and atomic (a temporary folder inside the target, then ``os.replace``), a
rerun skips finished cases, Ctrl-C keeps them, and a failing case does not stop the others (all
are reported at the end; ``dataset.json`` is written only when every case is done).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_ssl.errors import UserError
from nnunet_ssl.utils.files import link_or_copy, write_json_atomic
from nnunet_ssl.utils.pool import run_case_jobs

CHANNEL_NAME = "noNorm"
"""Channel name of every converted channel: nnU-Net's ``NoNormalization`` (see module doc)."""
RECORD_KEY = "nnunet_ssl_ct_windows"
"""Key in the converted ``dataset.json`` holding the windows and the source dataset."""
RECORD_FILE = "nnunet_ssl_ct_windows.json"
"""Sidecar with the same record, written before the first case (a converted dataset's folder and an
``--images`` output folder), so a rerun with other windows is refused instead of mixing them."""
IMAGE_FOLDERS = ("imagesTr", "imagesTs", "imagesUnlabeled")
LABEL_FOLDERS = ("labelsTr", "labelsTs")
_TMP = ".tmp_ct_windows_"


@dataclass(frozen=True)
class Window:
    """A CT window: ``level`` (centre) and ``width`` in HU."""
    name: str
    level: float
    width: float

    @property
    def lower(self) -> float:
        return self.level - self.width / 2

    @property
    def upper(self) -> float:
        return self.level + self.width / 2

    def to_json(self) -> dict:
        return {"name": self.name, "level": self.level, "width": self.width}

    def __str__(self) -> str:
        return f"{self.name} (L {self.level:g}, W {self.width:g})"


PRESETS: Dict[str, Window] = {
    "abdomen": Window("abdomen", 40.0, 400.0),
    "chest": Window("chest", -600.0, 1500.0),
    "bone": Window("bone", 400.0, 1800.0),
}
DEFAULT_WINDOWS = ("abdomen", "chest", "bone")

_LW = re.compile(r"^\s*(?:(?P<name>[A-Za-z][\w-]*)=)?(?P<level>[-+]?\d+(?:\.\d+)?):(?P<width>[-+]?\d+(?:\.\d+)?)\s*$")


def parse_window(text: str) -> Window:
    """``"abdomen"`` (a preset), ``"40:400"`` (level:width in HU) or ``"lung=-600:1500"`` (named).

    A negative level needs the ``name=`` form on the command line (argparse reads ``-600:1500`` as
    an option). Raises :class:`UserError` for anything else or a width <= 0.
    """
    key = str(text).strip()
    if key.lower() in PRESETS:
        return PRESETS[key.lower()]
    m = _LW.match(key)
    if m is None:
        raise UserError(f"window {text!r} is neither a preset ({', '.join(PRESETS)}) nor level:width in HU "
                        f"like 40:400 or lung=-600:1500")
    level, width = float(m.group("level")), float(m.group("width"))
    if not width > 0:
        raise UserError(f"window {text!r} has width {width:g}; the width must be > 0 HU")
    return Window(m.group("name") or f"L{level:g}W{width:g}", level, width)


def parse_windows(texts: Sequence[str]) -> List[Window]:
    """Parse a list of windows (see :func:`parse_window`); refuses an empty list or repeated names."""
    windows = [parse_window(t) for t in texts]
    if not windows:
        raise UserError("give at least one window")
    names = [w.name for w in windows]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"window {repeated[0]!r} is given twice; each window makes one channel, give each once")
    return windows


def windows_from_json(record: Sequence[dict]) -> List[Window]:
    return [Window(str(w["name"]), float(w["level"]), float(w["width"])) for w in record]


def apply_window(hu: np.ndarray, window: Window) -> np.ndarray:
    """``clip((hu - (L - W/2)) / W, 0, 1)`` as float32, same shape as ``hu``."""
    out = (np.asarray(hu, dtype=np.float32) - np.float32(window.lower)) / np.float32(window.width)
    return np.clip(out, 0.0, 1.0, out=out)


def window_stack(hu: np.ndarray, windows: Sequence[Window]) -> np.ndarray:
    """One channel per window: ``hu`` of shape ``(*spatial)`` -> ``(len(windows), *spatial)`` float32."""
    return np.stack([apply_window(hu, w) for w in windows])


# ---------------------------------------------------------------------------------------------------- checks


def check_ct_source(dataset_json: dict, where: str) -> None:
    """Refuse (one sentence) a dataset that is not one CT channel: windows are defined in HU."""
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise UserError(f"{where} has no channel_names in dataset.json; convert-ct-windows needs one channel named "
                        f"'CT'")
    if RECORD_KEY in dataset_json:
        raise UserError(f"{where} is already a windowed dataset (made by convert-ct-windows); convert its CT source "
                        f"{dataset_json[RECORD_KEY].get('source', '')!r} instead")
    if len(channels) != 1:
        raise UserError(f"{where} has {len(channels)} channels ({', '.join(map(str, channels.values()))}); "
                        f"convert-ct-windows converts a dataset with exactly one CT channel")
    name = str(next(iter(channels.values())))
    if name.casefold() != "ct":
        raise UserError(f"{where} has channel {name!r}, not 'CT'; windows are defined in Hounsfield units, so only "
                        f"CT datasets (dataset.json channel_names {{\"0\": \"CT\"}}) can be converted")
    if "dataset" in dataset_json:
        raise UserError(f"{where} lists its files in dataset.json ('dataset' key); convert-ct-windows needs the "
                        f"standard imagesTr/labelsTr layout")


def check_hu(image: np.ndarray, name: str) -> None:
    """Refuse an image that cannot be HU: non-finite values, or every value in [0, 1] (already windowed)."""
    if not np.all(np.isfinite(image)):
        raise ValueError(f"{name} contains NaN or inf")
    lo, hi = float(image.min()), float(image.max())
    if lo >= 0.0 and hi <= 1.0:
        raise ValueError(f"{name} has all values in [{lo:g}, {hi:g}], which looks already windowed, not Hounsfield "
                         f"units; convert the original CT")


def record_of(dataset_json: dict, where: str) -> dict:
    """The windowing record of a converted dataset's ``dataset.json`` (refuses an unconverted one)."""
    record = dataset_json.get(RECORD_KEY)
    if not isinstance(record, dict) or not record.get("windows"):
        raise UserError(f"{where} is not a dataset made by 'nnunet-ssl convert-ct-windows' (no {RECORD_KEY!r} in "
                        f"its dataset.json); --like needs the converted dataset the model was trained on")
    return record


# ---------------------------------------------------------------------------------------------------- reading, writing


def reader_writer_class(dataset_json: dict, example_file: str):
    """nnU-Net's reader/writer class for the dataset (as planning chooses it), if we can write its images."""
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIO, NibabelIOWithReorient
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    try:
        rw = determine_reader_writer_from_dataset_json(dataset_json, example_file, verbose=False)
    except RuntimeError:
        raise UserError(f"nnU-Net has no reader for {example_file} (file ending {dataset_json.get('file_ending')!r})")
    if not issubclass(rw, (SimpleITKIO, NibabelIO, NibabelIOWithReorient)):
        raise UserError(f"{rw.__name__} images ({dataset_json.get('file_ending')}) cannot hold Hounsfield units; "
                        f"convert-ct-windows reads and writes volumes read by SimpleITKIO or NibabelIO (.nii.gz, "
                        f".nrrd, .mha)")
    return rw


def write_image(channel: np.ndarray, properties: dict, path: str) -> None:
    """Write one float32 channel ``(Z, Y, X)`` (``(1, Y, X)`` for 2D) with the geometry in ``properties``.

    ``properties`` is what nnU-Net's reader returned for the source file; this mirrors the reader's
    ``write_seg`` (SimpleITKIO[WithReorient], NibabelIO[WithReorient]) without its integer cast."""
    data = np.ascontiguousarray(channel, dtype=np.float32)
    if "sitk_stuff" in properties:
        import SimpleITK as sitk

        geo = properties["sitk_stuff"]
        if len(geo["spacing"]) == 2:
            data = data[0]
        img = sitk.GetImageFromArray(data)
        img.SetSpacing(geo["spacing"])
        img.SetOrigin(geo["origin"])
        img.SetDirection(geo["direction"])
        if "original_orientation" in geo:  # SimpleITKIOWithReorient read it reoriented to RAS
            img = sitk.DICOMOrient(img, geo["original_orientation"])
        sitk.WriteImage(img, path, True)
    elif "nibabel_stuff" in properties:
        import nibabel
        from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

        geo = properties["nibabel_stuff"]
        data = data.transpose((2, 1, 0))
        if "reoriented_affine" in geo:  # NibabelIOWithReorient read it reoriented to RAS
            img = nibabel.Nifti1Image(data, affine=geo["reoriented_affine"])
            img = img.as_reoriented(ornt_transform(axcodes2ornt("RAS"), io_orientation(geo["original_affine"])))
        else:
            img = nibabel.Nifti1Image(data, affine=geo["original_affine"])
        nibabel.save(img, path)
    else:
        raise ValueError("properties come from a reader convert-ct-windows cannot write (no sitk/nibabel geometry)")


def _link_or_copy_atomic(src: str, dst: str) -> None:
    tmp = os.path.join(os.path.dirname(dst), f"{_TMP}{uuid.uuid4().hex[:8]}_{os.path.basename(dst)}")
    link_or_copy(src, tmp)
    os.replace(tmp, dst)


# ---------------------------------------------------------------------------------------------------- one case


@dataclass
class _Job:
    case: str
    source: str
    outputs: List[str]  # one file per window, channel order


def _convert_one(job: _Job, windows: List[Window], rw_class, tmp_dir: str) -> Tuple[str, Optional[str]]:
    """Worker: read ``job.source``, write one file per window through ``tmp_dir``; (case, error or None).

    The channel files are moved into place in channel order, so a case is complete exactly when its
    last channel file exists; an interrupted case is redone by the next run."""
    try:
        image, properties = rw_class().read_images([job.source])
        if image.shape[0] != 1:
            raise ValueError(f"{os.path.basename(job.source)} holds {image.shape[0]} channels, expected one CT channel")
        check_hu(image, os.path.basename(job.source))
        stack = window_stack(image[0], windows)
        del image
        tmps = []
        for k, out in enumerate(job.outputs):
            tmp = os.path.join(tmp_dir, os.path.basename(out))
            write_image(stack[k], properties, tmp)
            tmps.append(tmp)
        for tmp, out in zip(tmps, job.outputs):
            os.replace(tmp, out)
        return job.case, None
    except ValueError as e:  # our checks: the message says it all
        return job.case, str(e)
    except Exception as e:  # reader or writer errors: reported per case, the others go on
        return job.case, f"{type(e).__name__}: {e}"


def _star(args):
    return _convert_one(*args)


def _run_jobs(jobs: List[_Job], windows: List[Window], rw_class, tmp_dir: str, num_processes: int, progress: bool,
              desc: str) -> Dict[str, Optional[str]]:
    """Convert ``jobs`` (:func:`~nnunet_ssl.utils.pool.run_case_jobs`); case -> error or None."""
    return run_case_jobs(_star, [(j, windows, rw_class, tmp_dir) for j in jobs], num_processes, progress, desc)


def _convert_pending(pending: List[Tuple[str, str, str]], windows: List[Window], ending: str, rw_class,
                     work_folder: str, num_processes: int, progress: bool, desc: str,
                     result: "ConversionResult") -> Dict[str, Optional[str]]:
    """Convert every ``(output folder, case, source file)`` whose last channel is not written yet (the others
    go to ``result.skipped``), through a temporary folder in ``work_folder``; case -> error or None."""
    jobs = []
    for out_dir, case, src in pending:
        outputs = _outputs(out_dir, case, len(windows), ending)
        if os.path.isfile(outputs[-1]):
            result.skipped.append(case)
        else:
            jobs.append(_Job(case, src, outputs))
    tmp_dir = os.path.join(work_folder, f"{_TMP}{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp_dir)
    try:
        return _run_jobs(jobs, windows, rw_class, tmp_dir, num_processes, progress, desc)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _single_channel_cases(folder: str, ending: str, where: str) -> Dict[str, str]:
    """case -> its ``_0000`` file; refuses names not following ``<case>_XXXX<ending>`` and extra channels."""
    from nnunet_ssl.data.unlabeled import cases_in_folder

    cases, misfits = cases_in_folder(folder, ending)
    misfits = [m for m in misfits if m.endswith(ending) and not m.startswith(_TMP)]
    if misfits:
        raise UserError(f"{len(misfits)} file(s) in {where} are not named <case>_0000{ending}, e.g. {misfits[0]!r}; "
                        f"rename or remove them")
    out = {}
    for case, files in cases.items():
        if len(files) != 1 or not files[0].endswith("_0000" + ending):
            names = ", ".join(os.path.basename(f) for f in files)
            raise UserError(f"case {case!r} in {where} has channel files {names}; convert-ct-windows needs one CT "
                            f"channel per case (<case>_0000{ending})")
        out[case] = files[0]
    return out


def _outputs(folder: str, case: str, n: int, ending: str) -> List[str]:
    return [os.path.join(folder, f"{case}_{k:04d}{ending}") for k in range(n)]


def _check_record(folder: str, record: dict, what: str) -> bool:
    """True when ``folder`` holds our sidecar with the same windows (a rerun); False when the folder is
    new or empty; raises when it holds other windows or other content."""
    path = os.path.join(folder, RECORD_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        if old.get("windows") != record["windows"]:
            old_names = ", ".join(str(w) for w in windows_from_json(old.get("windows", [])))
            raise UserError(f"{what} was converted with other windows ({old_names}); a model must see one window "
                            f"set, so choose another target or remove {folder} yourself")
        if old.get("source") != record.get("source"):
            raise UserError(f"{what} was converted from {old.get('source')!r}, not {record.get('source')!r}; "
                            f"choose another target")
        return True
    return False


def _failure_message(failed: Dict[str, str], done: int, where: str) -> str:
    lines = [f"{c}: {e.splitlines()[0] if e else e}" for c, e in sorted(failed.items())]
    return (f"{len(lines)} case(s) could not be converted ({done} converted or already done, all kept); fix or "
            f"remove their files in {where} and run again:\n  " + "\n  ".join(lines))


# ---------------------------------------------------------------------------------------------------- dataset


@dataclass
class ConversionResult:
    target: str
    converted: List[str] = field(default_factory=list)   # cases written in this run
    skipped: List[str] = field(default_factory=list)     # cases already converted
    copied: List[str] = field(default_factory=list)      # labels and extra files linked or copied in this run
    ignored: List[str] = field(default_factory=list)     # source entries not carried over (unknown folders)


def convert_dataset(source_folder: str, target_folder: str, windows: Sequence[Window], num_processes: int = 1,
                    progress: bool = True) -> ConversionResult:
    """Write the windowed copy of the raw CT dataset ``source_folder`` to ``target_folder`` (see module doc).

    ``imagesTr``, ``imagesTs`` and ``imagesUnlabeled`` are converted; ``labelsTr``/``labelsTs`` and the
    other files at the top of the source (``categoryLabels.json``, ``nnunet_ssl_split.json``, ...) are
    hard-linked or copied unchanged. Everything is checked before the first file is written.
    """
    windows = list(windows)
    src_json_path = os.path.join(source_folder, "dataset.json")
    if not os.path.isfile(src_json_path):
        raise UserError(f"{src_json_path} not found; -d must name an nnU-Net raw dataset")
    with open(src_json_path) as f:
        src_json = json.load(f)
    source_name = os.path.basename(os.path.normpath(source_folder))
    check_ct_source(src_json, source_name)
    ending = src_json["file_ending"]

    images = {}
    for sub in IMAGE_FOLDERS:
        folder = os.path.join(source_folder, sub)
        if os.path.isdir(folder):
            images[sub] = _single_channel_cases(folder, ending, f"{source_name}/{sub}")
    if not images.get("imagesTr"):
        raise UserError(f"{source_name}/imagesTr holds no images ending in {ending}")
    labels = {}
    for sub in LABEL_FOLDERS:
        folder = os.path.join(source_folder, sub)
        if os.path.isdir(folder):
            labels[sub] = sorted(n for n in os.listdir(folder) if n.endswith(ending) and not n.startswith("."))
    extras, ignored = [], []
    for name in sorted(os.listdir(source_folder)):
        path = os.path.join(source_folder, name)
        if name.startswith(".") or name in ("dataset.json", RECORD_FILE) or name in IMAGE_FOLDERS + LABEL_FOLDERS:
            continue
        (extras if os.path.isfile(path) else ignored).append(name)

    record = {"source": source_name, "windows": [w.to_json() for w in windows],
              "formula": "clip((HU - (level - width/2)) / width, 0, 1)"}
    rerun = _check_record(target_folder, record, os.path.basename(os.path.normpath(target_folder)))
    if not rerun and os.path.isdir(target_folder) and os.listdir(target_folder):
        raise UserError(f"{target_folder} already exists with other content; choose another --id or remove it "
                        f"yourself (convert-ct-windows never deletes data)")
    first = next(iter(images["imagesTr"].values()))
    rw_class = reader_writer_class(src_json, first)

    os.makedirs(target_folder, exist_ok=True)
    write_json_atomic(os.path.join(target_folder, RECORD_FILE), record)
    result = ConversionResult(target_folder, ignored=ignored)
    pending = []
    for sub, cases in images.items():
        out_dir = os.path.join(target_folder, sub)
        os.makedirs(out_dir, exist_ok=True)
        pending += [(out_dir, case, src) for case, src in sorted(cases.items())]
    results = _convert_pending(pending, windows, ending, rw_class, target_folder, num_processes, progress,
                               f"CT windows -> {os.path.basename(os.path.normpath(target_folder))}", result)
    failed = {c: e for c, e in results.items() if e}
    result.converted = sorted(c for c, e in results.items() if not e)

    for sub, names in labels.items():
        os.makedirs(os.path.join(target_folder, sub), exist_ok=True)
        for name in names:
            dst = os.path.join(target_folder, sub, name)
            if not os.path.isfile(dst):
                _link_or_copy_atomic(os.path.join(source_folder, sub, name), dst)
                result.copied.append(f"{sub}/{name}")
    for name in extras:
        dst = os.path.join(target_folder, name)
        if not os.path.isfile(dst):
            _link_or_copy_atomic(os.path.join(source_folder, name), dst)
            result.copied.append(name)
    if failed:
        raise UserError(_failure_message(failed, len(result.converted) + len(result.skipped), source_name))

    new_json = dict(src_json)
    new_json["channel_names"] = {str(k): CHANNEL_NAME for k in range(len(windows))}
    new_json.pop("modality", None)
    new_json[RECORD_KEY] = record
    write_json_atomic(os.path.join(target_folder, "dataset.json"), new_json)  # last: the dataset is complete
    return result


# ---------------------------------------------------------------------------------------------------- new scans


def convert_folder(input_folder: str, output_folder: str, converted_dataset_json: dict, dataset_name: str,
                   num_processes: int = 1, progress: bool = True) -> ConversionResult:
    """Convert the single-channel CT cases of ``input_folder`` (``<case>_0000<ending>``) with the windows
    recorded in a converted dataset's ``dataset.json``, into ``output_folder`` (``<case>_0000..``), ready
    for ``nnUNetv2_predict -i output_folder``. Finished cases are skipped; a folder converted with
    other windows is refused."""
    record = record_of(converted_dataset_json, dataset_name)
    windows = windows_from_json(record["windows"])
    ending = converted_dataset_json["file_ending"]
    if not os.path.isdir(input_folder):
        raise UserError(f"input folder {input_folder} does not exist")
    if os.path.abspath(input_folder) == os.path.abspath(output_folder):
        raise UserError("the output folder must differ from the input folder (the converted files have the same names)")
    cases = _single_channel_cases(input_folder, ending, input_folder)
    if not cases:
        raise UserError(f"{input_folder} holds no images named <case>_0000{ending}")
    folder_record = {"source": dataset_name, "windows": record["windows"], "formula": record.get("formula")}
    _check_record(output_folder, folder_record, output_folder)
    rw_class = reader_writer_class(converted_dataset_json, next(iter(cases.values())))

    os.makedirs(output_folder, exist_ok=True)
    write_json_atomic(os.path.join(output_folder, RECORD_FILE), folder_record)
    result = ConversionResult(output_folder)
    results = _convert_pending([(output_folder, case, src) for case, src in sorted(cases.items())], windows, ending,
                               rw_class, output_folder, num_processes, progress, "CT windows", result)
    failed = {c: e for c, e in results.items() if e}
    result.converted = sorted(c for c, e in results.items() if not e)
    if failed:
        raise UserError(_failure_message(failed, len(result.converted) + len(result.skipped), input_folder))
    return result
