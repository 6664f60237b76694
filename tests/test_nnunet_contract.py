"""The contract with nnU-Net: every nnU-Net name and member this package relies on exists, with the
signature we call it with.

An nnU-Net release that renames, moves or re-signs one of them fails here, in one readable test,
instead of in a training run. Where possible the lists are derived from our source (every
``from nnunetv2... import`` and every trainer attribute we read but never define), so they stay
complete as the code changes; the signatures of the members we call with specific arguments, and
nnU-Net's private members we touch, are listed by hand below.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import os
import pathlib

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nnunet_ssl"
SOURCES = sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))


def _trees():
    return {p: ast.parse(p.read_text(), filename=str(p)) for p in SOURCES}


def _nnunet_imports():
    """(file, module, name) for every ``from nnunetv2... import name`` and ``import nnunetv2...``."""
    found = []
    for path, tree in _trees().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "nnunetv2":
                found += [(path.relative_to(ROOT), node.module, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                found += [(path.relative_to(ROOT), a.name, None) for a in node.names if a.name.startswith("nnunetv2")]
    return found


def test_every_nnunet_import_resolves():
    imports = _nnunet_imports()
    assert len(imports) > 20, "the scan found too few nnU-Net imports: is it reading the package?"
    broken = []
    for path, module, name in imports:
        try:
            mod = importlib.import_module(module)
            if name is not None and not hasattr(mod, name):
                importlib.import_module(f"{module}.{name}")  # a submodule imported by name
        except (ImportError, AttributeError) as e:
            broken.append(f"{path}: from {module} import {name} ({e})")
    assert not broken, "nnU-Net names we import are gone:\n" + "\n".join(broken)


def _self_attributes(tree) -> tuple[set, set]:
    """(names read as ``self.X``, names we define: assigned as ``self.X``, methods, class attributes)."""
    read, defined = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            (defined if isinstance(node.ctx, ast.Store) else read).add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            defined.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    defined.add(stmt.target.id)
                elif isinstance(stmt, ast.Assign):
                    defined.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
    return read, defined


def _nnunet_trainer_members() -> set:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    members = set(dir(nnUNetTrainer))
    source = ast.parse(inspect.getsource(inspect.getmodule(nnUNetTrainer)))
    members |= _self_attributes(source)[1]  # instance attributes nnU-Net sets (self.X = ... in its methods)
    return members


def test_every_trainer_attribute_we_read_is_ours_or_nnunets():
    """``self.X`` read in our trainers (and the method bases in ``nnunet_ssl/methods``) that no code of ours
    defines must come from ``nnUNetTrainer``."""
    trees = [t for p, t in _trees().items() if p.parent.name in ("trainers", "methods")]  # trainers and their bases
    defined = set().union(*(_self_attributes(t)[1] for t in trees))
    read = set().union(*(_self_attributes(t)[0] for t in trees))
    inherited = read - defined
    assert {"label_manager", "configuration_manager", "plans_manager", "logger", "device"} <= inherited
    missing = sorted(inherited - _nnunet_trainer_members())
    assert not missing, f"attributes our trainers read from nnUNetTrainer no longer exist there: {missing}"


def _params(fn) -> list:
    return list(inspect.signature(fn).parameters)


def test_signatures_we_call_with_specific_arguments():
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    # nnU-Net records a trainer's __init__ arguments by name: ours must keep exactly these
    assert _params(nnUNetTrainer.__init__) == ["self", "plans", "configuration", "fold", "dataset_json", "device"]
    assert _params(nnUNetTrainer.build_network_architecture) == [
        "plans_manager", "configuration_manager", "num_input_channels", "num_output_channels",
        "enable_deep_supervision"]
    assert _params(nnUNetTrainer.get_training_transforms) == [
        "patch_size", "rotation_for_DA", "deep_supervision_scales", "mirror_axes", "do_dummy_2d_data_aug",
        "use_mask_for_norm", "is_cascaded", "foreground_labels", "regions", "ignore_label"]
    for name in ("_do_i_compile", "_get_deep_supervision_scales",
                 "configure_rotation_dummyDA_mirroring_and_inital_patch_size", "configure_optimizers",
                 "on_train_start", "on_train_end", "on_epoch_end", "on_validation_epoch_start"):
        assert _params(getattr(nnUNetTrainer, name)) == ["self"], name
    for name, params in {"save_checkpoint": ["self", "filename"], "load_checkpoint": ["self", "filename_or_checkpoint"],
                         "train_step": ["self", "batch"], "validation_step": ["self", "batch"],
                         "on_train_epoch_end": ["self", "train_outputs"],
                         "on_validation_epoch_end": ["self", "val_outputs"],
                         "perform_actual_validation": ["self", "save_probabilities"],
                         "set_deep_supervision_enabled": ["self", "enabled"]}.items():
        assert _params(getattr(nnUNetTrainer, name)) == params, name
    assert _params(DefaultPreprocessor.run_case)[:6] == [
        "self", "image_files", "seg_file", "plans_manager", "configuration_manager", "dataset_json"]
    save_case = _params(nnUNetDatasetBlosc2.save_case)  # called with 4 positional arguments, the rest by name
    assert len(save_case) >= 4 and {"chunks", "blocks", "chunks_seg", "blocks_seg"} <= set(save_case[4:])
    assert _params(DeepSupervisionWrapper.__init__)[:3] == ["self", "loss", "weight_factors"]
    wrapper = DeepSupervisionWrapper(torch.nn.L1Loss(), (1.0, 0.5))
    assert isinstance(wrapper.loss, torch.nn.L1Loss) and tuple(wrapper.weight_factors) == (1.0, 0.5)


def test_logger_members_we_use():
    """Epoch-end logging writes our terms into the local logger's dict; checkpoints go through it."""
    from nnunetv2.training.logging.nnunet_logger import MetaLogger

    logger = MetaLogger(output_folder=None, resume=False)
    assert isinstance(logger.local_logger.my_fantastic_logging, dict)
    for name in ("log", "get_value", "get_checkpoint", "load_checkpoint", "plot_progress_png"):
        assert callable(getattr(logger, name)), name
    logger.log("train_losses", 0.5, 0)
    assert logger.get_value("train_losses", step=None) == [0.5]
    assert logger.local_logger.my_fantastic_logging["train_losses"] == [0.5]


def test_nnunet_checkpoint_keys_are_a_subset_of_ours(tiny_3d, tmp_path):
    """A key nnU-Net writes into its checkpoints must survive in ours (or resuming with nnU-Net loses it)."""
    from conftest import CPU_PLANS

    from nnunet_ssl.runner import build_trainer

    keys = {}
    for trainer in ("nnUNetTrainer", "nnUNetTrainerMeanTeacher"):
        t = build_trainer(tiny_3d["id"], "3d_fullres", 0, trainer, CPU_PLANS, "cpu")
        t.initialize()
        path = os.path.join(tmp_path, f"{trainer}.pth")
        t.save_checkpoint(path)
        keys[trainer] = set(torch.load(path, map_location="cpu", weights_only=False))
    assert {"network_weights", "optimizer_state", "current_epoch", "init_args", "trainer_name"} <= keys["nnUNetTrainer"]
    lost = keys["nnUNetTrainer"] - keys["nnUNetTrainerMeanTeacher"]
    assert not lost, f"nnU-Net checkpoint keys our checkpoints drop: {sorted(lost)}"
    assert "nnunet_ssl" in keys["nnUNetTrainerMeanTeacher"]
