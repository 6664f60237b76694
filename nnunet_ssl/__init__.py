"""nnunet_ssl: semi- and weakly supervised training for nnU-Net v2.

Importing the package is cheap (no torch); the building blocks live in the sub-packages and the
nnU-Net trainers in :mod:`nnunet_ssl.trainers`.
"""
__version__ = "0.1.0"
