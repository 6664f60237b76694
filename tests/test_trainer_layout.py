"""Trainer files do not import each other: nnU-Net imports every file of ``nnunet_ssl/trainers`` as a
top-level module (nnunetv2/utilities/find_class_by_name.py), so an import between two of them would
give the imported classes a second class object. Each trainer file imports the base
(``nnunet_ssl.trainers.semisupervised``) and library modules only; shared method bases live in
``nnunet_ssl.methods``."""
from __future__ import annotations

import ast
import os

import nnunet_ssl.trainers as trainers

FOLDER = os.path.dirname(trainers.__file__)
MODULES = sorted(f[:-3] for f in os.listdir(FOLDER) if f.endswith(".py") and f != "__init__.py")
ALLOWED = {"semisupervised"}


def _imported_trainer_modules(path: str) -> set:
    """Names of files of nnunet_ssl/trainers that ``path`` imports (absolute, relative, or as the package)."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[:2] == ["nnunet_ssl", "trainers"]:
                    found.add(parts[2] if len(parts) > 2 else "__init__")
                elif parts[0] in MODULES:  # nnU-Net's top-level name for a trainer file
                    found.add(parts[0])
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            parts = module.split(".") if module else []
            if node.level > 0:  # relative: from . import x / from .x import y
                found.update([parts[0]] if parts else [a.name for a in node.names])
            elif parts[:2] == ["nnunet_ssl", "trainers"]:
                found.update([parts[2]] if len(parts) > 2 else [a.name for a in node.names])
            elif parts and parts[0] in MODULES:
                found.add(parts[0])
    return found


def test_every_trainer_file_is_checked():
    assert {"semisupervised", "mean_teacher", "uamt", "dhc", "dmpf", "dcl", "simclr"} <= set(MODULES)


def test_trainer_files_import_only_the_base_among_trainer_files():
    offending = {}
    for name in MODULES:
        imported = _imported_trainer_modules(os.path.join(FOLDER, f"{name}.py")) - ALLOWED - {name}
        if imported:
            offending[name] = sorted(imported)
    assert offending == {}


def test_the_check_sees_each_import_form(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("import nnunet_ssl.trainers.dhc\nfrom nnunet_ssl.trainers.cps import a\n"
                    "from nnunet_ssl.trainers import bcp\nfrom .dcl import b\nfrom . import uamt\nimport dmpf\n"
                    "from nnunet_ssl.trainers.semisupervised import c\n")
    assert _imported_trainer_modules(str(path)) == {"dhc", "cps", "bcp", "dcl", "uamt", "dmpf", "semisupervised"}
