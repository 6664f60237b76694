"""Time per iteration and peak memory of every trainer against nnUNetTrainer, in one run.

Each trainer runs in its own process on the demo dataset with CPU plans (32³ patches, features
8/16/32, batch 2, unlabeled batch 2); the trainers that need image-level category labels run on the
2D RGB demo (``nnunet-ssl demo --dim 2``: 64² patches, batch 4) against an nnUNetTrainer on that
same dataset. Two timings per trainer:

- ``step``: the training step alone, on one cached labeled and one cached unlabeled batch
  (forward, backward, optimizer, EMA/tracker updates): what the method's compute costs;
- ``step+data``: the real loop with nnU-Net's augmentation in the main process
  (``nnUNet_n_proc_DA=0``), so the extra unlabeled stream is included.

The expected ratio comes from the trainer's ``cost_model``: forward and backward passes in units
of one labeled batch, with a backward counted as two forwards, against nnUNetTrainer's
1 forward + 1 backward. The target: a trainer is not slower than its compute warrants, i.e. the
measured ``step`` ratio is at most 15% above the expected one (larger batches run more efficiently
per sample, so measured ratios below the expected one are normal).

    python benchmarks/iteration_cost.py                  # all shipped trainers, writes results/iteration_cost.md
    python benchmarks/iteration_cost.py --trainers nnUNetTrainerMeanTeacher --steps 10
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import finish_loaders, write_report  # noqa: E402
BASELINE = "nnUNetTrainer"
# settings so the measured step is the method's steady state (BCP's first epochs are plain pre-training)
MEASURE_OVERRIDES = {"nnUNetTrainerBCP": {"pretrain_fraction": 0.0}}


def _set_paths(workdir: str) -> None:
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[var] = os.path.join(workdir, var)
        os.makedirs(os.environ[var], exist_ok=True)
    os.environ["nnUNet_compile"] = "false"


def expected_ratio(trainer_cls) -> tuple[float, str]:
    """(ratio, formula) from ``cost_model = {"forward": f, "backward": b}`` in labeled-batch units."""
    model = getattr(trainer_cls, "cost_model", None)
    if not model:
        return float("nan"), "n/a"
    f, b = float(model["forward"]), float(model["backward"])
    return (f + 2 * b) / 3.0, f"({f:g} fwd + 2x{b:g} bwd) / 3"


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it is not inherited from the
    parent across fork/exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


MIN_TIMED_SECONDS = 4.0
"""Steps are repeated beyond ``--steps`` until this much time was measured: a 2D step of ~15 ms
timed 15 times would otherwise be within the noise of the machine."""


def timed(step, steps: int) -> float:
    """Mean seconds per call of ``step`` over at least ``steps`` calls and MIN_TIMED_SECONDS."""
    n, start = 0, time.perf_counter()
    while n < steps or time.perf_counter() - start < MIN_TIMED_SECONDS:
        step()
        n += 1
    return (time.perf_counter() - start) / n


def worker(trainer: str, warmup: int, steps: int, dim: int) -> dict:
    """Measure one trainer in this process; returns a JSON-able dict."""
    import itertools

    import torch

    from nnunet_ssl.commands.demo import KINDS, PLANS
    from nnunet_ssl.runner import build_trainer

    torch.manual_seed(0)
    kind = KINDS[dim]
    t = build_trainer(kind.dataset_id, kind.configuration, "all", trainer, PLANS, "cpu",
                      budget={"num_epochs": 1000, "num_iterations_per_epoch": 1000})
    t.disable_checkpointing = True
    t.on_train_start()
    t.on_train_epoch_start()
    for _ in range(warmup):
        t.train_step(next(t.dataloader_train))
    with_data = timed(lambda: t.train_step(next(t.dataloader_train)), steps)
    # cached batches: compute only
    batch = next(t.dataloader_train)
    unl = getattr(t, "dataloader_unlabeled", None)
    if unl is not None:
        t.dataloader_unlabeled = itertools.repeat(next(unl))
    compute = timed(lambda: t.train_step(batch), steps)
    peak_mb = peak_rss_mb()
    ratio, formula = expected_ratio(type(t))
    finish_loaders(t, unl)
    return {"trainer": trainer, "step_s": compute, "step_data_s": with_data, "peak_rss_mb": peak_mb,
            "expected_ratio": ratio, "expected_formula": formula, "torch_threads": torch.get_num_threads()}


def method_trainers() -> dict[int, list[str]]:
    """Every shipped method trainer (no ablations) by the demo it runs on: 2 for those that need
    category labels, 3 for the others."""
    from nnunet_ssl.catalog import is_ablation, shipped_trainers

    out = {3: [], 2: []}
    for n, cls in shipped_trainers().items():
        if not is_ablation(n):
            out[2 if getattr(cls, "requires_category_labels", False) else 3].append(n)
    return out


def measure(names: list[str], dim: int, workdir: str, args) -> list[dict]:
    """nnUNetTrainer first and last, the others in between, each in its own process."""
    order = [BASELINE] + [t for t in names if t != BASELINE] + [BASELINE]
    results = []
    for name in order:
        print(f"measuring {name} ({dim}D demo) ...", flush=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--dim", str(dim), "--workdir", workdir,
               "--warmup", str(args.warmup), "--steps", str(args.steps)]
        env = dict(os.environ, nnUNet_ssl_overrides=json.dumps(MEASURE_OVERRIDES.get(name, {})))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(f"  failed: {proc.stderr[-1500:]}")
            results.append({"trainer": name, "failed": True})
            continue
        r = json.loads(line[0][len("RESULT "):])
        print(f"  step {r['step_s'] * 1000:.0f} ms, step+data {r['step_data_s'] * 1000:.0f} ms, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB")
        results.append(r)
    return results


def table(results: list[dict]) -> list[str]:
    base = [r for r in results if r["trainer"] == BASELINE and not r.get("failed")]
    if not base:
        return ["nnUNetTrainer failed; no ratios."]
    b_step = sum(r["step_s"] for r in base) / len(base)
    b_data = sum(r["step_data_s"] for r in base) / len(base)
    b_mem = sum(r["peak_rss_mb"] for r in base) / len(base)
    lines = ["| trainer | step [ms] | ratio | expected | formula | ≤ 1.15× expected | step+data [ms] | ratio | peak RSS [MB] |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| {BASELINE} | {b_step * 1000:.0f} | 1.00 | 1.00 | 1 fwd + 1 bwd | yes | {b_data * 1000:.0f} | 1.00 | "
             f"{b_mem:.0f} |"]
    for r in results:
        if r["trainer"] == BASELINE:
            continue
        if r.get("failed"):
            lines.append(f"| {r['trainer']} | failed | | | | | | | |")
            continue
        ratio = r["step_s"] / b_step
        exp = r["expected_ratio"]
        ok = "n/a" if exp != exp else ("yes" if ratio <= 1.15 * exp else "**no**")
        lines.append(f"| {r['trainer']} | {r['step_s'] * 1000:.0f} | {ratio:.2f} | {exp:.2f} | {r['expected_formula']} "
                     f"| {ok} | {r['step_data_s'] * 1000:.0f} | {r['step_data_s'] / b_data:.2f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=os.path.join(HERE, "..", "nnunet_ssl_demo"))
    p.add_argument("--trainers", nargs="*", default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--out", default=os.path.join(HERE, "results", "iteration_cost.md"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--dim", type=int, default=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    workdir = os.path.abspath(args.workdir)
    _set_paths(workdir)
    if args.worker:
        os.environ["nnUNet_n_proc_DA"] = "0"  # augmentation in this process (planning needs >= 1)
        print("RESULT " + json.dumps(worker(args.worker, args.warmup, args.steps, args.dim)))
        return 0

    from nnunet_ssl.catalog import shipped_trainers
    from nnunet_ssl.commands.demo import KINDS, make_spec, prepare_dataset

    if args.trainers:
        shipped = shipped_trainers()
        groups = {3: [], 2: []}
        for n in args.trainers:
            groups[2 if getattr(shipped.get(n), "requires_category_labels", False) else 3].append(n)
    else:
        groups = method_trainers()
    sections = {3: "3D demo dataset, CPU plans (patch 32³, features 8/16/32, batch 2 labeled + 2 unlabeled)",
                2: "2D RGB demo dataset with category labels (`nnunet-ssl demo --dim 2`), CPU plans (patch 64², "
                   "features 8/16/32, batch 4 labeled + 4 unlabeled)"}
    lines = ["# Iteration cost against nnUNetTrainer", "",
             f"{os.cpu_count()} CPU cores, at least {args.steps} timed steps and {MIN_TIMED_SECONDS:g} s after "
             f"{args.warmup} warm-up steps, one process "
             f"per trainer; nnUNetTrainer measured first and last on the same dataset (mean shown). `step`: training "
             f"step on cached batches (compute); `step+data`: with nnU-Net's augmentation in the same process. "
             f"Expected ratio = (forward + 2·backward passes)/3 in labeled-batch units from each trainer's "
             f"`cost_model`."]
    for dim in (3, 2):
        if not groups[dim]:
            continue
        prepare_dataset(make_spec(KINDS[dim], 4, 24, 8, 0), kind=KINDS[dim])
        lines += ["", f"## {sections[dim]}", ""] + table(measure(groups[dim], dim, workdir, args))
    lines += ["", f"Command: `python benchmarks/iteration_cost.py --steps {args.steps} --warmup {args.warmup}`", ""]
    write_report(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
