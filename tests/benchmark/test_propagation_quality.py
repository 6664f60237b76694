"""benchmarks/propagation_quality.py: the report table carries per-class Dice, the mean and time per case."""
from __future__ import annotations

from conftest import load_benchmark

pq = load_benchmark("propagation_quality")


def test_table_has_dice_per_class_mean_and_seconds_per_case():
    rows = [("reference model on every slice", {"per_class": {"RV": 0.8, "LV": 0.9}, "mean": 0.85}, 0.42),
            ("3 sampled slices + propagation", {"per_class": {"RV": 0.4561, "LV": 0.6}, "mean": 0.528}, 10.04)]
    assert pq.table_lines(rows) == [
        "| prediction | RV | LV | mean | s per case |",
        "|---|---|---|---|---|",
        "| reference model on every slice | 0.800 | 0.900 | 0.850 | 0.4 |",
        "| 3 sampled slices + propagation | 0.456 | 0.600 | 0.528 | 10.0 |",
    ]
