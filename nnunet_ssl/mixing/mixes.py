"""Mixes of two batches of patches: CutMix, CutOut, ClassMix, DMP, bidirectional copy-paste and
the hybrid crops of multi-model co-learning.

Every mix draws its random parameters once (the mask ``M``) and applies the same ``M`` to the
image, the label and every extra per-voxel map (confidence, weights) — the batchgeneratorsv2 habit
of "draw once, apply to image and segmentation alike". ``M`` is 1 where a voxel comes from the
*first* source: ``mix(a, b, M) = a·M + b·(1−M)``.

Shapes: images ``(B, C, *spatial)`` with 2 or 3 spatial dims; labels either integer maps
``(B, *spatial)`` / ``(B, 1, *spatial)`` or soft/one-hot targets ``(B, K, *spatial)``; every
result keeps the layout it received. Masks passed in may be shared ``(*spatial)`` or per sample
``(B, *spatial)`` / ``(B, 1, *spatial)``; results hold masks and weights per sample, in the layout
of the label (``(B, 1, *spatial)`` next to soft targets).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch

from nnunet_ssl.mixing.masks import (
    DEFAULT_BETA,
    box_mask,
    class_mask,
    classmix_classes,
    present_classes,
    sample_classes,
)

#: Crop parameter of the hybrid crops (INDMIX/OUTDMIX) of multi-model co-learning.
HYBRID_CROP_BETA = 0.5

#: Extra per-voxel maps to mix alongside: ``name -> (map of the first source, map of the second)``.
Extras = Mapping[str, Tuple[torch.Tensor, torch.Tensor]]


@dataclass
class MixResult:
    """One mixed batch.

    image:   ``(B, C, *spatial)`` mixed image.
    label:   mixed label, in the layout of the input label.
    mask:    ``M`` per sample, float, in the label's layout (``(B, 1, *spatial)`` for soft targets);
             1 where the voxel came from the first source.
    weight:  per-voxel loss weight, float, same layout as ``mask`` (all 1 unless the mix says
             otherwise: BCP region weights, CutOut's ignored box).
    classes: the class set ``S`` of each sample for class-based mixes (DMP, ClassMix), else None.
    extras:  the extra per-voxel maps, mixed with the same ``M``.
    """

    image: torch.Tensor
    label: torch.Tensor
    mask: torch.Tensor
    weight: torch.Tensor
    classes: Optional[List[torch.Tensor]] = None
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)


def mix(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``a·M + b·(1−M)`` for floating tensors, ``where(M, a, b)`` for integer/bool tensors.

    ``a``, ``b``: the same shape; ``mask`` broadcasts to it under torch's rules, e.g. ``(*spatial)``
    or ``(B, 1, *spatial)`` for ``(B, C, *spatial)`` tensors, ``(B, *spatial)`` for ``(B, *spatial)``
    label maps. Integer results take the promoted dtype of ``a`` and ``b``.
    """
    if a.shape != b.shape:
        raise ValueError(f"cannot mix tensors of shapes {tuple(a.shape)} and {tuple(b.shape)}: they must match")
    try:
        shape = torch.broadcast_shapes(mask.shape, a.shape)
    except RuntimeError:
        shape = None
    if shape != a.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the mixed tensors' shape "
                         f"{tuple(a.shape)}; give it the spatial shape or the tensors' layout with size-1 dims")
    mask = mask.to(a.device)
    if a.is_floating_point():
        m = mask.to(a.dtype)
        return a * m + b * (1 - m)
    return torch.where(mask.bool(), a, b)


# ----------------------------------------------------------------------------------------- layout
def _spatial_ndim(x: torch.Tensor, name: str) -> int:
    if x.ndim not in (4, 5):
        raise ValueError(f"expected {name} of shape (B, C, X, Y) or (B, C, X, Y, Z), got {tuple(x.shape)}")
    return x.ndim - 2


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape to be mixed, got {tuple(a.shape)} and {tuple(b.shape)}")


def _check_target(t: torch.Tensor, x: torch.Tensor, name: str) -> None:
    """``t`` is ``(B, *spatial)`` or ``(B, K, *spatial)`` matching image ``x``'s batch and spatial shape."""
    s = x.ndim - 2
    ok = t.ndim in (s + 1, s + 2) and t.shape[0] == x.shape[0] and tuple(t.shape[-s:]) == tuple(x.shape[2:])
    if not ok:
        raise ValueError(f"expected {name} of shape (B, *spatial) or (B, K, *spatial) with B, spatial = "
                         f"{x.shape[0]}, {tuple(x.shape[2:])} (from the image), got {tuple(t.shape)}")


def _canonical_mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A shared ``(*spatial)`` or per-sample ``(B, *spatial)`` / ``(B, 1, *spatial)`` mask as a
    float ``(B, 1, *spatial)`` tensor on ``x``'s device."""
    s = x.ndim - 2
    batch, spatial = x.shape[0], tuple(x.shape[2:])
    if mask.ndim == s and tuple(mask.shape) == spatial:
        m = mask.expand(batch, 1, *spatial)
    elif mask.ndim == s + 1 and tuple(mask.shape) == (batch, *spatial):
        m = mask.unsqueeze(1)
    elif mask.ndim == s + 2 and tuple(mask.shape) == (batch, 1, *spatial):
        m = mask
    else:
        raise ValueError(f"expected a mask of shape {spatial}, {(batch, *spatial)} or {(batch, 1, *spatial)}, "
                         f"got {tuple(mask.shape)}")
    return m.to(device=x.device, dtype=torch.float32)


def _in_layout(m: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Canonical ``(B, 1, *spatial)`` mask in the layout of target ``t`` (drop the channel for
    ``(B, *spatial)`` label maps)."""
    return m if t.ndim == m.ndim else m[:, 0]


# ------------------------------------------------------------------------------------------ core
def copy_paste(x_a: torch.Tensor, y_a: torch.Tensor, x_b: torch.Tensor, y_b: torch.Tensor,
               mask: torch.Tensor, *, weight_a: float = 1.0, weight_b: float = 1.0,
               extras: Optional[Extras] = None,
               classes: Optional[List[torch.Tensor]] = None) -> MixResult:
    """Paste ``a`` onto ``b`` through ``M``: image ``x_a·M + x_b·(1−M)``, label likewise (integer
    maps by selection, soft targets arithmetically), per-voxel weight ``weight_a·M + weight_b·(1−M)``
    and every extra map with the same ``M``. The core of all mixes in this module.

    ``x_a``, ``x_b``: ``(B, C, *spatial)``; ``y_a``, ``y_b``: the same layout, ``(B, *spatial)``,
    ``(B, 1, *spatial)`` or ``(B, K, *spatial)``; ``mask``: ``(*spatial)``, ``(B, *spatial)`` or
    ``(B, 1, *spatial)`` with values in {0, 1}.
    """
    _spatial_ndim(x_a, "x_a")
    _check_pair(x_a, x_b, "the two images")
    _check_target(y_a, x_a, "y_a")
    _check_pair(y_a, y_b, "the two labels")
    m = _canonical_mask(mask, x_a)
    mixed_extras = {}
    for name, (e_a, e_b) in (extras or {}).items():
        _check_target(e_a, x_a, f"extra map {name!r}")
        _check_pair(e_a, e_b, f"the two {name!r} maps")
        mixed_extras[name] = mix(e_a, e_b.to(e_a.device), _in_layout(m, e_a))
    m_label = _in_layout(m, y_a)
    weight = m_label * float(weight_a) + (1 - m_label) * float(weight_b)
    return MixResult(
        image=mix(x_a, x_b, m),
        label=mix(y_a, y_b.to(y_a.device), m_label),
        mask=m_label.contiguous(),
        weight=weight,
        classes=classes,
        extras=mixed_extras,
    )


# -------------------------------------------------------------------------- strong augmentations
def dmp_mix(x_u: torch.Tensor, y_u_hat: torch.Tensor, x_l: torch.Tensor, y_l: torch.Tensor,
            weights: Optional[torch.Tensor], generator: Optional[torch.Generator] = None, *,
            ignore_label: Optional[int] = None, extras: Optional[Extras] = None) -> MixResult:
    """Dynamic Mix-Pasting (DMP) of the Double-Mix Pseudo-label Framework (DMPF, Zhang et al.).

    Per sample ``i``: ``S_i`` = :func:`~nnunet_ssl.mixing.masks.sample_classes` of ``weights`` over
    the classes present in ``ŷ_u[i]`` (``ignore_label`` excluded), ``M_i = 1[ŷ_u[i] ∈ S_i]``,
    ``x_m = x_u·M + x_l·(1−M)``, ``ŷ_m = ŷ_u·M + y_l·(1−M)``. Unlabeled sample ``i`` is pasted
    onto labeled sample ``i`` (the reference code's cyclic in-batch mixing is not used).

    ``x_u``, ``x_l``: ``(B, C, *spatial)``; ``y_u_hat``, ``y_l``: integer ``(B, *spatial)`` or
    ``(B, 1, *spatial)``; ``weights``: ``(num_classes,)`` class weights (W^cdif, W^dis, …), or
    ``None`` for uniform draws.
    """
    _spatial_ndim(x_u, "x_u")
    _check_target(y_u_hat, x_u, "y_u_hat")
    sets = [sample_classes(weights, present, generator) for present in present_classes(y_u_hat, ignore_label)]
    return copy_paste(x_u, y_u_hat, x_l, y_l, class_mask(y_u_hat, sets), extras=extras, classes=sets)


def cutmix(x_a: torch.Tensor, y_a: torch.Tensor, x_b: torch.Tensor, y_b: torch.Tensor,
           generator: Optional[torch.Generator] = None, *, beta: float = DEFAULT_BETA,
           extras: Optional[Extras] = None) -> MixResult:
    """CutMix for segmentation (Yun et al., ICCV 2019; French et al., BMVC 2020): ``b`` inside one
    random box of sides ``round(β·s)`` shared by the batch, ``a`` elsewhere (``M`` = box mask)."""
    _spatial_ndim(x_a, "x_a")
    mask = box_mask(x_a.shape[2:], beta, generator, device=x_a.device)
    return copy_paste(x_a, y_a, x_b, y_b, mask, extras=extras)


def cutout(x: torch.Tensor, y: torch.Tensor, generator: Optional[torch.Generator] = None, *,
           beta: float = DEFAULT_BETA, label_fill: Optional[int] = None,
           extras: Optional[Mapping[str, torch.Tensor]] = None) -> MixResult:
    """CutOut (DeVries & Taylor 2017): the image is zeroed inside one random box (sides
    ``round(β·s)``, shared by the batch).

    The label inside the box: with ``label_fill=None`` (default) it is kept and the returned
    ``weight`` is 0 there, so a weighted loss ignores the erased voxels (French et al., BMVC 2020,
    mask the loss in the cut region); with an integer ``label_fill`` the box is relabelled with it
    (0 = background as in the DMPF reference code, or nnU-Net's ignore label) and ``weight`` is 1
    everywhere. ``extras``: ``name -> map``, kept unchanged in the box.
    """
    _spatial_ndim(x, "x")
    mask = box_mask(x.shape[2:], beta, generator, device=x.device)
    if label_fill is None:
        y_box, weight_box = y, 0.0
    else:
        y_box, weight_box = torch.full_like(y, int(label_fill)), 1.0
    pairs = {name: (e, e) for name, e in (extras or {}).items()}
    return copy_paste(x, y, torch.zeros_like(x), y_box, mask, weight_b=weight_box, extras=pairs)


def classmix(x_a: torch.Tensor, y_a: torch.Tensor, x_b: torch.Tensor, y_b: torch.Tensor,
             generator: Optional[torch.Generator] = None, *, ignore_label: Optional[int] = None,
             extras: Optional[Extras] = None) -> MixResult:
    """ClassMix (Olsson et al., WACV 2021): per sample, the voxels of half (rounded up) of the
    classes present in ``y_a`` (chosen at random) are pasted from ``a`` onto ``b``.
    ``y_a``: integer ``(B, *spatial)`` or ``(B, 1, *spatial)``."""
    _spatial_ndim(x_a, "x_a")
    _check_target(y_a, x_a, "y_a")
    sets = classmix_classes(y_a, generator, ignore_label)
    return copy_paste(x_a, y_a, x_b, y_b, class_mask(y_a, sets), extras=extras, classes=sets)


StrongMix = Callable[..., MixResult]


def _cutmix_strong(x_u, y_u_hat, x_l, y_l, weights=None, generator=None, **kwargs) -> MixResult:
    return cutmix(x_u, y_u_hat, x_l, y_l, generator, **kwargs)


def _cutout_strong(x_u, y_u_hat, x_l=None, y_l=None, weights=None, generator=None, *, extras=None,
                   **kwargs) -> MixResult:
    firsts = {name: pair[0] for name, pair in (extras or {}).items()}
    return cutout(x_u, y_u_hat, generator, extras=firsts, **kwargs)


def _classmix_strong(x_u, y_u_hat, x_l, y_l, weights=None, generator=None, **kwargs) -> MixResult:
    return classmix(x_u, y_u_hat, x_l, y_l, generator, **kwargs)


#: Interchangeable strong augmentations of DMPF and its ablations, all called as
#: ``fn(x_u, y_u_hat, x_l, y_l, weights, generator, **options) -> MixResult`` with ``M`` selecting
#: the unlabeled side. ``weights`` is used by "dmp" only; CutOut uses only ``x_u, y_u_hat`` (and the
#: first map of each ``extras`` pair). Options: ``extras`` for all; ``beta`` for cutmix/cutout;
#: ``label_fill`` for cutout; ``ignore_label`` for dmp/classmix.
STRONG_MIXES: Dict[str, StrongMix] = {
    "dmp": dmp_mix,
    "cutmix": _cutmix_strong,
    "cutout": _cutout_strong,
    "classmix": _classmix_strong,
}


def get_strong_mix(name: str) -> StrongMix:
    """The strong augmentation registered under ``name`` in :data:`STRONG_MIXES`."""
    if name not in STRONG_MIXES:
        raise ValueError(f"unknown strong mix {name!r}; expected one of {sorted(STRONG_MIXES)}")
    return STRONG_MIXES[name]


# ------------------------------------------------------------------------- BCP and co-learning
def bidirectional_copy_paste(x_l1: torch.Tensor, y_l1: torch.Tensor, x_u1: torch.Tensor,
                             y_u1_hat: torch.Tensor, x_u2: torch.Tensor, y_u2_hat: torch.Tensor,
                             x_l2: torch.Tensor, y_l2: torch.Tensor, mask: torch.Tensor, *,
                             u_weight: float = 0.5,
                             extras: Optional[Mapping[str, Tuple[torch.Tensor, torch.Tensor,
                                                                 torch.Tensor, torch.Tensor]]] = None,
                             ) -> Tuple[MixResult, MixResult]:
    """Bidirectional Copy-Paste (BCP, Bai et al., CVPR 2023), self-training phase.

    ``X_in = x_l1·M + x_u1·(1−M)`` and ``X_out = x_u2·M + x_l2·(1−M)``, labels mixed alike with
    the pseudo-labels ``ŷ_u``; each result's ``weight`` is 1 on voxels from a labeled image and
    ``u_weight`` (default 0.5) on voxels from an unlabeled image. ``mask``: usually one
    :func:`~nnunet_ssl.mixing.masks.box_mask` shared by the batch. ``extras``:
    ``name -> (map_l1, map_u1, map_u2, map_l2)``. Returns ``(in, out)``.
    """
    ex_in = {k: (v[0], v[1]) for k, v in (extras or {}).items()}
    ex_out = {k: (v[2], v[3]) for k, v in (extras or {}).items()}
    mixed_in = copy_paste(x_l1, y_l1, x_u1, y_u1_hat, mask, weight_a=1.0, weight_b=u_weight, extras=ex_in)
    mixed_out = copy_paste(x_u2, y_u2_hat, x_l2, y_l2, mask, weight_a=u_weight, weight_b=1.0, extras=ex_out)
    return mixed_in, mixed_out


def labeled_copy_paste(x_a: torch.Tensor, y_a: torch.Tensor, x_b: torch.Tensor, y_b: torch.Tensor,
                       mask: torch.Tensor) -> MixResult:
    """BCP pre-training: copy-paste between two labeled patches, ``x = x_a·M + x_b·(1−M)``,
    ``y`` alike, every voxel weighing 1."""
    return copy_paste(x_a, y_a, x_b, y_b, mask)


def one_hot(labels: torch.Tensor, num_classes: int, spatial_ndim: int,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer labels ``(B, *spatial)`` or ``(B, 1, *spatial)`` → one-hot ``(B, num_classes, *spatial)``."""
    if labels.ndim == spatial_ndim + 2:
        if labels.shape[1] != 1:
            raise ValueError(f"expected integer labels (B, 1, *spatial), got shape {tuple(labels.shape)}")
        labels = labels[:, 0]
    elif labels.ndim != spatial_ndim + 1:
        raise ValueError(f"expected integer labels with {spatial_ndim} spatial dims, got shape {tuple(labels.shape)}")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values {labels.min().item()}..{labels.max().item()}")
    out = torch.zeros((labels.shape[0], num_classes, *labels.shape[1:]), dtype=dtype, device=labels.device)
    return out.scatter_(1, labels.unsqueeze(1), 1)


def hybrid_crop(x_l: torch.Tensor, y_l: torch.Tensor, x_u: torch.Tensor, teacher_probs_u: torch.Tensor,
                mask: torch.Tensor) -> Tuple[MixResult, MixResult]:
    """Hybrid crops of multi-model co-learning (INDMIX inputs, OUTDMIX targets).

    ``Mixed1 = x_l·M + x_u·(1−M)``, ``Mixed2 = x_u·M + x_l·(1−M)``; soft targets ``Y_mix1``,
    ``Y_mix2`` mix the one-hot ground truth on labeled regions with the teacher's (detached) soft
    prediction on unlabeled regions. ``M``: a box mask, crop parameter 0.5
    (:data:`HYBRID_CROP_BETA`). ``y_l``: integer ``(B, *spatial)`` / ``(B, 1, *spatial)`` or one-hot
    ``(B, K, *spatial)``; ``teacher_probs_u``: ``(B, K, *spatial)``. Returns ``(mix1, mix2)`` whose
    ``label`` is ``(B, K, *spatial)``.
    """
    s = _spatial_ndim(x_l, "x_l")
    _check_target(teacher_probs_u, x_u, "teacher_probs_u")
    probs = teacher_probs_u.detach()
    if probs.ndim != s + 2 or not probs.is_floating_point():
        raise ValueError(f"expected teacher probabilities (B, K, *spatial), got {tuple(probs.shape)} {probs.dtype}")
    k = probs.shape[1]
    if y_l.is_floating_point() and y_l.ndim == s + 2 and y_l.shape[1] == k:
        target_l = y_l.to(probs.dtype)
    else:
        target_l = one_hot(y_l, k, s, dtype=probs.dtype)
    return (copy_paste(x_l, target_l, x_u, probs, mask),
            copy_paste(x_u, probs, x_l, target_l, mask))
