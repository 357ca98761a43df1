"""Component-level metrics of the official evaluator (``SegEval-AnomalyTrack`` / ``SegEval-ObstacleTrack``).

Per frame, at a score threshold ``t`` (the split's pixel best-F1 threshold in the official protocol):

1. prediction = ``score > t`` (strict), void pixels removed; ground truth = label 1;
2. 8-connected components (3×3 structuring element) of both;
3. predicted components smaller than ``min_pred_px`` are erased; ground-truth components smaller than
   ``min_gt_px`` become void; everything is then restricted to the (updated) non-void region;
4. for each ground-truth component k: ``sIoU(k) = |k ∩ K̂| / (|K̂| + |k| − |k ∩ K̂| − |A|)``, K̂ = the predicted
   components touching k, A = pixels of K̂ inside *other* ground-truth components;
5. for each predicted component k̂: ``PPV(k̂) = |k̂ ∩ GT| / |k̂|``.

Over the split, for τ in ``linspace(0.25, 0.75, 11)``: TP = #GT with sIoU ≥ τ, FN = #GT with sIoU < τ,
FP = #predicted with PPV < τ, ``F1_τ = 2TP / (2TP + FN + FP)``; mean F1 = mean over the 11 τ; sIoU and PPV are
means over all components of the split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .pixel import LABEL_ANOMALY, LABEL_VOID, check_frame, to_float16

SIOU_THRESHOLDS = np.linspace(0.25, 0.75, 11, endpoint=True)
_STRUCTURE = np.ones((3, 3), dtype=np.uint8)


@dataclass(frozen=True)
class Track:
    """Size filters of a benchmark track (pixels)."""

    name: str
    min_pred_px: int
    min_gt_px: int


TRACKS = {"anomaly": Track("anomaly", min_pred_px=500, min_gt_px=100),
          "obstacle": Track("obstacle", min_pred_px=50, min_gt_px=10)}


def _sizes(labels: np.ndarray, count: int) -> np.ndarray:
    return np.bincount(labels.ravel(), minlength=count + 1)


def frame_components(score_map: np.ndarray, label: np.ndarray, threshold: float, track: Track,
                     frame_id: str = "") -> tuple[np.ndarray, np.ndarray]:
    """sIoU of every ground-truth component and PPV of every predicted component of one frame.

    Args: ``score_map`` ``(H, W)`` (cast to float16 as stored by the benchmark), ``label`` ``(H, W)`` uint8.
    Returns ``(sIoU per GT component, PPV per predicted component)``.
    """
    check_frame(score_map, label, frame_id)
    scores = to_float16(score_map)
    void = label == LABEL_VOID
    prediction = (scores > threshold) & ~void
    gt_labels, n_gt = ndimage.label(label == LABEL_ANOMALY, _STRUCTURE)
    pred_labels, n_pred = ndimage.label(prediction, _STRUCTURE)
    if n_pred:
        small = _sizes(pred_labels, n_pred) < track.min_pred_px
        small[0] = False
        pred_labels[small[pred_labels]] = 0
    roi = ~void
    if n_gt:
        tiny = _sizes(gt_labels, n_gt) < track.min_gt_px
        tiny[0] = False
        roi &= ~tiny[gt_labels]
    gt = gt_labels[roi].astype(np.int64)
    pred = pred_labels[roi].astype(np.int64)
    # joint counts of (gt id, pred id) over the region of interest
    pairs = np.bincount(gt * (n_pred + 1) + pred, minlength=(n_gt + 1) * (n_pred + 1)).reshape(n_gt + 1, n_pred + 1)
    gt_size = pairs.sum(axis=1)
    pred_size = pairs.sum(axis=0)
    siou = []
    for k in range(1, n_gt + 1):
        if gt_size[k] == 0:
            continue                                  # tiny component turned void
        touching = np.nonzero(pairs[k, 1:])[0] + 1
        intersection = pairs[k, touching].sum()
        union_pred = pred_size[touching].sum()
        other_gt = pairs[1:, touching].sum() - intersection          # K̂ pixels inside other GT components
        siou.append(intersection / (union_pred + gt_size[k] - intersection - other_gt))
    ppv = [pairs[1:, j].sum() / pred_size[j] for j in range(1, n_pred + 1) if pred_size[j] > 0]
    return np.asarray(siou, np.float64), np.asarray(ppv, np.float64)


@dataclass
class ComponentResult:
    """Component metrics of a split (fractions; ``to_dict`` in percent)."""

    sIoU_gt: float
    PPV: float
    mean_F1: float
    threshold: float
    track: str
    num_gt: int
    num_pred: int
    f1_per_threshold: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"sIoU_gt": 100 * self.sIoU_gt, "PPV": 100 * self.PPV, "mean_F1": 100 * self.mean_F1,
                "threshold": self.threshold, "track": self.track, "num_gt_components": self.num_gt,
                "num_pred_components": self.num_pred,
                "F1_per_sIoU_threshold": {f"{t:.2f}": 100 * f for t, f in zip(SIOU_THRESHOLDS, self.f1_per_threshold)}}


class ComponentMetrics:
    """Streaming component metrics at a fixed score ``threshold`` for a ``track`` ("anomaly" or "obstacle")."""

    def __init__(self, threshold: float, track: str = "anomaly") -> None:
        if track not in TRACKS:
            raise ValueError(f"unknown track {track!r}; choose one of {sorted(TRACKS)}")
        if not np.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        self.threshold = float(threshold)
        self.track = TRACKS[track]
        self.siou: list[np.ndarray] = []
        self.ppv: list[np.ndarray] = []

    def add(self, score_map: np.ndarray, label: np.ndarray, frame_id: str = "") -> tuple[np.ndarray, np.ndarray]:
        siou, ppv = frame_components(score_map, label, self.threshold, self.track, frame_id)
        self.siou.append(siou)
        self.ppv.append(ppv)
        return siou, ppv

    def compute(self) -> ComponentResult:
        siou = np.concatenate(self.siou) if self.siou else np.zeros(0)
        ppv = np.concatenate(self.ppv) if self.ppv else np.zeros(0)
        f1 = []
        for t in SIOU_THRESHOLDS:
            tp, fn, fp = np.count_nonzero(siou >= t), np.count_nonzero(siou < t), np.count_nonzero(ppv < t)
            f1.append(2 * tp / (2 * tp + fn + fp) if (2 * tp + fn + fp) else float("nan"))
        return ComponentResult(sIoU_gt=float(siou.mean()) if siou.size else float("nan"),
                               PPV=float(ppv.mean()) if ppv.size else float("nan"),
                               mean_F1=float(np.mean(f1)), threshold=self.threshold, track=self.track.name,
                               num_gt=int(siou.size), num_pred=int(ppv.size), f1_per_threshold=f1)
