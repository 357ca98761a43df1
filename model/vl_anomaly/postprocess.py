"""From a score map to what a planner consumes: obstacle mask and obstacle list. Pure numpy/OpenCV.

1. ``mask = score ≥ threshold``;
2. optionally keep only the drivable region: predicted road/sidewalk with enclosed holes filled (an obstacle
   on the road is *not* predicted road, but it is surrounded by road) and dilated by a margin in pixels;
3. optionally close gaps of up to ``merge_gap_px`` so that fragments of one object become one component;
4. each 8-connected component is decided as a whole (issue 13: the list a planner gets must stay quiet): it
   becomes an obstacle when it has at least ``min_area_px`` pixels, at most ``max_area_frac`` of the image,
   a mean score of at least ``min_mean_score``, a highest score of at least ``min_peak_score`` and, with
   ``min_drivable_overlap``, at least that share of its pixels in the drivable region. Rejected components are
   removed from the mask too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from .constants import DRIVABLE_CLASS_IDS
from .errors import ConfigError


@dataclass(frozen=True)
class PostprocessCfg:
    """Post-processing parameters.

    Attributes:
        threshold: score at or above which a pixel is anomalous (score units).
        min_area_px: smallest obstacle kept, in pixels of the output (input image) resolution.
        drivable_only: keep anomalies only inside the drivable region.
        drivable_classes: train IDs forming the drivable region (default road, sidewalk).
        drivable_margin_px: dilation of the drivable region, in pixels.
        merge_gap_px: radius (px) of the morphological closing that merges fragments (0 = off).
        max_area_frac: largest obstacle kept, as a share of the image (1 = no limit): sky or vegetation lit up
            as one region is not an obstacle.
        min_mean_score: a component's mean score must reach this (None = off): a few uncertain pixels at the
            threshold do not make an obstacle.
        min_drivable_overlap: share of a component's pixels that must lie in the drivable region (0 = off;
            needs the semantic map).
        min_peak_score: a component's highest score must reach this (None = off): a real obstacle has a confident
            core, a class boundary or texture lit up at the threshold has none.
    """

    threshold: float = 0.5
    min_area_px: int = 100
    drivable_only: bool = False
    drivable_classes: tuple[int, ...] = DRIVABLE_CLASS_IDS
    drivable_margin_px: int = 20
    merge_gap_px: int = 0
    max_area_frac: float = 1.0
    min_mean_score: float | None = None
    min_drivable_overlap: float = 0.0
    min_peak_score: float | None = None

    def __post_init__(self) -> None:
        if not np.isfinite(self.threshold):
            raise ConfigError(f"threshold must be a finite number, got {self.threshold}")
        if self.min_area_px < 1:
            raise ConfigError(f"min_area_px must be ≥ 1, got {self.min_area_px}")
        if self.drivable_margin_px < 0:
            raise ConfigError(f"drivable_margin_px must be ≥ 0, got {self.drivable_margin_px}")
        if not self.drivable_classes:
            raise ConfigError("drivable_classes must name at least one class")
        if self.merge_gap_px < 0:
            raise ConfigError(f"merge_gap_px must be ≥ 0, got {self.merge_gap_px}")
        if not 0.0 < self.max_area_frac <= 1.0:
            raise ConfigError(f"max_area_frac must be in (0, 1], got {self.max_area_frac}")
        if self.min_mean_score is not None and not np.isfinite(self.min_mean_score):
            raise ConfigError(f"min_mean_score must be a finite number or None, got {self.min_mean_score}")
        if self.min_peak_score is not None and not np.isfinite(self.min_peak_score):
            raise ConfigError(f"min_peak_score must be a finite number or None, got {self.min_peak_score}")
        if not 0.0 <= self.min_drivable_overlap <= 1.0:
            raise ConfigError(f"min_drivable_overlap must be in [0, 1], got {self.min_drivable_overlap}")

    @property
    def needs_semantic(self) -> bool:
        """True when the rules read the drivable region (the semantic map of the frame)."""
        return self.drivable_only or self.min_drivable_overlap > 0

    @classmethod
    def from_dict(cls, values: dict) -> "PostprocessCfg":
        """From a mapping (a model config's ``postprocess`` section); unknown keys are an error."""
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown post-processing settings {sorted(unknown)}; known: {sorted(known)}")
        values = dict(values)
        if "drivable_classes" in values:
            values["drivable_classes"] = tuple(values["drivable_classes"])
        return cls(**values)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["drivable_classes"] = list(self.drivable_classes)
        return out


@dataclass
class Obstacle:
    """One connected anomalous region, in pixels of the input image.

    Attributes:
        id: 1-based index within the frame (ordered by decreasing area).
        bbox: ``(x, y, width, height)``, x to the right, y down, top-left pixel inclusive.
        area_px: number of pixels.
        centroid: ``(x, y)`` mean pixel position.
        mean_score, max_score: statistics of the score over the region's pixels.
        ground: optional ground-plane position (filled by the ROS layer when a camera model is known).
    """

    id: int
    bbox: tuple[int, int, int, int]
    area_px: int
    centroid: tuple[float, float]
    mean_score: float
    max_score: float
    ground: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "bbox": list(self.bbox), "area_px": self.area_px,
                "centroid": [round(self.centroid[0], 3), round(self.centroid[1], 3)],
                "mean_score": self.mean_score, "max_score": self.max_score, **({"ground": self.ground}
                                                                                 if self.ground else {})}


def threshold_mask(score_map: np.ndarray, threshold: float) -> np.ndarray:
    """``(H, W)`` float → ``(H, W)`` bool, ``score ≥ threshold``."""
    return score_map >= threshold


def drivable_region(semantic: np.ndarray, classes: tuple[int, ...] = DRIVABLE_CLASS_IDS,
                    margin_px: int = 0) -> np.ndarray:
    """Drivable region from a train-ID map ``(H, W)`` uint8 → ``(H, W)`` bool.

    Pixels of ``classes``, plus every non-drivable region fully enclosed by them (4-connected regions not
    touching the image border), dilated by a disc of radius ``margin_px``.
    """
    drivable = np.isin(semantic, classes)
    outside = (~drivable).astype(np.uint8)
    count, labels = cv2.connectedComponents(outside, connectivity=4)
    if count > 1:
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        enclosed = np.ones(count, dtype=bool)
        enclosed[0] = False
        enclosed[border] = False
        drivable |= enclosed[labels]
    if margin_px > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin_px + 1, 2 * margin_px + 1))
        drivable = cv2.dilate(drivable.astype(np.uint8), kernel).astype(bool)
    return drivable


def find_obstacles(mask: np.ndarray, score_map: np.ndarray, min_area_px: int, max_area_px: int | None = None,
                   min_mean_score: float | None = None, region: np.ndarray | None = None,
                   min_region_overlap: float = 0.0,
                   min_peak_score: float | None = None) -> tuple[np.ndarray, list[Obstacle]]:
    """8-connected components of ``mask``, each kept or rejected as a whole.

    Args:
        mask: ``(H, W)`` bool candidate pixels.
        score_map: ``(H, W)`` float32 scores for the statistics.
        min_area_px, max_area_px: component size limits (pixels).
        min_mean_score: lowest mean score of a kept component (None = no limit).
        region, min_region_overlap: ``(H, W)`` bool drivable region and the share of a component's pixels that
            must lie in it.
        min_peak_score: lowest maximum score of a kept component (None = no limit).
    Returns:
        ``(kept (H, W) bool, obstacles)`` with obstacles sorted by decreasing area, ids 1..N.
    """
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA]
    ok = areas >= min_area_px
    ok[0] = False
    if max_area_px is not None:
        ok &= areas <= max_area_px
    if count > 1 and (min_mean_score is not None or (region is not None and min_region_overlap > 0)):
        flat = labels.ravel()
        if min_mean_score is not None:
            sums = np.bincount(flat, weights=score_map.ravel().astype(np.float64), minlength=count)
            ok &= sums >= min_mean_score * areas
        if region is not None and min_region_overlap > 0:
            inside = np.bincount(flat, weights=region.ravel(), minlength=count)
            ok &= inside >= min_region_overlap * areas

    def values_of(i: int) -> np.ndarray:                      # scores of component i, over its bounding box only
        x, y, w, h = (int(v) for v in stats[i, :4])
        return score_map[y:y + h, x:x + w][labels[y:y + h, x:x + w] == i]

    survivors = {int(i): values_of(i) for i in np.flatnonzero(ok)}
    if min_peak_score is not None:
        survivors = {i: v for i, v in survivors.items() if v.max() >= min_peak_score}
    keep = sorted(survivors, key=lambda i: (-int(areas[i]), i))
    kept = np.zeros(mask.shape, dtype=bool)
    obstacles: list[Obstacle] = []
    if keep:
        lut = np.zeros(count, dtype=bool)
        lut[keep] = True
        kept = lut[labels]
        for new_id, i in enumerate(keep, start=1):
            x, y, w, h, area = (int(v) for v in stats[i, :5])
            values = survivors[i]
            obstacles.append(Obstacle(id=new_id, bbox=(x, y, w, h), area_px=area,
                                      centroid=(float(centroids[i, 0]), float(centroids[i, 1])),
                                      mean_score=float(values.mean(dtype=np.float64)),
                                      max_score=float(values.max())))
    return kept, obstacles


def postprocess(score_map: np.ndarray, cfg: PostprocessCfg,
                semantic: np.ndarray | None = None) -> tuple[np.ndarray, list[Obstacle], np.ndarray | None]:
    """Score map ``(H, W)`` → ``(obstacle mask (H, W) bool, obstacles, drivable region (H, W) bool or None)``.

    ``semantic`` (train IDs at the same resolution) is required when the rules read the drivable region
    (``drivable_only`` or ``min_drivable_overlap``).
    """
    candidates = threshold_mask(score_map, cfg.threshold)
    region = None
    if cfg.needs_semantic:
        if semantic is None:
            raise ConfigError("drivable_only / min_drivable_overlap need the semantic map (train IDs) of the frame")
        region = drivable_region(semantic, cfg.drivable_classes, cfg.drivable_margin_px)
        if cfg.drivable_only:
            candidates &= region
    if cfg.merge_gap_px > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * cfg.merge_gap_px + 1, 2 * cfg.merge_gap_px + 1))
        candidates = cv2.morphologyEx(candidates.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool)
    max_area = None if cfg.max_area_frac >= 1.0 else int(cfg.max_area_frac * score_map.size)
    kept, obstacles = find_obstacles(candidates, score_map, cfg.min_area_px, max_area, cfg.min_mean_score, region,
                                     cfg.min_drivable_overlap, cfg.min_peak_score)
    return kept, obstacles, region
