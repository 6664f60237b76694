"""Masks and mixes: box (CutMix/CutOut/BCP), class (ClassMix/DMP), bidirectional and hybrid crops."""
from nnunet_ssl.mixing.masks import (
    DEFAULT_BETA,
    box_mask,
    box_size,
    class_mask,
    classmix_classes,
    present_classes,
    sample_box,
    sample_classes,
)
from nnunet_ssl.mixing.mixes import (
    HYBRID_CROP_BETA,
    STRONG_MIXES,
    MixResult,
    bidirectional_copy_paste,
    classmix,
    copy_paste,
    cutmix,
    cutout,
    dmp_mix,
    get_strong_mix,
    hybrid_crop,
    labeled_copy_paste,
    mix,
    one_hot,
)

__all__ = [
    "DEFAULT_BETA", "HYBRID_CROP_BETA", "STRONG_MIXES", "MixResult",
    "bidirectional_copy_paste", "box_mask", "box_size", "class_mask", "classmix", "classmix_classes",
    "copy_paste", "cutmix", "cutout", "dmp_mix", "get_strong_mix", "hybrid_crop", "labeled_copy_paste",
    "mix", "one_hot", "present_classes", "sample_box", "sample_classes",
]
