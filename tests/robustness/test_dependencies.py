"""Issue 13 item 8: what evaluation needs is installed by the README's install, not by an extra.

Bad input tried: a fresh ``pip install -e .`` followed by ``nnunet-ssl evaluate`` / ``benchmark``.
Before: MONAI was an optional extra, so the first evaluation after each training run failed.
"""
from __future__ import annotations

import importlib.metadata as metadata

from packaging.requirements import Requirement


def _core_requirements() -> dict:
    reqs = [Requirement(r) for r in metadata.requires("nnunet_ssl") or []]
    return {r.name.lower(): r for r in reqs if r.marker is None}


def test_evaluation_dependencies_are_core():
    core = _core_requirements()
    assert "monai" in core, "MONAI (surface metrics of evaluate/benchmark/demo) must be a core dependency"
    import monai.metrics  # noqa: F401  - importable in the installed environment


def test_nnunet_pin_matches_the_api_we_use():
    """nnUNet_extTrainer discovery needs nnU-Net 2.8; a major release may change the trainer API."""
    spec = _core_requirements()["nnunetv2"].specifier
    assert "2.8.0" in spec and "2.7.9" not in spec and "3.0.0" not in spec
    assert metadata.version("nnunetv2") in spec
