"""nnU-Net's own planning and prediction steps, called in-process (used by the demo and benchmarks).

- :func:`plan_and_preprocess` is ``nnUNetv2_plan_and_preprocess -d ID -c CONFIG --verify_dataset_integrity``
  through :mod:`nnunetv2.experiment_planning.plan_and_preprocess_api`;
- :func:`predict_folder` is ``nnUNetv2_predict`` through :class:`nnUNetPredictor`, loaded by
  :func:`load_predictor` (also used where a caller needs the predictor itself);
- :func:`model_folder` is where ``nnUNetv2_train`` writes a model (nnU-Net's ``get_output_folder``).

Training stays in :mod:`nnunet_ssl.runner` (in-process) or in a ``nnunet-ssl train`` subprocess.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence, Union


@contextmanager
def planning_threads() -> Iterator[None]:
    """nnU-Net's planner calls ``torch.set_num_threads(nnUNet_n_proc_DA)``, which fails for
    ``nnUNet_n_proc_DA=0`` (single-threaded augmentation); plan with 1 in that case."""
    old = os.environ.get("nnUNet_n_proc_DA")
    if old is not None and old.strip() == "0":
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        yield
    finally:
        if old is not None:
            os.environ["nnUNet_n_proc_DA"] = old


def plan_and_preprocess(dataset_id: int, configurations: Sequence[str] = ("3d_fullres",), num_processes: int = 2,
                        verify: bool = True) -> str:
    """Extract the fingerprint, plan (``nnUNetPlans``) and preprocess ``configurations`` of dataset
    ``dataset_id`` (which must be in ``nnUNet_raw``); returns its ``nnUNet_preprocessed`` folder."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    if int(num_processes) < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    with planning_threads():
        extract_fingerprints([int(dataset_id)], num_processes=int(num_processes), check_dataset_integrity=verify)
        plan_experiments([int(dataset_id)])
        preprocess([int(dataset_id)], configurations=tuple(configurations),
                   num_processes=(int(num_processes),) * len(configurations))
    return os.path.join(nnUNet_preprocessed.get(), convert_id_to_dataset_name(int(dataset_id)))


def model_folder(dataset: Union[int, str], trainer: str, plans: str, configuration: str,
                 fold: Optional[Union[int, str]] = None) -> str:
    """``nnUNet_results/<dataset>/<trainer>__<plans>__<configuration>[/fold_<fold>]``."""
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    return get_output_folder(dataset, trainer, plans, configuration, fold)


def load_predictor(model_dir: str, folds: Sequence[Union[int, str]] = ("all",),
                   checkpoint: str = "checkpoint_final.pth", device="cpu", use_mirroring: bool = True,
                   progress: bool = False, tile_step_size: float = 0.5, use_gaussian: bool = True):
    """nnU-Net's :class:`nnUNetPredictor` loaded from ``model_dir`` as ``nnUNetv2_predict -f <folds> -chk
    <checkpoint>`` loads it: Gaussian-weighted tiles at step 0.5 unless told otherwise, everything on the
    device only for CUDA. ``device``: a name or a :class:`torch.device`; ``use_mirroring=False`` is
    ``--disable_tta``; ``progress`` shows nnU-Net's sliding-window bars."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    device = torch.device(device)
    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=use_gaussian,
                                use_mirroring=use_mirroring, perform_everything_on_device=device.type == "cuda",
                                device=device, verbose=False, verbose_preprocessing=False, allow_tqdm=progress)
    predictor.initialize_from_trained_model_folder(
        model_dir, use_folds=tuple(f if str(f) == "all" else int(f) for f in folds), checkpoint_name=checkpoint)
    return predictor


def predict_folder(model_dir: str, input_dir: str, output_dir: str, folds: Sequence[Union[int, str]] = ("all",),
                   checkpoint: str = "checkpoint_final.pth", device: str = "cpu", use_mirroring: bool = True,
                   num_processes: int = 1, progress: bool = False, save_probabilities: bool = False) -> str:
    """Predict every case of ``input_dir`` (nnU-Net raw naming) with the model in ``model_dir`` into
    ``output_dir``, as ``nnUNetv2_predict -f <folds> -chk <checkpoint>`` does; returns ``output_dir``.

    ``use_mirroring=False`` is ``--disable_tta``. ``num_processes``: worker processes for reading
    and writing (``-npp``/``-nps``); 0 runs everything in this process (no start-up cost of worker
    processes: fastest for a few small cases). Existing predictions in ``output_dir`` are overwritten.
    ``save_probabilities`` is ``--save_probabilities``: ``<case>.npz`` (``probabilities``) and ``<case>.pkl``
    next to each prediction.
    """
    predictor = load_predictor(model_dir, folds, checkpoint, device, use_mirroring=use_mirroring, progress=progress)
    if int(num_processes) < 0:
        raise ValueError(f"num_processes must be >= 0, got {num_processes}")
    if int(num_processes) == 0:
        os.makedirs(output_dir, exist_ok=True)
        predictor.predict_from_files_sequential(input_dir, output_dir, save_probabilities=save_probabilities,
                                                overwrite=True)
    else:
        predictor.predict_from_files(input_dir, output_dir, save_probabilities=save_probabilities, overwrite=True,
                                     num_processes_preprocessing=int(num_processes),
                                     num_processes_segmentation_export=int(num_processes))
    return output_dir
