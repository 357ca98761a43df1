"""Obstacle-list metrics: the published obstacle list as a planner meets it (issue 13), not pixel AP at an oracle
threshold.

Per frame, with the label map (0 inlier, 1 anomaly/obstacle, 255 void) and the obstacle components the
post-processing published (``(H, W)`` int32, 0 = none, i = obstacle i):

* **labelled objects**: 8-connected components of ``label == 1`` with ≥ ``min_area_px`` (50) pixels;
* a published obstacle of ≥ ``min_area_px`` pixels is **void** (counted neither way) when ≥ ``void_share``
  (90 %) of its pixels are void; otherwise it is **real** when ≥ ``real_share`` (25 %) of its non-void pixels are
  labelled anomaly, else **false**;
* an object is **found** when ≥ ``found_coverage`` (25 %) of its pixels lie in published obstacles that are not
  false. (Coverage by false obstacles does not count: otherwise one blob over half the scene — a single false
  obstacle — would "find" every object under it, and a low threshold would look best. Figures measured before
  2026-12-02 counted any coverage.)

Over a set: false obstacles per frame, share of objects found, share of (non-void) obstacles that are real, and
the **false area**: the share of the image covered by false obstacles, averaged over frames. A count alone hides
the worst failure a planner meets — one "obstacle" over most of the scene when the model is out of its domain
counts as one false obstacle but blocks every path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass
class ObstacleCounts:
    """Counts of one frame or a set (summed); ``frames`` = number of frames."""

    frames: int = 0
    objects: int = 0
    found: int = 0
    obstacles: int = 0
    real: int = 0
    false: int = 0
    void: int = 0
    false_px: int = 0
    pixels: int = 0

    def __add__(self, other: "ObstacleCounts") -> "ObstacleCounts":
        return ObstacleCounts(**{k: getattr(self, k) + getattr(other, k) for k in asdict(self)})

    @property
    def false_per_frame(self) -> float:
        return self.false / self.frames if self.frames else float("nan")

    @property
    def found_share(self) -> float:
        return self.found / self.objects if self.objects else float("nan")

    @property
    def false_area_share(self) -> float:
        """Share of the image covered by false obstacles, over all frames (pixels of false obstacles / pixels)."""
        return self.false_px / self.pixels if self.pixels else float("nan")

    @property
    def real_share(self) -> float:
        counted = self.real + self.false
        return self.real / counted if counted else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "false_per_frame": self.false_per_frame, "found_share": self.found_share,
                "real_share": self.real_share, "false_area_share": self.false_area_share}


def obstacle_counts(obstacle_labels: np.ndarray, label: np.ndarray, min_area_px: int = 50,
                    found_coverage: float = 0.25, real_share: float = 0.25, void_share: float = 0.9) -> ObstacleCounts:
    """Counts of one frame (module docstring).

    Args:
        obstacle_labels: ``(H, W)`` integer map of the published obstacles (0 = no obstacle).
        label: ``(H, W)`` uint8 ground truth, 0 inlier, 1 anomaly, 255 void.
    """
    if obstacle_labels.shape != label.shape:
        raise ValueError(f"obstacle map {obstacle_labels.shape} and label {label.shape} differ in size")
    counts = ObstacleCounts(frames=1, pixels=int(label.size))
    ids = obstacle_labels.ravel()
    sizes = np.bincount(ids, minlength=1)
    void = np.bincount(ids, weights=(label.ravel() == 255), minlength=sizes.size)
    anomaly = np.bincount(ids, weights=(label.ravel() == 1), minlength=sizes.size)
    not_false = np.zeros(sizes.size, dtype=bool)          # obstacles whose coverage finds objects
    for i in np.flatnonzero(sizes):
        if i == 0:
            continue
        is_void = void[i] >= void_share * sizes[i]
        is_real = not is_void and anomaly[i] >= real_share * (sizes[i] - void[i])
        not_false[i] = is_void or is_real
        if sizes[i] < min_area_px:
            continue
        counts.obstacles += 1
        counts.void += int(is_void)
        counts.real += int(is_real)
        counts.false += int(not is_void and not is_real)
        counts.false_px += int(sizes[i]) if not is_void and not is_real else 0
    covered = not_false[obstacle_labels]
    n, objects, stats, _ = cv2.connectedComponentsWithStats((label == 1).astype(np.uint8), connectivity=8)
    for i in range(1, n):
        area = int(stats[i, cv2.CC_STAT_AREA])
        if area < min_area_px:
            continue
        counts.objects += 1
        x, y, w, h = (int(v) for v in stats[i, :4])
        inside = objects[y:y + h, x:x + w] == i
        counts.found += int(covered[y:y + h, x:x + w][inside].sum() >= found_coverage * area)
    return counts


def mask_obstacle_counts(mask: np.ndarray, label: np.ndarray) -> ObstacleCounts:
    """:func:`obstacle_counts` of an obstacle mask ``(H, W)`` (bool, or 0 / 255 as the node publishes it): its
    8-connected components are the obstacles, as the post-processing builds them."""
    _, components = cv2.connectedComponents((np.asarray(mask) > 0).astype(np.uint8), connectivity=8)
    return obstacle_counts(components, label)


__all__ = ["ObstacleCounts", "mask_obstacle_counts", "obstacle_counts"]
