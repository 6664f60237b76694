"""Does the unlabeled pool lie far from the labeled cases, as a trained network sees them?

Semi-supervised training helps when unlabeled images come from the distribution of the labeled ones;
a pool from another scanner, protocol or field of view can hurt instead. This compares the two pools
in the feature space of a trained nnU-Net model:

1. The model is loaded as ``nnUNetv2_predict`` loads it (``nnUNetPredictor.initialize_from_trained_model_folder``:
   the trainer class builds the network, ``network_weights`` of the checkpoint are loaded). For
   ensemble trainers, the first member (the inference network) is used.
2. Features, per channel of the deepest encoder stage (``encoder.stages.<last>`` of PlainConvUNet /
   ResidualEncoderUNet; only the encoder runs): the global average pool of the stage's output (read
   with :class:`~nnunet_ssl.heads.feature_taps.FeatureTap`), and the mean and standard deviation of the
   input of the stage's last normalisation layer. nnU-Net's stages end in conv -> InstanceNorm ->
   LeakyReLU, so the pooled output only describes the *shape* of each channel's activations within a
   tile (for a barely trained network every pooled value is close to E[LeakyReLU(z)] ~ 0.39); the scale
   and offset that InstanceNorm removes are what acquisition changes (contrast, noise, resolution)
   move, so they are kept too (the "style" statistics of AdaIN/MixStyle). Measured on the tiny test
   dataset, 5 random initialisations, 4 labeled vs 12 shifted cases: the pooled output alone found a
   white-noise pool in 3 of 5 and a larger/brighter/noisier pool in 4 of 5; all three statistics
   found both in 5 of 5 (p <= 0.019), with no false alarm on unshifted pools (p >= 0.138).
   A case is covered by sliding-window tiles of the plan's patch size exactly as nnU-Net's predictor
   tiles it (same padding and tile positions, tile step 1.0, i.e. the fewest tiles that cover the
   case; 2D configurations tile every slice); its vector is the mean over its tiles. The whole case
   counts, not only a centre patch, which for CT would often be mostly one organ and miss
   field-of-view differences.
3. Labeled cases: the preprocessed training cases of the plan's configuration (all of them, every fold).
   Unlabeled cases: this package's preprocessed unlabeled folder, cases stamped with the model's plans
   (``nnunet-ssl preprocess-unlabeled``), or a folder of raw images (``images``) preprocessed here with
   nnU-Net's preprocessor and the model's plans.
4. Statistics (:mod:`nnunet_ssl.evaluation.shift`) on the features standardised over both pools: a
   permutation-tested unbiased MMD² with an RBF kernel at the median heuristic, Cohen's d per feature
   dimension (the top-k drawn as kernel density estimates), the unlabeled cases beyond the labeled range,
   and a 2-D PCA scatter.

Outputs in the output folder: ``feature_shift.json`` (every number), ``feature_shift_pca.png``,
``feature_shift_kde.png`` and ``features.npz`` (the per-case features, to reuse).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_ssl.errors import UserError
from nnunet_ssl.evaluation.shift import (beyond_labeled_range, mmd_permutation_test, pca_2d, pooled_standardize,
                                         standardized_mean_difference)
from nnunet_ssl.utils.files import write_json_atomic

TILE_STEP = 1.0
TILE_BATCH = 4


# ---------------------------------------------------------------------------------------------------- model


def load_predictor(model_folder: str, fold, checkpoint: str = "checkpoint_final.pth", device: str = "cpu"):
    """nnU-Net's predictor with the trained network of ``model_folder/fold_<fold>/<checkpoint>``, in eval mode."""
    from nnunet_ssl.pipeline import load_predictor as nnunet_predictor

    path = os.path.join(model_folder, f"fold_{fold}", checkpoint)
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} not found; train that fold first or pass -f/-chk of a trained model")
    predictor = nnunet_predictor(model_folder, (fold,), checkpoint, device, use_mirroring=False,
                                 tile_step_size=TILE_STEP, use_gaussian=False)
    predictor.network.to(predictor.device).eval()
    return predictor


def deepest_encoder_stage(network) -> Tuple[object, str]:
    """(encoder module, name of its deepest stage) of an nnU-Net network, found by name: the first
    submodule called ``encoder`` with a ``stages`` list (PlainConvUNet, ResidualEncoderUNet, the first
    member of an ensemble)."""
    from torch import nn

    from nnunet_ssl.utils.modules import unwrap

    for name, module in unwrap(network).named_modules():
        stages = getattr(module, "stages", None)
        if name.split(".")[-1] == "encoder" and isinstance(stages, (nn.Sequential, nn.ModuleList)) and len(stages):
            return module, f"{name}.stages.{len(stages) - 1}"
    raise UserError(f"{type(unwrap(network)).__name__} has no submodule 'encoder' with 'stages' (as nnU-Net's "
                    f"PlainConvUNet and ResidualEncoderUNet have); feature-shift cannot find its encoder")


class LastNormInput:
    """Keeps the input of the normalisation layer that ran last in ``stage`` during a forward (the
    conv output InstanceNorm/BatchNorm/GroupNorm is about to standardise). ``None`` when the stage has
    no normalisation layer."""

    def __init__(self, stage):
        from torch import nn

        kinds = (nn.modules.instancenorm._InstanceNorm, nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
        self.value = None
        self._handles = [m.register_forward_pre_hook(self._hook) for m in stage.modules() if isinstance(m, kinds)]
        self.found = bool(self._handles)

    def _hook(self, module, inputs) -> None:
        self.value = inputs[0]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def feature_names(channels: int, with_norm_input: bool) -> List[str]:
    """Names of the feature vector's entries, in order."""
    names = [f"pooled output, channel {c}" for c in range(channels)]
    if with_norm_input:
        names += [f"pre-norm mean, channel {c}" for c in range(channels)]
        names += [f"pre-norm std, channel {c}" for c in range(channels)]
    return names


def case_features(predictor, data: np.ndarray, encoder, tap, norm_input: Optional[LastNormInput] = None) -> np.ndarray:
    """Feature vector of one preprocessed case ``data`` ``(C, *spatial)`` (see module doc): per tile of the
    predictor's sliding window, the global average pool of the deepest encoder stage (``tap``) and, with
    ``norm_input``, the per-channel mean and std of its last normalisation layer's input; mean over tiles.
    Shape ``(F,)`` or ``(3F,)``."""
    import torch
    from acvl_utils.cropping_and_padding.padding import pad_nd_image

    data = np.asarray(data, dtype=np.float32)
    padded, _ = pad_nd_image(data, predictor.configuration_manager.patch_size, "constant", {"value": 0}, True, None)
    slicers = predictor._internal_get_sliding_window_slicers(padded.shape[1:])
    total, count = None, 0
    with torch.inference_mode():
        for start in range(0, len(slicers), TILE_BATCH):
            batch = np.stack([padded[sl] for sl in slicers[start:start + TILE_BATCH]])
            encoder(torch.from_numpy(batch).to(predictor.device))
            f = tap.features.float()
            parts = [f.mean(dim=tuple(range(2, f.ndim)))]
            if norm_input is not None and norm_input.value is not None:
                pre = norm_input.value.float().flatten(2)
                parts += [pre.mean(2), pre.std(2, unbiased=False)]
            rows = torch.cat(parts, 1).sum(0).cpu().numpy().astype(np.float64)
            total = rows if total is None else total + rows
            count += len(batch)
            tap.clear()
    return total / count


# ---------------------------------------------------------------------------------------------------- cases


def preprocessed_loader(folder: str, ids: Sequence[str]) -> Callable[[str], np.ndarray]:
    """case id -> preprocessed data ``(C, *spatial)`` of a folder nnU-Net wrote (its dataset class reads it)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    dataset = infer_dataset_class(folder)(folder, list(ids))
    return lambda case: np.asarray(dataset.load_case(case)[0])


def raw_loader(predictor, files: Dict[str, List[str]]) -> Callable[[str], np.ndarray]:
    """case id -> raw image files preprocessed with nnU-Net's preprocessor and the model's plans."""
    pm, cm = predictor.plans_manager, predictor.configuration_manager

    def load(case: str) -> np.ndarray:
        data, _, _ = cm.preprocessor_class(verbose=False).run_case(files[case], None, pm, cm, predictor.dataset_json)
        return data
    return load


def _sample(ids: Sequence[str], max_cases: Optional[int], seed: int) -> List[str]:
    ids = sorted(ids)
    if max_cases is None or len(ids) <= max_cases:
        return ids
    rng = np.random.RandomState(seed)
    return sorted(ids[i] for i in rng.choice(len(ids), max_cases, replace=False))


def raw_image_cases(folder: str, dataset_json: dict) -> Dict[str, List[str]]:
    """case -> channel files of a raw image folder named like imagesTr; refuses a channel count that
    differs from the model's dataset."""
    from nnunet_ssl.data.unlabeled import cases_in_folder

    if not os.path.isdir(folder):
        raise UserError(f"image folder {folder} does not exist")
    ending = dataset_json["file_ending"]
    cases, misfits = cases_in_folder(folder, ending)
    misfits = [m for m in misfits if m.endswith(ending)]
    if misfits:
        raise UserError(f"{len(misfits)} file(s) in {folder} are not named <case>_XXXX{ending}, e.g. {misfits[0]!r}")
    if not cases:
        raise UserError(f"{folder} holds no images named <case>_0000{ending}")
    expected = len(dataset_json["channel_names"]) if ending != ".png" else 1
    for case, fs in cases.items():
        if len(fs) != expected:
            raise UserError(f"case {case!r} in {folder} has {len(fs)} channel file(s), the model's dataset has "
                            f"{expected}")
    return cases


# ---------------------------------------------------------------------------------------------------- report


def verdict_sentence(result: dict, alpha: float) -> str:
    """One sentence for a team: far or close, the evidence, and what to do."""
    n, m = result["labeled"]["cases"], result["unlabeled"]["cases"]
    t = result["mmd"]
    beyond = result["beyond_labeled_range"]["cases"]
    evidence = (f"MMD² = {t['mmd2']:.3g}, p = {t['p_value']:.3g} ({'all' if t['exact'] else t['permutations']} "
                f"{'splits' if t['exact'] else 'permutations'}), 95% null {t['null_q95']:.3g}")
    if t["p_value"] < alpha:
        tail = (f"; {len(beyond)} of {m} unlabeled cases lie beyond the labeled range ({', '.join(beyond[:5])}"
                f"{', ...' if len(beyond) > 5 else ''})" if beyond else "")
        return (f"The unlabeled pool ({m} cases) lies FAR from the labeled cases ({n}) in the model's deepest "
                f"encoder features ({evidence}){tail}: check scanner, protocol and field of view before training "
                f"on it, or label some of its cases.")
    caveat = (" (with this few cases only a large shift would be detected)" if min(n, m) < 10 else "")
    return (f"The unlabeled pool ({m} cases) is CLOSE to the labeled cases ({n}) in the model's deepest encoder "
            f"features: no significant shift at alpha = {alpha:g} ({evidence}){caveat}.")


def _save(fig, path: str) -> str:
    tmp = path[:-4] + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


def _plain_style():
    """Matplotlib's default style for our figures: importing nnU-Net sets seaborn's global font scale 2.5."""
    import matplotlib.style

    return matplotlib.style.context("default")


def plot_pca(coords: np.ndarray, n_labeled: int, ratio: Sequence[float], title: str, path: str,
             unlabeled_label: str = "unlabeled") -> str:
    """Scatter of the 2-D PCA coordinates: the first ``n_labeled`` rows labeled, the rest unlabeled."""
    with _plain_style():
        return _plot_pca(coords, n_labeled, ratio, title, path, unlabeled_label)


def _plot_pca(coords, n_labeled, ratio, title, path, unlabeled_label) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(coords[:n_labeled, 0], coords[:n_labeled, 1], s=30, marker="o", label=f"labeled ({n_labeled})")
    ax.scatter(coords[n_labeled:, 0], coords[n_labeled:, 1], s=30, marker="^", alpha=0.8,
               label=f"{unlabeled_label} ({len(coords) - n_labeled})")
    ax.set_xlabel(f"PC 1 ({100 * ratio[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * ratio[1]:.0f}% of variance)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_kde(xs: np.ndarray, ys: np.ndarray, dims: Sequence[int], d: np.ndarray, path: str,
             unlabeled_label: str = "unlabeled", names: Optional[Sequence[str]] = None) -> str:
    """Per-dimension Gaussian kernel density estimates (``scipy.stats.gaussian_kde``, Scott's bandwidth)
    of the standardised features of both pools, one panel per dimension in ``dims``, with rug marks."""
    with _plain_style():
        return _plot_kde(xs, ys, dims, d, path, unlabeled_label, names)


def _plot_kde(xs, ys, dims, d, path, unlabeled_label, names) -> str:
    from matplotlib.figure import Figure
    from scipy.stats import gaussian_kde

    cols = min(3, len(dims))
    rows = int(np.ceil(len(dims) / cols))
    fig = Figure(figsize=(4 * cols, 3 * rows), layout="constrained")
    for i, j in enumerate(dims):
        ax = fig.add_subplot(rows, cols, i + 1)
        values = np.concatenate([xs[:, j], ys[:, j]])
        span = values.max() - values.min() or 1.0
        grid = np.linspace(values.min() - 0.3 * span, values.max() + 0.3 * span, 200)
        for v, name, marker in ((xs[:, j], "labeled", "|"), (ys[:, j], unlabeled_label, "|")):
            line = None
            if len(v) > 1 and np.ptp(v) > 0:
                line, = ax.plot(grid, gaussian_kde(v)(grid), label=name)
            ax.plot(v, np.zeros_like(v), marker, markersize=10, color=line.get_color() if line else None,
                    label=None if line else name)
        ax.set_title(f"{names[j] if names is not None else f'feature {j}'}: d = {d[j]:+.2f}", fontsize=9)
        ax.set_yticks([])
        if i == 0:
            ax.legend(fontsize="small")
    fig.suptitle("Most shifted encoder feature dimensions (standardised; d = Cohen's d, unlabeled - labeled)",
                 fontsize=9)
    return _save(fig, path)


def analyse(labeled: np.ndarray, unlabeled: np.ndarray, labeled_ids: Sequence[str], unlabeled_ids: Sequence[str],
            out_folder: str, top_k: int = 6, n_permutations: int = 1000, alpha: float = 0.05, seed: int = 0,
            meta: Optional[dict] = None, unlabeled_label: str = "unlabeled", names: Optional[Sequence[str]] = None
            ) -> dict:
    """Statistics, plots and ``feature_shift.json`` for per-case features of both pools (see module doc);
    ``names`` name the feature dimensions (default ``feature <j>``)."""
    xs, ys = pooled_standardize(labeled, unlabeled)
    test = mmd_permutation_test(xs, ys, n_permutations=n_permutations, seed=seed)
    d = standardized_mean_difference(xs, ys)
    top = [int(j) for j in np.argsort(-np.abs(d), kind="stable")[:top_k]]
    names = list(names) if names is not None else [f"feature {j}" for j in range(xs.shape[1])]
    flags, threshold = beyond_labeled_range(xs, ys)
    coords, ratio = pca_2d(np.concatenate([xs, ys]))
    result = dict(meta or {})
    result.update({
        "labeled": {**result.get("labeled", {}), "cases": len(labeled_ids)},
        "unlabeled": {**result.get("unlabeled", {}), "cases": len(unlabeled_ids)},
        "feature_dimensions": int(xs.shape[1]),
        "mmd": {"statistic": "unbiased MMD² (RBF kernel, median-heuristic bandwidth, features standardised over "
                             "both pools)", "mmd2": test.mmd2, "p_value": test.p_value, "bandwidth": test.bandwidth,
                "permutations": test.permutations, "exact": test.exact, "null_q95": test.null_q95},
        "alpha": alpha,
        "top_dimensions": [{"dimension": j, "name": names[j], "cohens_d": float(d[j])} for j in top],
        "beyond_labeled_range": {"threshold": threshold,
                                 "cases": [c for c, f in zip(unlabeled_ids, flags) if f]},
        "pca_explained_variance": ratio,
        "files": {"pca": "feature_shift_pca.png", "kde": "feature_shift_kde.png", "features": "features.npz"},
    })
    result["verdict"] = "far" if test.p_value < alpha else "close"
    result["sentence"] = verdict_sentence(result, alpha)
    os.makedirs(out_folder, exist_ok=True)
    title = f"MMD² = {test.mmd2:.3g}, p = {test.p_value:.3g}: {result['verdict']}"
    plot_pca(coords, len(labeled_ids), ratio, title, os.path.join(out_folder, "feature_shift_pca.png"),
             unlabeled_label)
    plot_kde(xs, ys, top, d, os.path.join(out_folder, "feature_shift_kde.png"), unlabeled_label, names)
    tmp = os.path.join(out_folder, ".features.tmp.npz")
    np.savez_compressed(tmp, labeled=labeled, unlabeled=unlabeled, labeled_ids=np.array(labeled_ids),
                        unlabeled_ids=np.array(unlabeled_ids))
    os.replace(tmp, os.path.join(out_folder, "features.npz"))
    write_json_atomic(os.path.join(out_folder, "feature_shift.json"), result)
    return result


# ---------------------------------------------------------------------------------------------------- main entry


def _extract(predictor, ids: Sequence[str], load: Callable[[str], np.ndarray], desc: str,
             progress: bool) -> Tuple[np.ndarray, List[str]]:
    """Feature vectors of the cases ``ids`` (rows, in order) and the names of their entries."""
    from tqdm import tqdm

    from nnunet_ssl.heads.feature_taps import FeatureTap

    encoder, stage = deepest_encoder_stage(predictor.network)
    rows = []
    norm_input = LastNormInput(encoder.stages[len(encoder.stages) - 1])
    try:
        with FeatureTap(predictor.network, stage) as tap:
            for case in tqdm(ids, desc=desc, unit="case", disable=not progress):
                try:
                    data = load(case)
                except UserError:
                    raise
                except Exception as e:
                    raise UserError(f"case {case!r} could not be loaded ({type(e).__name__}: {e}); fix or remove "
                                    f"it") from None
                rows.append(case_features(predictor, data, encoder, tap, norm_input))
    finally:
        norm_input.remove()
    features = np.stack(rows)
    return features, feature_names(features.shape[1] // (3 if norm_input.found else 1), norm_input.found)


def feature_shift(dataset, configuration: str, trainer: str, plans: str = "nnUNetPlans", fold="0",
                  checkpoint: str = "checkpoint_final.pth", out_folder: str = "feature_shift",
                  max_cases: Optional[int] = None, images: Optional[str] = None, device: str = "cpu",
                  top_k: int = 6, n_permutations: int = 1000, alpha: float = 0.05, seed: int = 0,
                  progress: bool = True) -> dict:
    """Compare labeled and unlabeled cases in a trained model's encoder features (see module doc);
    returns the ``feature_shift.json`` content."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from nnunet_ssl.data.unlabeled import plans_fingerprint, unlabeled_case_ids, unlabeled_preprocessed_folder

    if not nnUNet_preprocessed.is_set():
        raise UserError("nnUNet_preprocessed is not set; export it as for nnU-Net itself")
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError:
        raise UserError(f"dataset {dataset!r} not found in nnUNet_raw/nnUNet_preprocessed/nnUNet_results") from None
    model = get_output_folder(name, trainer, plans, configuration)
    if not os.path.isdir(model):
        raise UserError(f"no trained model in {model}; check -tr, -p and -c (as given to nnUNetv2_train)")
    fold = fold if str(fold) == "all" else int(fold)
    predictor = load_predictor(model, fold, checkpoint, device)
    cm = predictor.configuration_manager
    pre_base = os.path.join(nnUNet_preprocessed.get(), name)
    labeled_folder = os.path.join(pre_base, cm.data_identifier)
    if not os.path.isdir(labeled_folder):
        raise UserError(f"preprocessed training cases {labeled_folder} not found; run nnUNetv2_plan_and_preprocess "
                        f"-d {name} -c {configuration}")
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    labeled_ids = _sample(infer_dataset_class(labeled_folder).get_identifiers(labeled_folder), max_cases, seed)
    if images is None:
        pool = unlabeled_preprocessed_folder(pre_base, cm.data_identifier)
        with open(os.path.join(model, "plans.json")) as f:
            stamp = plans_fingerprint(json.load(f), configuration)
        unlabeled_ids = _sample(unlabeled_case_ids(pool, stamp), max_cases, seed)
        if not unlabeled_ids:
            raise UserError(f"no unlabeled cases preprocessed with this model's plans in {pool}; run 'nnunet-ssl "
                            f"preprocess-unlabeled -d {name} -c {configuration} -p {plans}' or pass --images FOLDER")
        load_unlabeled = preprocessed_loader(pool, unlabeled_ids)
        label = "unlabeled"
    else:
        files = raw_image_cases(images, predictor.dataset_json)
        pool = os.path.abspath(images)
        unlabeled_ids = _sample(files, max_cases, seed)
        load_unlabeled = raw_loader(predictor, files)
        label = os.path.basename(os.path.normpath(images))
    if len(labeled_ids) < 2 or len(unlabeled_ids) < 2:
        raise UserError(f"feature-shift needs at least 2 cases per pool, got {len(labeled_ids)} labeled and "
                        f"{len(unlabeled_ids)} unlabeled")
    labeled, names = _extract(predictor, labeled_ids, preprocessed_loader(labeled_folder, labeled_ids),
                              "labeled features", progress)
    unlabeled, _ = _extract(predictor, unlabeled_ids, load_unlabeled, f"{label} features", progress)
    _, stage = deepest_encoder_stage(predictor.network)
    meta = {"dataset": name, "configuration": configuration, "trainer": trainer, "plans": plans, "fold": fold,
            "checkpoint": checkpoint, "model_folder": model,
            "features": {"module": stage,
                         "per_tile": "per channel: global average pool of the stage output" + (
                             ", mean and std of the input of its last normalisation layer"
                             if "pre-norm" in names[-1] else ""),
                         "per_case": f"mean over sliding-window tiles of the plan's patch size "
                                     f"{list(cm.patch_size)} (tile step {TILE_STEP})"},
            "labeled": {"pool": labeled_folder}, "unlabeled": {"pool": pool}}
    return analyse(labeled, unlabeled, labeled_ids, unlabeled_ids, out_folder, top_k, n_permutations, alpha, seed,
                   meta, label, names)
