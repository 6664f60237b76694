"""Class-conditional Gaussian mixtures on network features (GuidedNet's 3D-CGMM)."""
from nnunet_ssl.gmm.cgmm import (
    DEFAULT_VAR_FLOOR,
    EXCLUDED_LOG_POSTERIOR,
    ClassConditionalGMM,
    ClassMoments,
    cgmm_predict,
    class_centered_square_sums,
    class_moments,
    class_sums,
    labels_at,
    log_posterior,
    log_priors,
)

__all__ = [
    "DEFAULT_VAR_FLOOR",
    "EXCLUDED_LOG_POSTERIOR",
    "ClassConditionalGMM",
    "ClassMoments",
    "cgmm_predict",
    "class_centered_square_sums",
    "class_moments",
    "class_sums",
    "labels_at",
    "log_posterior",
    "log_priors",
]
