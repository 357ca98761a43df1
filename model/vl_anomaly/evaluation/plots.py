"""The three plots of an evaluation: PR/ROC curves per dataset, score histograms per score, worst/best frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..datasets import AnomalyDataset
from ..metrics import PixelMetrics
from ..visualize import colorize_scores


def plot_curves(curves: dict, dataset: str, plot_dir: Path) -> Path:
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


def plot_histogram(pixel: PixelMetrics, dataset: str, score: str, plot_dir: Path) -> Path:
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


def plot_frames(dataset: AnomalyDataset, maps: dict, labels: dict, frame_aps: dict, score: str, plot_dir: Path,
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


