"""Metrics of the score maps on disk: pixel (official binning or exact), per-frame AP and component metrics; the
plots of each score are drawn by :mod:`vl_anomaly.evaluation.plots`."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..datasets import AnomalyDataset
from ..metrics import ComponentMetrics, PixelMetrics
from .plots import plot_curves, plot_frames, plot_histogram
from .score_maps import EvalTimings, prefetch, score_map_dir


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
    for _, fid, _, label in prefetch(dataset, workers, False):
        labels[fid] = label
    timings.loading += time.perf_counter() - t_load
    for score in scores:
        t0 = time.perf_counter()
        folder = score_map_dir(out_dir, dataset.name, score)
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
        entry["plots"] = {"histogram": str(plot_histogram(pixel, dataset.name, score, plot_dir).relative_to(out_dir)),
                          "frames": str(plot_frames(dataset, maps, labels, frame_aps, score, plot_dir,
                                                     px.best_f1_threshold).relative_to(out_dir))}
        entry["_curve"] = px
        results[score] = entry
        timings.writing += time.perf_counter() - t1
    t1 = time.perf_counter()
    curves = plot_curves({s: r.pop("_curve") for s, r in results.items()}, dataset.name, out_dir / "plots")
    for r in results.values():
        r["plots"]["curves"] = str(curves.relative_to(out_dir))
    timings.writing += time.perf_counter() - t1
    return results


def _exact_from(pixel: PixelMetrics):
    exact = PixelMetrics("exact")
    exact.hist_pos, exact.hist_neg = pixel.hist_pos, pixel.hist_neg
    exact.num_pos, exact.num_neg, exact.num_frames = pixel.num_pos, pixel.num_neg, pixel.num_frames
    return exact.compute()


