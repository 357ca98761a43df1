"""Post-processing: threshold, drivable region, 8-connected components → obstacles."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from vl_anomaly import ConfigError, PostprocessCfg
from vl_anomaly.postprocess import drivable_region, find_obstacles, postprocess


def test_components_statistics_and_order():
    score = np.zeros((40, 60), np.float32)
    score[5:10, 10:20] = 0.8          # 50 px block
    score[7, 12] = 0.95
    score[20:30, 30:50] = 0.6         # 200 px block
    mask, obstacles, _, _ = postprocess(score, PostprocessCfg(threshold=0.5, min_area_px=1))
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
    mask, obstacles, _, _ = postprocess(score, PostprocessCfg(threshold=0.5, min_area_px=50))
    assert len(obstacles) == 1 and mask.sum() == 100 and not mask[1:3, 1:3].any()


def test_threshold_is_inclusive():
    score = np.full((20, 20), 0.5, np.float32)
    mask, obstacles, _, _ = postprocess(score, PostprocessCfg(threshold=0.5, min_area_px=1))
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
    mask, obstacles, region, _ = postprocess(score, cfg, semantic)
    assert len(obstacles) == 1 and obstacles[0].bbox == (20, 30, 5, 5) and region is not None
    with pytest.raises(ConfigError, match="semantic"):
        postprocess(score, cfg, None)


@pytest.mark.parametrize("kwargs", [dict(threshold=float("nan")), dict(min_area_px=0), dict(drivable_margin_px=-1),
                                    dict(drivable_classes=())])
def test_bad_parameters_rejected(kwargs):
    with pytest.raises(ConfigError):
        PostprocessCfg(**kwargs)


def test_component_rules_decide_whole_components():
    """Each rule of the quiet obstacle list on a synthetic score map: mean score, peak score, largest area,
    drivable overlap, and merging the fragments of one object."""
    from vl_anomaly.postprocess import PostprocessCfg, postprocess

    score = np.zeros((100, 200), np.float32)
    score[10:20, 10:20] = 0.55            # A: 100 px, barely above the threshold everywhere (mean 0.55)
    score[10:20, 40:50] = 0.95            # B: 100 px, confident
    score[40:100, 100:200] = 0.9          # C: 6000 px = 30 % of the image (a lit-up sky / wall)
    score[60:70, 20:25] = 0.9             # D1 and D2: two fragments of one object, 3 px apart
    score[60:70, 28:33] = 0.9
    semantic = np.full((100, 200), 10, np.uint8)         # sky …
    semantic[50:, :100] = 0                               # … road in the lower left, where D lies
    base = dict(threshold=0.5, min_area_px=20, drivable_margin_px=0)
    _, obstacles, _, _ = postprocess(score, PostprocessCfg(**base))
    assert len(obstacles) == 5
    _, obstacles, _, _ = postprocess(score, PostprocessCfg(**base, min_mean_score=0.6))
    assert len(obstacles) == 4 and all(o.mean_score >= 0.6 for o in obstacles)           # A dropped
    score[14, 14] = 0.8                   # A gets one confident pixel: a peak rule keeps it, a mean rule does not
    _, obstacles, _, _ = postprocess(score, PostprocessCfg(**base, min_peak_score=0.85))
    assert len(obstacles) == 4 and all(o.max_score >= 0.85 for o in obstacles)            # A dropped
    _, obstacles, _, _ = postprocess(score, PostprocessCfg(**base, min_peak_score=0.75))
    assert len(obstacles) == 5                                                             # A kept by its peak
    score[14, 14] = 0.55
    _, obstacles, _, _ = postprocess(score, PostprocessCfg(**base, max_area_frac=0.1))
    assert all(o.area_px < 2000 for o in obstacles) and len(obstacles) == 4               # C dropped
    _, obstacles, _, _ = postprocess(score, PostprocessCfg(**base, merge_gap_px=2))
    assert len(obstacles) == 4                                                             # D1 + D2 = one
    mask, obstacles, region, _ = postprocess(score, PostprocessCfg(**base, min_drivable_overlap=0.5), semantic)
    assert len(obstacles) == 2 and all(o.centroid[1] > 50 for o in obstacles)             # only D1, D2
    assert region is not None and not mask[10:20].any()                                   # removed from the mask
    with pytest.raises(ConfigError, match="semantic"):
        postprocess(score, PostprocessCfg(**base, min_drivable_overlap=0.5))
    for bad in (dict(max_area_frac=0.0), dict(merge_gap_px=-1), dict(min_drivable_overlap=1.5),
                dict(min_mean_score=float("nan")), dict(min_peak_score=float("inf"))):
        with pytest.raises(ConfigError):
            PostprocessCfg(**bad)
    with pytest.raises(ConfigError, match="unknown post-processing settings"):
        PostprocessCfg.from_dict({"treshold": 0.5})


def test_scene_adaptive_threshold_follows_the_road():
    """frame_threshold: quantile of the score over the predicted drivable region plus an offset, clipped to
    [adaptive_floor, threshold]; too little road, or no adaptive rule, gives the fixed threshold. A faint obstacle
    on a road the model is sure of is listed; the same obstacle on an uncertain road is not."""
    from vl_anomaly.postprocess import frame_threshold

    semantic = np.full((100, 100), 10, np.uint8)          # sky above …
    semantic[40:, :] = 0                                   # … road below (60 % of the image)
    core = drivable_region(semantic)
    cfg = PostprocessCfg(threshold=0.6, adaptive_quantile=0.9, adaptive_offset=0.2, adaptive_floor=0.3,
                         min_area_px=20, drivable_margin_px=0)
    clean = np.zeros((100, 100), np.float32)
    clean[70:80, 45:55] = 0.45                             # a faint 100 px obstacle on a sure road
    assert frame_threshold(clean, cfg, core) == pytest.approx(0.3)                 # 0.0 + 0.2 → the floor
    uncertain = clean.copy()
    uncertain[40:, :] = np.maximum(uncertain[40:, :], 0.5)  # the whole road at 0.5: out of the model's domain
    assert frame_threshold(uncertain, cfg, core) == pytest.approx(0.6)             # 0.5 + 0.2 → the ceiling
    middle = np.where(core, 0.3, 0.0).astype(np.float32)
    assert frame_threshold(middle, cfg, core) == pytest.approx(0.5)                # 0.3 + 0.2, within bounds
    assert frame_threshold(middle, cfg, None) == 0.6
    assert frame_threshold(middle, cfg, np.zeros_like(core)) == 0.6               # no road: the fixed threshold
    assert frame_threshold(middle, PostprocessCfg(threshold=0.6), core) == 0.6     # not adaptive

    mask, obstacles, _, threshold = postprocess(clean, cfg, semantic)
    assert threshold == pytest.approx(0.3) and len(obstacles) == 1 and mask[75, 50]
    _, obstacles, _, threshold = postprocess(uncertain, cfg, semantic)
    assert threshold == pytest.approx(0.6) and obstacles == []
    with pytest.raises(ConfigError, match="semantic"):
        postprocess(clean, cfg)
    # the peak margin moves with the frame's threshold: 0.45 is 0.15 above 0.3, not 0.2
    _, obstacles, _, _ = postprocess(clean, replace(cfg, min_peak_margin=0.15), semantic)
    assert len(obstacles) == 1
    _, obstacles, _, _ = postprocess(clean, replace(cfg, min_peak_margin=0.2), semantic)
    assert obstacles == []
    for bad in (dict(adaptive_quantile=1.0), dict(adaptive_quantile=0.9, adaptive_floor=0.7),
                dict(min_peak_margin=-0.1), dict(adaptive_offset=float("nan"))):
        with pytest.raises(ConfigError):
            PostprocessCfg(threshold=0.6, **bad)


def test_flat_ground_size_rule_scales_with_the_row():
    """sqrt(area) ≥ k · (row below the component − horizon row): a 10×10 blob just below the horizon is a far
    obstacle and stays; the same blob near the bottom of the image is a close texture patch and goes; a blob that
    ends above the horizon keeps only the area rule."""
    score = np.zeros((200, 100), np.float32)
    score[105:115, 10:20] = 0.9            # ends 15 rows below the horizon (row 100): k = 0.1 needs sqrt(area) ≥ 1.5
    score[185:195, 40:50] = 0.9            # ends 95 rows below: k = 0.1 needs 9.5 (has 10), k = 0.11 needs 10.45
    score[20:30, 10:20] = 0.9              # ends above the horizon
    cfg = PostprocessCfg(threshold=0.5, min_area_px=20, min_size_rel_camera_height=0.1, horizon_row_frac=0.5)
    _, obstacles, _, _ = postprocess(score, cfg)
    assert len(obstacles) == 3
    _, obstacles, _, _ = postprocess(score, replace(cfg, min_size_rel_camera_height=0.11))
    assert sorted(o.bbox[:2] for o in obstacles) == [(10, 20), (10, 105)]          # the close blob dropped
    _, obstacles, _, _ = postprocess(score, replace(cfg, min_size_rel_camera_height=0.7))
    assert [o.bbox[:2] for o in obstacles] == [(10, 20)]                           # 10 < 0.7 · 15
    _, obstacles, _, _ = postprocess(score, replace(cfg, min_size_rel_camera_height=0.11, horizon_row_frac=0.0))
    assert [o.bbox[:2] for o in obstacles] == [(10, 20)]   # horizon at the top row: 0.11 · 115 > 10 ≥ 0.11 · 30
    for bad in (dict(min_size_rel_camera_height=-1.0), dict(horizon_row_frac=1.0)):
        with pytest.raises(ConfigError):
            PostprocessCfg(**bad)


def test_obstacle_list_metrics_on_a_synthetic_frame():
    """Found (≥ 25 % covered by obstacles that are not false), real (≥ 25 % of its non-void pixels anomalous), false, void (≥ 90 % void), and
    nothing under 50 px counts."""
    from vl_anomaly.metrics.obstacles import ObstacleCounts, obstacle_counts

    label = np.zeros((100, 100), np.uint8)
    label[:, 90:] = 255                          # void strip
    label[10:30, 10:30] = 1                      # object 1: 400 px
    label[60:80, 60:80] = 1                      # object 2: 400 px
    label[0:5, 0:5] = 1                          # 25 px: too small to count
    obstacles = np.zeros((100, 100), np.int32)
    obstacles[10:30, 10:16] = 1                  # covers 120/400 = 30 % of object 1 → found; all anomaly → real
    obstacles[60:80, 60:64] = 2                  # covers 20 % of object 2 → not found; still real
    obstacles[40:50, 40:50] = 3                  # on inlier road → false
    obstacles[0:20, 91:100] = 4                  # all void → void
    obstacles[80:83, 0:10] = 5                   # 30 px → not listed
    counts = obstacle_counts(obstacles, label)
    assert (counts.objects, counts.found) == (2, 1)
    assert (counts.obstacles, counts.real, counts.false, counts.void) == (4, 2, 1, 1)
    total = counts + ObstacleCounts(frames=1)
    assert total.false_per_frame == 0.5 and total.found_share == 0.5 and total.real_share == pytest.approx(2 / 3)
    blob = np.zeros((100, 100), np.int32)
    blob[40:100, 40:90] = 1                      # one false blob (400 of 3000 px anomalous) over object 2 …
    blob[10:30, 10:16] = 2                       # … and a real obstacle on object 1
    counts = obstacle_counts(blob, label)
    assert (counts.false, counts.real, counts.found) == (1, 1, 1)     # the blob finds nothing
    assert counts.false_px == 3000 and counts.pixels == 10_000      # a planner must avoid all of a false obstacle
    assert counts.false_area_share == pytest.approx(0.30)
    # from a mask (bool, or 0 / 255 as the node publishes it): its 8-connected components are the obstacles
    from vl_anomaly.metrics.obstacles import mask_obstacle_counts

    expected = obstacle_counts(obstacles, label)
    assert mask_obstacle_counts(obstacles > 0, label) == expected
    assert mask_obstacle_counts((obstacles > 0).astype(np.uint8) * 255, label) == expected
