"""Training sequences of consecutive slices from nnU-Net's preprocessed volumes, one organ at a time.

A sample: a case (nnU-Net's dataset class loads it), an organ present in it (uniformly among its
organs, so small organs are seen as often as large ones), a voxel of that organ (from nnU-Net's stored
class locations) whose slice is frame 0 — the annotated frame, so the organ is in it — and the next
``T − 1`` slices in a random direction (propagation runs both ways). One in-plane window, centred near
the voxel, is cut from all ``T`` slices; nnU-Net's 2d augmentation runs once on the stack (slices as
channels), so every slice gets the same spatial transform. The target is the organ's binary mask.

Batches: ``data`` ``(B, T, C, H, W)`` float32, ``target`` ``(B, T, 1, H, W)`` float32 (0/1), ``keys``
(case ids) and ``organ`` (the label of each sample).
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgenerators.dataloading.data_loader import DataLoader
from threadpoolctl import threadpool_limits

__all__ = ["sequence_slices", "SliceSequenceLoader"]


def sequence_slices(anchor: int, num_slices: int, length: int, direction: int) -> List[int]:
    """``length`` consecutive slice indices from ``anchor`` in ``direction`` (±1); the direction flips when
    the sequence would leave the volume and the other side has more room; indices are clamped to the
    volume where neither side has room enough (the last slice repeats)."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be 1 or -1, got {direction}")
    if not 0 <= anchor < num_slices:
        raise ValueError(f"anchor {anchor} outside 0..{num_slices - 1}")
    room = {1: num_slices - 1 - anchor, -1: anchor}
    if room[direction] < length - 1 and room[-direction] > room[direction]:
        direction = -direction
    return [min(max(anchor + direction * i, 0), num_slices - 1) for i in range(length)]


class SliceSequenceLoader(DataLoader):
    """batchgenerators DataLoader (as nnU-Net's ``nnUNetDataLoader``, so nnU-Net's augmenters run it) of
    slice sequences. ``patch_size`` is the window cut from the volume (nnU-Net's initial patch size, larger
    than ``final_patch_size`` when spatial augmentation follows); ``transforms`` nnU-Net's 2d transforms
    without deep supervision, or None (then the window must be the final size). ``center_jitter``: the
    window centre moves up to this share of the final patch from the sampled voxel. A sample whose first
    frame lost the organ in augmentation is redrawn (up to ``max_tries`` times)."""

    def __init__(self, data, batch_size: int, sequence_length: int, patch_size: Sequence[int],
                 final_patch_size: Sequence[int], foreground_labels: Sequence[int], transforms=None,
                 center_jitter: float = 0.25, max_tries: int = 10):
        super().__init__(data, batch_size, 1, None, True, False, True)
        if sequence_length < 2:
            raise ValueError(f"sequence_length must be >= 2, got {sequence_length}")
        self.indices = data.identifiers
        self.sequence_length = int(sequence_length)
        self.patch_size = [int(p) for p in patch_size]
        self.final_patch_size = [int(p) for p in final_patch_size]
        self.foreground_labels = [int(x) for x in foreground_labels]
        self.transforms = transforms
        self.center_jitter = float(center_jitter)
        self.max_tries = int(max_tries)

    def _organ_and_voxel(self, properties: dict):
        locations = properties["class_locations"]
        present = [c for c in self.foreground_labels if c in locations and len(locations[c]) > 0]
        if not present:
            return None, None
        organ = present[np.random.randint(len(present))]
        voxels = locations[organ]
        return organ, voxels[np.random.randint(len(voxels))]  # (channel, z, y, x)

    def _sample(self, key: str):
        data, seg, _, properties = self._data.load_case(key)
        organ, voxel = self._organ_and_voxel(properties)
        z_count = data.shape[1]
        if organ is None:  # a case without foreground: a random slice and (empty) label 1
            organ = self.foreground_labels[0]
            voxel = [0, np.random.randint(z_count)] + [np.random.randint(s) for s in data.shape[2:]]
        slices = sequence_slices(int(voxel[1]), z_count, self.sequence_length, 1 if np.random.rand() < 0.5 else -1)
        lo, hi = min(slices), max(slices) + 1
        bbox = [[lo, hi]]
        for axis, size in enumerate(self.patch_size):
            shift = np.random.uniform(-self.center_jitter, self.center_jitter) * self.final_patch_size[axis]
            start = int(round(voxel[2 + axis] + shift)) - size // 2
            bbox.append([start, start + size])
        order = [z - lo for z in slices]
        image = crop_and_pad_nd(data, bbox, 0)[:, order]  # (C, T, h, w)
        labels = crop_and_pad_nd(seg, bbox, -1, cast_cropped_to=np.int16)[0, order]  # (T, h, w)
        t, c = image.shape[1], image.shape[0]
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(1, 0, 2, 3).reshape(t * c, *image.shape[2:])))
        labels = torch.from_numpy(np.ascontiguousarray(labels)).to(torch.int16)
        if self.transforms is not None:
            out = self.transforms(image=image.float(), segmentation=labels)
            image, labels = out["image"], out["segmentation"]
        image = image.float().reshape(t, c, *image.shape[1:])
        mask = (labels == organ).float()[:, None]
        return image, mask, organ

    def generate_train_batch(self):
        keys = self.get_indices()
        images, masks, organs = [], [], []
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for key in keys:
                for _ in range(self.max_tries):
                    image, mask, organ = self._sample(key)
                    if mask[0].any():
                        break
                images.append(image)
                masks.append(mask)
                organs.append(organ)
        return {"data": torch.stack(images), "target": torch.stack(masks), "keys": keys,
                "organ": np.asarray(organs)}
