"""The two-stage prediction behind ``nnunet-ssl propagate``: loading and checking the reference model and the
propagators, nnU-Net's preprocessing and predictor for the reference slices, propagation, and nnU-Net's
export in the input geometry. :func:`export_case` is shared with the trainer's final validation.
"""
from __future__ import annotations

import os
import uuid
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from nnunet_ssl.errors import UserError
from nnunet_ssl.propagation.merge import export_scores
from nnunet_ssl.propagation.network import SpaceTimeMemoryNetwork
from nnunet_ssl.propagation.propagate import propagate_organs
from nnunet_ssl.propagation.references import reference_masks, uniform_slices

__all__ = ["PROPAGATOR_KEY", "load_propagators", "export_case", "reference_model_info", "check_compatible",
           "list_cases", "available_folds", "propagate_folder"]

PROPAGATOR_KEY = "propagator"
"""Entry of the trainer's checkpoint extension (``checkpoint['nnunet_ssl']['extra']``) holding the
network's architecture, so the propagator is rebuilt exactly as trained (overrides included)."""


def load_propagators(model_folder: str, folds: Sequence, checkpoint_name: str, device: torch.device
                     ) -> Tuple[List[SpaceTimeMemoryNetwork], dict]:
    """One network per fold, in eval mode on ``device``, and ``info``: ``dataset_json``, ``plans``,
    ``configuration``, ``trainer_name``, ``hyperparameters`` (of the first fold's run)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    for name in ("dataset.json", "plans.json"):
        if not os.path.isfile(os.path.join(model_folder, name)):
            raise UserError(f"{model_folder} is not an nnU-Net model folder (no {name}); pass the folder "
                            f"<nnUNet_results>/DatasetXXX/<trainer>__<plans>__2d of a propagator")
    networks, info = [], {}
    for fold in folds:
        path = os.path.join(model_folder, f"fold_{fold}", checkpoint_name)
        if not os.path.isfile(path):
            raise UserError(f"the propagator has no {checkpoint_name} for fold {fold} ({path}); train that fold or "
                            f"choose folds with -f")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        extra = (checkpoint.get("nnunet_ssl") or {}).get("extra") or {}
        if PROPAGATOR_KEY not in extra:
            raise UserError(f"{path} was written by {checkpoint.get('trainer_name', 'an unknown trainer')}, not by a "
                            f"mask propagator; pass a model folder of nnUNetTrainerMaskPropagation as --propagator")
        net = SpaceTimeMemoryNetwork(**extra[PROPAGATOR_KEY]["architecture"])
        net.load_state_dict(checkpoint["network_weights"])
        networks.append(net.to(device).eval())
        if not info:
            info = {"trainer_name": checkpoint["trainer_name"],
                    "configuration": checkpoint["init_args"]["configuration"],
                    "hyperparameters": checkpoint["nnunet_ssl"].get("hyperparameters", {})}
    info["dataset_json"] = load_json(os.path.join(model_folder, "dataset.json"))
    info["plans"] = load_json(os.path.join(model_folder, "plans.json"))
    return networks, info


def export_case(scores: np.ndarray, properties: dict, configuration_manager, plans_manager, dataset_json: dict,
                output_folder: str, case_id: str) -> str:
    """Write ``scores`` (``(classes, *preprocessed shape)``, see
    :func:`~nnunet_ssl.propagation.merge.export_scores`) as ``<case_id><file_ending>`` in the input geometry
    with nnU-Net's export (resampling, un-cropping, transposing, writer of the plans), through a temporary
    file replaced at the end; returns the path."""
    from nnunetv2.inference.export_prediction import export_prediction_from_logits

    ending = dataset_json["file_ending"]
    tmp = os.path.join(output_folder, f".{case_id}.{uuid.uuid4().hex}.tmp")
    final = os.path.join(output_folder, case_id + ending)
    try:
        export_prediction_from_logits(scores, properties, configuration_manager, plans_manager, dataset_json, tmp,
                                      False)
        os.replace(tmp + ending, final)
    finally:
        if os.path.exists(tmp + ending):
            os.remove(tmp + ending)
    return final


# ---------------------------------------------------------------------------------------------- checks
DATA_KEYS = ("spacing", "normalization_schemes", "use_mask_for_norm")
"""Entries of a configuration that decide what the preprocessed images look like."""


def reference_model_info(model_folder: str, folds: Sequence, checkpoint_name: str) -> dict:
    """``dataset_json``, ``plans``, ``configuration`` and ``trainer_name`` of an nnU-Net model folder,
    refusing anything but a 2d segmentation model (before any network is built)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    for name in ("dataset.json", "plans.json"):
        if not os.path.isfile(os.path.join(model_folder, name)):
            raise UserError(f"{model_folder} is not an nnU-Net model folder (no {name}); pass the folder "
                            f"<nnUNet_results>/DatasetXXX/<trainer>__<plans>__2d of a trained 2d model as --reference")
    path = os.path.join(model_folder, f"fold_{folds[0]}", checkpoint_name)
    if not os.path.isfile(path):
        raise UserError(f"the reference model has no {checkpoint_name} for fold {folds[0]} ({path}); train that fold "
                        f"or choose folds with -f")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    plans = load_json(os.path.join(model_folder, "plans.json"))
    configuration = checkpoint["init_args"]["configuration"]
    if PROPAGATOR_KEY in ((checkpoint.get("nnunet_ssl") or {}).get("extra") or {}):
        raise UserError(f"{model_folder} holds a mask propagator; --reference needs a 2d segmentation model "
                        f"(e.g. nnUNetTrainer on the 2d configuration)")
    patch = plans["configurations"][configuration].get("patch_size")
    if patch is None:  # inherited configuration
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        patch = PlansManager(plans).get_configuration(configuration).patch_size
    if len(patch) != 2:
        raise UserError(f"the reference model {model_folder} is a {len(patch)}d model (configuration "
                        f"{configuration!r}); the reference stage predicts single slices, so pass a model trained on "
                        f"the 2d configuration")
    return {"dataset_json": load_json(os.path.join(model_folder, "dataset.json")), "plans": plans,
            "configuration": configuration, "trainer_name": checkpoint["trainer_name"]}


def check_compatible(reference: dict, propagator: dict) -> None:
    """UserError unless both models were trained on one dataset, label set, channels and preprocessing:
    the propagator runs on the reference model's preprocessed volume."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    ref_name, prop_name = reference["plans"]["dataset_name"], propagator["plans"]["dataset_name"]
    if ref_name != prop_name:
        raise UserError(f"the reference model was trained on {ref_name} and the propagator on {prop_name}; use two "
                        f"models of one dataset")
    for key, what in (("labels", "label set"), ("channel_names", "input channels")):
        a, b = reference["dataset_json"].get(key), propagator["dataset_json"].get(key)
        if a != b:
            raise UserError(f"the reference model's {what} {a} differs from the propagator's {b}; use two models "
                            f"trained on the same dataset.json")
    if PlansManager(reference["plans"]).get_label_manager(reference["dataset_json"]).has_regions:
        raise UserError("the reference model predicts regions (overlapping sigmoid outputs); propagation needs one "
                        "label per voxel")
    ref_cfg = PlansManager(reference["plans"]).get_configuration(reference["configuration"]).configuration
    prop_cfg = PlansManager(propagator["plans"]).get_configuration(propagator["configuration"]).configuration
    for key in DATA_KEYS:
        if ref_cfg.get(key) != prop_cfg.get(key):
            raise UserError(f"the propagator was trained on images preprocessed with {key} {prop_cfg.get(key)}, the "
                            f"reference model's plans give {ref_cfg.get(key)}; train both with the same plans")
    for key in ("transpose_forward", "foreground_intensity_properties_per_channel"):
        if reference["plans"].get(key) != propagator["plans"].get(key):
            raise UserError(f"the reference model's and the propagator's plans differ in {key}; train both with the "
                            f"same plans")


def list_cases(input_folder: str, dataset_json: dict) -> dict:
    """case id -> image files (nnU-Net naming ``<case>_XXXX<ending>``), each case with exactly the channels of
    ``dataset_json``; UserError naming the first case that has not."""
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    if not os.path.isdir(input_folder):
        raise UserError(f"input folder {input_folder} does not exist")
    ending = dataset_json["file_ending"]
    n_channels = len(dataset_json["channel_names"])
    lists = create_lists_from_splitted_dataset_folder(input_folder, ending)
    if not lists:
        raise UserError(f"no images named <case>_0000{ending} in {input_folder}")
    cases = {}
    for files in lists:
        case = os.path.basename(files[0])[:-(len(ending) + 5)]
        expected = [os.path.join(input_folder, f"{case}_{c:04d}{ending}") for c in range(n_channels)]
        if sorted(files) != expected:
            raise UserError(f"case {case} has {len(files)} channel file(s) "
                            f"({', '.join(os.path.basename(f) for f in sorted(files))}) but the models take "
                            f"{n_channels} ({', '.join(os.path.basename(f) for f in expected)})")
        cases[case] = expected
    return cases


def available_folds(model_folder: str, checkpoint_name: str) -> List[str]:
    """Folds (as nnU-Net names them: ``0``, ``1``, ..., ``all``) with ``checkpoint_name`` in ``model_folder``."""
    if not os.path.isdir(model_folder):
        raise UserError(f"model folder {model_folder} does not exist")
    return sorted(d[len("fold_"):] for d in os.listdir(model_folder)
                  if d.startswith("fold_") and os.path.isfile(os.path.join(model_folder, d, checkpoint_name)))


# ---------------------------------------------------------------------------------------------- prediction
def propagate_folder(input_folder: str, output_folder: str, reference_folder: str, propagator_folder: str,
                     folds: Optional[Sequence[str]] = None, checkpoint_name: str = "checkpoint_final.pth",
                     device: str = "cpu", num_slices: int = 10, references_per_organ: int = 2,
                     memory_every: Optional[int] = None, max_memory_frames: Optional[int] = None,
                     use_mirroring: bool = True, overwrite: bool = False, progress: bool = True) -> dict:
    """Two-stage prediction of every case of ``input_folder``: the reference model (nnU-Net's predictor, the
    reference model's plans) segments ``num_slices`` uniformly sampled slices of the preprocessed volume; per
    organ, the ``references_per_organ`` slices with the largest predicted area seed the propagation; the
    propagated per-organ probabilities are merged and written with nnU-Net's export in the input geometry.

    Every check (models, folds, channels, settings of an earlier run in ``output_folder``) runs before any
    prediction. Finished cases are kept unless ``overwrite``; returns ``{"written": [...], "skipped": [...]}``."""
    from tqdm import tqdm

    torch_device = torch.device(device)
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("-device cuda was requested but PyTorch sees no CUDA device; use -device cpu")
    if num_slices < 1 or references_per_organ < 1:
        raise UserError(f"--slices and --per-organ must be >= 1, got {num_slices} and {references_per_organ}")
    if folds is None:
        folds = sorted(set(available_folds(reference_folder, checkpoint_name))
                       & set(available_folds(propagator_folder, checkpoint_name)))
        if not folds:
            raise UserError(f"no fold has {checkpoint_name} in both {reference_folder} and {propagator_folder}; "
                            f"train a fold of each or pass -f")
    folds = [str(f) for f in folds]
    reference = reference_model_info(reference_folder, folds, checkpoint_name)
    networks, propagator = load_propagators(propagator_folder, folds, checkpoint_name, torch_device)
    check_compatible(reference, propagator)
    cases = list_cases(input_folder, reference["dataset_json"])
    hyper = propagator["hyperparameters"]
    memory_every = int(memory_every if memory_every is not None else hyper.get("memory_every", 5))
    max_memory_frames = int(max_memory_frames if max_memory_frames is not None else hyper.get("max_memory_frames", 0))
    settings = {"reference": os.path.abspath(reference_folder), "propagator": os.path.abspath(propagator_folder),
                "folds": folds, "checkpoint": checkpoint_name, "slices": int(num_slices),
                "references_per_organ": int(references_per_organ), "memory_every": memory_every,
                "max_memory_frames": max_memory_frames, "use_mirroring": bool(use_mirroring)}
    _claim_output_folder(output_folder, settings, overwrite)

    from nnunet_ssl.pipeline import load_predictor

    predictor = load_predictor(reference_folder, folds, checkpoint_name, torch_device, use_mirroring=use_mirroring)
    plans_manager, configuration_manager = predictor.plans_manager, predictor.configuration_manager
    dataset_json, label_manager = predictor.dataset_json, predictor.label_manager
    organs = [c for c in label_manager.foreground_labels if c != label_manager.ignore_label]
    ending = dataset_json["file_ending"]
    todo = {c: f for c, f in cases.items() if overwrite or not os.path.isfile(os.path.join(output_folder, c + ending))}
    result = {"written": [], "skipped": sorted(set(cases) - set(todo))}
    bar = tqdm(total=len(todo), desc="propagate", unit="case", disable=not progress)
    try:
        for case, files in todo.items():
            bar.set_postfix_str(f"{case}: reference slices", refresh=True)
            preprocessor = configuration_manager.preprocessor_class(verbose=False)
            data, _, properties = preprocessor.run_case(files, None, plans_manager, configuration_manager,
                                                        dataset_json)
            z_count = data.shape[1]
            sampled = uniform_slices(z_count, num_slices)
            logits = predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data[:, sampled]))
            label_slices = np.asarray(label_manager.convert_logits_to_segmentation(logits))
            references = reference_masks(label_slices, sampled, organs, references_per_organ)
            bar.set_postfix_str(f"{case}: propagating {len(references)} organ(s)", refresh=True)
            probabilities = propagate_organs(
                networks, torch.from_numpy(data).to(torch_device),
                {c: {z: torch.from_numpy(m) for z, m in r.items()} for c, r in references.items()},
                memory_every, max_memory_frames)
            scores = export_scores(probabilities, label_manager.num_segmentation_heads, data.shape[1:])
            export_case(scores, properties, configuration_manager, plans_manager, dataset_json, output_folder, case)
            result["written"].append(case)
            bar.update()
    finally:
        bar.close()
    return result


SETTINGS_FILE = "propagate_settings.json"


def _claim_output_folder(output_folder: str, settings: dict, overwrite: bool) -> None:
    """Create ``output_folder`` and record ``settings``; a folder holding results of other settings is refused
    (finished cases would mix two models) unless ``overwrite``."""
    import json

    from nnunet_ssl.utils.files import write_json_atomic

    os.makedirs(output_folder, exist_ok=True)
    path = os.path.join(output_folder, SETTINGS_FILE)
    if os.path.isfile(path) and not overwrite:
        with open(path) as f:
            previous = json.load(f)
        if previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise UserError(f"{output_folder} holds predictions made with other settings ({', '.join(changed)}); "
                            f"choose another output folder, or pass --overwrite to predict every case again")
    write_json_atomic(path, settings)
