"""``nnunet-ssl demo``: the main job on an embedded default, end to end on CPU in minutes.

1. generates a synthetic 3D dataset (a large organ, a medium vessel, a tiny lesion; few labeled,
   many unlabeled and some held-out test cases) in ``<workdir>/nnUNet_raw``;
2. plans and preprocesses it with nnU-Net, preprocesses the unlabeled cases, and writes CPU-sized
   plans (``nnUNetPlans_cpu``);
3. trains ``nnUNetTrainer`` and ``nnUNetTrainerMeanTeacher`` with the same budget (fold ``all``);
4. predicts the test cases with nnU-Net's predictor and prints a per-class Dice table.

``--dim 2`` runs the same job on 2D RGB frames (PNG, nnU-Net's natural-image reader) whose training
frames all carry image-level category labels (``categoryLabels.json``), comparing nnUNetTrainer with
the category-supervised ``nnUNetTrainerDCLCls`` by default.

Everything lives under ``--workdir`` (nnU-Net's three folders are pointed there for this command);
rerunning reuses finished steps, so an interrupted demo continues where it stopped. A workdir
remembers the data settings it was made with and refuses others.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass

from nnunet_ssl.commands import arguments
from nnunet_ssl.errors import UserError
from nnunet_ssl.planners.shrink import CPU_PRESETS
from nnunet_ssl.utils.files import write_json_atomic


@dataclass(frozen=True)
class DemoKind:
    """The dataset and CPU plans of one demo variant."""

    dim: int
    dataset_id: int
    configuration: str
    shape: tuple
    shrink: dict
    default_trainers: tuple
    unit: str  # what a case is called in messages
    others: str  # what the training cases without pixel labels are called

    @property
    def dataset_name(self) -> str:
        return f"Dataset{self.dataset_id}_SSLDemo" + ("" if self.dim == 3 else "2D")


KINDS = {
    3: DemoKind(3, 990, "3d_fullres", (32, 32, 32), CPU_PRESETS["3d"], ("nnUNetTrainer", "nnUNetTrainerMeanTeacher"),
                "volumes", "unlabeled"),
    2: DemoKind(2, 989, "2d", (64, 64), dict(CPU_PRESETS["2d"], patch_size=(64, 64)),
                ("nnUNetTrainer", "nnUNetTrainerDCLCls"), "RGB frames", "category-labeled"),
}
DATASET_ID = KINDS[3].dataset_id
DATASET_NAME = KINDS[3].dataset_name
CONFIG = KINDS[3].configuration
PLANS = "nnUNetPlans_cpu"
SETTINGS_FILE = "demo_settings.json"


def add_arguments(parser) -> None:
    parser.add_argument("--workdir", default="nnunet_ssl_demo", help="folder for data and results (default: ./nnunet_ssl_demo)")
    parser.add_argument("--dim", type=int, choices=(3, 2), default=3,
                        help="3: grey 3D volumes (default); 2: RGB frames with image-level category labels")
    parser.add_argument("--trainers", nargs="+", default=None,
                        help="trainers to compare (default: nnUNetTrainer nnUNetTrainerMeanTeacher; with --dim 2 "
                             "nnUNetTrainer nnUNetTrainerDCLCls)")
    # every count is at least 1, checked by argparse before the workdir is touched
    parser.add_argument("--epochs", type=arguments.count, default=20, help="epochs per trainer (default 20)")
    parser.add_argument("--iters", type=arguments.count, default=25, help="iterations per epoch (default 25)")
    parser.add_argument("--labeled", type=arguments.count, default=4, help="labeled training cases (default 4)")
    parser.add_argument("--unlabeled", type=arguments.count, default=24,
                        help="unlabeled (with --dim 2: category-labeled) training cases (default 24)")
    parser.add_argument("--test", type=arguments.count, default=8, help="held-out test cases (default 8)")
    parser.add_argument("--seed", type=arguments.seed, default=0, help="seed of the generated data (default 0)")


def _set_paths(workdir: str) -> None:
    if "nnunetv2.paths" in sys.modules:
        raise RuntimeError("the demo must set nnU-Net's paths before nnunetv2 is imported; run it as a command")
    for var, sub in (("nnUNet_raw", "nnUNet_raw"), ("nnUNet_preprocessed", "nnUNet_preprocessed"),
                     ("nnUNet_results", "nnUNet_results")):
        os.environ[var] = os.path.join(workdir, sub)
        os.makedirs(os.environ[var], exist_ok=True)
    os.environ.setdefault("nnUNet_n_proc_DA", "2")
    os.environ.setdefault("nnUNet_def_n_proc", "1")
    os.environ.setdefault("nnUNet_compile", "false")


def trainer_folder(results: str, kind: DemoKind, trainer: str) -> str:
    """Where the demo's run of ``trainer`` lives under the nnU-Net results folder ``results`` (fold ``all``)."""
    return os.path.join(results, kind.dataset_name, f"{trainer}__{PLANS}__{kind.configuration}", "fold_all")


def make_spec(kind: DemoKind, labeled: int, unlabeled: int, test: int, seed: int):
    """The synthetic data of a demo variant (2D: every training frame has a category label)."""
    from nnunet_ssl.data.synthetic import SyntheticSpec

    return SyntheticSpec(num_labeled=labeled, num_unlabeled=unlabeled, num_test=test, seed=seed, dim=kind.dim,
                         shape=kind.shape, spacing=(1.0,) * kind.dim, category_labels=kind.dim == 2)


def check_settings(workdir: str, settings: dict) -> None:
    """Record the data settings of a new workdir; refuse a workdir made with other ones (its data,
    plans and models would silently be reused)."""
    import json

    path = os.path.join(workdir, SETTINGS_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        if old != settings:
            diff = ", ".join(f"{k}: {old.get(k)} -> {v}" for k, v in settings.items() if old.get(k) != v)
            raise UserError(f"{workdir} holds a demo made with other data settings ({diff}); keep them or use "
                            f"another --workdir")
        return
    os.makedirs(workdir, exist_ok=True)
    write_json_atomic(path, settings)


def prepare_dataset(spec, num_processes: int = 2, kind: DemoKind = KINDS[3]) -> None:
    """Generate (if absent), plan, preprocess labeled and unlabeled cases, shrink plans."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw

    from nnunet_ssl.data.synthetic import generate_dataset
    from nnunet_ssl.data.unlabeled import preprocess_unlabeled
    from nnunet_ssl.planners.shrink import write_shrunk_plans

    raw = os.path.join(nnUNet_raw.get(), kind.dataset_name)
    if not os.path.isfile(os.path.join(raw, "dataset.json")):
        print(f"[1/4] generating {kind.dataset_name}: {spec.num_labeled} labeled, {spec.num_unlabeled} unlabeled, "
              f"{spec.num_test} test {kind.unit} of {spec.shape}")
        generate_dataset(raw, spec, overwrite=True)  # a half-written folder from an interrupted run is redone
    pre = os.path.join(nnUNet_preprocessed.get(), kind.dataset_name)
    if not os.path.isfile(os.path.join(pre, PLANS + ".json")):
        from nnunet_ssl.pipeline import plan_and_preprocess

        print("[2/4] nnU-Net planning and preprocessing")
        with open(os.path.join(nnUNet_preprocessed.get(), "..", "demo_console.log"), "a") as log, \
                contextlib.redirect_stdout(log):
            plan_and_preprocess(kind.dataset_id, (kind.configuration,), num_processes)
        write_shrunk_plans(pre, kind.configuration, "nnUNetPlans", PLANS, **kind.shrink)
    preprocess_unlabeled(kind.dataset_id, kind.configuration, PLANS, num_processes=num_processes)


def predict_test(trainer: str, out_dir: str, kind: DemoKind = KINDS[3]) -> str:
    from nnunetv2.paths import nnUNet_raw

    from nnunet_ssl.pipeline import model_folder, predict_folder

    return predict_folder(model_folder(kind.dataset_name, trainer, PLANS, kind.configuration),
                          os.path.join(nnUNet_raw.get(), kind.dataset_name, "imagesTs"), out_dir)


def dice_table(pred_dirs: dict, ref_dir: str, labels: dict) -> tuple[str, dict]:
    """Mean per-class Dice over the test cases for each trainer, as a printable table; also the results
    ``{trainer: {class: Dice, 'mean': Dice}}``, each case's mean Dice over classes ``{trainer: {case: Dice}}``
    and, per class, the Dice where it is present and the false-positive rate where it is absent
    (:func:`~nnunet_ssl.evaluation.stats.presence_split`)."""
    import numpy as np
    import SimpleITK as sitk

    from nnunet_ssl.evaluation.metrics import overlap_metrics
    from nnunet_ssl.evaluation.stats import presence_split

    classes = {n: v for n, v in labels.items() if v > 0}
    results, per_case, presence = {}, {}, {}
    for trainer, d in pred_dirs.items():
        per_class, rows = {n: [] for n in classes}, []
        files = sorted(os.listdir(ref_dir))
        for f in files:
            ref = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(ref_dir, f)))
            pred = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(d, f)))
            for n, v in classes.items():
                per_class[n].append(overlap_metrics(pred == v, ref == v)[0])
                rows.append({"class": n, "dice": per_class[n][-1], "n_pred": int((pred == v).sum()),
                             "n_ref": int((ref == v).sum())})
        presence[trainer] = presence_split(rows)
        results[trainer] = {n: float(np.mean(x)) for n, x in per_class.items()}
        results[trainer]["mean"] = float(np.mean(list(results[trainer].values())))
        per_case[trainer] = {f: float(np.mean([per_class[n][i] for n in classes])) for i, f in enumerate(files)}
    cols = list(classes) + ["mean"]
    width = max(len(t) for t in pred_dirs) + 2
    lines = [f"{'trainer':<{width}}" + "".join(f"{c:>10}" for c in cols),
             "-" * (width + 10 * len(cols))]
    for t, r in results.items():
        lines.append(f"{t:<{width}}" + "".join(f"{r[c]:>10.3f}" for c in cols))
    return "\n".join(lines), results, per_case, presence


def run(args) -> int:
    workdir = os.path.abspath(args.workdir)
    _set_paths(workdir)
    import json

    from nnunetv2.paths import nnUNet_raw, nnUNet_results

    from nnunet_ssl.runner import train

    t0 = time.time()
    kind = KINDS[args.dim]
    trainers = args.trainers or list(kind.default_trainers)
    check_settings(workdir, {"dim": args.dim, "labeled": args.labeled, "unlabeled": args.unlabeled,
                             "test": args.test, "seed": args.seed})
    spec = make_spec(kind, args.labeled, args.unlabeled, args.test, args.seed)
    prepare_dataset(spec, kind=kind)
    pred_dirs = {}
    for trainer in trainers:
        out = trainer_folder(nnUNet_results.get(), kind, trainer)
        if not os.path.isfile(os.path.join(out, "checkpoint_final.pth")):
            print(f"[3/4] training {trainer} ({args.epochs} epochs x {args.iters} iterations, CPU)")
            t = time.time()
            budget = {"num_epochs": args.epochs, "num_iterations_per_epoch": args.iters,
                      "num_val_iterations_per_epoch": 2}
            train(kind.dataset_id, kind.configuration, "all", trainer, PLANS, "cpu", continue_training=True,
                  validate=False, budget=budget, progress=True)
            print(f"      {trainer} trained in {time.time() - t:.0f} s (nnU-Net's log: {out})")
        pred_dirs[trainer] = os.path.join(workdir, "predictions", trainer)
        print(f"[4/4] predicting the test cases with {trainer}")
        with open(os.path.join(workdir, "demo_console.log"), "a") as log, contextlib.redirect_stdout(log):
            predict_test(trainer, pred_dirs[trainer], kind)
    raw = os.path.join(nnUNet_raw.get(), kind.dataset_name)
    with open(os.path.join(raw, "dataset.json")) as f:
        labels = json.load(f)["labels"]
    table, results, per_case, presence = dice_table(pred_dirs, os.path.join(raw, "labelsTs"), labels)
    with open(os.path.join(workdir, "demo_results.json"), "w") as f:
        json.dump({"dice": results, "per_case": per_case, "presence": presence, "epochs": args.epochs, "iterations_per_epoch": args.iters, "dim": args.dim,
                   "labeled": args.labeled, "unlabeled": args.unlabeled, "test": args.test}, f, indent=1)
    print(f"\nTest-set Dice ({args.test} held-out {kind.unit}; {args.labeled} labeled + {args.unlabeled} "
          f"{kind.others} training {kind.unit}; {args.epochs}x{args.iters} iterations each):\n")
    print(table)
    print(f"\nfinished in {time.time() - t0:.0f} s; everything is in {workdir}")
    return 0
