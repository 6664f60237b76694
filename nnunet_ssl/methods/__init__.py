"""Method bases shared by several trainer files (Mean Teacher's student-teacher step, the class-weighted
student pair of DHC and DMPF, the contrastive segmentation base of DCL and SimCLR).

They live outside ``nnunet_ssl/trainers`` because nnU-Net imports every file of that folder as a
top-level module (``nnunetv2/utilities/find_class_by_name.py``): a trainer file importing another
would create a second class object of the same name. Each trainer file imports only
``nnunet_ssl.trainers.semisupervised`` and library modules such as these. No class here is a trainer
to run (none is named ``nnUNetTrainer...``).
"""
