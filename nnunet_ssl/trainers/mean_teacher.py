"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017) as an nnU-Net trainer."""
from __future__ import annotations

from nnunet_ssl.methods.mean_teacher import MeanTeacherTrainer


class nnUNetTrainerMeanTeacher(MeanTeacherTrainer):
    """Student on labeled + unlabeled patches; an EMA teacher sees the same unlabeled patch with small
    Gaussian noise. ``L = L_sup(f(x_l), y_l) + w(t)·mean((p_student(x_u) − p_teacher(x_u + n))²)``.

    Inference network: the student, as the reference code (SSL4MIS) evaluates and saves it; the teacher
    lags the student by about ``1/(1 − ema_decay)`` steps, a large share of a short run. Teacher inference
    is ``nnUNetTrainerMeanTeacher_TeacherInference``.
    """


class nnUNetTrainerMeanTeacher_TeacherInference(nnUNetTrainerMeanTeacher):
    """Mean Teacher, trained identically, validating and exporting the EMA teacher."""

    inference_model = "teacher"
