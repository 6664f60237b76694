"""Activation memory of every trainer's training step against nnUNetTrainer: what each trainer's
``activation_factor`` is based on.

nnU-Net plans a configuration so that ONE network with its batch fits a GPU memory target. A
semi-supervised step holds more graphs at once (two batches, two networks, a mixed batch), so this
script measures, in one training step on the CPU, with one fixed labeled batch (and one fixed
unlabeled batch) shared by every trainer on the same plans:

- ``saved``: the peak bytes of the tensors autograd has saved for backward and still holds, counted in
  ``torch.autograd.graph.saved_tensors_hooks``' pack hook, each storage once (a view or a tensor
  saved by two ops counts once) until it is freed (a backward frees its graph's); storages of the networks' parameters and buffers are left out
  (weights, not activations; a conv saves its weight);
- ``peak``: the peak of live tensor bytes during the step (forward, losses, backward, optimizer step,
  EMA updates), tracked by a ``TorchDispatchMode`` that sees every aten op, also those autograd runs
  in backward: a storage an op returns without having received it is new and adds its bytes; they
  are subtracted by a finalizer when the storage is freed (PyTorch keeps a storage's Python object
  alive as long as the storage lives, also when only autograd holds it). Tensors that existed before
  the step (weights, optimizer state, the batch) are not counted. Kernel workspaces that are not
  tensors (cuDNN's, the CPU's im2col buffers) are not seen; they depend on the device, not the method.

Both are divided by nnUNetTrainer's on the same plans and labeled batch. ``design`` is the ratio the
method warrants: networks × batches that keep a graph for backward, in labeled-batch units (the
``backward`` entry of the trainer's ``cost_model``: Mean Teacher 1 network × 2 batches = 2, DHC
2 × 2 = 4, DMPF 2 × 3 = 6; or its ``held`` entry for a step that backpropagates network by network:
CPS 1 × 2 = 2 of 4). Teachers run without gradient and add only their transient forward
activations to the peak. The trainer's declared ``activation_factor`` must be at least the factor the
measurement supports (:func:`suggested_factor`: the larger ratio, rounded up).

Trainers run on the demo datasets of ``benchmarks/iteration_cost.py`` (built the same way, with
``nnunet_ssl.runner.build_trainer``, BCP in its self-training phase): the 3D demo, and the 2D RGB demo
for the trainers that need category labels, each against an nnUNetTrainer on the same data, with two
plans each: nnU-Net's own (``nnUNetPlans``: its architecture, 32 features at full resolution) for the
method trainers, and the shrunk CPU plans (``nnUNetPlans_cpu``) for every trainer, ablations included.

    python benchmarks/activation_memory.py                      # writes results/activation_memory.md
    python benchmarks/activation_memory.py --trainers nnUNetTrainerCPS nnUNetTrainerDMPF --out /tmp/a.md
    python benchmarks/activation_memory.py --json m.json ...    # also the raw numbers; later, without
    python benchmarks/activation_memory.py --from-json m.json   # measuring, their report with the factors
                                                                # the trainers declare now
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import sys
import weakref
from typing import Iterable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import finish_loaders, write_report  # noqa: E402
from iteration_cost import BASELINE, MEASURE_OVERRIDES, _set_paths  # noqa: E402

MB = 2 ** 20


def _storages(tensors: Iterable) -> list:
    return [t.untyped_storage() for t in tensors if isinstance(t, torch.Tensor)]


class SavedTensorBytes:
    """Context manager: ``bytes``, the peak of the bytes of distinct storages autograd has saved for
    backward inside it and that are still alive (a graph freed by its backward releases them, so a step
    that backpropagates one network's graph before building the next peaks at the larger graph);
    ``total``: all such bytes, freed or not; ``count``: the storages.

    ``exclude``: tensors whose storages are not counted (the networks' parameters and buffers).
    Storages are told apart by identity while they live, so a freed storage whose memory is reused
    counts as a new one. Works on any device (it never looks at memory, only at tensors)."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._exclude = {st.data_ptr() for st in _storages(exclude) if st.nbytes()}
        self._seen = WeakIdKeyDictionary()
        self.current = 0
        self.bytes = 0
        self.total = 0
        self.count = 0

    def _release(self, nbytes: int) -> None:
        self.current -= nbytes

    def _pack(self, t: torch.Tensor):
        st = t.untyped_storage()
        if st not in self._seen and st.data_ptr() not in self._exclude:
            n = st.nbytes()
            self._seen[st] = True
            self.current += n
            self.total += n
            self.bytes = max(self.bytes, self.current)
            self.count += 1
            weakref.finalize(st, self._release, n)
        return t

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def __enter__(self) -> "SavedTensorBytes":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


class LiveTensorBytes(TorchDispatchMode):
    """Dispatch mode: ``current`` and ``peak`` bytes of the storages created by ops run inside it.

    A storage counts from the op that returns it without having received it (views and in-place ops
    return a storage they got, so they add nothing) until it is freed. Autograd's backward ops are
    dispatched through the mode too, so gradients and their temporaries are included."""

    def __init__(self):
        super().__init__()
        self._live = WeakIdKeyDictionary()
        self.current = 0
        self.peak = 0

    def _release(self, nbytes: int) -> None:
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        received = {id(st) for st in _storages(tree_leaves((args, kwargs)))}
        for st in _storages(tree_leaves(out)):
            if id(st) in received or st in self._live:
                continue
            n = st.nbytes()
            self._live[st] = n
            self.current += n
            weakref.finalize(st, self._release, n)
        self.peak = max(self.peak, self.current)
        return out


def model_tensors(trainer) -> list:
    """Parameters and buffers of every network, teacher and head of a trainer (nnU-Net's or ours)."""
    models = trainer.all_models() if hasattr(trainer, "all_models") else {"network": trainer.network}
    return [t for m in models.values() for t in itertools.chain(m.parameters(), m.buffers())]


def design_ratio(trainer_cls) -> tuple[float, str]:
    """(networks × batches with a graph alive at once, formula) from the trainer's ``cost_model``: its
    ``held`` entry (a step that backpropagates part by part), else its backward passes."""
    if trainer_cls is None:
        return 1.0, "1 network × 1 batch"
    model = getattr(trainer_cls, "cost_model", None)
    if not model:
        return float("nan"), "n/a"
    if "held" in model:
        return float(model["held"]), f"{float(model['held']):g} held of {float(model['backward']):g} backward passes"
    return float(model["backward"]), f"{float(model['backward']):g} backward passes (cost_model)"


def measure(name: str, kind, plans: str, cache: dict) -> dict:
    """One trainer: a warm-up step, then one step under each counter, on the batches in ``cache``
    (filled from the first trainer that draws them, so every trainer sees the same ones)."""
    from nnunet_ssl.catalog import shipped_trainers
    from nnunet_ssl.runner import build_trainer

    torch.manual_seed(0)
    shipped = shipped_trainers()
    cls = shipped.get(name)
    overrides = next((v for k, v in MEASURE_OVERRIDES.items() if cls is not None and issubclass(cls, shipped[k])), {})
    os.environ["nnUNet_ssl_overrides"] = json.dumps(overrides)  # e.g. BCP and its variants: self-training
    t = build_trainer(kind.dataset_id, kind.configuration, "all", name, plans, "cpu",
                      budget={"num_epochs": 1000, "num_iterations_per_epoch": 1000})
    t.disable_checkpointing = True
    t.on_train_start()
    t.on_train_epoch_start()
    try:
        cache.setdefault("labeled", next(t.dataloader_train))
        unl = getattr(t, "dataloader_unlabeled", None)
        if unl is not None:
            cache.setdefault("unlabeled", next(unl))
            t.dataloader_unlabeled = itertools.repeat(cache["unlabeled"])
        batch = cache["labeled"]
        t.train_step(batch)  # warm-up: optimizer state and lazily built parts exist before measuring
        gc.collect()
        with SavedTensorBytes(exclude=model_tensors(t)) as saved:
            t.train_step(batch)
        gc.collect()
        with LiveTensorBytes() as live:
            t.train_step(batch)
        gc.collect()
    finally:
        finish_loaders(t)
    return {"trainer": name, "saved_bytes": saved.bytes, "saved_tensors": saved.count, "peak_bytes": live.peak,
            "factor": getattr(type(t), "activation_factor", 1)}


TOLERANCE = 0.03
"""A ratio up to 3% above a whole number rounds down to it (BCP's 2.01): nnU-Net's planner is coarser than
that (it rounds the batch size, which alone moves a plan up to 25% off its target at batch 2)."""


def suggested_factor(saved_ratio: float, peak_ratio: float) -> int:
    """The factor a measurement supports: the larger ratio rounded up to a whole number, after
    :data:`TOLERANCE`."""
    return max(1, math.ceil(max(saved_ratio, peak_ratio) / (1 + TOLERANCE) - 1e-9))


def rows(results: list, trainers: dict, check: bool = True) -> list:
    """Markdown table rows: ratios to the group's nnUNetTrainer, the factor they support, the declared one
    (marked when lower than the supported one, if ``check``)."""
    base = next(r for r in results if r["trainer"] == BASELINE)
    out = ["| trainer | design | saved [MB] | saved ratio | peak [MB] | peak ratio | supported | activation_factor |",
           "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("failed"):
            out.append(f"| {r['trainer']} | | failed: {r['failed']} | | | | | |")
            continue
        design, _ = design_ratio(trainers.get(r["trainer"]))
        s, p = r["saved_bytes"] / base["saved_bytes"], r["peak_bytes"] / base["peak_bytes"]
        r.update(saved_ratio=s, peak_ratio=p, supported=suggested_factor(s, p))
        factor = getattr(trainers.get(r["trainer"]), "activation_factor", 1)  # as declared now
        declared = f"{factor:g}" + ("" if factor >= r["supported"] or not check else " **too low**")
        out.append(f"| {r['trainer']} | {design:g} | {r['saved_bytes'] / MB:.1f} | {s:.2f} | "
                   f"{r['peak_bytes'] / MB:.1f} | {p:.2f} | {r['supported']} | {declared} |")
    return out


def measure_group(names: list, kind, plans: str, log) -> list:
    """nnUNetTrainer, then ``names``, on one demo dataset and plans; nnU-Net's console output goes to ``log``."""
    import contextlib

    results, cache = [], {}
    for name in [BASELINE] + names:
        print(f"measuring {name} ({kind.dim}D demo, {plans}) ...", flush=True)
        try:
            with contextlib.redirect_stdout(log):
                r = measure(name, kind, plans, cache)
        except Exception as e:  # one trainer's failure is reported in its row, the others still run
            if name == BASELINE:
                raise
            r = {"trainer": name, "failed": f"{type(e).__name__}: {e}"[:200]}
        if not r.get("failed"):
            print(f"  saved {r['saved_bytes'] / MB:.1f} MB, peak {r['peak_bytes'] / MB:.1f} MB", flush=True)
        results.append(r)
        gc.collect()
    return results


REFERENCE_PLANS = "nnUNetPlans"
"""The factors follow the measurement on nnU-Net's own plans: the architecture a GPU run trains."""


def report(sections: dict, shipped: dict, command: str) -> list:
    """The Markdown report of measured ``sections`` (``"<dim>d/<plans>"`` -> results), with each trainer's
    ``activation_factor`` as declared when the report is written, checked on :data:`REFERENCE_PLANS`."""
    from nnunet_ssl.commands.demo import KINDS

    titles = {3: "3D demo dataset", 2: "2D RGB demo dataset with category labels"}
    lines = ["# Activation memory per training step against nnUNetTrainer", "",
             "One step on the CPU after one warm-up step, every trainer on the same labeled (and unlabeled) batch "
             "of the same plans. `saved`: distinct storages saved for backward (weights excluded); `peak`: peak of "
             "live tensor bytes created during the step; both divided by nnUNetTrainer's on the same plans and "
             "batch; `saved` is the peak of the storages alive at once (a step that backpropagates network by network "
             "frees one graph before the next). `design`: networks × batches holding a graph for backward at once "
             "(the `held` entry of the trainer's `cost_model`, else its `backward` entry). `supported`: the larger ratio rounded up to a whole number (a ratio at most "
             f"{TOLERANCE:.0%} above one rounds down to it); `activation_factor`: what the trainer declares, "
             f"which must cover `supported` on nnU-Net's own plans (`{REFERENCE_PLANS}`: the architecture a GPU run "
             "trains, 32 features at full resolution). The shrunk CPU plans (8 features at full resolution, where "
             "the loss terms' full-resolution tensors weigh relatively more) run the ablations too, which inherit "
             "their method's factor unless their own ratios are clearly lower."]
    for key, results in sections.items():
        dim, plans = int(key[0]), key.split("/", 1)[1]
        kind = KINDS[dim]
        with open(os.path.join(os.environ["nnUNet_preprocessed"], kind.dataset_name, plans + ".json")) as f:
            cfg = json.load(f)["configurations"][kind.configuration]
        features = cfg["architecture"]["arch_kwargs"]["features_per_stage"]
        lines += ["", f"## {titles[dim]}, `{plans}`: patch {cfg['patch_size']}, batch {cfg['batch_size']} labeled + "
                      f"{cfg['batch_size']} unlabeled, features {features}", ""]
        lines += rows(results, shipped, check=plans == REFERENCE_PLANS)
    return lines + ["", f"Command: `{command}`", ""]


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=os.path.join(HERE, "..", "nnunet_ssl_demo"),
                   help="nnU-Net folders of the demo datasets (shared with iteration_cost.py)")
    p.add_argument("--plans", nargs="+", default=["nnUNetPlans", "nnUNetPlans_cpu"],
                   help="plans identifiers of the demo datasets, one table each (default: nnU-Net's own and the "
                        "shrunk CPU plans)")
    p.add_argument("--trainers", nargs="*", default=None,
                   help="default: every shipped method trainer, and the ablations (nnUNetTrainer<Method>_<X>) on "
                        "the plans of --ablations-on")
    p.add_argument("--ablations-on", nargs="*", default=["nnUNetPlans_cpu"],
                   help="plans on which the ablations are measured too (default: nnUNetPlans_cpu; none: no value)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "activation_memory.md"))
    p.add_argument("--json", default=None, help="also write the raw numbers here")
    p.add_argument("--from-json", default=None,
                   help="no measurement: write the report of the numbers --json saved (with today's declared factors)")
    args = p.parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    _set_paths(workdir)

    from nnunet_ssl.catalog import is_ablation, shipped_trainers
    from nnunet_ssl.commands.demo import KINDS, make_spec, prepare_dataset

    shipped = shipped_trainers()
    names = args.trainers or list(shipped)
    unknown = [n for n in names if n not in shipped and n != BASELINE]
    if unknown:
        p.error(f"not shipped trainers: {unknown}")
    groups = {3: [], 2: []}
    for n in names:
        if n != BASELINE:
            groups[2 if getattr(shipped[n], "requires_category_labels", False) else 3].append(n)

    def selected(group: list, plans: str) -> list:
        if args.trainers or plans in args.ablations_on:
            return group
        return [n for n in group if not is_ablation(n)]

    cmd = "python benchmarks/activation_memory.py"
    if args.plans != p.get_default("plans"):
        cmd += " --plans " + " ".join(args.plans)
    if args.ablations_on != p.get_default("ablations_on"):
        cmd += " --ablations-on " + " ".join(args.ablations_on)
    if args.trainers:
        cmd += " --trainers " + " ".join(args.trainers)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        write_report(report(saved["sections"], shipped, saved["command"]), args.out)
        return 0
    sections = {}
    with open(os.path.join(workdir, "activation_memory_console.log"), "a") as log:
        for dim in (3, 2):
            if not groups[dim]:
                continue
            kind = KINDS[dim]
            os.environ["nnUNet_n_proc_DA"] = "1"  # nnU-Net's planner needs >= 1
            prepare_dataset(make_spec(kind, 4, 24, 8, 0), kind=kind)
            os.environ["nnUNet_n_proc_DA"] = "0"  # augmentation in this process
            for plans in args.plans:
                sections[f"{dim}d/{plans}"] = measure_group(selected(groups[dim], plans), kind, plans, log)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": cmd, "sections": sections}, f, indent=1)
    write_report(report(sections, shipped, cmd), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
