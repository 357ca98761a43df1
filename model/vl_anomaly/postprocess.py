"""From a score map to what a planner consumes: obstacle mask and obstacle list. Pure numpy/OpenCV.

1. ``mask = score ≥ threshold``. With ``adaptive_quantile`` the threshold is the frame's own
   (:func:`frame_threshold`, a constant-false-alarm-rate rule): the ``adaptive_quantile`` of the score over the
   predicted drivable region plus ``adaptive_offset``, kept between ``adaptive_floor`` and ``threshold``. A road the
   model is sure of (the score near 0 almost everywhere on it) gets a low threshold and small, faint obstacles on
   it survive; a scene out of the model's domain (a dirt road, uncertain everywhere) gets ``threshold``;
2. optionally keep only the drivable region: predicted road/sidewalk with enclosed holes filled (an obstacle
   on the road is *not* predicted road, but it is surrounded by road) and dilated by a margin in pixels;
3. optionally close gaps of up to ``merge_gap_px`` so that fragments of one object become one component;
4. each 8-connected component is decided as a whole (issue 13: the list a planner gets must stay quiet): it
   becomes an obstacle when it has at least ``min_area_px`` pixels, at most ``max_area_frac`` of the image,
   a mean score of at least ``min_mean_score``, a highest score of at least ``min_peak_score`` (and at least
   ``min_peak_margin`` above the frame's threshold), with ``min_drivable_overlap`` at least that share of its
   pixels in the drivable region, and with ``min_size_rel_camera_height`` a size that fits its distance (below).
   Rejected components are removed from the mask too.

The size rule is the flat-ground model in pixels: a level pinhole camera ``h`` metres above flat ground sees an
object of extent ``S`` metres whose ground contact is at image row ``v`` with an extent of about
``S · (v − v_horizon) / h`` pixels, whatever the focal length. So ``sqrt(area) ≥ k · (v − v_horizon)`` keeps the
components at least ``k · h`` metres across (``k = 0.1``, a 1.5 m high camera: 15 cm), with ``v`` the row below the
component's lowest pixel and ``v_horizon = horizon_row_frac · H``. A far obstacle may then be a few pixels wide,
while a texture patch near the vehicle must be large to count. Components that end above the horizon keep only
``min_area_px``.
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
        adaptive_quantile: scene-adaptive threshold (module docstring; None = the fixed ``threshold``): this
            quantile of the score over the predicted drivable region (no margin), plus ``adaptive_offset``,
            clipped to ``[adaptive_floor, threshold]``. Frames with less than 1 % of the image drivable use
            ``threshold``. Needs the semantic map.
        adaptive_offset: added to that quantile (score units).
        adaptive_floor: lowest frame threshold (score units).
        min_peak_margin: a component's highest score must reach the frame's threshold plus this (None = off):
            :attr:`min_peak_score` relative to a threshold that moves.
        min_size_rel_camera_height: smallest obstacle extent in units of the camera's height above the ground
            (flat-ground size rule of the module docstring; 0 = off).
        horizon_row_frac: image row of the horizon as a share of the height (0.5: a level camera with its
            principal point at the image centre; a camera pitched down by ``p`` has it ``fy · tan(p)`` pixels
            higher).
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
    adaptive_quantile: float | None = None
    adaptive_offset: float = 0.2
    adaptive_floor: float = 0.3
    min_peak_margin: float | None = None
    min_size_rel_camera_height: float = 0.0
    horizon_row_frac: float = 0.5

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
        if self.adaptive_quantile is not None and not 0.0 < self.adaptive_quantile < 1.0:
            raise ConfigError(f"adaptive_quantile must be in (0, 1) or None, got {self.adaptive_quantile}")
        if not (np.isfinite(self.adaptive_offset) and np.isfinite(self.adaptive_floor)):
            raise ConfigError(f"adaptive_offset and adaptive_floor must be finite numbers, got "
                              f"{self.adaptive_offset}, {self.adaptive_floor}")
        if self.adaptive_quantile is not None and self.adaptive_floor > self.threshold:
            raise ConfigError(f"adaptive_floor ({self.adaptive_floor}) must not exceed threshold ({self.threshold}), "
                              "the highest frame threshold")
        if self.min_peak_margin is not None and not (np.isfinite(self.min_peak_margin) and self.min_peak_margin >= 0):
            raise ConfigError(f"min_peak_margin must be a number ≥ 0 or None, got {self.min_peak_margin}")
        if not (np.isfinite(self.min_size_rel_camera_height) and self.min_size_rel_camera_height >= 0):
            raise ConfigError(f"min_size_rel_camera_height must be a number ≥ 0, got {self.min_size_rel_camera_height}")
        if not 0.0 <= self.horizon_row_frac < 1.0:
            raise ConfigError(f"horizon_row_frac must be in [0, 1), got {self.horizon_row_frac}")

    @property
    def needs_semantic(self) -> bool:
        """True when the rules read the drivable region (the semantic map of the frame)."""
        return self.drivable_only or self.min_drivable_overlap > 0 or self.adaptive_quantile is not None

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
    return dilate(drivable, margin_px)


def dilate(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """``(H, W)`` bool dilated by a disc of ``radius_px`` (0 = unchanged)."""
    if radius_px <= 0:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


#: Smallest share of the image the drivable region must cover for the scene-adaptive threshold to read it.
MIN_ADAPTIVE_REGION = 0.01


def frame_threshold(score_map: np.ndarray, cfg: PostprocessCfg, region: np.ndarray | None) -> float:
    """The threshold of this frame: ``cfg.threshold``, or with ``cfg.adaptive_quantile`` the scene-adaptive one,
    ``clip(quantile(score over region) + adaptive_offset, adaptive_floor, threshold)``.

    Args: score_map ``(H, W)`` float; region ``(H, W)`` bool drivable region without margin (None or under
    :data:`MIN_ADAPTIVE_REGION` of the image: ``cfg.threshold``).
    """
    if cfg.adaptive_quantile is None or region is None or region.mean() < MIN_ADAPTIVE_REGION:
        return float(cfg.threshold)
    level = float(np.quantile(score_map[region], cfg.adaptive_quantile)) + cfg.adaptive_offset
    return float(min(max(level, cfg.adaptive_floor), cfg.threshold))


def find_obstacles(mask: np.ndarray, score_map: np.ndarray, min_area_px: int, max_area_px: int | None = None,
                   min_mean_score: float | None = None, region: np.ndarray | None = None,
                   min_region_overlap: float = 0.0,
                   min_peak_score: float | None = None, min_size_per_row: float = 0.0,
                   horizon_row: float = 0.0) -> tuple[np.ndarray, list[Obstacle]]:
    """8-connected components of ``mask``, each kept or rejected as a whole.

    Args:
        mask: ``(H, W)`` bool candidate pixels.
        score_map: ``(H, W)`` float32 scores for the statistics.
        min_area_px, max_area_px: component size limits (pixels).
        min_mean_score: lowest mean score of a kept component (None = no limit).
        region, min_region_overlap: ``(H, W)`` bool drivable region and the share of a component's pixels that
            must lie in it.
        min_peak_score: lowest maximum score of a kept component (None = no limit).
        min_size_per_row, horizon_row: flat-ground size rule (module docstring): ``sqrt(area) ≥ min_size_per_row ·
            (y + h − horizon_row)`` for a component whose bounding box ends at row ``y + h − 1`` (0 = off).
    Returns:
        ``(kept (H, W) bool, obstacles)`` with obstacles sorted by decreasing area, ids 1..N.
    """
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA]
    ok = areas >= min_area_px
    ok[0] = False
    if max_area_px is not None:
        ok &= areas <= max_area_px
    if min_size_per_row > 0:
        below = np.maximum(stats[:, cv2.CC_STAT_TOP] + stats[:, cv2.CC_STAT_HEIGHT] - horizon_row, 0.0)
        ok &= np.sqrt(areas) >= min_size_per_row * below
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


def postprocess(score_map: np.ndarray, cfg: PostprocessCfg, semantic: np.ndarray | None = None
                ) -> tuple[np.ndarray, list[Obstacle], np.ndarray | None, float]:
    """Score map ``(H, W)`` → ``(obstacle mask (H, W) bool, obstacles, drivable region (H, W) bool or None,
    the frame's threshold)``.

    ``semantic`` (train IDs at the same resolution) is required when the rules read the drivable region
    (``drivable_only``, ``min_drivable_overlap`` or the scene-adaptive threshold).
    """
    region = core = None
    if cfg.needs_semantic:
        if semantic is None:
            raise ConfigError("drivable_only / min_drivable_overlap / adaptive_quantile need the semantic map "
                              "(train IDs) of the frame")
        core = drivable_region(semantic, cfg.drivable_classes)
        region = dilate(core, cfg.drivable_margin_px)
    threshold = frame_threshold(score_map, cfg, core)
    candidates = threshold_mask(score_map, threshold)
    if cfg.drivable_only:
        candidates &= region
    if cfg.merge_gap_px > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * cfg.merge_gap_px + 1, 2 * cfg.merge_gap_px + 1))
        candidates = cv2.morphologyEx(candidates.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool)
    max_area = None if cfg.max_area_frac >= 1.0 else int(cfg.max_area_frac * score_map.size)
    peaks = [v for v in (cfg.min_peak_score, None if cfg.min_peak_margin is None
                         else threshold + cfg.min_peak_margin) if v is not None]
    kept, obstacles = find_obstacles(candidates, score_map, cfg.min_area_px, max_area, cfg.min_mean_score, region,
                                     cfg.min_drivable_overlap, max(peaks) if peaks else None,
                                     cfg.min_size_rel_camera_height, cfg.horizon_row_frac * score_map.shape[0])
    return kept, obstacles, region, threshold
