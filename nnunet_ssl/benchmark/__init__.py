"""Benchmark studies: trainers compared across labeled fractions and seeds on one dataset.

- :mod:`.study`: :func:`~.study.run_study` (split, plan, train, predict, evaluate, report; resumable;
  or the same steps written as shell commands for a cluster).
- :mod:`.presets`: :class:`~.presets.Preset` and :data:`~.presets.PRESETS` (``default``, ``cpu-quick``, ``cpu-3d``, ``cpu-2d``).
"""
