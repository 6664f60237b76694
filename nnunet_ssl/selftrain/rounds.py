"""Self-training rounds with a consensus or stability filter, on unchanged nnU-Net (``nnunet-ssl selftrain``).

Round ``r`` (1 … N), every step resumable:

1. **teachers** — train, or reuse when ``checkpoint_final.pth`` exists, each teacher model: a trainer and
   a fold on the source dataset (round 1), plus the student of round ``r - 1`` (later rounds);
2. **predict** — every unlabeled case (``imagesUnlabeled`` of the source; unreadable cases are named and
   left out) with nnU-Net's predictor, saving class probabilities;
3. **filter** — average the teachers' probabilities into the pseudo-label, score each case (consensus:
   mean Dice of each teacher's mask with the pseudo-label; stability: Dice with the previous round's
   pseudo-label, the consensus score in round 1) and accept cases (:mod:`nnunet_ssl.pseudo.consensus`);
4. **dataset** — write the round's raw dataset (:mod:`nnunet_ssl.selftrain.dataset`): labeled cases plus
   accepted pseudo-labeled ones (marked in ``pseudoLabels.json``), the rejected ones as unlabeled;
5. **preprocess** — the source's plans moved to it (nnU-Net's ``move_plans_between_datasets``, so every
   round trains on identical plans), nnU-Net's preprocessing, the source's folds with the pseudo-labeled
   cases added to every training part (validation stays on real labels), and the unlabeled cases when
   the student uses them;
6. **student** — train the student trainer on it (the same budget as the teachers);
7. **evaluate** — validation Dice from nnU-Net's validation of the student and, when test labels exist,
   test Dice of its predictions of ``imagesTs``.

Training runs in ``nnunet-ssl train`` subprocesses (logs under the work folder). Teachers and students
may be any trainer of this package or nnU-Net's. ``report.md``, ``rounds.csv`` and one agreement
histogram per round summarise the run.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_ssl.errors import UserError
from nnunet_ssl.utils.files import output_to_log, write_json_atomic

SETTINGS_FILE = "selftrain.json"
FILTERS = ("consensus", "stability", "none")


@dataclass(frozen=True)
class Model:
    """A trained (or to be trained) nnU-Net model: dataset, trainer, fold (plans and configuration are
    the run's)."""
    dataset: str
    trainer: str
    fold: str

    @property
    def tag(self) -> str:
        return f"{self.dataset}__{self.trainer}__fold_{self.fold}"


def parse_teacher(spec: str) -> Tuple[str, str]:
    """``TRAINER`` or ``TRAINER:FOLD`` (fold 0-4 or 'all', default 'all') → (trainer, fold)."""
    trainer, _, fold = spec.partition(":")
    fold = fold or "all"
    if not trainer.startswith("nnUNetTrainer"):
        raise UserError(f"teacher {spec!r}: expected a trainer class name (nnUNetTrainer...), optionally :FOLD")
    if fold != "all" and not (fold.isdigit() and int(fold) >= 0):
        raise UserError(f"teacher {spec!r}: fold must be a non-negative integer or 'all', got {fold!r}")
    return trainer, fold


@dataclass
class Settings:
    source: str
    configuration: str
    plans: str
    teachers: List[str]
    student: str
    fold: str
    filter: str
    threshold: float
    drop: float
    epochs: Optional[int]
    iters: Optional[int]
    device: str
    id_base: int
    student_init: str
    test_from: str = ""
    """Raw dataset (id, name or folder) whose imagesTs/labelsTs are the test set ('' = the source)."""
    tta: bool = True
    """Mirroring test-time augmentation in every prediction (nnU-Net's default; off = ``--disable_tta``)."""

    def compare(self, other: "Settings") -> List[str]:
        a, b = asdict(self), asdict(other)
        return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b[k]]


def _free_id_block(n: int, start: int = 700) -> int:
    """The first id ``>= start`` such that ids ``id … id + n - 1`` are used by no dataset in nnU-Net's folders."""
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw, nnUNet_results

    used = set()
    for var in (nnUNet_raw, nnUNet_preprocessed, nnUNet_results):
        folder = var.get() if var.is_set() else None
        if folder and os.path.isdir(folder):
            used |= {int(d[7:10]) for d in os.listdir(folder) if d.startswith("Dataset") and d[7:10].isdigit()}
    i = start
    while any(i + k in used for k in range(n)):
        i += 1
    if i + n - 1 > 999:
        raise UserError("no free block of dataset ids below 1000 for the self-training rounds; pass --id-base")
    return i


class SelfTraining:
    """One self-training run in ``workdir`` (see the module doc)."""

    def __init__(self, workdir: str, settings: Settings, rounds: int, num_processes: int = 1,
                 say: Callable[[str], None] = print):
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

        from nnunet_ssl.data.unlabeled import raw_dataset_folder

        self.work = Path(workdir)
        self.s = settings
        self.rounds = int(rounds)
        self.num_processes = int(num_processes)
        self.say = say
        self.source_name = maybe_convert_to_dataset_name(settings.source)
        self.source_raw = raw_dataset_folder(self.source_name)
        with open(os.path.join(self.source_raw, "dataset.json")) as f:
            self.dataset_json = json.load(f)
        if "regions_class_order" in self.dataset_json:
            raise UserError("selftrain averages class probabilities; region-based datasets are not supported")
        self.ending = self.dataset_json["file_ending"]
        self.test_raw = Path(self.source_raw)
        if settings.test_from:
            self.test_raw = Path(settings.test_from) if os.path.isdir(settings.test_from) else \
                Path(raw_dataset_folder(maybe_convert_to_dataset_name(settings.test_from)))
            if not (self.test_raw / "labelsTs").is_dir():
                raise UserError(f"--test-from {settings.test_from}: {self.test_raw} has no labelsTs folder")
        self.labels = sorted({int(v) for k, v in self.dataset_json["labels"].items()
                              if k != "ignore" and not isinstance(v, (list, tuple)) and int(v) > 0})

    # ------------------------------------------------------------------ names
    def round_dataset(self, r: int) -> str:
        base = self.source_name.split("_", 1)[1]
        return f"Dataset{self.s.id_base + r - 1:03d}_{base}ST{r}"

    def round_dir(self, r: int) -> Path:
        return self.work / f"round_{r}"

    def owner(self, r: int) -> dict:
        return {"workdir": str(self.work.resolve()), "round": r, "source": self.source_name}

    def teachers_of(self, r: int) -> List[Model]:
        base = [Model(self.source_name, *parse_teacher(t)) for t in self.s.teachers]
        return base if r == 1 else base + [self.student_of(r - 1)]

    def student_of(self, r: int) -> Model:
        return Model(self.round_dataset(r), self.s.student, self.s.fold)

    def model_dir(self, m: Model) -> Path:
        from nnunet_ssl.pipeline import model_folder

        return Path(model_folder(m.dataset, m.trainer, self.s.plans, self.s.configuration))

    def trained(self, m: Model) -> bool:
        return (self.model_dir(m) / f"fold_{m.fold}" / "checkpoint_final.pth").is_file()

    # ------------------------------------------------------------------ steps
    def _done(self, r: int) -> dict:
        path = self.round_dir(r) / "done.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _mark(self, r: int, step: str, value=True) -> None:
        done = self._done(r)
        done[step] = value
        write_json_atomic(self.round_dir(r) / "done.json", done)

    def train(self, m: Model, log: Path, pretrained: Optional[str] = None) -> None:
        from nnunet_ssl.benchmark.study import run_logged

        if self.trained(m):
            return
        self.say(f"training {m.trainer} (fold {m.fold}) on {m.dataset}")
        cmd = [sys.executable, "-m", "nnunet_ssl.cli", "train", m.dataset, self.s.configuration, m.fold,
               "-tr", m.trainer, "-p", self.s.plans, "-device", self.s.device]
        cmd += ["--epochs", str(self.s.epochs)] if self.s.epochs else []
        cmd += ["--iters", str(self.s.iters)] if self.s.iters else []
        cmd += ["-pretrained_weights", pretrained] if pretrained else []
        rc, reason = run_logged(cmd, dict(os.environ), log)
        if rc != 0:
            raise UserError(f"training {m.trainer} on {m.dataset} failed: {reason}")

    def usable_unlabeled(self) -> Dict[str, List[str]]:
        """Unlabeled cases of the source that can be read; bad ones are named once and left out."""
        from nnunet_ssl.data.integrity import BadCase, check_compressed_files, check_finite, first_line
        from nnunet_ssl.data.unlabeled import find_unlabeled_cases

        record = self.work / "unlabeled_cases.json"
        cases = find_unlabeled_cases(self.source_raw, self.dataset_json)
        if record.is_file():
            known = json.loads(record.read_text())
            if sorted(known["usable"] + list(known["bad"])) == sorted(cases):
                return {c: cases[c] for c in known["usable"]}
        from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
        from tqdm import tqdm

        rw = determine_reader_writer_from_dataset_json(self.dataset_json, next(iter(cases.values()))[0])()
        bad = {}
        for case, files in tqdm(sorted(cases.items()), desc="checking unlabeled images", unit="case",
                                disable=len(cases) < 20):
            try:
                check_compressed_files(files)
                data, _ = rw.read_images(files)
                check_finite(data, "image")
            except BadCase as e:
                bad[case] = str(e)
            except Exception as e:  # noqa: BLE001 - any unreadable file is a bad case, named below
                bad[case] = f"cannot be read: {first_line(str(e))}"
        for case, why in bad.items():
            self.say(f"WARNING: unlabeled case {case} is left out: {why}")
        usable = sorted(set(cases) - set(bad))
        if not usable:
            raise UserError(f"none of the {len(cases)} unlabeled cases of {self.source_name} can be read")
        write_json_atomic(record, {"usable": usable, "bad": bad})
        return {c: cases[c] for c in usable}

    def predict(self, r: int, m: Model, unlabeled: Dict[str, List[str]]) -> Path:
        from nnunet_ssl.benchmark.study import replace_dir
        from nnunet_ssl.pipeline import predict_folder

        out = self.round_dir(r) / "predictions" / m.tag
        if all((out / f"{c}.npz").is_file() and (out / f"{c}{self.ending}").is_file() for c in unlabeled):
            return out
        inputs = self.work / "unlabeled_inputs"
        if not inputs.is_dir():
            tmp = self.work / "unlabeled_inputs.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for files in unlabeled.values():
                for f in files:
                    os.symlink(os.path.abspath(f), tmp / os.path.basename(f))
            os.replace(tmp, inputs)
        self.say(f"round {r}: {m.trainer} (fold {m.fold}, {m.dataset}) predicts {len(unlabeled)} unlabeled cases")
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        log = self.round_dir(r) / "logs" / f"predict_{m.tag}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with output_to_log(log):
            predict_folder(str(self.model_dir(m)), str(inputs), str(partial), folds=(m.fold,), device=self.s.device,
                           use_mirroring=self.s.tta,
                           num_processes=self.num_processes if self.num_processes > 1 else 0,
                           save_probabilities=True)
        replace_dir(partial, out)
        return out

    def filter(self, r: int, predictions: Sequence[Path], cases: Sequence[str]) -> Dict[str, dict]:
        """Aggregate, score and accept; writes ``pseudo/<case><ending>`` and ``scores.json``."""
        import pickle

        from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
        from tqdm import tqdm

        from nnunet_ssl.pseudo.consensus import (accept_by_threshold, accept_most_stable, aggregate_probabilities,
                                                 consensus_score, label_agreement)

        rd = self.round_dir(r)
        scores_file = rd / "scores.json"
        if scores_file.is_file():
            return json.loads(scores_file.read_text())
        pseudo = rd / "pseudo"
        pseudo.mkdir(parents=True, exist_ok=True)
        rw = None
        rows: Dict[str, dict] = {}
        previous = self.round_dir(r - 1) / "pseudo"
        for case in tqdm(cases, desc=f"round {r}: pseudo-labels", unit="case", disable=len(cases) < 20):
            probs = [np.load(p / f"{case}.npz")["probabilities"] for p in predictions]
            aggregated = aggregate_probabilities(probs)
            label = np.argmax(aggregated, 0).astype(np.uint8)
            masks = [np.argmax(p, 0) for p in probs]
            del probs, aggregated
            row = {"consensus": consensus_score(masks, label, self.labels)}
            with open(predictions[0] / f"{case}.pkl", "rb") as f:
                properties = pickle.load(f)
            if rw is None:
                rw = determine_reader_writer_from_dataset_json(self.dataset_json,
                                                               str(predictions[0] / f"{case}{self.ending}"))()
            target = pseudo / f"{case}{self.ending}"
            tmp = pseudo / f".tmp_{case}{self.ending}"
            rw.write_seg(label, str(tmp), properties)
            os.replace(tmp, target)
            if r > 1 and (previous / f"{case}{self.ending}").is_file():
                old, _ = rw.read_seg(str(previous / f"{case}{self.ending}"))
                row["stability"] = label_agreement(old[0], label, self.labels)
            rows[case] = row
        key = "stability" if self.s.filter == "stability" and r > 1 else "consensus"
        score = {c: v.get(key, v["consensus"]) for c, v in rows.items()}
        if self.s.filter == "consensus":
            accepted = accept_by_threshold(score, self.s.threshold)
        elif self.s.filter == "stability":
            accepted = accept_most_stable(score, self.s.drop)
        else:
            accepted = {c: True for c in score}
        for c in rows:
            rows[c].update(score=score[c], accepted=accepted[c])
        write_json_atomic(scores_file, rows)
        self._histogram(r, rows, key)
        return rows

    def _histogram(self, r: int, rows: Dict[str, dict], key: str) -> None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5, 3.2))
        ax = fig.add_subplot(111)
        acc = [v["score"] for v in rows.values() if v["accepted"]]
        rej = [v["score"] for v in rows.values() if not v["accepted"]]
        bins = np.linspace(0, 1, 21)
        ax.hist([acc, rej], bins=bins, stacked=True, label=[f"accepted ({len(acc)})", f"rejected ({len(rej)})"],
                color=["tab:green", "tab:red"])
        if self.s.filter == "consensus":
            ax.axvline(self.s.threshold, color="k", ls="--", lw=1)
        ax.set_xlabel(f"{key} score (mean Dice)")
        ax.set_ylabel("unlabeled cases")
        ax.set_title(f"round {r}: {self.s.filter} filter")
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        fig.savefig(self.round_dir(r) / "agreement.png", dpi=110)

    def write_dataset(self, r: int, rows: Dict[str, dict], unlabeled: Dict[str, List[str]],
                      teachers: Sequence[Model]) -> None:
        from nnunet_ssl.data.unlabeled import raw_dataset_folder
        from nnunet_ssl.selftrain.dataset import case_files, owned_by, write_round_dataset

        target = raw_dataset_folder(self.round_dataset(r))
        if self._done(r).get("dataset") and owned_by(target, self.owner(r)):
            return
        accepted = sorted(c for c, v in rows.items() if v["accepted"])
        pseudo = {c: str(self.round_dir(r) / "pseudo" / f"{c}{self.ending}") for c in accepted}
        info = {c: {"round": r, "score": rows[c]["score"], "teachers": [t.tag for t in teachers]} for c in accepted}
        labeled = case_files(os.path.join(self.source_raw, "imagesTr"), self.ending)
        write_round_dataset(self.source_raw, target, self.owner(r), labeled, unlabeled, pseudo, info,
                            self.dataset_json)
        self._mark(r, "dataset")

    def preprocess(self, r: int, rows: Dict[str, dict]) -> None:
        from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset
        from nnunetv2.experiment_planning.plans_for_pretraining.move_plans_between_datasets import \
            move_plans_between_datasets
        from nnunetv2.paths import nnUNet_preprocessed

        from nnunet_ssl.benchmark.study import trainer_needs_unlabeled
        from nnunet_ssl.data.integrity import FINGERPRINT_FILE
        from nnunet_ssl.data.unlabeled import preprocess_unlabeled, raw_dataset_folder
        from nnunet_ssl.selftrain.dataset import splits_with_pseudo_labels

        if self._done(r).get("preprocess"):
            return
        name = self.round_dataset(r)
        src, dst = Path(nnUNet_preprocessed.get()) / self.source_name, Path(nnUNet_preprocessed.get()) / name
        if not (src / f"{self.s.plans}.json").is_file():
            raise UserError(f"{src / (self.s.plans + '.json')} not found: plan and preprocess the source first "
                            f"(nnUNetv2_plan_and_preprocess -d {self.source_name})")
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(os.path.join(raw_dataset_folder(name), "dataset.json"), dst / "dataset.json")
        if (src / FINGERPRINT_FILE).is_file():
            shutil.copyfile(src / FINGERPRINT_FILE, dst / FINGERPRINT_FILE)
        move_plans_between_datasets(self.source_name, name, self.s.plans, self.s.plans)
        self.say(f"round {r}: preprocessing {name}")
        log = self.round_dir(r) / "logs" / "preprocess.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with output_to_log(log):
            preprocess_dataset(int(name[7:10]), self.s.plans, (self.s.configuration,), (self.num_processes,),
                               show_progress_bar=False)
        accepted = sorted(c for c, v in rows.items() if v["accepted"])
        if (src / "splits_final.json").is_file():
            splits = splits_with_pseudo_labels(json.loads((src / "splits_final.json").read_text()), accepted)
            write_json_atomic(dst / "splits_final.json", splits)
        elif self.s.fold != "all":
            raise UserError(f"{self.source_name} has no splits_final.json for fold {self.s.fold}; train a teacher "
                            f"on that fold first (nnU-Net writes the folds) or use fold 'all'")
        if trainer_needs_unlabeled(self.s.student) and len(accepted) < len(rows):
            preprocess_unlabeled(name, self.s.configuration, self.s.plans, self.num_processes, progress=False)
        self._mark(r, "preprocess")

    def test_dice(self, m: Model, out: Path) -> Optional[float]:
        """Mean foreground Dice of ``m`` on the source's imagesTs against labelsTs (None without them)."""
        from nnunet_ssl.benchmark.study import replace_dir
        from nnunet_ssl.evaluation.folders import SUMMARY_JSON, evaluate_folders
        from nnunet_ssl.pipeline import predict_folder

        images, labels = self.test_raw / "imagesTs", self.test_raw / "labelsTs"
        if not (images.is_dir() and labels.is_dir()):
            return None
        summary = out / "evaluation" / SUMMARY_JSON
        if not summary.is_file():
            partial = out.with_name(out.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            with output_to_log(partial / "predict.log"):
                predict_folder(str(self.model_dir(m)), str(images), str(partial / "predictions"), folds=(m.fold,),
                               device=self.s.device, use_mirroring=self.s.tta,
                               num_processes=self.num_processes if self.num_processes > 1 else 0)
            evaluate_folders(partial / "predictions", labels, self.dataset_json["labels"], self.ending,
                             num_processes=self.num_processes, output_dir=partial / "evaluation", progress=False)
            replace_dir(partial, out)
        return float(json.loads(summary.read_text())["overall"]["dice"]["mean"])

    def validation_dice(self, m: Model) -> Optional[float]:
        path = self.model_dir(m) / f"fold_{m.fold}" / "validation" / "summary.json"
        if not path.is_file():
            return None
        return float(json.loads(path.read_text())["foreground_mean"]["Dice"])

    # ------------------------------------------------------------------ the run
    def run(self) -> List[dict]:
        unlabeled = self.usable_unlabeled()
        results: List[dict] = []
        baseline = Model(self.source_name, *parse_teacher(self.s.teachers[0]))
        for r in range(1, self.rounds + 1):
            rd = self.round_dir(r)
            rd.mkdir(parents=True, exist_ok=True)
            teachers = self.teachers_of(r)
            for t in teachers:
                self.train(t, self.work / "logs" / f"train_{t.tag}.log")
            if r == 1:
                results.append({"round": 0, "model": baseline.tag, "accepted": 0, "unlabeled": len(unlabeled),
                                "mean_score": None, "val_dice": self.validation_dice(baseline),
                                "test_dice": self.test_dice(baseline, self.work / "round_0_test")})
            preds = [self.predict(r, t, unlabeled) for t in teachers]
            rows = self.filter(r, preds, sorted(unlabeled))
            self.write_dataset(r, rows, unlabeled, teachers)
            self.preprocess(r, rows)
            student = self.student_of(r)
            init = None
            if self.s.student_init == "previous":
                prev = self.student_of(r - 1) if r > 1 else baseline
                init = str(self.model_dir(prev) / f"fold_{prev.fold}" / "checkpoint_final.pth")
            self.train(student, rd / "logs" / "train_student.log", init)
            accepted = [v for v in rows.values() if v["accepted"]]
            results.append({"round": r, "model": student.tag, "accepted": len(accepted), "unlabeled": len(rows),
                            "mean_score": float(np.mean([v["score"] for v in rows.values()])),
                            "val_dice": self.validation_dice(student),
                            "test_dice": self.test_dice(student, rd / "test")})
            self.write_report(results)
        return results

    def write_report(self, results: Sequence[dict]) -> None:
        fields = ["round", "model", "accepted", "unlabeled", "mean_score", "val_dice", "test_dice"]
        tmp = self.work / "rounds.csv.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for row in results:
                w.writerow({k: row.get(k) for k in fields})
        os.replace(tmp, self.work / "rounds.csv")

        def fmt(v):
            return "–" if v is None else f"{v:.3f}"

        s = self.s
        rule = {"consensus": f"consensus ≥ {s.threshold:g}", "stability": f"drop the {s.drop:.0%} least stable",
                "none": "accept all"}[s.filter]
        lines = [f"# Self-training on {self.source_name}", "",
                 f"Configuration {s.configuration}, plans {s.plans}, fold {s.fold}; teachers {', '.join(s.teachers)}; "
                 f"student {s.student}; filter: {rule}; budget: "
                 f"{s.epochs or 'trainer default'} epochs × {s.iters or 'default'} iterations per model.", "",
                 "| round | model | accepted / unlabeled | mean score | validation Dice | test Dice |",
                 "|---|---|---|---|---|---|"]
        for row in results:
            acc = "–" if row["round"] == 0 else f"{row['accepted']} / {row['unlabeled']}"
            lines.append(f"| {row['round']} | {row['model']} | {acc} | {fmt(row['mean_score'])} | "
                         f"{fmt(row['val_dice'])} | {fmt(row['test_dice'])} |")
        lines += ["", "Round 0 is the first teacher alone. Validation Dice: nnU-Net's validation of the model's fold "
                  f"(real labels only). Test Dice: mean foreground Dice on {self.test_raw.name}'s imagesTs/labelsTs. "
                  "Agreement histograms: round_<r>/agreement.png; per-case scores: round_<r>/scores.json."]
        write_text = self.work / "report.md.tmp"
        write_text.write_text("\n".join(lines) + "\n")
        os.replace(write_text, self.work / "report.md")


def start(workdir: str, settings: Settings, rounds: int, num_processes: int = 1,
          say: Callable[[str], None] = print) -> SelfTraining:
    """A run in ``workdir``: new (settings recorded; a free id block chosen when ``id_base`` is 0) or
    resumed (the recorded settings must match, except the number of rounds, which may grow)."""
    path = Path(workdir) / SETTINGS_FILE
    if path.is_file():
        old = Settings(**json.loads(path.read_text()))
        if settings.id_base == 0:
            settings.id_base = old.id_base
        diff = old.compare(settings)
        if diff:
            raise UserError(f"{workdir} holds a self-training run with other settings ({'; '.join(diff)}); use "
                            f"another work folder")
    else:
        if settings.id_base == 0:
            settings.id_base = _free_id_block(rounds)
        Path(workdir).mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, asdict(settings))
    return SelfTraining(workdir, settings, rounds, num_processes, say)
