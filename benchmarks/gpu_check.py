"""GPU check: every trainer for a few iterations on nnU-Net's default plans, time and memory against
nnUNetTrainer in the same run.

On CUDA, each trainer runs in its own process (an out-of-memory error ends its row, not the check):
``--warmup`` then ``--iters`` training iterations of nnU-Net's loop (its data loading and
augmentation, the trainer's ``train_step``: autocast and grad scaler; ``torch.compile`` as nnU-Net
decides, i.e. on unless ``nnUNet_compile`` says otherwise) on nnU-Net's default plans
(``nnUNetPlans``, ``-c 3d_fullres``) of a dataset. One table: seconds per timed iteration and peak
``torch.cuda.max_memory_allocated`` over the whole run (warm-up and compilation included: an
out-of-memory error can happen there too), both as ratios to nnUNetTrainer's, whether every loss was
finite, and the trainer's declared ``activation_factor`` (which the memory ratio should not exceed by
much: on a GPU the weights, optimizer state and cuDNN workspaces count too).

Data: ``--source`` (default: Dataset904_HippocampusDev under /work/shared/data, fully labeled) is split
into ``--labeled`` labeled cases and unlabeled images (nnunet_ssl.data.split), planned and
preprocessed with nnU-Net's defaults, its unlabeled images preprocessed with the same plans, all in
``--workdir`` (a temporary folder, removed afterwards, unless given; a given one is reused on a
rerun). ``--tiny`` generates a small synthetic dataset instead; ``-d ID`` takes a semi-supervised
dataset already in the nnU-Net folders of ``--workdir`` (its nnUNetPlans are made if missing).

Without CUDA it says so in one sentence and exits 0. ``--device cpu`` runs the same table on the CPU
(memory: peak live tensor bytes of one extra step, ``activation_memory.LiveTensorBytes``, since the
CPU allocator keeps no statistics):

    python benchmarks/gpu_check.py                                   # CUDA, Hippocampus, method trainers
    python benchmarks/gpu_check.py --trainers nnUNetTrainerDMPF --iters 50 --workdir /scratch/gpucheck
    python benchmarks/gpu_check.py --device cpu --iters 2 --tiny --trainers nnUNetTrainerMeanTeacher
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import finish_loaders  # noqa: E402

BASELINE = "nnUNetTrainer"
DEFAULT_SOURCE = "/work/shared/data/Dataset904_HippocampusDev"
DATASET_ID, TINY_ID = 904, 993
NO_CUDA = ("gpu_check measures GPU time and memory, but PyTorch sees no CUDA device here; nothing was run "
           "(`--device cpu --iters 2` runs the same table on the CPU).")


def _set_paths(workdir: str) -> None:
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[var] = os.path.join(workdir, var)
        os.makedirs(os.environ[var], exist_ok=True)


def dataset_name(tiny: bool) -> str:
    return f"Dataset{TINY_ID}_GPUCheckTiny" if tiny else f"Dataset{DATASET_ID}_GPUCheck"


def prepare(args) -> int:
    """Raw dataset (split or generated, unless ``-d``), nnU-Net's default plans and preprocessing, unlabeled
    cases; returns the dataset id. Every step is skipped when its result is present."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_ssl.data.unlabeled import preprocess_unlabeled
    from nnunet_ssl.pipeline import plan_and_preprocess

    if args.dataset is not None:
        did, name = args.dataset, maybe_convert_to_dataset_name(args.dataset)
    else:
        name, did = dataset_name(args.tiny), TINY_ID if args.tiny else DATASET_ID
    raw = os.path.join(os.environ["nnUNet_raw"], name)
    if not os.path.isfile(os.path.join(raw, "dataset.json")):
        if args.dataset is not None:
            raise SystemExit(f"gpu_check: -d {args.dataset}: {raw}/dataset.json not found")
        if args.tiny:
            from nnunet_ssl.data.synthetic import SyntheticSpec, generate_dataset

            generate_dataset(raw, SyntheticSpec(num_labeled=4, num_unlabeled=4, num_test=0, shape=(20, 20, 20), seed=3),
                             overwrite=True)
        else:
            from nnunet_ssl.data.split import make_split

            make_split(args.source, raw, args.labeled, seed=0)
            with open(os.path.join(raw, "dataset.json")) as f:
                meta = json.load(f)
            print(f"{name}: {meta['numTraining']} labeled cases from {args.source}, the others unlabeled", flush=True)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], name)
    if not os.path.isfile(os.path.join(pre, "nnUNetPlans.json")):
        print(f"planning and preprocessing {name} with nnU-Net's defaults ...", flush=True)
        plan_and_preprocess(did, (args.configuration,), args.num_processes, verify=False)
    preprocess_unlabeled(did, args.configuration, "nnUNetPlans", num_processes=args.num_processes, progress=False)
    return did


def worker(args) -> dict:
    """One trainer in this process; returns a JSON-able row."""
    import math

    import numpy as np
    import torch

    from nnunet_ssl.errors import UserError
    from nnunet_ssl.runner import build_trainer

    torch.manual_seed(0)
    device = torch.device(args.device)
    row = {"trainer": args.worker, "status": "ok"}
    t = build_trainer(args.dataset, args.configuration, "all", args.worker, "nnUNetPlans",
                      args.device, budget={"num_epochs": 1000, "num_iterations_per_epoch": 1000})
    row["factor"] = float(getattr(type(t), "activation_factor", 1))
    t.disable_checkpointing = True
    losses = []
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t.on_train_start()
        t.on_train_epoch_start()
        row["compiled"] = bool(t._do_i_compile())

        def step():
            out = t.train_step(next(t.dataloader_train))
            losses.append(float(np.asarray(out["loss"]).mean()))

        for _ in range(args.warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(args.iters):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            row["peak_bytes"] = torch.cuda.max_memory_allocated(device)
        row["s_per_iter"] = (time.perf_counter() - start) / args.iters
        if device.type != "cuda":
            from activation_memory import LiveTensorBytes

            with LiveTensorBytes() as live:
                step()
            row["peak_bytes"] = live.peak
    except torch.cuda.OutOfMemoryError:
        row["status"] = "out of memory"
    except UserError as e:  # e.g. a non-finite loss, refused before the optimizer step
        row["status"] = str(e).split(";")[0][:160]
    finally:
        finish_loaders(t)
    row["finite"] = bool(losses) and all(math.isfinite(v) for v in losses)
    row["iterations"] = len(losses)
    return row


def default_trainers() -> tuple[list, list]:
    """(method trainers that run on any dataset, those that need image-level category labels)."""
    from nnunet_ssl.catalog import is_ablation, shipped_trainers

    methods = {n: c for n, c in shipped_trainers().items() if not is_ablation(n)}
    return ([n for n, c in methods.items() if not getattr(c, "requires_category_labels", False)],
            [n for n, c in methods.items() if getattr(c, "requires_category_labels", False)])


def run_worker(name: str, args, workdir: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--workdir", workdir, "--device", args.device,
           "--iters", str(args.iters), "--warmup", str(args.warmup), "-c", args.configuration, "-d", str(args.dataset)]
    env = dict(os.environ)
    if args.device == "cpu":
        env["nnUNet_n_proc_DA"] = "0"  # augmentation in the worker itself
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        status = "out of memory" if "OutOfMemoryError" in proc.stderr else f"failed: {tail[:160]}"
        return {"trainer": name, "status": status, "finite": False}
    return json.loads(line[0][len("RESULT "):])


def table(rows: list, device: str) -> list:
    base = next((r for r in rows if r["trainer"] == BASELINE and r["status"] == "ok"), None)
    unit = "GB" if device == "cuda" else "MB"
    scale = 2 ** 30 if device == "cuda" else 2 ** 20
    memory = "peak max_memory_allocated" if device == "cuda" else "peak live tensors"
    out = [f"| trainer | activation_factor | s/iter | ratio | {memory} [{unit}] | ratio | finite loss | status |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok" or "s_per_iter" not in r:
            out.append(f"| {r['trainer']} | {r.get('factor', '')} | | | | | {'yes' if r.get('finite') else 'no'} | "
                       f"{r['status']} |")
            continue
        ratio_t = f"{r['s_per_iter'] / base['s_per_iter']:.2f}" if base else ""
        ratio_m = f"{r['peak_bytes'] / base['peak_bytes']:.2f}" if base else ""
        out.append(f"| {r['trainer']} | {r['factor']:g} | {r['s_per_iter']:.3f} | {ratio_t} | "
                   f"{r['peak_bytes'] / scale:.2f} | {ratio_m} | {'yes' if r['finite'] else '**no**'} | ok |")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per trainer (default 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default: 5 on CUDA, 1 on CPU)")
    p.add_argument("--trainers", nargs="*", default=None,
                   help="default: every method trainer that needs no category labels")
    p.add_argument("--source", default=DEFAULT_SOURCE, help="a fully labeled nnU-Net raw dataset")
    p.add_argument("--labeled", default="20%", help="labeled cases of --source (count or percentage; default 20%%)")
    p.add_argument("--tiny", action="store_true", help="a tiny generated dataset instead of --source (tests)")
    p.add_argument("-d", dest="dataset", type=int, default=None,
                   help="a dataset already in --workdir's nnU-Net folders instead of --source")
    p.add_argument("--workdir", default=None, help="nnU-Net folders (default: a temporary folder, removed at the end)")
    p.add_argument("-c", dest="configuration", default="3d_fullres")
    p.add_argument("-np", dest="num_processes", type=int, default=2, help="processes for preprocessing")
    p.add_argument("--out", default=None, help="also write the table (Markdown) here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = 5 if args.device == "cuda" else 1
    if args.iters < 1 or args.warmup < 0:
        p.error("--iters must be >= 1 and --warmup >= 0")

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    if args.worker:
        _set_paths(args.workdir)
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0

    workdir = os.path.abspath(args.workdir) if args.workdir else tempfile.mkdtemp(prefix="nnunet_ssl_gpu_check_")
    try:
        _set_paths(workdir)
        os.environ.setdefault("nnUNet_def_n_proc", "1")
        if args.dataset is None and not args.tiny and not os.path.isfile(os.path.join(args.source, "dataset.json")):
            p.error(f"--source {args.source} is not an nnU-Net raw dataset (no dataset.json)")
        args.dataset = prepare(args)
        runnable, needs_categories = default_trainers()
        names = [BASELINE] + [n for n in (args.trainers or runnable) if n != BASELINE]
        rows = []
        for name in names:
            print(f"{name}: {args.warmup} + {args.iters} iterations on {args.device} ...", flush=True)
            rows.append(run_worker(name, args, workdir))
            print(f"  {rows[-1]['status']}", flush=True)
        compiled = "on" if any(r.get("compiled") for r in rows) else "off"
        lines = [f"GPU check on {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "")
                 + f": dataset {args.dataset}, nnUNetPlans {args.configuration}, {args.warmup} warm-up + {args.iters} "
                 f"timed iterations per trainer, torch.compile {compiled} (nnU-Net's choice), ratios to {BASELINE}",
                 ""]
        lines += table(rows, args.device)
        if not args.trainers and needs_categories:
            lines += ["", f"Not run (they need image-level category labels): {', '.join(needs_categories)}."]
        print("\n".join(lines))
        if args.out:
            with open(args.out, "w") as f:
                f.write("\n".join(lines) + "\n")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
