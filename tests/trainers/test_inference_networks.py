"""Which network each method validates, picks checkpoint_best with and exports (issue: EMA methods
exported their lagging teacher while the reference code evaluates the student)."""
from __future__ import annotations

import pytest

from nnunet_ssl.catalog import shipped_trainers

TRAINERS = shipped_trainers()
EMA_METHODS = ["nnUNetTrainerMeanTeacher", "nnUNetTrainerUAMT", "nnUNetTrainerBCP", "nnUNetTrainerCoLearning",
               "nnUNetTrainerDMPF"]


@pytest.mark.parametrize("name", EMA_METHODS)
def test_ema_methods_predict_with_a_student_and_name_the_teacher_variant(name):
    cls = TRAINERS[name]
    assert cls.inference_model == "network"  # the student, as SSL4MIS, BCP and Double-Mix evaluate
    variant = TRAINERS[f"{name}_TeacherInference"]
    names = variant.inference_model if isinstance(variant.inference_model, tuple) else (variant.inference_model,)
    assert names and all(n in variant.teacher_sources for n in names)
    assert variant.teacher_sources == cls.teacher_sources  # trained identically


def test_every_inference_model_names_a_network_or_teacher():
    for name, cls in TRAINERS.items():
        if not hasattr(cls, "teacher_sources"):
            continue
        extra = cls.extra_network_names if isinstance(cls.extra_network_names, tuple) else ()  # DCL: per instance
        known = {"network", *extra, *cls.teacher_sources}
        names = cls.inference_model if isinstance(cls.inference_model, tuple) else (cls.inference_model,)
        assert set(names) <= known, name
        if isinstance(cls.inference_model, tuple):  # nnUNetv2_predict builds the ensemble from the class
            assert cls.build_network_architecture.num_members == len(names), name
