"""Pixel-level anomaly metrics: AuPRC (average precision), FPR at 95 % TPR, AuROC, best F1 — streaming over frames.

Labels: 0 = in-distribution, 1 = anomaly, 255 = void (ignored). Scores: higher = more anomalous. Frames are
pooled (all pixels of all frames, anomaly-free frames included); nothing is averaged per image.

Two modes, both on scores cast to **float16** (the official pipeline stores score maps as float16 files):

* ``official`` reproduces ``PixBinaryClass`` of the official evaluator: per frame, bin edges are
  ``[min − ε, max + ε]`` (ε = max(1 % of the range, 0.01)) plus ``np.quantile`` of the anomaly scores at
  ``min(384, n_pos)`` levels and of the inlier scores at ``min(384, n_neg)`` levels (deduplicated); each bin's
  counts are attached to its lower edge; all frames' thresholds are sorted together (descending) and cumulated.
  Memory: ≤ 770 (threshold, tp, fp) entries per frame (≈ 18 KB/frame, independent of the image size).
* ``exact`` is the unbinned curve: a histogram over all 65 536 float16 values (constant memory, 1 MiB), so
  every distinct score is its own threshold. It equals scikit-learn's ``average_precision_score`` /
  ``roc_curve`` on the same float16 scores.

Curve conventions (official): keep the last entry of repeated thresholds (and the first entry, as the official
code does); prepend (tp, fp) = (0, 0) and append (P, N) when missing; precision = 1 before any prediction;
``AP = Σ diff(recall) · precision[1:]``; ``AuROC = trapz(tpr, fpr)``; ``FPR95 = fpr[first index with
tpr ≥ 0.95]`` (1.0 if never reached); ``best F1`` and its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LABEL_IN, LABEL_ANOMALY, LABEL_VOID = 0, 1, 255
OFFICIAL_NUM_BINS = 768


def check_frame(score_map: np.ndarray, label: np.ndarray, frame_id: str = "") -> None:
    """Validate one frame: same ``(H, W)`` shape, finite scores, labels within {0, 1, 255}."""
    where = f" (frame {frame_id})" if frame_id else ""
    if score_map.shape != label.shape or score_map.ndim != 2:
        raise ValueError(f"score map {score_map.shape} and label {label.shape} must be equal (H, W) arrays{where}")
    finite = np.isfinite(score_map)
    if not finite.all():
        raise ValueError(f"score map contains {int(finite.size - finite.sum())} NaN/Inf values{where}; "
                         "scores must be finite")
    bad = np.setdiff1d(np.unique(label), [LABEL_IN, LABEL_ANOMALY, LABEL_VOID])
    if bad.size:
        raise ValueError(f"unexpected label values {bad.tolist()}{where}; accepted: 0 (inlier), 1 (anomaly), "
                         "255 (void)")


def to_float16(score_map: np.ndarray) -> np.ndarray:
    """Cast scores to float16 as the official pipeline stores them; values beyond float16 range are an error."""
    with np.errstate(over="ignore"):
        s16 = np.asarray(score_map).astype(np.float16)
    if not np.isfinite(s16).all():
        raise ValueError("score map exceeds the float16 range (|s| > 65504) used by the benchmark's storage; "
                         "rescale the score")
    s16[s16 == 0] = 0  # fold −0 into +0
    return s16


def _official_frame_bins(scores: np.ndarray, positive: np.ndarray, num_bins: int = OFFICIAL_NUM_BINS):
    """Per-frame percentile binning of the official evaluator. Returns (lower edges, tp per bin, fp per bin),
    ordered from the highest bin to the lowest."""
    at_pos, at_neg = scores[positive], scores[~positive]
    vmin, vmax = np.min(scores), np.max(scores)
    eps = np.maximum((vmax - vmin) * 1e-2, 1e-2)
    edges = [np.array([vmin - eps, vmax + eps])]
    if at_pos.size:
        edges.append(np.quantile(at_pos, np.linspace(0, 1, min(num_bins // 2, at_pos.size))))
    if at_neg.size:
        edges.append(np.quantile(at_neg, np.linspace(0, 1, min(num_bins // 2, at_neg.size))))
    edges = np.unique(np.concatenate(edges))
    tp_rel = np.histogram(at_pos, bins=edges)[0][::-1]
    fp_rel, bin_edges = np.histogram(at_neg, bins=edges)
    return bin_edges[::-1][1:], tp_rel, fp_rel[::-1]


def _float16_keys(s16: np.ndarray) -> np.ndarray:
    """Order-preserving map of float16 values to 0..65535."""
    bits = s16.view(np.uint16).astype(np.int64)
    return np.where(bits & 0x8000, 0xFFFF - bits, bits | 0x8000)


def _float16_from_keys(keys: np.ndarray) -> np.ndarray:
    keys = keys.astype(np.int64)
    bits = np.where(keys & 0x8000, keys & 0x7FFF, 0xFFFF - keys).astype(np.uint16)
    return bits.view(np.float16).astype(np.float64)


@dataclass
class PixelResult:
    """Pixel metrics of a split (fractions in [0, 1]; ``to_dict`` gives percent like the leaderboards)."""

    AuPRC: float
    FPR95: float
    AuROC: float
    best_f1: float
    best_f1_threshold: float
    tpr95_threshold: float
    num_pos: int
    num_neg: int
    num_frames: int
    mode: str
    curve_precision: np.ndarray = field(repr=False, default=None)
    curve_recall: np.ndarray = field(repr=False, default=None)
    curve_tpr: np.ndarray = field(repr=False, default=None)
    curve_fpr: np.ndarray = field(repr=False, default=None)
    thresholds: np.ndarray = field(repr=False, default=None)

    def to_dict(self) -> dict:
        return {"AuPRC": 100 * self.AuPRC, "FPR95": 100 * self.FPR95, "AuROC": 100 * self.AuROC,
                "best_pixel_F1": 100 * self.best_f1, "best_f1_threshold": self.best_f1_threshold,
                "tpr95_threshold": self.tpr95_threshold, "num_anomaly_pixels": self.num_pos,
                "num_inlier_pixels": self.num_neg, "num_frames": self.num_frames, "mode": self.mode}


def curve_from_counts(thresholds: np.ndarray, tp: np.ndarray, fp: np.ndarray, num_pos: int, num_neg: int,
                      mode: str = "", num_frames: int = 0) -> PixelResult:
    """Metrics from cumulative counts at descending thresholds (``tp[i]``, ``fp[i]`` = pixels with score at or
    above ``thresholds[i]``), with the official evaluator's curve conventions (module docstring)."""
    if num_pos == 0 or num_neg == 0:
        raise ValueError(f"pixel metrics need both anomaly and inlier pixels (got {num_pos} anomaly, {num_neg} "
                         "inlier pixels in the evaluated frames)")
    keep = np.concatenate([[0], np.nonzero(thresholds[:-1] != thresholds[1:])[0], [len(thresholds) - 1]])
    tp, fp, thr = tp[keep].astype(np.float64), fp[keep].astype(np.float64), thresholds[keep].astype(np.float64)
    if tp[0] != 0 or fp[0] != 0:
        tp, fp = np.concatenate([[0.0], tp]), np.concatenate([[0.0], fp])
        thr = np.concatenate([[thr.max() + 1], thr])
    if tp[-1] != num_pos or fp[-1] != num_neg:
        tp, fp = np.concatenate([tp, [num_pos]]), np.concatenate([fp, [num_neg]])
        thr = np.concatenate([thr, [thr.max() - 1]])
    fn = num_pos - tp
    tpr, fpr = tp / num_pos, fp / num_neg
    predicted = tp + fp
    precision = np.ones_like(tp)
    precision[predicted > 0] = tp[predicted > 0] / predicted[predicted > 0]
    f1 = 2 * tp / (2 * tp + fp + fn)
    i95 = int(np.searchsorted(tpr, 0.95))
    fpr95, thr95 = (float(fpr[i95]), float(thr[i95])) if i95 < len(tpr) else (1.0, 0.0)
    best = int(np.nanargmax(f1))
    return PixelResult(AuPRC=float(np.sum(np.diff(tpr) * precision[1:])), FPR95=fpr95,
                       AuROC=float(np.trapezoid(tpr, fpr)), best_f1=float(f1[best]),
                       best_f1_threshold=float(thr[best]), tpr95_threshold=thr95, num_pos=int(num_pos),
                       num_neg=int(num_neg), num_frames=num_frames, mode=mode, curve_precision=precision,
                       curve_recall=tpr, curve_tpr=tpr, curve_fpr=fpr, thresholds=thr)


class PixelMetrics:
    """Streaming pixel metrics: ``add`` one frame at a time, then ``compute``.

    Args:
        mode: ``"official"`` (binned, reproduces the official evaluator) or ``"exact"`` (unbinned).
    """

    def __init__(self, mode: str = "official") -> None:
        if mode not in ("official", "exact"):
            raise ValueError(f"mode must be 'official' or 'exact', got {mode!r}")
        self.mode = mode
        self.num_pos = 0
        self.num_neg = 0
        self.num_frames = 0
        self._frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.hist_pos = np.zeros(65536, np.int64)   # exact mode; also used for score histograms in reports
        self.hist_neg = np.zeros(65536, np.int64)

    def add(self, score_map: np.ndarray, label: np.ndarray, frame_id: str = "") -> None:
        """Add one frame: ``score_map`` ``(H, W)`` float (higher = anomalous), ``label`` ``(H, W)`` uint8."""
        check_frame(score_map, label, frame_id)
        roi = label != LABEL_VOID
        scores = to_float16(score_map)[roi]
        positive = label[roi] == LABEL_ANOMALY
        self.num_frames += 1
        if scores.size == 0:
            return
        self.num_pos += int(positive.sum())
        self.num_neg += int(scores.size - positive.sum())
        keys = _float16_keys(scores)
        self.hist_pos += np.bincount(keys[positive], minlength=65536)
        self.hist_neg += np.bincount(keys[~positive], minlength=65536)
        if self.mode == "official":
            self._frames.append(_official_frame_bins(scores, positive))

    def compute(self) -> PixelResult:
        if self.mode == "exact":
            present = np.nonzero(self.hist_pos + self.hist_neg)[0][::-1]     # distinct values, descending
            thresholds = _float16_from_keys(present)
            tp = np.cumsum(self.hist_pos[present])
            fp = np.cumsum(self.hist_neg[present])
        else:
            if not self._frames:
                raise ValueError("no frame with non-void pixels was added")
            thresholds = np.concatenate([f[0] for f in self._frames])
            # Stable, so equal thresholds of different frames keep one order on every CPU. The official code's
            # np.argsort (quicksort) orders such ties differently on AVX-512 and AVX2 builds of numpy, and the
            # first curve point it keeps depends on that order: the official AuPRC of a tie-heavy fixture moved
            # by 0.06 points between the two (docs/evaluation.md).
            order = np.argsort(thresholds, kind="stable")[::-1]
            tp = np.cumsum(np.concatenate([f[1] for f in self._frames])[order].astype(np.float64))
            fp = np.cumsum(np.concatenate([f[2] for f in self._frames])[order].astype(np.float64))
            thresholds = thresholds[order]
        return curve_from_counts(thresholds, tp, fp, self.num_pos, self.num_neg, self.mode, self.num_frames)

    def score_histograms(self, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Counts of inlier and anomaly pixel scores (float16 values) in ``bins`` (edges), for plots."""
        present = np.nonzero(self.hist_pos + self.hist_neg)[0]
        values = _float16_from_keys(present)
        neg = np.histogram(values, bins=bins, weights=self.hist_neg[present])[0]
        pos = np.histogram(values, bins=bins, weights=self.hist_pos[present])[0]
        return neg, pos

    def score_range(self) -> tuple[float, float]:
        present = np.nonzero(self.hist_pos + self.hist_neg)[0]
        if not present.size:
            return 0.0, 1.0
        values = _float16_from_keys(present[[0, -1]])
        return float(values[0]), float(values[1])
