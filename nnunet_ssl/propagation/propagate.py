"""Bidirectional propagation of reference masks through a volume, one organ at a time.

Each reference slice covers a range of slices (:func:`~nnunet_ssl.propagation.references.reference_ranges`);
from the reference the mask is carried slice by slice towards both ends of its range, each direction
with its own memory bank (the reference with its mask, then the propagated slices with their predicted
probabilities, STCN's policy). The reference slice itself keeps its given mask.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from nnunet_ssl.propagation.memory import MemoryBank
from nnunet_ssl.propagation.network import SpaceTimeMemoryNetwork, pad_to_divisor
from nnunet_ssl.propagation.references import reference_ranges

__all__ = ["propagate_organ", "propagate_organs", "copy_references"]


@torch.no_grad()
def propagate_organ(network: SpaceTimeMemoryNetwork, volume: Tensor, references: Dict[int, Tensor],
                    memory_every: int = 5, max_memory_frames: int = 0,
                    on_slice: Optional[Callable[[], None]] = None) -> Tensor:
    """Probabilities ``(Z, H, W)`` (float32, on the volume's device) of one organ.

    ``volume`` ``(C, Z, H, W)`` preprocessed image; ``references`` slice index -> mask ``(H, W)`` (0/1 or
    soft). ``on_slice`` is called once per propagated slice (progress bars). The slices are zero-padded to
    the network's divisor and the result cropped back."""
    network.eval()
    _, z_count, h, w = volume.shape
    volume = pad_to_divisor(volume, network.divisor)
    probabilities = torch.zeros((z_count, *volume.shape[2:]), dtype=torch.float32, device=volume.device)
    for ref, first, last in reference_ranges(list(references), z_count):
        mask = pad_to_divisor(references[ref].to(volume.device, torch.float32), network.divisor)
        probabilities[ref] = mask
        image = volume[:, ref][None].float()
        key, skips = network.encode_key(image)
        value = network.encode_value(image, mask[None, None], skips[-1])
        for step, stop in ((1, last), (-1, first)):
            bank = MemoryBank(memory_every, max_memory_frames)
            bank.add_reference(key[0], value[0])
            for distance, z in enumerate(range(ref + step, stop + step, step), start=1):
                image_z = volume[:, z][None].float()
                key_z, skips_z = network.encode_key(image_z)
                memory_keys, memory_values = bank.stacked()
                p = torch.sigmoid(network.segment(key_z, skips_z, memory_keys, memory_values).float())
                probabilities[z] = p[0, 0]
                if z != stop:
                    bank.add_propagated(key_z[0], network.encode_value(image_z, p, skips_z[-1])[0], distance)
                if on_slice is not None:
                    on_slice()
    return probabilities[:, :h, :w]


def propagate_organs(networks: Sequence[SpaceTimeMemoryNetwork], volume: Tensor,
                     references: Dict[int, Dict[int, Tensor]], memory_every: int = 5, max_memory_frames: int = 0,
                     on_slice: Optional[Callable[[], None]] = None) -> Dict[int, np.ndarray]:
    """label -> probabilities ``(Z, H, W)`` (numpy float32) for every organ with references
    (label -> {slice -> mask}); several networks (folds) are averaged."""
    out = {}
    for label, refs in references.items():
        total = None
        for net in networks:
            p = propagate_organ(net, volume, refs, memory_every, max_memory_frames, on_slice)
            total = p if total is None else total + p
        out[label] = (total / len(networks)).cpu().numpy()
    return out


def copy_references(references: Dict[int, Dict[int, np.ndarray]], num_slices: int) -> Dict[int, np.ndarray]:
    """The baseline without propagation: every reference mask copied to every slice of its range."""
    out = {}
    for label, refs in references.items():
        masks = {z: np.asarray(m, dtype=np.float32) for z, m in refs.items()}
        shape = next(iter(masks.values())).shape
        p = np.zeros((num_slices, *shape), dtype=np.float32)
        for ref, first, last in reference_ranges(list(masks), num_slices):
            p[first:last + 1] = masks[ref]
        out[label] = p
    return out
