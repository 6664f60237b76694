"""argparse ``type=`` functions for the numbers of the commands: a bad value is refused by argparse
(exit 2, one ``error:`` sentence naming the argument) before a command writes anything."""
from __future__ import annotations

import argparse
import math

MAX_SEED = 2 ** 32 - 1
"""Largest seed numpy's RandomState accepts."""


def whole_number(minimum: int, maximum: int | None = None):
    """A ``type=`` that parses an int in ``[minimum, maximum]``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"must be a whole number {bound}, got {text!r}")
        return value
    return parse


count = whole_number(1)
"""A count of at least one (cases, epochs, iterations, processes)."""
seed = whole_number(0, MAX_SEED)
"""A random seed."""


def millimetres(text: str) -> float:
    """A finite distance in mm >= 0 (NSD tolerance)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of mm >= 0, got {text!r}")
    return value
