"""Binary masks for mixing two patches, and the class sets behind class masks.

Convention: a mask ``M`` is 1 where a mixed voxel comes from the *first* source and 0 where it
comes from the second (``mix(a, b, M) = a·M + b·(1−M)``, see :mod:`nnunet_ssl.mixing.mixes`).

Randomness is drawn once per call from an explicitly passed ``torch.Generator`` (``None`` uses
torch's global generator), so that tests and resumed runs are reproducible. All functions work on
2D and 3D patches alike.
"""
from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch

#: Box side as a fraction of each patch side. Bidirectional Copy-Paste (Bai et al., CVPR 2023)
#: uses 2/3; the ACDC report in the project seeds found 1/2 best.
DEFAULT_BETA = 2.0 / 3.0

ClassSets = Union[torch.Tensor, Sequence[int], Sequence[Union[torch.Tensor, Sequence[int]]]]


def _generator_device(generator: Optional[torch.Generator]) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _check_spatial_shape(spatial_shape: Sequence[int]) -> Tuple[int, ...]:
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) not in (2, 3) or any(s < 1 for s in shape):
        raise ValueError(f"expected a 2D or 3D spatial shape of positive sizes, got {tuple(spatial_shape)}")
    return shape


def box_size(spatial_shape: Sequence[int], beta: float = DEFAULT_BETA) -> Tuple[int, ...]:
    """Side lengths of the mixing box: ``round(β · s)`` for each patch side ``s`` (halves round up).

    ``beta`` ∈ [0, 1]: 0 gives an empty box (mask of ones), 1 the whole patch (mask of zeros).
    """
    shape = _check_spatial_shape(spatial_shape)
    if not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"expected beta in [0, 1] (box side as a fraction of the patch side), got {beta}")
    return tuple(min(s, int(math.floor(float(beta) * s + 0.5))) for s in shape)


def sample_box(spatial_shape: Sequence[int], beta: float = DEFAULT_BETA,
               generator: Optional[torch.Generator] = None) -> Tuple[slice, ...]:
    """One random box of sides :func:`box_size` lying fully inside the patch, as slices.

    Each start is uniform over ``0 … s − b`` (inclusive), drawn with ``generator``.
    """
    shape = _check_spatial_shape(spatial_shape)
    sides = box_size(shape, beta)
    dev = _generator_device(generator)
    starts = [int(torch.randint(0, s - b + 1, (1,), generator=generator, device=dev).item())
              for s, b in zip(shape, sides)]
    return tuple(slice(st, st + b) for st, b in zip(starts, sides))


def box_mask(spatial_shape: Sequence[int], beta: float = DEFAULT_BETA,
             generator: Optional[torch.Generator] = None,
             device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """Box mask of CutMix / Bidirectional Copy-Paste: shape ``spatial_shape`` (``(X, Y[, Z])``),
    float32, 1 everywhere and 0 inside one random box of sides ``round(β·s)`` fully inside the patch.

    One mask is shared by the whole batch (BCP, Bai et al., CVPR 2023): it broadcasts against
    ``(B, C, *spatial)`` images and ``(B, *spatial)`` / ``(B, 1, *spatial)`` labels.
    ``beta``: BCP default 2/3 (:data:`DEFAULT_BETA`); 1/2 was best on ACDC in the seeds; the
    co-learning hybrid crop uses 0.5.
    """
    shape = _check_spatial_shape(spatial_shape)
    box = sample_box(shape, beta, generator)
    mask = torch.ones(shape, dtype=torch.float32, device=device)
    mask[box] = 0.0
    return mask


def present_classes(labels: torch.Tensor, ignore_label: Optional[int] = None) -> List[torch.Tensor]:
    """Per sample, the sorted classes occurring in an integer label map ``(B, *spatial)`` or
    ``(B, 1, *spatial)``, without ``ignore_label``. Returns ``B`` CPU int64 tensors."""
    if labels.ndim < 3 or labels.is_floating_point():
        raise ValueError(f"expected an integer label map (B, *spatial) or (B, 1, *spatial), "
                         f"got dtype {labels.dtype} and shape {tuple(labels.shape)}")
    out = []
    for sample in labels.detach():
        classes = torch.unique(sample).to("cpu", torch.int64)
        if ignore_label is not None:
            classes = classes[classes != int(ignore_label)]
        out.append(classes)
    return out


def _per_sample_sets(classes: ClassSets, batch_size: int) -> List[torch.Tensor]:
    """Normalise one shared class set or one set per sample to ``batch_size`` int64 tensors."""
    if isinstance(classes, torch.Tensor):
        if classes.ndim > 1:
            raise ValueError(f"expected a 1D tensor of classes, got shape {tuple(classes.shape)}")
        return [classes.reshape(-1).to(torch.int64)] * batch_size
    classes = list(classes)
    if all(isinstance(c, numbers.Integral) or (isinstance(c, torch.Tensor) and c.ndim == 0) for c in classes):
        # one set shared by the batch (also the empty set)
        return [torch.tensor([int(c) for c in classes], dtype=torch.int64)] * batch_size
    if len(classes) != batch_size:
        raise ValueError(f"expected one class set per sample ({batch_size}), got {len(classes)} sets")
    return [torch.as_tensor(c, dtype=torch.int64).reshape(-1) for c in classes]


def class_mask(labels: torch.Tensor, classes: ClassSets) -> torch.Tensor:
    """Class mask of ClassMix / DMP: ``M = 1[ŷ ∈ S]`` per sample (Olsson et al., WACV 2021).

    ``labels``: integer ``(B, *spatial)`` or ``(B, 1, *spatial)``. ``classes``: one set ``S`` for
    the batch (1D tensor or list of ints) or one set per sample (a list of ``B`` sets).
    Returns a float32 mask of the same shape (and layout) as ``labels``; an empty ``S`` gives 0s.
    """
    if labels.ndim < 3 or labels.is_floating_point():
        raise ValueError(f"expected an integer label map (B, *spatial) or (B, 1, *spatial), "
                         f"got dtype {labels.dtype} and shape {tuple(labels.shape)}")
    sets = _per_sample_sets(classes, labels.shape[0])
    mask = torch.stack([torch.isin(sample, s.to(labels.device)) for sample, s in zip(labels, sets)])
    return mask.to(torch.float32)


def sample_classes(weights: Optional[torch.Tensor], present: Union[torch.Tensor, Sequence[int]],
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The category set ``S`` of Dynamic Mix-Pasting (DMP, DMPF — Zhang et al.).

    Draws ``len(present)`` times, with replacement, among the classes ``present`` in the
    pseudo-label, class ``c`` with probability ``w_c / Σ_{k∈present} w_k``; ``S`` is the set of
    unique draws (sorted int64, CPU). If all present classes weigh 0 the draw is uniform over them;
    with no class present ``S`` is empty. ``weights``: ``(C,)``, finite and non-negative (detached);
    ``None`` draws uniformly.
    """
    if weights is None:
        present = torch.as_tensor(present, dtype=torch.int64).reshape(-1).cpu()
        weights = torch.ones(int(present.max()) + 1 if present.numel() else 0)
    if weights.ndim != 1:
        raise ValueError(f"expected a weight vector of shape (C,), got shape {tuple(weights.shape)}")
    present = torch.as_tensor(present, dtype=torch.int64).reshape(-1).cpu()
    if present.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    num_classes = weights.shape[0]
    if present.min() < 0 or present.max() >= num_classes:
        raise ValueError(f"present classes {present.tolist()} fall outside the {num_classes} weighted classes")
    w = weights.detach().to("cpu", torch.float64)[present]
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"expected finite, non-negative class weights, got {weights.detach().cpu().tolist()}")
    if w.sum() <= 0:
        w = torch.ones_like(w)
    dev = _generator_device(generator)
    draws = torch.multinomial(w.to(dev), present.numel(), replacement=True, generator=generator)
    return torch.unique(present[draws.cpu()])


def classmix_classes(labels: torch.Tensor, generator: Optional[torch.Generator] = None,
                     ignore_label: Optional[int] = None) -> List[torch.Tensor]:
    """ClassMix's class sets (Olsson et al., WACV 2021): per sample, ``ceil(n/2)`` of the ``n``
    classes present in ``labels`` (without ``ignore_label``), chosen uniformly without replacement.
    Returns ``B`` sorted CPU int64 tensors."""
    dev = _generator_device(generator)
    out = []
    for classes in present_classes(labels, ignore_label):
        n = classes.numel()
        order = torch.randperm(n, generator=generator, device=dev).cpu()
        out.append(torch.sort(classes[order[: (n + 1) // 2]]).values)
    return out
