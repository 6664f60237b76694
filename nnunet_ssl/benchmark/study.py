"""Label-fraction benchmark studies: split, plan, train, predict, evaluate and report, resumably.

A *study* compares trainers on one fully labeled source dataset at several labeled fractions and
seeds. A *run* is one ``(fraction, seed, trainer)``.

1. **Test set.** A held-out test set is chosen once (``test`` cases or groups, seeded by
   ``test_seed``) and is the same for every fraction and seed, so results are comparable and the
   Wilcoxon test pairs cases. It is written as a raw dataset ``Dataset<id_base>_<Source>Test<n>s<seed>``
   (``make_split``: the remaining *pool* in ``imagesTr``/``labelsTr``, the test set in
   ``imagesTs``/``labelsTs``).
2. **Splits.** For each ``(fraction, seed)``, ``make_split`` of the pool writes
   ``Dataset<id>_<Source>L<pct>s<seed>`` (ids ``id_base + 1``, ``+ 2``, … in order of first use,
   recorded in ``study.json``): ``fraction`` of the pool's cases (groups with ``group_regex``)
   labeled, the rest in ``imagesUnlabeled``. With one seed the labeled sets are nested across
   fractions (5% ⊂ 10% ⊂ 20%), because the seeded order of the pool is the same.
3. **Preparation** (only when a run of the split must train): nnU-Net planning and preprocessing
   of the configuration, the preset's shrunk plans, unlabeled preprocessing.
4. **Training** of every trainer in a subprocess (``nnunet-ssl train <id> <cfg> all -tr X --c``,
   fold ``all``, without nnU-Net's final validation, which on fold ``all`` would only re-predict the
   training cases), so a crash is isolated and recorded. Output: ``<run>/train.log``.
5. **Prediction** of the test set with nnU-Net's predictor, **evaluation** with
   :func:`~nnunet_ssl.evaluation.folders.evaluate_folders`, and the run manifest ``run.json``. A test
   case left without a prediction makes the run *failed* (its reason names the cases), never a mean
   over fewer cases.
6. **Report** (:func:`~nnunet_ssl.evaluation.report.build_report`) in ``<output>/report``.

At 100% labeled a split has no unlabeled images. Trainers that need them
(``requires_unlabeled``, i.e. the semi-supervised ones) are then *skipped*: no run, and the
report lists them as "missing" with the reason "skipped: no unlabeled data". The baseline runs.

Resuming: a run whose manifest says ``ok`` is never redone; a failed run keeps its ``failed``
manifest (and stays in the report as failed) unless ``retry_failed``; a run without a manifest
continues: training resumes with ``--c`` from ``checkpoint_latest``, a finished model
(``checkpoint_final.pth``) is not retrained, finished predictions are kept. Predictions and
evaluations are written to temporary folders and moved into place, the manifest is written last
(atomically), so an interrupted study never leaves a half-written result that counts as finished.

``write_commands`` writes the same study as a shell script (``nnunet-ssl split``,
``nnUNetv2_plan_and_preprocess``, ``nnunet-ssl preprocess-unlabeled``, ``nnUNetv2_train`` or, with a
preset budget, ``nnunet-ssl train``, ``nnUNetv2_predict``, ``nnunet-ssl evaluate``) and runs nothing.
Running the study afterwards in the same output folder finds the trained models and predictions,
evaluates them and writes the manifests and the report.

Study folder::

    study.json                          settings, test cases, dataset ids (checked on every rerun)
    runs/<pct>/seed<s>/<trainer>/       train.log, predictions/, evaluation/, run.json
    logs/                               planning / preprocessing output per split
    report/                             report.md, PNG figures, all_metrics.csv, summary.csv, runs.csv
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from nnunet_ssl.benchmark.presets import Preset, get_preset
from nnunet_ssl.errors import UserError
from nnunet_ssl.utils.files import output_to_log, write_json_atomic

STUDY_FILE = "study.json"
PREPARED_FILE = "nnunet_ssl_benchmark.json"
"""Marker in a split's nnUNet_preprocessed folder: planning and preprocessing finished (and how)."""
OWNER_FILE = "nnunet_ssl_benchmark_study.json"
"""Marker in the test-split raw dataset: which study folder owns the dataset id range."""
FOLD = "all"
DEFAULT_FRACTIONS = ("5%", "10%", "20%", "100%")
SKIP_REASON = "skipped: no unlabeled data (every case of the split is labeled)"


# --------------------------------------------------------------------------------------- small parts
def parse_fraction(text: Union[str, float]) -> float:
    """``"10%"`` or ``0.1`` -> 0.1; must lie in (0, 1]."""
    s = str(text).strip()
    try:
        value = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    except ValueError:
        raise UserError(f"a labeled fraction must look like 10% or 0.1, got {text!r}") from None
    if not 0 < value <= 1:
        hint = f" (did you mean {s}%?)" if not s.endswith("%") and 1 < value <= 100 else ""
        raise UserError(f"a labeled fraction must be in (0, 1] or (0%, 100%], got {text!r}{hint}")
    return value


def fraction_percent(fraction: float) -> str:
    """0.1 -> ``"10%"`` (the form ``make_split`` parses)."""
    return f"{100 * fraction:g}%"


def fraction_tag(fraction: float) -> str:
    """0.1 -> ``"10pct"``, 0.025 -> ``"2p5pct"`` (for folder and dataset names)."""
    return f"{100 * fraction:g}".replace(".", "p").replace("-", "m") + "pct"


@dataclass(frozen=True)
class Run:
    """One ``(fraction, seed, trainer)`` of a study."""

    fraction: float
    seed: int
    trainer: str

    @property
    def relative_dir(self) -> str:
        return f"runs/{fraction_tag(self.fraction)}/seed{self.seed}/{self.trainer}"


@dataclass
class SplitDataset:
    """The raw dataset of one ``(fraction, seed)`` (its case lists computed before anything is written)."""

    fraction: float
    seed: int
    id: int
    name: str
    labeled: List[str]
    unlabeled: List[str]


@dataclass
class RunOutcome:
    """What happened to a run in this invocation."""

    run: Run
    status: str
    """``ok``, ``failed``, ``skipped`` (needs unlabeled data the split lacks), ``missing`` (report
    only: not run yet) or ``planned`` (commands written)."""
    reason: str = ""
    dataset: str = ""
    trained: bool = False
    """Whether this invocation trained (or continued training) the model."""
    seconds: float = 0.0


@dataclass
class StudyResult:
    """Outcome of :func:`run_study`."""

    output_dir: Path
    outcomes: List[RunOutcome]
    report: Optional[Path] = None
    commands_file: Optional[Path] = None

    @property
    def failed(self) -> List[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


@contextlib.contextmanager
def _study_lock(output_dir: Path):
    """One benchmark process per study folder (a lock file holding the pid; a stale one is taken over)."""
    path = output_dir / ".lock"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                path.unlink(missing_ok=True)  # left by a process that no longer runs
                continue
            except PermissionError:
                pass
            raise UserError(f"another nnunet-ssl benchmark (pid {pid}) is working on {output_dir}; wait for it to "
                            f"finish or stop it first") from None
    else:
        raise UserError(f"could not lock {output_dir} ({path})")
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder ``src`` to ``dst``, replacing an older ``dst``."""
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------- design
@dataclass
class _Design:
    """Everything decided before any data is written."""

    source_name: str
    source_folder: Path
    labels: dict
    file_ending: str
    n_pool: int
    n_test: int
    test_cases: List[str]
    pool: Tuple[int, str]
    splits: Dict[Tuple[float, int], SplitDataset]
    runs: List[Run]


def _resolve_source(source: Union[int, str, os.PathLike]) -> Tuple[str, Path]:
    path = Path(str(source)).expanduser()
    if path.is_dir() and (path / "dataset.json").is_file():
        return path.name, path.resolve()
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_ssl.data.unlabeled import raw_dataset_folder

    try:
        name = maybe_convert_to_dataset_name(str(source))
    except (RuntimeError, ValueError):
        raise UserError(f"source dataset {source!r} not found: give an id or name in nnUNet_raw or the path of a "
                        f"raw dataset folder") from None
    folder = Path(raw_dataset_folder(name))
    if not (folder / "dataset.json").is_file():
        raise UserError(f"{folder}/dataset.json not found; the source must be an nnU-Net raw dataset")
    return name, folder


def _design(name: str, folder: Path, output_dir: Path, fractions: Sequence[float], seeds: Sequence[int],
            trainers: Sequence[str], test, test_seed: int, group_regex: Optional[str], id_base: int,
            settings: dict) -> Tuple[_Design, dict]:
    """Case lists of the test split and of every split, dataset ids (from ``study.json`` when it
    exists), the run list; returns the design and the study record to store."""
    from nnunet_ssl.data.split import group_cases, choose_split, parse_amount
    from nnunet_ssl.data.unlabeled import cases_in_folder

    dataset_json = json.loads((folder / "dataset.json").read_text())
    ending = dataset_json["file_ending"]
    images, _ = cases_in_folder(str(folder / "imagesTr"), ending)
    cases = sorted(images)
    if not cases:
        raise UserError(f"{folder}/imagesTr holds no images ending in {ending}")
    n_groups = len(group_cases(cases, group_regex))
    unit = "groups" if group_regex else "cases"
    n_test = parse_amount(test, n_groups, "--test")
    if n_test < 1 or n_test >= n_groups:
        raise UserError(f"--test must leave at least one of the {n_groups} {unit} for training and hold at least "
                        f"one, got {test!r} ({n_test})")
    pool_split = choose_split(cases, n_groups - n_test, n_test, test_seed, group_regex)
    pool_cases = pool_split["labeled"]

    base = re.sub(r"[^A-Za-z0-9]", "", name.split("_", 1)[1] if name.startswith("Dataset") and "_" in name else name)
    pool_name = f"Dataset{id_base:03d}_{base}Test{n_test}s{test_seed}"

    study_path = output_dir / STUDY_FILE
    record = json.loads(study_path.read_text()) if study_path.is_file() else None
    if record is not None:
        diff = _settings_diff(record.get("settings", {}), settings)
        if diff:
            details = "; ".join(diff)
            raise UserError(f"{output_dir} holds a study with other settings ({details}). Continue it with the same "
                            f"settings, or use another --output (and --id-base) for a new study")
        if record.get("test_cases") != pool_split["test"]:
            raise UserError(f"the test cases of {output_dir} differ from the ones the source gives now (was the "
                            f"source dataset changed?); use another --output and --id-base for a new study")
    known = {(float(s["fraction"]), int(s["seed"])): (int(s["id"]), s["name"])
             for s in (record or {}).get("splits", [])}
    next_id = max([id_base] + [i for i, _ in known.values()]) + 1

    splits: Dict[Tuple[float, int], SplitDataset] = {}
    for fraction in fractions:
        for seed in seeds:
            chosen = choose_split(pool_cases, fraction_percent(fraction), 0, seed, group_regex)
            if (fraction, seed) in known:
                ds_id, ds_name = known[(fraction, seed)]
            else:
                ds_id, next_id = next_id, next_id + 1
                ds_name = f"Dataset{ds_id:03d}_{base}L{fraction_tag(fraction)}s{seed}"
            if ds_id > 999:
                raise UserError(f"dataset ids run past 999 (id base {id_base}); choose a smaller --id-base")
            splits[(fraction, seed)] = SplitDataset(fraction, seed, ds_id, ds_name, chosen["labeled"],
                                                    chosen["unlabeled"])
    runs = [Run(f, s, t) for f in fractions for s in seeds for t in trainers]

    all_splits = {**{k: {"fraction": k[0], "seed": k[1], "id": v[0], "name": v[1]} for k, v in known.items()},
                  **{k: {"fraction": k[0], "seed": k[1], "id": s.id, "name": s.name,
                         "labeled": len(s.labeled), "unlabeled": len(s.unlabeled)} for k, s in splits.items()}}
    new_record = {"settings": settings, "source_folder": str(folder), "n_test": n_test, "n_pool": len(pool_cases),
                  "test_dataset": {"id": id_base, "name": pool_name}, "test_cases": pool_split["test"],
                  "splits": [all_splits[k] for k in sorted(all_splits)]}
    design = _Design(name, folder, dataset_json["labels"], ending, n_groups - n_test, n_test, pool_split["test"],
                     (id_base, pool_name), splits, runs)
    return design, new_record


def _check_dataset_ids(design: _Design, output_dir: Path) -> None:
    """Every dataset id of the study is free or already holds the dataset of this study, and the
    test split, if it exists, belongs to this study folder."""
    from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets

    from nnunet_ssl.data.unlabeled import raw_dataset_folder

    for ds_id, ds_name in [design.pool] + [(s.id, s.name) for s in design.splits.values()]:
        others = [str(c) for c in find_candidate_datasets(ds_id) if str(c) != ds_name]
        if others:
            raise UserError(f"dataset id {ds_id} is already used by {others[0]} (this study needs it for {ds_name}); "
                            f"choose another --id-base")
    owner = Path(raw_dataset_folder(design.pool[1])) / OWNER_FILE
    owned_by = json.loads(owner.read_text()).get("study") if owner.is_file() else str(output_dir)
    if owned_by != str(output_dir):
        raise UserError(f"{design.pool[1]} belongs to the study in {owned_by}; continue that study with --output "
                        f"{owned_by}, or choose another --id-base for a new one")


def _settings_diff(old: dict, new: dict, prefix: str = "") -> List[str]:
    """``key: study has X, now Y`` for every differing (nested, dotted) setting."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _settings_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: study has {a!r}, now {b!r}")
    return out


# ------------------------------------------------------------------------------------------ trainers
_NEEDS_UNLABELED: Dict[str, bool] = {}


def trainer_needs_unlabeled(trainer: str) -> bool:
    """Whether ``trainer`` needs unlabeled images (``requires_unlabeled``). A trainer nnU-Net cannot
    find counts as not needing them: its run is attempted and fails with nnU-Net's own message."""
    if trainer not in _NEEDS_UNLABELED:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        try:
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                cls = recursive_find_trainer_class_by_name(trainer)
            _NEEDS_UNLABELED[trainer] = bool(getattr(cls, "requires_unlabeled", False))
        except Exception:  # noqa: BLE001 - any lookup problem: let the run itself report it
            _NEEDS_UNLABELED[trainer] = False
    return _NEEDS_UNLABELED[trainer]


def train_command(split: SplitDataset, trainer: str, preset: Preset, configuration: str, device: str) -> List[str]:
    """The ``nnunet-ssl train`` arguments of a run (after ``nnunet-ssl``)."""
    return ["train", str(split.id), configuration, FOLD, "-tr", trainer, "-p", preset.plans, "-device", device,
            *preset.train_flags(), "--c", "--no-val"]


def _failure_reason(log_tail: Sequence[str], returncode: int, log_path: Path) -> str:
    lines = [ln.strip() for ln in log_tail if ln.strip() and "\r" not in ln and not ln.strip().startswith("File ")]
    errors = [ln for ln in lines if re.search(r"(Error|Exception|error:|Traceback)", ln)
              and not ln.startswith("Traceback")]
    text = (errors or lines or ["(no output)"])[-1]
    if len(text) > 300:
        text = text[:297] + "..."
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
    return f"{text} ({how}; log: {log_path})"


def run_logged(cmd: List[str], env: dict, log_path: Path, on_line=None) -> Tuple[int, str]:
    """Run ``cmd``, appending its output to ``log_path``; returns (return code, failure reason).

    Ctrl-C stops the child too and is re-raised; nothing about the run is recorded then.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: List[str] = []
    with open(log_path, "a") as log:
        log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        try:
            for line in proc.stdout:
                log.write(line)
                tail = (tail + [line])[-40:]
                if on_line is not None:
                    on_line(line)
            proc.wait()
        except BaseException:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            raise
    if proc.returncode in (130, -signal.SIGINT):
        raise KeyboardInterrupt
    return proc.returncode, ("" if proc.returncode == 0 else _failure_reason(tail, proc.returncode, log_path))


# ------------------------------------------------------------------------------------------- executor
class _Executor:
    """Runs the steps of a study in this process (training in subprocesses)."""

    def __init__(self, design: _Design, output_dir: Path, preset: Preset, configuration: str, device: str,
                 num_processes: int, group_regex: Optional[str], test_seed: int, tolerance_mm: float,
                 retry_failed: bool):
        from nnunetv2.paths import nnUNet_preprocessed

        from nnunet_ssl.data.unlabeled import raw_dataset_folder

        self.d = design
        self.out = output_dir
        self.preset = preset
        self.configuration = configuration
        self.device = device
        self.num_processes = num_processes
        self.group_regex = group_regex
        self.test_seed = test_seed
        self.tolerance_mm = tolerance_mm
        self.retry_failed = retry_failed
        self.bar = None  # the study's progress bar, for the epoch shown while training
        self.raw = lambda name: Path(raw_dataset_folder(name))
        self.preprocessed = lambda name: Path(nnUNet_preprocessed.get()) / name
        self.prepared: Dict[Tuple[float, int], Optional[str]] = {}  # split -> None (ok) or the failure reason
        self.tmp = output_dir / "tmp"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)

    # ---- data
    @property
    def test_folder(self) -> Path:
        return self.raw(self.d.pool[1])

    def make_test_split(self) -> None:
        from nnunet_ssl.data.split import make_split

        owner = self.test_folder / OWNER_FILE  # checked by _check_dataset_ids
        make_split(str(self.d.source_folder), str(self.test_folder), self.d.n_pool, self.test_seed, self.d.n_test,
                   self.group_regex)
        if not owner.is_file():
            write_json_atomic(owner, {"study": str(self.out)})

    def prepare(self, split: SplitDataset) -> Optional[str]:
        """Split, plan, preprocess (once per split and invocation); None when ready, else the reason."""
        key = (split.fraction, split.seed)
        if key not in self.prepared:
            try:
                self._prepare(split)
                self.prepared[key] = None
            except Exception as e:  # noqa: BLE001 - recorded in the runs' manifests
                self.prepared[key] = f"preparing {split.name} failed: {type(e).__name__}: {e}"
        return self.prepared[key]

    def _prepare(self, split: SplitDataset) -> None:
        from nnunet_ssl.data.split import make_split
        from nnunet_ssl.data.unlabeled import preprocess_unlabeled
        from nnunet_ssl.pipeline import plan_and_preprocess
        from nnunet_ssl.planners.shrink import write_shrunk_plans

        shrink = self.preset.shrink_for(self.configuration)
        done = {"configuration": self.configuration, "plans": self.preset.plans,
                "shrink": self.preset.as_dict()["shrink"], "unlabeled": len(split.unlabeled)}
        pre = self.preprocessed(split.name)
        marker = pre / PREPARED_FILE
        make_split(str(self.test_folder), str(self.raw(split.name)), fraction_percent(split.fraction), split.seed, 0,
                   self.group_regex)
        if marker.is_file() and json.loads(marker.read_text()) == done:
            return
        log_path = self.out / "logs" / f"prepare_{split.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with output_to_log(log_path):
            plan_and_preprocess(split.id, (self.configuration,), self.num_processes)
            if shrink is not None:
                write_shrunk_plans(str(pre), self.configuration, "nnUNetPlans", self.preset.plans, **shrink)
            if split.unlabeled:
                preprocess_unlabeled(split.id, self.configuration, self.preset.plans, self.num_processes,
                                     progress=False)
        write_json_atomic(marker, done)

    # ---- runs
    def run_dir(self, run: Run) -> Path:
        return self.out / run.relative_dir

    def execute(self, run: Run, say) -> RunOutcome:
        from nnunet_ssl.evaluation.report import RUN_MANIFEST
        from nnunet_ssl.pipeline import model_folder

        split = self.d.splits[(run.fraction, run.seed)]
        run_dir = self.run_dir(run)
        manifest = run_dir / RUN_MANIFEST
        if manifest.is_file():
            m = json.loads(manifest.read_text())
            if m.get("status") == "ok":
                return RunOutcome(run, "ok", "finished earlier", split.name)
            if m.get("status") == "failed" and not self.retry_failed:
                return RunOutcome(run, "failed", m.get("reason", ""), split.name)
        if not split.unlabeled and trainer_needs_unlabeled(run.trainer):
            return RunOutcome(run, "skipped", SKIP_REASON, split.name)
        t0 = time.time()
        model = Path(model_folder(split.name, run.trainer, self.preset.plans, self.configuration, FOLD))
        trained = False
        if not (model / "checkpoint_final.pth").is_file():
            reason = self.prepare(split)
            if reason is None:
                for stale in ("predictions", "evaluation"):
                    shutil.rmtree(run_dir / stale, ignore_errors=True)
                say(f"training {run.trainer} on {split.name}")
                rc, reason = self._train(run, split, run_dir)
                trained = True
                reason = reason if rc != 0 else None
            if reason is not None:
                self._manifest(run, run_dir, "failed", reason)
                return RunOutcome(run, "failed", reason, split.name, trained, time.time() - t0)
        try:
            self._predict_and_evaluate(model, run_dir, say)
        except Exception as e:  # noqa: BLE001 - recorded in the manifest
            reason = f"prediction/evaluation failed: {type(e).__name__}: {e}"
            self._manifest(run, run_dir, "failed", reason)
            return RunOutcome(run, "failed", reason, split.name, trained, time.time() - t0)
        self._manifest(run, run_dir, "ok")
        return RunOutcome(run, "ok", "", split.name, trained, time.time() - t0)

    def _train(self, run: Run, split: SplitDataset, run_dir: Path) -> Tuple[int, str]:
        cmd = [sys.executable, "-m", "nnunet_ssl.cli", *train_command(split, run.trainer, self.preset,
                                                                      self.configuration, self.device)]
        env = {**self.preset.env, **os.environ}
        bar = self.bar
        total = f"/{self.preset.budget['num_epochs']}" if "num_epochs" in self.preset.budget else ""

        def on_line(line: str) -> None:
            m = re.search(r"Epoch (\d+)\s*$", line)
            if m and bar is not None:
                bar.set_postfix_str(f"{run.trainer} epoch {int(m.group(1)) + 1}{total}")

        return run_logged(cmd, env, run_dir / "train.log", on_line)

    def _predict_and_evaluate(self, model: Path, run_dir: Path, say) -> None:
        from nnunet_ssl.evaluation.folders import evaluate_folders
        from nnunet_ssl.pipeline import predict_folder

        pred = run_dir / "predictions"
        run_dir.mkdir(parents=True, exist_ok=True)  # absent when the model was trained elsewhere (commands script)
        if not all((pred / (c + self.d.file_ending)).is_file() for c in self.d.test_cases):
            say(f"predicting {len(self.d.test_cases)} test cases")
            tmp = run_dir / "predictions.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            with output_to_log(run_dir / "predict.log"):
                predict_folder(str(model.parent), str(self.test_folder / "imagesTs"), str(tmp), folds=(FOLD,),
                               device=self.device, use_mirroring=self.preset.use_mirroring,
                               num_processes=self.num_processes if self.num_processes > 1 else 0)
            replace_dir(tmp, pred)
        tmp = run_dir / "evaluation.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        evaluate_folders(pred, self.test_folder / "labelsTs", self.d.labels, self.d.file_ending,
                         tolerance_mm=self.tolerance_mm, num_processes=self.num_processes, output_dir=tmp,
                         progress=False)
        replace_dir(tmp, run_dir / "evaluation")

    def _manifest(self, run: Run, run_dir: Path, status: str, reason: str = "") -> None:
        """Write ``run.json`` atomically (via a temporary folder outside the runs tree)."""
        from nnunet_ssl.evaluation.report import RUN_MANIFEST, write_run_manifest

        tmp_dir = self.tmp / uuid.uuid4().hex
        written = write_run_manifest(tmp_dir, trainer=run.trainer, fraction=run.fraction, seed=run.seed,
                                     status=status, evaluation_dir="evaluation" if status == "ok" else None,
                                     reason=reason)
        run_dir.mkdir(parents=True, exist_ok=True)
        os.replace(written, run_dir / RUN_MANIFEST)
        shutil.rmtree(tmp_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------- report
def _outcomes_from_manifests(design: _Design, output_dir: Path) -> List[RunOutcome]:
    from nnunet_ssl.evaluation.report import RUN_MANIFEST

    outcomes = []
    for run in design.runs:
        split = design.splits[(run.fraction, run.seed)]
        manifest = output_dir / run.relative_dir / RUN_MANIFEST
        if manifest.is_file():
            m = json.loads(manifest.read_text())
            outcomes.append(RunOutcome(run, str(m.get("status")), m.get("reason") or "", split.name))
        elif not split.unlabeled and trainer_needs_unlabeled(run.trainer):
            outcomes.append(RunOutcome(run, "skipped", SKIP_REASON, split.name))
        else:
            outcomes.append(RunOutcome(run, "missing", "not run yet", split.name))
    return outcomes


def write_study_report(design: _Design, outcomes: Sequence[RunOutcome], output_dir: Path, baseline: str,
                       title: str) -> Path:
    """Records of every run (manifests; skipped runs as "missing" with their reason) -> ``build_report``,
    plus ``runs.csv`` (one line per run: status, reason, dataset, case counts)."""
    from nnunet_ssl.evaluation.report import build_report, collect_results, run_record

    records: List[dict] = []
    for o in outcomes:
        key = (o.run.fraction, o.run.seed, o.run.trainer)
        if o.status == "skipped":
            records.append(run_record(*key, "missing", o.reason))
            continue
        run_dir = output_dir / o.run.relative_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        records.extend(collect_results(run_dir, expected=[key]))
    report_dir = output_dir / "report"
    path = build_report(records, report_dir, baseline=baseline, title=title)
    with open(report_dir / "runs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fraction", "seed", "trainer", "status", "reason", "dataset", "labeled", "unlabeled",
                         "test"])
        for o in outcomes:
            s = design.splits[(o.run.fraction, o.run.seed)]
            writer.writerow([o.run.fraction, o.run.seed, o.run.trainer, o.status, o.reason, s.name, len(s.labeled),
                             len(s.unlabeled), design.n_test])
    return path


# ------------------------------------------------------------------------------------------- commands
def _q(text: str) -> str:
    """Shell-quote; a leading ``$VAR/`` stays expandable."""
    m = re.match(r"^\$(\w+)(/.*)?$", text)
    if m and re.fullmatch(r"[\w./%+-]*", m.group(2) or ""):
        return f'"{text}"'
    return shlex.quote(text)


def _line(args: Iterable[str]) -> str:
    return " ".join(_q(str(a)) for a in args)


def commands_script(design: _Design, output_dir: Path, preset: Preset, configuration: str, device: str,
                    num_processes: int, group_regex: Optional[str], test_seed: int, tolerance_mm: float) -> str:
    """The study as a bash script (see the module docstring)."""
    pool_id, pool_name = design.pool
    regex = ["--group-regex", group_regex] if group_regex else []
    use_train = bool(preset.budget)
    lines = [
        "#!/usr/bin/env bash",
        f"# nnunet-ssl benchmark of {design.source_name}: fractions "
        f"{', '.join(fraction_percent(f) for f in sorted({r.fraction for r in design.runs}))}; seeds "
        f"{', '.join(str(s) for s in sorted({r.seed for r in design.runs}))}; trainers "
        f"{', '.join(dict.fromkeys(r.trainer for r in design.runs))}; preset {preset.name}; configuration "
        f"{configuration}; {design.n_test} test and {design.n_pool} training "
        f"{'groups' if group_regex else 'cases'}.",
        "# Needs nnUNet_raw, nnUNet_preprocessed and nnUNet_results exported, the source dataset in $nnUNet_raw and",
        "# nnunet_ssl installed. After the split of the test set, each '(fraction, seed)' block is independent and",
        "# each training in it can go to its own job. Afterwards run the same 'nnunet-ssl benchmark' command",
        "# without --write-commands, with this --output: it evaluates the predictions, writes the run manifests",
        "# and the report (finished models are not retrained).",
        "set -euo pipefail",
        ': "${nnUNet_raw:?}" "${nnUNet_preprocessed:?}" "${nnUNet_results:?}"',
        f"STUDY={shlex.quote(str(output_dir))}",
    ]
    lines += [f"export {k}=\"${{{k}:-{v}}}\"" for k, v in preset.env.items()]
    lines += ["", f"# held-out test set: {design.n_test} of {design.n_test + design.n_pool}, seed {test_seed}, "
                  f"the same for every fraction and seed",
              _line(["nnunet-ssl", "split", "-d", design.source_name, "--labeled", design.n_pool, "--test",
                     design.n_test, "--seed", test_seed, "--id", pool_id, "--name", pool_name.split("_", 1)[1],
                     *regex])]
    test_images = f"$nnUNet_raw/{pool_name}/imagesTs"
    test_labels = f"$nnUNet_raw/{pool_name}/labelsTs"
    shrink = preset.shrink_for(configuration)
    for (fraction, seed), split in sorted(design.splits.items()):
        lines += ["", f"# ---- {fraction_percent(fraction)} labeled, seed {seed}: {len(split.labeled)} labeled, "
                      f"{len(split.unlabeled)} unlabeled -> {split.name}",
                  _line(["nnunet-ssl", "split", "-d", pool_id, "--labeled", fraction_percent(fraction), "--seed", seed,
                         "--id", split.id, "--name", split.name.split("_", 1)[1], *regex]),
                  _line(["nnUNetv2_plan_and_preprocess", "-d", split.id, "-c", configuration, "-np", num_processes,
                         "--verify_dataset_integrity"])]
        if shrink is not None:
            lines.append(_line(["nnunet-ssl", "shrink-plans", "-d", split.id, "-c", configuration, "-o", preset.plans,
                                "--patch", ",".join(map(str, shrink["patch_size"])),
                                "--features", ",".join(map(str, shrink["features_per_stage"])),
                                "--batch-size", shrink["batch_size"]]))
        if split.unlabeled:
            lines.append(_line(["nnunet-ssl", "preprocess-unlabeled", "-d", split.id, "-c", configuration, "-p",
                                preset.plans, "-np", num_processes]))
        for run in (r for r in design.runs if (r.fraction, r.seed) == (fraction, seed)):
            if not split.unlabeled and trainer_needs_unlabeled(run.trainer):
                lines.append(f"# {run.trainer}: {SKIP_REASON}")
                continue
            run_dir = f"$STUDY/{run.relative_dir}"
            final = (f"$nnUNet_results/{split.name}/{run.trainer}__{preset.plans}__{configuration}/fold_{FOLD}/"
                     f"checkpoint_final.pth")
            if use_train:
                train = ["nnunet-ssl", *train_command(split, run.trainer, preset, configuration, device)]
            else:
                train = ["nnUNetv2_train", split.id, configuration, FOLD, "-tr", run.trainer, "-p", preset.plans,
                         "-device", device, "--c"]
            lines += [f"# {run.trainer}",
                      f"[ -f {_q(final)} ] || {_line(train)}",
                      _line(["nnUNetv2_predict", "-i", test_images, "-o", f"{run_dir}/predictions", "-d", split.id,
                             "-c", configuration, "-tr", run.trainer, "-p", preset.plans, "-f", FOLD, "-chk",
                             "checkpoint_final.pth", "-device", device, "-npp", num_processes, "-nps", num_processes,
                             *([] if preset.use_mirroring else ["--disable_tta"])]),
                      _line(["nnunet-ssl", "evaluate", "-pred", f"{run_dir}/predictions", "-ref", test_labels,
                             "-d", split.id, "-o", f"{run_dir}/evaluation", "--tolerance", f"{tolerance_mm:g}",
                             "-np", num_processes])]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- study
def run_study(source: Union[int, str, os.PathLike], output_dir: Union[str, os.PathLike], *,
              fractions: Sequence[Union[str, float]] = DEFAULT_FRACTIONS, seeds: Sequence[int] = (0,),
              trainers: Sequence[str] = ("nnUNetTrainer", "nnUNetTrainerMeanTeacher"),
              test: Union[str, int] = "20%", test_seed: int = 0, configuration: str = "3d_fullres",
              group_regex: Optional[str] = None, id_base: int = 600, preset: Union[str, Preset] = "default",
              device: Optional[str] = None, num_processes: Optional[int] = None, tolerance_mm: float = 1.0,
              baseline: Optional[str] = None, retry_failed: bool = False,
              write_commands: Optional[Union[str, os.PathLike]] = None, report_only: bool = False,
              progress: bool = True) -> StudyResult:
    """Run (or continue) a label-fraction study and write its report; see the module docstring.

    ``source``: id or name of a fully labeled dataset in nnUNet_raw, or a raw dataset folder.
    ``fractions``: labeled fractions of the training pool (``"10%"`` or ``0.1``). ``test``: held-out
    cases (groups), a count or a percentage. ``id_base``: dataset id of the test split; the split
    datasets take the next ids. ``baseline``: reference trainer of the report (default
    ``nnUNetTrainer`` when listed, else the first trainer). ``write_commands``: write the shell
    script there (and ``study.json``) instead of running anything. ``report_only``: rebuild the
    report from the run manifests without running anything.
    """
    preset = get_preset(preset)
    fr = sorted({parse_fraction(f) for f in fractions})
    seeds = sorted({int(s) for s in seeds})
    trainers = list(dict.fromkeys(str(t) for t in trainers))
    if not fr or not seeds or not trainers:
        raise UserError("a study needs at least one fraction, one seed and one trainer")
    if configuration.startswith("3d_cascade"):
        raise UserError("cascade configurations need the low-resolution stage's predictions; benchmark "
                        "3d_fullres, 3d_lowres or 2d")
    if not 1 <= int(id_base) <= 998:
        raise UserError(f"--id-base must be between 1 and 998, got {id_base}")
    output_dir = Path(output_dir).expanduser().resolve()
    baseline = baseline or ("nnUNetTrainer" if "nnUNetTrainer" in trainers else trainers[0])
    num_processes = int(num_processes or preset.num_processes)
    if write_commands is not None:
        device = device or preset.device or "cuda"
    else:
        import torch
        device = device or preset.device or ("cuda" if torch.cuda.is_available() else "cpu")
    source_name, source_folder = _resolve_source(source)
    settings = {"source": source_name, "test_seed": int(test_seed), "group_regex": group_regex,
                "configuration": configuration, "id_base": int(id_base), "preset": preset.as_dict(),
                "tolerance_mm": float(tolerance_mm)}
    design, record = _design(source_name, source_folder, output_dir, fr, seeds, trainers, test, int(test_seed),
                             group_regex, int(id_base), settings)
    output_dir.mkdir(parents=True, exist_ok=True)
    title = f"{design.source_name}: label-fraction benchmark (preset {preset.name}, {configuration})"
    with _study_lock(output_dir):
        if report_only:
            outcomes = _outcomes_from_manifests(design, output_dir)
            return StudyResult(output_dir, outcomes, write_study_report(design, outcomes, output_dir, baseline, title))
        _check_dataset_ids(design, output_dir)
        write_json_atomic(output_dir / STUDY_FILE, record)
        if write_commands is not None:
            path = Path(write_commands).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(commands_script(design, output_dir, preset, configuration, device, num_processes,
                                           group_regex, int(test_seed), float(tolerance_mm)))
            tmp.chmod(0o755)
            os.replace(tmp, path)
            return StudyResult(output_dir, [RunOutcome(r, "planned", "", design.splits[(r.fraction, r.seed)].name)
                                            for r in design.runs], None, path)
        ex = _Executor(design, output_dir, preset, configuration, device, num_processes, group_regex,
                       int(test_seed), float(tolerance_mm), retry_failed)
        outcomes = _execute_all(ex, design.runs, progress)
        return StudyResult(output_dir, outcomes, write_study_report(design, outcomes, output_dir, baseline, title))


def _execute_all(ex: _Executor, runs: Sequence[Run], progress: bool) -> List[RunOutcome]:
    """Every run in order, with a progress bar over runs and one line per step."""
    from tqdm import tqdm

    ex.make_test_split()
    outcomes: List[RunOutcome] = []
    with tqdm(total=len(runs), desc="benchmark", unit="run", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        ex.bar = bar
        for i, run in enumerate(runs, 1):
            label = f"[{i}/{len(runs)}] {fraction_percent(run.fraction)} seed {run.seed} {run.trainer}"

            def say(text: str, label: str = label) -> None:
                if progress:
                    bar.write(f"{label}: {text}")

            bar.set_postfix_str(run.trainer)
            outcome = ex.execute(run, say)
            outcomes.append(outcome)
            extra = f" ({outcome.reason})" if outcome.reason else ""
            say(f"{outcome.status}{extra}" + (f" in {outcome.seconds:.0f} s" if outcome.seconds >= 1 else ""))
            bar.update()
    shutil.rmtree(ex.tmp, ignore_errors=True)
    return outcomes
