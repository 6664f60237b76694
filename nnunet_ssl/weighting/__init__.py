"""Class-imbalance weights: pure formulas (:mod:`.functional`) and stateful trackers (:mod:`.trackers`)."""
from nnunet_ssl.weighting.functional import (
    DifficultyState,
    class_counts,
    confidence_from_stats,
    confidence_scaled_weights,
    confidence_scores,
    confidence_stats,
    correct_counts,
    dice_from_stats,
    dice_per_class_hard,
    difficulty_step,
    difficulty_weights,
    distribution_weights,
    floored_weights,
    hard_dice_stats,
    information_scores,
    kt_weights,
    learning_speed_increments,
    one_hot,
    to_label_map,
)
from nnunet_ssl.weighting.trackers import (
    TRACKERS,
    CDifWTracker,
    CDisWTracker,
    ClassWeightTracker,
    ConfidenceScaledTracker,
    ConfidenceTracker,
    DifWTracker,
    DisWTracker,
    KTWeightTracker,
    build_tracker,
)

__all__ = [
    "DifficultyState", "class_counts", "confidence_from_stats", "confidence_scaled_weights", "confidence_scores",
    "confidence_stats", "correct_counts", "dice_from_stats", "dice_per_class_hard", "difficulty_step",
    "difficulty_weights", "distribution_weights", "floored_weights", "hard_dice_stats", "information_scores", "kt_weights",
    "learning_speed_increments", "one_hot", "to_label_map",
    "TRACKERS", "CDifWTracker", "CDisWTracker", "ClassWeightTracker", "ConfidenceScaledTracker", "ConfidenceTracker",
    "DifWTracker", "DisWTracker", "KTWeightTracker", "build_tracker",
]
