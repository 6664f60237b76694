"""Synthetic nnU-Net datasets with strong class imbalance, for the demo, tests and benchmarks.

Every case holds three structures of very different size inside a noisy, bias-field-corrupted
background: a large organ (class 1), a medium structure (class 2) and a tiny one (class 3). The
tiny structure is what class-imbalance methods are meant to help with. Each structure has its own
mean intensity with overlapping noise, so intensity alone does not solve the task.

The generator writes a standard nnU-Net raw dataset (``imagesTr``, ``labelsTr``, ``dataset.json``)
plus the two folders this package adds: ``imagesUnlabeled`` (images only) and a held-out test set
(``imagesTs`` with its references in ``labelsTs``).

- ``dim=3``: single-channel volumes written as ``.nii.gz`` (channel "MRI", z-score normalisation).
- ``dim=2``: RGB frames written as ``.png`` (channels R, G, B; nnU-Net's natural-image reader),
  optionally with image-level category labels (``categoryLabels.json``) for the weakly supervised
  trainers: in 2D, each structure is present in a frame only with some probability.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

LABELS = {"background": 0, "organ": 1, "vessel": 2, "lesion": 3}


@dataclass
class SyntheticSpec:
    """What to generate. Counts are numbers of cases (volumes or frames)."""

    num_labeled: int = 4
    num_unlabeled: int = 12
    num_test: int = 4
    dim: int = 3
    shape: Tuple[int, ...] = (32, 32, 32)
    spacing: Tuple[float, ...] = (1.0, 1.0, 1.0)
    noise: float = 0.35
    seed: int = 0
    # 2D only: chance that each foreground structure appears in a frame
    presence_probability: float = 0.7
    category_labels: bool = False
    # sizes as fractions of the smallest image side: (large, medium, tiny) radii
    radii: Tuple[float, float, float] = (0.28, 0.12, 0.05)
    intensities: Tuple[float, float, float, float] = (0.0, 1.0, 1.6, 2.2)
    # 3D only: in-plane drift of every structure per slice along the first axis (voxels per slice), in a
    # random direction per case: cross-sections move smoothly from slice to slice (mask propagation).
    # 0 leaves the generator's output unchanged.
    motion: float = 0.0
    extra: Dict = field(default_factory=dict)

    def __post_init__(self):
        if self.dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {self.dim}")
        if len(self.shape) != self.dim:
            raise ValueError(f"shape {self.shape} has {len(self.shape)} axes but dim={self.dim}")
        if min(self.num_labeled, self.num_unlabeled, self.num_test) < 0:
            raise ValueError("case counts must be >= 0")


def _grid(shape: Sequence[int]) -> List[np.ndarray]:
    return np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")


def _ellipsoid(grid, center, radii) -> np.ndarray:
    d = sum(((g - c) / max(r, 0.5)) ** 2 for g, c, r in zip(grid, center, radii))
    return d <= 1.0


def _smooth_field(rng: np.random.Generator, shape, scale: float) -> np.ndarray:
    """A low-frequency multiplicative bias field around 1."""
    grid = _grid(shape)
    coeffs = rng.normal(0, scale, size=(len(shape), 2))
    f = np.ones(shape, dtype=np.float32)
    for g, (a, b), s in zip(grid, coeffs, shape):
        f += a * np.sin(np.pi * g / s) + b * (g / s - 0.5)
    return f


def make_case(spec: SyntheticSpec, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """One case: ``image`` float32 of ``spec.shape`` (grey) and ``label`` uint8 of the same shape."""
    shape = np.array(spec.shape, dtype=np.float32)
    side = float(shape.min())
    grid = _grid(spec.shape)
    if spec.motion and spec.dim == 3:  # shear: the in-plane centre moves by `motion` voxels per slice
        angle = rng.uniform(0, 2 * np.pi)
        offset = spec.motion * (grid[0] - shape[0] / 2)
        grid = [grid[0], grid[1] - offset * np.cos(angle), grid[2] - offset * np.sin(angle)]
    label = np.zeros(spec.shape, dtype=np.uint8)
    present = [True, True, True]
    if spec.dim == 2:
        present = list(rng.random(3) < spec.presence_probability)

    # large organ near the centre, axis-aligned ellipsoid with random elongation
    r_large = spec.radii[0] * side * rng.uniform(0.85, 1.15, size=spec.dim)
    c_large = shape / 2 + rng.uniform(-0.08, 0.08, size=spec.dim) * shape
    organ = _ellipsoid(grid, c_large, r_large)
    if present[0]:
        label[organ] = 1

    # medium tubular-ish structure: an elongated ellipsoid beside the organ
    r_med = spec.radii[1] * side * np.array([2.2] + [1.0] * (spec.dim - 1)) * rng.uniform(0.8, 1.2)
    r_med = rng.permutation(r_med)
    for _ in range(20):
        c_med = rng.uniform(0.2, 0.8, size=spec.dim) * shape
        vessel = _ellipsoid(grid, c_med, r_med)
        if (vessel & organ).sum() < 0.2 * vessel.sum():
            break
    if present[1]:
        label[vessel & (label == 0)] = 2

    # tiny lesion, inside or at the rim of the organ
    r_tiny = max(spec.radii[2] * side, 1.0) * rng.uniform(0.8, 1.3)
    direction = rng.normal(size=spec.dim)
    direction /= np.linalg.norm(direction) + 1e-8
    c_tiny = c_large + direction * r_large * rng.uniform(0.3, 0.7)
    lesion = _ellipsoid(grid, c_tiny, [r_tiny] * spec.dim)
    if present[2]:
        label[lesion] = 3

    means = np.array(spec.intensities, dtype=np.float32)
    image = means[label].astype(np.float32)
    image = image * _smooth_field(rng, spec.shape, 0.1)
    image += rng.normal(0, spec.noise, size=spec.shape).astype(np.float32)
    return image.astype(np.float32), label


def _write_nifti(array: np.ndarray, spacing, path: str, is_seg: bool) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array.astype(np.uint8 if is_seg else np.float32))
    img.SetSpacing([float(s) for s in spacing[::-1]])  # SimpleITK orders axes x, y, z
    sitk.WriteImage(img, path, useCompression=True)


def _write_png_rgb(image: np.ndarray, path: str, rng: np.random.Generator) -> None:
    from skimage import io

    lo, hi = np.percentile(image, [0.5, 99.5])
    grey = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    tint = rng.uniform(0.8, 1.0, size=3)
    rgb = np.stack([grey * t for t in tint], -1)
    io.imsave(path, (rgb * 255).astype(np.uint8), check_contrast=False)


def _write_png_seg(label: np.ndarray, path: str) -> None:
    from skimage import io

    io.imsave(path, label.astype(np.uint8), check_contrast=False)


def generate_dataset(out_folder: str, spec: Optional[SyntheticSpec] = None, overwrite: bool = False) -> Dict:
    """Write a synthetic raw dataset to ``out_folder`` (e.g. ``$nnUNet_raw/Dataset990_SSLDemo``).

    Returns a summary dict (case ids per role, class voxel counts). Refuses to write into a
    non-empty folder unless ``overwrite`` (then only files of the generated names are replaced).
    """
    from nnunet_ssl.errors import UserError

    spec = spec or SyntheticSpec()
    if os.path.isdir(out_folder) and os.listdir(out_folder) and not overwrite:
        raise UserError(f"{out_folder} already exists and is not empty; choose another dataset id or pass "
                        f"overwrite=True to regenerate it")
    rng = np.random.default_rng(spec.seed)
    ending = ".nii.gz" if spec.dim == 3 else ".png"
    folders = {k: os.path.join(out_folder, k) for k in ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs")}
    for f in folders.values():
        os.makedirs(f, exist_ok=True)

    roles = [("labeled", spec.num_labeled), ("unlabeled", spec.num_unlabeled), ("test", spec.num_test)]
    summary: Dict = {"labeled": [], "unlabeled": [], "test": [], "class_voxels": [0, 0, 0, 0]}
    categories = {}
    idx = 0
    for role, n in roles:
        for _ in range(n):
            case = f"case_{idx:04d}"
            idx += 1
            image, label = make_case(spec, rng)
            summary[role].append(case)
            if role == "labeled":
                for c in range(4):
                    summary["class_voxels"][c] += int((label == c).sum())
            img_dir, seg_dir = {"labeled": ("imagesTr", "labelsTr"), "unlabeled": ("imagesUnlabeled", None),
                                "test": ("imagesTs", "labelsTs")}[role]
            img_path = os.path.join(folders[img_dir], f"{case}_0000{ending}")
            seg_path = os.path.join(folders[seg_dir], f"{case}{ending}") if seg_dir else None
            if spec.dim == 3:
                _write_nifti(image, spec.spacing, img_path, False)
                if seg_path:
                    _write_nifti(label, spec.spacing, seg_path, True)
            else:
                _write_png_rgb(image, img_path, rng)
                if seg_path:
                    _write_png_seg(label, seg_path)
            if spec.category_labels and role in ("labeled", "unlabeled"):
                names = [n for n, v in LABELS.items() if v > 0 and (label == v).any()]
                categories[case] = {"classes": names}

    channel_names = {"0": "MRI"} if spec.dim == 3 else {"0": "R", "1": "G", "2": "B"}
    dataset_json = {
        "channel_names": channel_names,
        "labels": dict(LABELS),
        "numTraining": spec.num_labeled,
        "file_ending": ending,
        "name": "nnunet_ssl synthetic",
        "description": "Generated by nnunet_ssl.data.synthetic: large organ (1), medium vessel (2), tiny lesion (3).",
    }
    with open(os.path.join(out_folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=1)
    if spec.category_labels:
        with open(os.path.join(out_folder, "categoryLabels.json"), "w") as f:
            json.dump(categories, f, indent=1)
    return summary
