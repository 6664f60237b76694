"""Ramp-up schedules for unsupervised loss weights."""
from __future__ import annotations

import math


def sigmoid_rampup(step: int, rampup_length: int, max_value: float = 1.0) -> float:
    """``w(t) = w_max * exp(-5 (1 - min(t, T)/T)^2)`` (Laine & Aila 2017; Tarvainen & Valpola 2017).

    ``rampup_length`` T <= 0 means no ramp-up (the full weight from the first step).
    """
    if rampup_length <= 0:
        return float(max_value)
    phase = 1.0 - min(max(step, 0), rampup_length) / rampup_length
    return float(max_value * math.exp(-5.0 * phase * phase))
