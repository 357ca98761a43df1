"""Benchmark evaluation: score maps for a dataset (inference, or saved maps), official-parity metrics, a JSON
result, a markdown report and plots.

Layout of an evaluation folder ``OUT``::

    OUT/score_maps/<dataset>/<score>/<frame id>.npy   float16 score maps at label resolution (reused on re-run)
    OUT/score_maps/<dataset>/run.json                 what produced them (model, weights, preprocessing)
    OUT/results.json                                  every metric, per dataset and score, plus timings
    OUT/report.md                                     tables and links to the plots
    OUT/plots/<dataset>_curves.png                    PR and ROC curves (one line per score)
    OUT/plots/<dataset>_<score>_histogram.png         inlier vs anomaly score histograms
    OUT/plots/<dataset>_<score>_frames.png            worst and best frames (per-frame AP) with overlays

Score maps are stored as float16, exactly what the official pipeline stores and what every metric reads.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .datasets import AnomalyDataset
from .metrics import ComponentMetrics, PixelMetrics
from .pipeline import AnomalyPredictor
from .visualize import colorize_scores


@dataclass
class EvalTimings:
    """Wall-clock seconds per stage of one evaluation."""

    loading: float = 0.0       # waiting for decoded images/labels (after prefetching)
    inference: float = 0.0     # predictor.score_maps
    metrics: float = 0.0       # pixel + component metrics
    writing: float = 0.0       # score-map files, plots, report
    per_dataset: dict = field(default_factory=dict)


def _prefetch(dataset: AnomalyDataset, workers: int, with_image: bool):
    """Yield ``(index, frame id, image or None, label)`` in order, decoding ahead in ``workers`` threads."""
    def job(i):
        if with_image:
            return dataset.load(i)
        return dataset.frames[i].frame_id, None, dataset.load_label(i)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        window: deque = deque()
        submitted = 0
        while submitted < len(dataset) and len(window) < 2 * max(1, workers):
            window.append(pool.submit(job, submitted))
            submitted += 1
        for i in range(len(dataset)):
            future = window.popleft()
            if submitted < len(dataset):
                window.append(pool.submit(job, submitted))
                submitted += 1
            frame_id, image, label = future.result()
            yield i, frame_id, image, label


def _run_key(predictor: AnomalyPredictor | None, weights: str) -> dict:
    if predictor is None:
        return {"source": "saved score maps"}
    return {"model": predictor.name, "weights": str(weights), "preprocess": predictor.preprocess_cfg.to_dict()}


def _score_dir(out_dir: Path, dataset: str, score: str) -> Path:
    return out_dir / "score_maps" / dataset / score


def produce_score_maps(dataset: AnomalyDataset, predictor: AnomalyPredictor | None, scores: list[str],
                       out_dir: Path, weights: str = "default", workers: int = 2,
                       timings: EvalTimings | None = None, saved_maps: Path | None = None) -> int:
    """Make sure ``OUT/score_maps/<dataset>/<score>/<fid>.npy`` exist for every frame and score.

    Runs inference (one forward pass per frame for all scores) unless the maps exist from a run with the same
    model, weights and preprocessing; with ``saved_maps`` (a folder ``<saved>/<dataset>/<fid>.npy`` of the
    user's own maps), copies those instead. Returns the number of frames inferred.
    """
    timings = timings or EvalTimings()
    run_file = out_dir / "score_maps" / dataset.name / "run.json"
    key = _run_key(predictor, weights)
    previous = json.loads(run_file.read_text()) if run_file.is_file() else None
    missing = [i for i, f in enumerate(dataset.frames)
               if not all((_score_dir(out_dir, dataset.name, s) / f"{f.frame_id}.npy").is_file() for s in scores)]
    if previous == key and not missing:
        return 0
    if previous != key:
        missing = list(range(len(dataset)))
    for s in scores:
        _score_dir(out_dir, dataset.name, s).mkdir(parents=True, exist_ok=True)
    if saved_maps is not None:
        for i in missing:
            fid = dataset.frames[i].frame_id
            src = saved_maps / dataset.name / f"{fid}.npy"
            if not src.is_file():
                raise FileNotFoundError(f"saved score map {src} is missing")
            for s in scores:
                np.save(_score_dir(out_dir, dataset.name, s) / f"{fid}.npy", np.load(src).astype(np.float16))
    else:
        todo = set(missing)
        t_wait = time.perf_counter()
        for i, fid, image, _ in tqdm(_prefetch(dataset, workers, True), total=len(dataset),
                                     desc=f"infer {dataset.name}", unit="frame"):
            if i not in todo:
                continue
            t0 = time.perf_counter()
            timings.loading += t0 - t_wait
            maps, _, _ = predictor.score_maps(image, scores)
            t1 = time.perf_counter()
            timings.inference += t1 - t0
            for s, m in maps.items():
                np.save(_score_dir(out_dir, dataset.name, s) / f"{fid}.npy", m.astype(np.float16))
            t_wait = time.perf_counter()
            timings.writing += t_wait - t1
    run_file.write_text(json.dumps(key, indent=2) + "\n")
    return len(missing)


def _frame_ap(score: np.ndarray, label: np.ndarray) -> float | None:
    """Exact AP of one frame (None without anomaly or inlier pixels)."""
    roi = label != 255
    if not (label[roi] == 1).any() or not (label[roi] == 0).any():
        return None
    metrics = PixelMetrics("exact")
    metrics.add(score, label)
    return metrics.compute().AuPRC


def evaluate_dataset(dataset: AnomalyDataset, scores: list[str], out_dir: Path, mode: str = "official",
                     workers: int = 2, timings: EvalTimings | None = None) -> dict:
    """Metrics of every score on a dataset whose score maps are in ``out_dir``. Returns ``{score: result}``."""
    timings = timings or EvalTimings()
    results = {}
    labels = {}
    t_load = time.perf_counter()
    for _, fid, _, label in _prefetch(dataset, workers, False):
        labels[fid] = label
    timings.loading += time.perf_counter() - t_load
    for score in scores:
        t0 = time.perf_counter()
        folder = _score_dir(out_dir, dataset.name, score)
        pixel = PixelMetrics(mode)
        frame_aps = {}
        maps = {}
        for fid, label in labels.items():
            m = np.load(folder / f"{fid}.npy")
            if m.shape != label.shape:
                raise ValueError(f"score map {folder / (fid + '.npy')} is {m.shape}, label is {label.shape}")
            maps[fid] = m
            pixel.add(m, label, fid)
            frame_aps[fid] = _frame_ap(m, label)
        px = pixel.compute()
        exact = px if mode == "exact" else _exact_from(pixel)
        entry = {"pixel": px.to_dict(), "pixel_exact": exact.to_dict(),
                 "frame_AP": {k: (None if v is None else 100 * v) for k, v in frame_aps.items()}}
        if dataset.track is not None:
            comp = ComponentMetrics(px.best_f1_threshold, dataset.track)
            for fid, label in labels.items():
                comp.add(maps[fid], label, fid)
            entry["component"] = comp.compute().to_dict()
        timings.metrics += time.perf_counter() - t0
        t1 = time.perf_counter()
        plot_dir = out_dir / "plots"
        entry["plots"] = {"histogram": str(_plot_histogram(pixel, dataset.name, score, plot_dir).relative_to(out_dir)),
                          "frames": str(_plot_frames(dataset, maps, labels, frame_aps, score, plot_dir,
                                                     px.best_f1_threshold).relative_to(out_dir))}
        entry["_curve"] = px
        results[score] = entry
        timings.writing += time.perf_counter() - t1
    t1 = time.perf_counter()
    curves = _plot_curves({s: r.pop("_curve") for s, r in results.items()}, dataset.name, out_dir / "plots")
    for r in results.values():
        r["plots"]["curves"] = str(curves.relative_to(out_dir))
    timings.writing += time.perf_counter() - t1
    return results


def _exact_from(pixel: PixelMetrics):
    exact = PixelMetrics("exact")
    exact.hist_pos, exact.hist_neg = pixel.hist_pos, pixel.hist_neg
    exact.num_pos, exact.num_neg, exact.num_frames = pixel.num_pos, pixel.num_neg, pixel.num_frames
    return exact.compute()


def _plot_curves(curves: dict, dataset: str, plot_dir: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    fig, (ax_pr, ax_roc) = plt.subplots(1, 2, figsize=(11, 4.5))
    for score, c in curves.items():
        ax_pr.plot(c.curve_recall, c.curve_precision, label=f"{score} (AP {100 * c.AuPRC:.1f})")
        ax_roc.plot(c.curve_fpr, c.curve_tpr, label=f"{score} (FPR95 {100 * c.FPR95:.1f})")
    ax_pr.set(xlabel="recall", ylabel="precision", title=f"{dataset}: precision–recall", xlim=(0, 1), ylim=(0, 1.02))
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{dataset}: ROC", xlim=(0, 1),
               ylim=(0, 1.02))
    ax_roc.axhline(0.95, color="grey", lw=0.8, ls="--")
    for ax in (ax_pr, ax_roc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = plot_dir / f"{dataset}_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_histogram(pixel: PixelMetrics, dataset: str, score: str, plot_dir: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    lo, hi = pixel.score_range()
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 101)
    neg, pos = pixel.score_histograms(bins)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    centers = (bins[:-1] + bins[1:]) / 2
    width = bins[1] - bins[0]
    ax.bar(centers, neg / max(neg.sum(), 1), width=width, alpha=0.55, label=f"in-distribution ({int(neg.sum())} px)")
    ax.bar(centers, pos / max(pos.sum(), 1), width=width, alpha=0.55, label=f"anomaly ({int(pos.sum())} px)")
    ax.set(xlabel=f"{score} score", ylabel="fraction of pixels", title=f"{dataset}: {score}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = plot_dir / f"{dataset}_{score}_histogram.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_frames(dataset: AnomalyDataset, maps: dict, labels: dict, frame_aps: dict, score: str, plot_dir: Path,
                 threshold: float, per_side: int = 3, width: int = 480) -> Path:
    """Worst and best frames by per-frame AP: image with score heat map, GT outline (green) and the
    prediction at the best-F1 threshold (red outline)."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    ranked = sorted((ap, fid) for fid, ap in frame_aps.items() if ap is not None)
    chosen = [("worst", fid, ap) for ap, fid in ranked[:per_side]] + \
             [("best", fid, ap) for ap, fid in ranked[::-1][:per_side]]
    index = {f.frame_id: i for i, f in enumerate(dataset.frames)}
    values = np.concatenate([m.ravel()[::97].astype(np.float32) for m in maps.values()])
    lo, hi = np.percentile(values, [1, 99]) if values.size else (0.0, 1.0)
    tiles = []
    for kind, fid, ap in chosen:
        image = dataset.load_image(index[fid])
        score_map = maps[fid].astype(np.float32)
        heat = colorize_scores(score_map, float(lo), float(max(hi, lo + 1e-6)))
        tile = cv2.addWeighted(image, 0.5, heat, 0.5, 0)
        label = labels[fid]
        tile[label == 255] = (tile[label == 255] * 0.4).astype(np.uint8)
        for mask, colour in (((label == 1).astype(np.uint8), (0, 255, 0)),
                             (((score_map > threshold) & (label != 255)).astype(np.uint8), (255, 0, 0))):
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(tile, contours, -1, colour, 3)
        tile = cv2.resize(tile, (width, round(tile.shape[0] * width / tile.shape[1])))
        cv2.putText(tile, f"{kind} {fid}: AP {100 * ap:.1f}", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                    (255, 255, 255), 2, cv2.LINE_AA)
        tiles.append(tile)
    path = plot_dir / f"{dataset.name}_{score}_frames.png"
    if tiles:
        height = max(t.shape[0] for t in tiles)
        tiles = [cv2.copyMakeBorder(t, 0, height - t.shape[0], 0, 0, cv2.BORDER_CONSTANT) for t in tiles]
        while len(tiles) % per_side:
            tiles.append(np.zeros_like(tiles[0]))
        rows = [np.hstack(tiles[i:i + per_side]) for i in range(0, len(tiles), per_side)]
        cv2.imwrite(str(path), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
    else:
        cv2.imwrite(str(path), np.zeros((32, 32, 3), np.uint8))
    return path


def write_report(results: dict, out_dir: Path) -> Path:
    """``results.json`` and ``report.md`` for an evaluation."""
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# vl-anomaly eval — {results['date']}", "",
             f"model `{results['model']}` (weights `{results['weights']}`), pixel metrics in **{results['mode']}** "
             "mode (official = SegmentMeIfYouCan evaluator @ 1c7804e, float16, binned, pooled over frames; "
             "exact = unbinned on the same float16 scores). All numbers in percent.", "",
             "| dataset | frames | score | AuPRC ↑ | FPR95 ↓ | AuROC ↑ | AuPRC exact | sIoU gt ↑ | PPV ↑ | mean F1 ↑ |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, ds in results["datasets"].items():
        for score, r in ds["scores"].items():
            px, ex, comp = r["pixel"], r["pixel_exact"], r.get("component")
            comp_cells = (f"{comp['sIoU_gt']:.2f} | {comp['PPV']:.2f} | {comp['mean_F1']:.2f}" if comp
                          else "– | – | –")
            lines.append(f"| {name} | {ds['num_frames']} | {score} | {px['AuPRC']:.2f} | {px['FPR95']:.2f} | "
                         f"{px['AuROC']:.2f} | {ex['AuPRC']:.2f} | {comp_cells} |")
    lines += ["", "## Plots", ""]
    for name, ds in results["datasets"].items():
        first = next(iter(ds["scores"].values()))
        lines.append(f"### {name}\n\n![curves]({first['plots']['curves']})\n")
        for score, r in ds["scores"].items():
            lines.append(f"{score}: [histogram]({r['plots']['histogram']}) · [worst/best frames]({r['plots']['frames']})")
        lines.append("")
    t = results["timings_s"]
    lines += ["## Timings", "",
              f"total {t['total']:.1f} s: inference {t['inference']:.1f} s, metrics {t['metrics']:.1f} s, "
              f"loading (waiting) {t['loading']:.1f} s, writing {t['writing']:.1f} s; "
              f"{results['machine']['torch_threads']} torch threads, {results['workers']} loading workers"]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_evaluation(datasets: list[AnomalyDataset], scores: list[str], out_dir: Path,
                   predictor: AnomalyPredictor | None, weights: str = "default", mode: str = "official",
                   workers: int = 2, saved_maps: Path | None = None, fusion=None) -> dict:
    """Infer (or reuse/copy score maps), compute metrics, write ``results.json``, ``report.md`` and plots.

    With ``fusion`` (a :class:`vl_anomaly.fusion.FusionCfg`), its sources are inferred too and the fused score
    is evaluated as the extra score ``fused``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = EvalTimings()
    start = time.perf_counter()
    results = {"date": dt.datetime.now().isoformat(timespec="seconds"),
               "model": predictor.name if predictor else "saved score maps", "weights": str(weights),
               "mode": mode, "workers": workers,
               "evaluator": "SegmentMeIfYouCan/road-anomaly-benchmark@1c7804e0749686452eb02bbcfb81234e38795f8a",
               "machine": {"platform": platform.platform(), "torch": torch.__version__,
                           "torch_threads": torch.get_num_threads()},
               "predictor": predictor.describe() if predictor else None, "datasets": {}}
    if fusion is not None:
        if saved_maps is not None:
            raise ValueError("fusion needs the source score maps of a model; it cannot use --score-maps")
        results["fusion"] = fusion.to_dict()
    for dataset in datasets:
        t0 = time.perf_counter()
        inferred_scores = list(dict.fromkeys(scores + (fusion.sources if fusion is not None else [])))
        inferred = produce_score_maps(dataset, predictor, inferred_scores, out_dir, weights, workers, timings,
                                      saved_maps)
        evaluated = list(scores)
        if fusion is not None:
            from .calibration import write_fused_maps

            write_fused_maps(dataset, out_dir / "score_maps", fusion)
            evaluated.append("fused")
        per_score = evaluate_dataset(dataset, evaluated, out_dir, mode, workers, timings)
        results["datasets"][dataset.name] = {
            "root": str(dataset.root), "layout": dataset.layout, "num_frames": len(dataset),
            "count_note": dataset.count_note(), "track": dataset.track, "frames_inferred": inferred,
            "scores": per_score, "seconds": round(time.perf_counter() - t0, 2)}
    results["timings_s"] = {"total": time.perf_counter() - start, "inference": timings.inference,
                            "metrics": timings.metrics, "loading": timings.loading, "writing": timings.writing}
    write_report(results, out_dir)
    return results
