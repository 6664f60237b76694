"""Generated HU phantoms and raw CT datasets for the CT-windowing tests.

A phantom is air (-1000 HU) around a body of fat (-100 HU) holding a lung (-850 HU), a soft-tissue
organ (40 HU), cancellous bone (700 HU) and cortical bone (1200 HU), written with a geometry that
is not the identity (anisotropic spacing, an offset origin and flipped axes), as int16 NIfTI like
scanner exports.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Sequence

import numpy as np

TISSUES_HU: Dict[str, int] = {"air": -1000, "lung": -850, "fat": -100, "soft": 40, "bone": 700, "cortical": 1200}
LABEL_OF = {"soft": 1, "bone": 2}
SHAPE = (12, 24, 28)  # z, y, x
SPACING_XYZ = (0.75, 0.8, 2.5)
ORIGIN = (-100.5, 20.25, 7.0)
DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def phantom(seed: int = 0) -> Dict[str, np.ndarray]:
    """``{"hu": int16 (Z, Y, X), "label": uint8, "<tissue>": bool mask per tissue}``; regions move a little with
    ``seed`` so cases differ."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    hu = np.full(SHAPE, TISSUES_HU["air"], dtype=np.int16)
    body = ((y - 12) / 10.5) ** 2 + ((x - 14) / 12.5) ** 2 <= 1
    masks = {"fat": body.copy()}
    dy, dx = rng.integers(-1, 2, size=2)
    masks["lung"] = body & (((y - 8 - dy) / 3) ** 2 + ((x - 7) / 3) ** 2 <= 1)
    masks["soft"] = body & (((y - 14) / 4) ** 2 + ((x - 18 - dx) / 4) ** 2 <= 1)
    masks["cortical"] = body & (((y - 17 - dy) / 2.5) ** 2 + ((x - 8) / 2.5) ** 2 <= 1)
    masks["bone"] = masks["cortical"] & (((y - 17 - dy) / 1.5) ** 2 + ((x - 8) / 1.5) ** 2 <= 1)
    masks["cortical"] &= ~masks["bone"]
    for t in ("fat", "lung", "soft", "cortical", "bone"):
        hu[masks[t]] = TISSUES_HU[t]
    for t in ("fat", "lung", "soft", "cortical"):  # the later regions were painted over earlier ones
        masks[t] = hu == TISSUES_HU[t]
    masks["air"] = hu == TISSUES_HU["air"]
    label = np.zeros(SHAPE, dtype=np.uint8)
    for t, v in LABEL_OF.items():
        label[masks[t]] = v
    return {"hu": hu, "label": label, **masks}


def write_nifti(array: np.ndarray, path: str) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array)
    img.SetSpacing(SPACING_XYZ)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    sitk.WriteImage(img, path, True)


def make_ct_dataset(folder: str, train: Sequence[int] = (0, 1, 2), unlabeled: Sequence[int] = (10, 11),
                    test: Sequence[int] = (20,), channel_names=None, extra_files: bool = True) -> str:
    """A raw nnU-Net dataset of phantoms: imagesTr/labelsTr, imagesUnlabeled, imagesTs/labelsTs."""
    channel_names = channel_names or {"0": "CT"}
    for sub in ("imagesTr", "labelsTr", "imagesUnlabeled", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for role, seeds in (("Tr", train), ("Unlabeled", unlabeled), ("Ts", test)):
        for s in seeds:
            p = phantom(s)
            case = f"ph_{s:03d}"
            for c in range(len(channel_names)):
                write_nifti(p["hu"], os.path.join(folder, f"images{role}", f"{case}_{c:04d}.nii.gz"))
            if role != "Unlabeled":
                write_nifti(p["label"], os.path.join(folder, f"labels{role}", f"{case}.nii.gz"))
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"channel_names": channel_names, "labels": {"background": 0, "soft": 1, "bone": 2},
                   "numTraining": len(train), "file_ending": ".nii.gz"}, f)
    if extra_files:
        with open(os.path.join(folder, "categoryLabels.json"), "w") as f:
            json.dump({"ph_010": ["bone"]}, f)
    return folder
