"""Post-processing: threshold, drivable region, 8-connected components → obstacles."""

from __future__ import annotations

import numpy as np
import pytest

from vl_anomaly import ConfigError, PostprocessCfg
from vl_anomaly.postprocess import drivable_region, find_obstacles, postprocess


def test_components_statistics_and_order():
    score = np.zeros((40, 60), np.float32)
    score[5:10, 10:20] = 0.8          # 50 px block
    score[7, 12] = 0.95
    score[20:30, 30:50] = 0.6         # 200 px block
    mask, obstacles, _ = postprocess(score, PostprocessCfg(threshold=0.5, min_area_px=1))
    assert [o.area_px for o in obstacles] == [200, 50]     # sorted by area, ids 1..N
    assert [o.id for o in obstacles] == [1, 2]
    big, small = obstacles
    assert big.bbox == (30, 20, 20, 10)
    assert big.centroid == pytest.approx((39.5, 24.5))
    assert big.mean_score == pytest.approx(0.6) and big.max_score == pytest.approx(0.6)
    assert small.max_score == pytest.approx(0.95)
    assert small.mean_score == pytest.approx((49 * 0.8 + 0.95) / 50, rel=1e-6)
    assert mask.sum() == 250


def test_eight_connectivity_joins_diagonal_pixels():
    mask = np.zeros((10, 10), bool)
    mask[2, 2] = mask[3, 3] = mask[4, 4] = True
    kept, obstacles = find_obstacles(mask, mask.astype(np.float32), min_area_px=3)
    assert len(obstacles) == 1 and obstacles[0].area_px == 3 and kept.sum() == 3


def test_min_area_removes_small_components_from_mask():
    score = np.zeros((30, 30), np.float32)
    score[1:3, 1:3] = 1.0          # 4 px
    score[10:20, 10:20] = 1.0      # 100 px
    mask, obstacles, _ = postprocess(score, PostprocessCfg(threshold=0.5, min_area_px=50))
    assert len(obstacles) == 1 and mask.sum() == 100 and not mask[1:3, 1:3].any()


def test_threshold_is_inclusive():
    score = np.full((20, 20), 0.5, np.float32)
    mask, obstacles, _ = postprocess(score, PostprocessCfg(threshold=0.5, min_area_px=1))
    assert mask.all() and obstacles[0].area_px == 400


def test_drivable_region_fills_enclosed_holes_and_adds_margin():
    semantic = np.full((50, 50), 8, np.uint8)       # vegetation
    semantic[20:50, 10:40] = 0                      # road touching the bottom border
    semantic[30:35, 20:25] = 13                     # a "car" (unknown object) inside the road: a hole
    region = drivable_region(semantic, (0, 1), margin_px=0)
    assert region[30:35, 20:25].all(), "objects enclosed by road belong to the drivable region"
    assert not region[0:20].any() and not region[:, :10].any()
    with_margin = drivable_region(semantic, (0, 1), margin_px=3)
    assert with_margin[17, 20] and not with_margin[15, 20]


def test_drivable_only_filters_anomalies():
    score = np.zeros((50, 50), np.float32)
    score[30:35, 20:25] = 1.0          # on the road
    score[2:8, 2:8] = 1.0              # in the vegetation
    semantic = np.full((50, 50), 8, np.uint8)
    semantic[20:50, 10:40] = 0
    semantic[30:35, 20:25] = 13
    cfg = PostprocessCfg(threshold=0.5, min_area_px=1, drivable_only=True, drivable_margin_px=0)
    mask, obstacles, region = postprocess(score, cfg, semantic)
    assert len(obstacles) == 1 and obstacles[0].bbox == (20, 30, 5, 5) and region is not None
    with pytest.raises(ConfigError, match="semantic"):
        postprocess(score, cfg, None)


@pytest.mark.parametrize("kwargs", [dict(threshold=float("nan")), dict(min_area_px=0), dict(drivable_margin_px=-1),
                                    dict(drivable_classes=())])
def test_bad_parameters_rejected(kwargs):
    with pytest.raises(ConfigError):
        PostprocessCfg(**kwargs)
