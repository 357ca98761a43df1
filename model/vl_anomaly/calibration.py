"""Fit one shared set of fusion weights (and source normalisations) on calibration data.

Beyond the paper (which tunes weights by hand per dataset): the weights are found once, by a grid search on the
simplex (step 0.1 by default) maximising the **mean over calibration sets of each set's AuPRC** of the fused
score (tie-break: lower mean FPR95), and written with a record of what they saw. Averaging per set, rather than
pooling pixels, keeps sets with large anomalies (RoadAnomaly: ~15 % of pixels) from drowning sets with small
ones (RoadObstacle21: < 1 %); pooling made the shared weights favour max-logit, which fails on small obstacles. Pixels are sampled uniformly from the
non-void pixels of every frame, with the same budget per dataset so a large set does not drown a small one;
the search scores a candidate with a 8192-bin histogram of the fused score (the final numbers are always
computed by :mod:`vl_anomaly.evaluation` on full maps). The search may also try the gated form
(``forms=("sum", "gated")``, :mod:`vl_anomaly.fusion`) and keeps whichever candidate scores best.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .datasets import AnomalyDataset
from .errors import ConfigError
from .fusion import FusionCfg, LogisticCombiner, SourceNorm, combine, simplex_grid

HIST_BINS = 8192


def sample_pixels(dataset: AnomalyDataset, maps_dir: Path, sources: list[str], pixels: int = 400_000,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uniform sample of non-void pixels of ``dataset``: ``X (n, S)`` float32 raw source scores, ``y (n,)``
    uint8 (1 anomaly). Score maps are read from ``maps_dir/<dataset>/<source>/<frame id>.npy``."""
    rng = np.random.default_rng(seed)
    per_frame = max(1, math.ceil(pixels / len(dataset)))
    xs, ys = [], []
    for index, frame in enumerate(tqdm(dataset.frames, desc=f"sample {dataset.name}", unit="frame", leave=False)):
        label = dataset.load_label(index)
        valid = np.flatnonzero(label.reshape(-1) != 255)
        if valid.size == 0:
            continue
        take = valid if valid.size <= per_frame else rng.choice(valid, per_frame, replace=False)
        columns = []
        for source in sources:
            path = maps_dir / dataset.name / source / f"{frame.frame_id}.npy"
            if not path.is_file():
                raise ConfigError(f"score map {path} is missing; run `vl-anomaly eval --scores "
                                  f"{' '.join(sources)}` on {dataset.name} into {maps_dir.parent} first")
            score = np.load(path)
            if score.shape != label.shape:
                raise ConfigError(f"score map {path} is {score.shape}, label is {label.shape}")
            columns.append(score.reshape(-1)[take].astype(np.float32))
        xs.append(np.stack(columns, axis=1))
        ys.append((label.reshape(-1)[take] == 1).astype(np.uint8))
    if not xs:
        raise ConfigError(f"{dataset.name}: no labelled pixels to calibrate on")
    return np.concatenate(xs), np.concatenate(ys)


def ap_fpr95(score: np.ndarray, y: np.ndarray, bins: int = HIST_BINS) -> tuple[float, float]:
    """AuPRC and FPR at 95 % TPR of scores in [0, 1] (histogram-binned; for the search only)."""
    index = np.minimum((score * bins).astype(np.int64), bins - 1)
    pos = np.bincount(index[y == 1], minlength=bins)[::-1].cumsum()
    neg = np.bincount(index[y == 0], minlength=bins)[::-1].cumsum()
    total_pos, total_neg = pos[-1], neg[-1]
    if total_pos == 0 or total_neg == 0:
        raise ConfigError("calibration pixels need both anomaly and in-distribution pixels")
    recall = pos / total_pos
    precision = pos / np.maximum(pos + neg, 1)
    ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
    fpr95 = float(neg[np.searchsorted(recall, 0.95)] / total_neg)
    return ap, fpr95


FUSION_FORMS = ("sum", "gated")


def fit_fusion(samples: dict[str, tuple[np.ndarray, np.ndarray]], sources: list[str], step: float = 0.1,
               model: str = "", forms: tuple[str, ...] | list[str] = ("sum",)) -> FusionCfg:
    """Grid-search fusion weights on calibration samples ``{dataset: (X, y)}`` (objective: mean per-set AuPRC,
    tie-break lower mean FPR95).

    ``forms`` are searched together and the best candidate kept: ``"sum"`` (``Σ w_i ŝ_i``) and ``"gated"``
    (``ŝ_g · (w_g + Σ_{i≠g} w_i ŝ_i)`` for every source as the gate ``g``, ``w_g > 0``; see
    :mod:`vl_anomaly.fusion`). On equal objectives the weighted sum, searched first, is kept.
    """
    if len(sources) != next(iter(samples.values()))[0].shape[1]:
        raise ConfigError("sample columns must match the sources")
    unknown = [f for f in forms if f not in FUSION_FORMS]
    if unknown or not forms:
        raise ConfigError(f"fusion forms {list(forms)}: each must be one of {', '.join(FUSION_FORMS)}")
    norms = _norms_of(np.concatenate([x for x, _ in samples.values()]), sources)
    parts = [(np.stack([norms[s].apply(x[:, i]) for i, s in enumerate(sources)], axis=1), t)
             for x, t in samples.values()]
    grid = simplex_grid(len(sources), step)
    candidates: list[tuple[int | None, np.ndarray]] = []          # (gate column or None, weights)
    if "sum" in forms:
        candidates += [(None, w) for w in grid]
    if "gated" in forms:
        candidates += [(g, w) for g in range(len(sources)) for w in grid if w[g] > 0]
    columns = [{s: xn[:, i] for i, s in enumerate(sources)} for xn, _ in parts]
    best, best_key = None, None
    single, by_form, form_keys = {}, {}, {}
    for gate, weights in tqdm(candidates, desc="fusion grid", unit="weights", leave=False):
        w = dict(zip(sources, weights.tolist()))
        g = None if gate is None else sources[gate]
        per_set = [ap_fpr95(combine(normed, w, g), t) for normed, (_, t) in zip(columns, parts)]  # as fuse() applies it
        ap = float(np.mean([a for a, _ in per_set]))
        fpr = float(np.mean([f for _, f in per_set]))
        key = (round(ap, 9), -round(fpr, 9))
        if best_key is None or key > best_key:
            best, best_key = (gate, weights, ap, fpr), key
        form = "sum" if gate is None else f"gated by {g}"
        if form not in form_keys or key > form_keys[form]:
            form_keys[form] = key
            by_form[form] = {"AuPRC": 100 * ap, "FPR95": 100 * fpr,
                             "weights": {s: round(float(x), 6) for s, x in zip(sources, weights)}}
        if gate is None and np.count_nonzero(weights) == 1:
            single[sources[int(np.argmax(weights))]] = {"AuPRC": 100 * ap, "FPR95": 100 * fpr}
    gate, weights, ap, fpr = best
    record = {
        "method": f"grid search on the simplex, step {step}, forms {', '.join(forms)}; objective: mean over "
                  f"calibration sets of each set's AuPRC (tie-break mean FPR95) on uniformly sampled non-void "
                  f"pixels, {HIST_BINS}-bin histogram",
        "model": model, "calibration_sets": {name: {"pixels": int(t.size), "anomaly_pixels": int(t.sum())}
                                             for name, (_, t) in samples.items()},
        "normalization": "1st and 99th percentile of each source on the calibration pixels",
        "calibration_AuPRC": 100 * ap, "calibration_FPR95": 100 * fpr, "single_sources": single,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
    }
    if len(forms) > 1 or "gated" in forms:
        record["best_by_form"] = by_form
    return FusionCfg({s: float(w) for s, w in zip(sources, weights)}, norms, record,
                     gate=None if gate is None else sources[gate])


def _norms_of(X: np.ndarray, sources: list[str]) -> dict[str, SourceNorm]:
    lo, hi = np.percentile(X, 1, axis=0), np.percentile(X, 99, axis=0)
    return {s: SourceNorm(float(lo[i]), float(hi[i]) if hi[i] > lo[i] else float(lo[i]) + 1e-6)
            for i, s in enumerate(sources)}


def logistic_features(normed: np.ndarray, pairwise: bool) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``(n, S)`` normalised sources → ``(n, S [+ S(S−1)/2])`` features and the pairs of the product columns."""
    pairs = [(i, j) for i in range(normed.shape[1]) for j in range(i + 1, normed.shape[1])] if pairwise else []
    columns = [normed] + [normed[:, i:i + 1] * normed[:, j:j + 1] for i, j in pairs]
    return np.concatenate(columns, axis=1).astype(np.float32), pairs


def fit_logistic_fusion(samples: dict[str, tuple[np.ndarray, np.ndarray]], sources: list[str], pairwise: bool = True,
                        l2: float = 1e-4, model: str = "", iterations: int = 200) -> FusionCfg:
    """Fit a :class:`~vl_anomaly.fusion.LogisticCombiner` on calibration samples ``{dataset: (X, y)}``.

    Normalisation as :func:`fit_fusion`. Loss: weighted binary cross-entropy where every calibration set weighs
    the same and, inside a set, anomaly and inlier pixels weigh half each (the sets' anomaly shares differ 20×),
    plus ``l2`` · ‖coefficients‖²; minimised with L-BFGS (PyTorch, full batch).
    """
    import torch

    if len(sources) != next(iter(samples.values()))[0].shape[1]:
        raise ConfigError("sample columns must match the sources")
    norms = _norms_of(np.concatenate([x for x, _ in samples.values()]), sources)
    feats, targets, weights = [], [], []
    for x, t in samples.values():
        normed = np.stack([norms[s].apply(x[:, i]) for i, s in enumerate(sources)], axis=1)
        f, pairs = logistic_features(normed, pairwise)
        pos = max(int(t.sum()), 1)
        neg = max(int(t.size - t.sum()), 1)
        feats.append(f)
        targets.append(t.astype(np.float32))
        weights.append(np.where(t == 1, 0.5 / pos, 0.5 / neg).astype(np.float32) / len(samples))
    X = torch.from_numpy(np.concatenate(feats))
    y = torch.from_numpy(np.concatenate(targets))
    w = torch.from_numpy(np.concatenate(weights))
    coef = torch.zeros(X.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([coef, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = (w * torch.nn.functional.binary_cross_entropy_with_logits(X @ coef + bias, y, reduction="none")).sum()
        loss = loss + l2 * (coef ** 2).sum()
        loss.backward()
        return loss

    loss = float(optimizer.step(closure).detach())
    c = coef.detach().numpy().astype(float)
    combiner = LogisticCombiner(float(bias.item()), {s: float(c[i]) for i, s in enumerate(sources)},
                                {f"{sources[i]}*{sources[j]}": float(c[len(sources) + k]) for k, (i, j) in enumerate(pairs)})
    fused = {name: combiner.apply({s: norms[s].apply(x[:, i]) for i, s in enumerate(sources)}) for name, (x, _) in
             samples.items()}
    per_set = {name: ap_fpr95(fused[name], t) for name, (_, t) in samples.items()}
    record = {
        "method": "logistic regression on the normalised sources" + (" and their pairwise products" if pairwise else "")
                  + "; every calibration set weighs the same, anomaly and inlier pixels half each inside a set; "
                  f"L2 {l2}; L-BFGS",
        "model": model, "calibration_sets": {name: {"pixels": int(t.size), "anomaly_pixels": int(t.sum())}
                                             for name, (_, t) in samples.items()},
        "normalization": "1st and 99th percentile of each source on the calibration pixels",
        "final_loss": loss,
        "calibration_AuPRC": 100 * float(np.mean([a for a, _ in per_set.values()])),
        "calibration_FPR95": 100 * float(np.mean([f for _, f in per_set.values()])),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
    }
    return FusionCfg({s: 1.0 / len(sources) for s in sources}, norms, record, combiner)


def write_fused_maps(dataset: AnomalyDataset, maps_dir: Path, cfg: FusionCfg, name: str = "fused") -> Path:
    """``maps_dir/<dataset>/<name>/<fid>.npy`` (float16) from the source maps beside it; returns the folder."""
    from .fusion import fuse

    folder = maps_dir / dataset.name / name
    folder.mkdir(parents=True, exist_ok=True)
    for frame in dataset.frames:
        maps = {}
        for source in cfg.sources:
            path = maps_dir / dataset.name / source / f"{frame.frame_id}.npy"
            if not path.is_file():
                raise ConfigError(f"fusion source map {path} is missing")
            maps[source] = np.load(path).astype(np.float32)
        np.save(folder / f"{frame.frame_id}.npy", fuse(maps, cfg).astype(np.float16))
    return folder
