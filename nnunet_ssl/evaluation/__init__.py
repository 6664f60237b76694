"""Evaluation and benchmark reports: per-case metrics, folder evaluation, paired tests, reports.

- :mod:`.metrics`: Dice, IoU, NSD, HD95, ASD of label maps with spacing; the empty-mask convention.
- :mod:`.folders`: :func:`~.folders.evaluate_folders` (prediction vs reference folders, nnU-Net readers).
- :mod:`.stats`: summaries and the paired Wilcoxon test against a baseline.
- :mod:`.report`: :func:`~.report.build_report` (Markdown, PNG figures, CSV) from result records.

Submodules are imported on use, so ``import nnunet_ssl.evaluation`` stays light.
"""
