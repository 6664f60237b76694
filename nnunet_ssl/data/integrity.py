"""Checks on unlabeled images for what nnU-Net's readers let through without a word.

- a truncated or corrupt gzip file: SimpleITK zero-fills the missing part of a truncated ``.nii.gz``;
- a 2D image in a 3D dataset (SimpleITK reads it as one slice with a placeholder spacing of 999x the
  in-plane spacing, which resampling would turn into ~999 slices), or a 3D image in a 2D dataset;
- a spacing far outside the range of the labeled cases (a header in metres instead of mm, a zero or
  placeholder spacing);
- a size that resampling to the plans' spacing would blow up far beyond the largest labeled case;
- NaN or inf voxels, in the image read and in the preprocessed result (they make every loss NaN).

The reference is nnU-Net's own ``dataset_fingerprint.json`` of the labeled cases (spacings and shapes
after cropping, in the reader's axis order). "Far outside" means more than :data:`MARGIN` times
beyond the labeled range, so ordinary variation between scanners passes.
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

FINGERPRINT_FILE = "dataset_fingerprint.json"
MARGIN = 10.0


class BadCase(Exception):
    """An unlabeled case that must be skipped; the message says why, in one line."""


@dataclass(frozen=True)
class GeometryReference:
    """What the labeled cases look like, from nnU-Net's fingerprint (reader axis order)."""

    is_2d: bool                          # every labeled case is a single slice (2D dataset)
    spacing_min: Tuple[float, ...]
    spacing_max: Tuple[float, ...]
    max_resampled_shape: Tuple[int, ...]  # per axis after transpose_forward, at the plans' spacing


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], transpose_forward: Sequence[int],
                    target_spacing: Sequence[float]) -> Tuple[int, ...]:
    """The shape nnU-Net's preprocessor resamples an image of ``shape``/``spacing`` (reader axis order)
    to, in the transposed axis order, exactly as ``DefaultPreprocessor.run_case_npy`` computes it
    (a 2D configuration keeps the spacing of the first transposed axis)."""
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    shape_t = [shape[i] for i in transpose_forward]
    spacing_t = [spacing[i] for i in transpose_forward]
    target = list(target_spacing)
    if len(target) < len(shape_t):
        target = [spacing_t[0]] + target
    return tuple(int(s) for s in compute_new_shape(shape_t, spacing_t, target))


def reference_from_fingerprint(fingerprint: dict, transpose_forward: Sequence[int],
                               target_spacing: Sequence[float]) -> GeometryReference:
    spacings = np.asarray(fingerprint["spacings"], dtype=float)
    shapes = [tuple(int(v) for v in s) for s in fingerprint["shapes_after_crop"]]
    resampled = np.asarray([resampled_shape(sh, sp, transpose_forward, target_spacing)
                            for sh, sp in zip(shapes, spacings)])
    return GeometryReference(is_2d=all(s[0] == 1 for s in shapes),
                             spacing_min=tuple(float(v) for v in spacings.min(0)),
                             spacing_max=tuple(float(v) for v in spacings.max(0)),
                             max_resampled_shape=tuple(int(v) for v in resampled.max(0)))


def load_reference(preprocessed_dataset_folder: str, transpose_forward: Sequence[int],
                   target_spacing: Sequence[float]) -> Optional[GeometryReference]:
    """The reference of a dataset, or None when it has no (readable) fingerprint file."""
    import json

    path = os.path.join(preprocessed_dataset_folder, FINGERPRINT_FILE)
    try:
        with open(path) as f:
            return reference_from_fingerprint(json.load(f), transpose_forward, target_spacing)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def check_compressed_files(files: Sequence[str]) -> None:
    """Read every ``.gz`` file to its end: a truncated or corrupt one raises :class:`BadCase`."""
    for path in files:
        if not path.endswith(".gz"):
            continue
        try:
            with gzip.open(path, "rb") as f:
                while f.read(1 << 22):
                    pass
        except EOFError:
            raise BadCase(f"{os.path.basename(path)} is truncated (the gzip stream ends early); the file was "
                          f"not copied completely") from None
        except (OSError, zlib.error) as e:
            raise BadCase(f"{os.path.basename(path)} is not a valid gzip file ({e})") from None


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def check_image(data: np.ndarray, spacing: Sequence[float], reference: Optional[GeometryReference],
                transpose_forward: Sequence[int], target_spacing: Sequence[float]) -> None:
    """Raise :class:`BadCase` for an image (``(c, *spatial)`` as nnU-Net's reader returns it) that does
    not fit the labeled cases, or that holds NaN/inf voxels. Without a reference only values are checked."""
    spatial = tuple(int(s) for s in data.shape[1:])
    spacing = tuple(float(s) for s in spacing)
    if reference is not None:
        if len(spatial) != len(reference.spacing_min):
            raise BadCase(f"has {len(spatial)} spatial axes but the labeled cases have {len(reference.spacing_min)}")
        case_is_2d = spatial[0] == 1
        if case_is_2d and not reference.is_2d:
            raise BadCase(f"is a 2D image (shape {spatial}) but the labeled cases are 3D volumes")
        if reference.is_2d and not case_is_2d:
            raise BadCase(f"is a 3D volume (shape {spatial}) but the labeled cases are 2D images")
        axes = range(1 if reference.is_2d else 0, len(spatial))  # a 2D image's first spacing is a placeholder
        for a in axes:
            lo, hi = reference.spacing_min[a] / MARGIN, reference.spacing_max[a] * MARGIN
            if not (np.isfinite(spacing[a]) and lo <= spacing[a] <= hi):
                raise BadCase(f"has spacing {_fmt(spacing)}, implausible next to the labeled cases' "
                              f"{_fmt(reference.spacing_min)}..{_fmt(reference.spacing_max)}; fix the image header")
        new_shape = resampled_shape(spatial, spacing, transpose_forward, target_spacing)
        limit = tuple(int(MARGIN * m) for m in reference.max_resampled_shape)
        if any(n > m for n, m in zip(new_shape, limit)):
            raise BadCase(f"would be resampled to shape {new_shape}, more than {MARGIN:g}x the largest labeled "
                          f"case {reference.max_resampled_shape}; check its size and spacing")
    check_finite(data, "image")


def check_finite(data: np.ndarray, what: str) -> None:
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise BadCase(f"{what} holds {bad} NaN/inf voxel(s) of {finite.size}; fix or remove the image")


def first_line(message: str, limit: int = 160) -> str:
    """The first non-empty line of a (possibly multi-line C++) error message, shortened to ``limit``."""
    line = next((ln.strip() for ln in str(message).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[:limit - 3] + "..."


def summarize_failures(failed: dict) -> List[str]:
    """One short line per failed case: ``<case>: <first line of its error>``."""
    return [f"{case}: {first_line(err)}" for case, err in sorted(failed.items())]
