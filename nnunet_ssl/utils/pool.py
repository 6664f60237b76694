"""Per-case jobs in worker processes, Ctrl-C safe (unlabeled preprocessing, CT window conversion)."""
from __future__ import annotations

import multiprocessing
import signal
from typing import Callable, Dict, Optional, Sequence, Tuple


def ignore_sigint() -> None:
    """Pool initializer: Ctrl-C reaches the whole process group; only the parent handles it and then
    terminates the workers, so no worker dies half-way and gets respawned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def terminate(pool) -> None:
    """Terminate a pool, deaf to a second Ctrl-C meanwhile (it takes well under a second)."""
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        pool.terminate()
        pool.join()
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def run_case_jobs(worker: Callable[[object], Tuple[str, Optional[str]]], jobs: Sequence, num_processes: int,
                  progress: bool, desc: str, on_abort: Optional[Callable[[], None]] = None) -> Dict[str, Optional[str]]:
    """``worker(job) -> (case, error message or None)`` for every job, in ``num_processes`` spawned worker
    processes (in this process for one process or one job), with a progress bar; returns case → error.

    ``worker`` must be a module-level function (workers are spawned). On Ctrl-C (or any error here) the
    workers are terminated at once, never joined, ``on_abort`` runs (e.g. removing temporary files of the
    interrupted cases), and the interrupt propagates; finished cases stay finished.
    """
    from tqdm import tqdm

    results: Dict[str, Optional[str]] = {}
    bar = tqdm(total=len(jobs), desc=desc, unit="case", disable=not progress)
    pool = None
    try:
        if num_processes <= 1 or len(jobs) <= 1:
            iterator = map(worker, jobs)
        else:
            pool = multiprocessing.get_context("spawn").Pool(min(num_processes, len(jobs)), initializer=ignore_sigint)
            iterator = pool.imap_unordered(worker, jobs)
        for case, err in iterator:
            results[case] = err
            bar.update()
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
    finally:
        bar.close()
        if pool is not None:
            terminate(pool)
            if on_abort is not None:
                on_abort()
    return results
