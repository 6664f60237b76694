"""The unlabeled batch stream: random crops of preprocessed unlabeled cases, augmented by the very
transforms nnU-Net uses for the labeled stream, in nnU-Net's own background augmenters.

:func:`exit_with_parent` makes those worker processes (nnU-Net's labeled and validation streams and
ours) exit when the training process dies, even by SIGKILL.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
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

    def set_thread_id(self, thread_id):
        """Called by batchgenerators first thing in each worker process: a worker started without
        :func:`exit_with_parent`'s fork hook (e.g. the spawn start method) watches its parent itself."""
        super().set_thread_id(thread_id)
        if multiprocessing.parent_process() is not None and not _fork_state["armed"]:
            _start_parent_watch(os.getppid())


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


PR_SET_PDEATHSIG = 1  # linux/prctl.h
_fork_state = {"registered": False, "parent": None, "from_main_thread": False, "armed": False}
_prctl = None


def exit_with_parent() -> None:
    """From now on, every process this process forks exits when this process dies, even by SIGKILL.

    batchgenerators' workers (nnU-Net's labeled and validation streams, our unlabeled stream) stop only
    when their augmenter asks them to; after a SIGKILL of ``nnUNetv2_train`` nobody asks, and they live
    on as orphans, blocked on a queue nobody reads. nnU-Net starts its workers inside its own
    ``get_dataloaders``, so this is an ``os.register_at_fork`` hook, registered once per process (call it
    before the augmenters start). In the child: on Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; elsewhere,
    or when the fork came from a thread other than the main thread (the death signal follows the forking
    *thread*), a daemon thread that polls the parent pid once a second and exits the process when it
    changes. A parent that died between fork and arming is caught by comparing the parent pid.
    """
    global _prctl
    if _fork_state["registered"] or not hasattr(os, "register_at_fork"):
        return
    if sys.platform.startswith("linux"):
        try:  # resolved here, not in the freshly forked child
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _prctl = None
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    _fork_state["registered"] = True


def _before_fork() -> None:
    _fork_state["parent"] = os.getpid()
    _fork_state["from_main_thread"] = threading.current_thread() is threading.main_thread()


def _after_fork_in_child() -> None:
    parent = _fork_state["parent"]
    armed = (_prctl is not None and _fork_state["from_main_thread"]
             and _prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0)
    if not armed:
        _start_parent_watch(parent)
    _fork_state["armed"] = True
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)


def _start_parent_watch(parent: int, interval: float = 1.0) -> None:
    def watch():
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="nnunet_ssl-parent-watch", daemon=True).start()
    _fork_state["armed"] = True
