"""The unlabeled batch stream: random crops of preprocessed unlabeled cases, augmented by the very
transforms nnU-Net uses for the labeled stream, in nnU-Net's own background augmenters."""
from __future__ import annotations

from typing import List, Sequence

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader


class UnlabeledDataLoader(nnUNetDataLoader):
    """nnU-Net's data loader with random crops only.

    Unlabeled cases have no ``class_locations`` (nothing to oversample) and no annotated region, so
    foreground oversampling and ignore-label sampling are switched off. Batches keep nnU-Net's
    format; their ``target`` holds only the nonzero mask written by preprocessing and must not be
    used as a label.
    """

    def __init__(self, data, batch_size: int, patch_size: Sequence[int], final_patch_size: Sequence[int],
                 label_manager, transforms=None):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, sampling_probabilities=None, pad_sides=None,
                         probabilistic_oversampling=False, transforms=transforms)
        self.has_ignore = False


def make_augmenter(loader, num_processes: int, pin_memory: bool):
    """Wrap a loader the way nnU-Net wraps its training loader (threads = nnUNet_n_proc_DA)."""
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

    if num_processes == 0:
        return SingleThreadedAugmenter(loader, None)
    return NonDetMultiThreadedAugmenter(data_loader=loader, transform=None, num_processes=num_processes,
                                        num_cached=max(6, num_processes // 2), seeds=None,
                                        pin_memory=pin_memory, wait_time=0.002)


def unlabeled_dataset(folder: str, identifiers: List[str]):
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    return infer_dataset_class(folder)(folder, list(identifiers))
