"""End-to-end checks with the real Cityscapes weights on real road images from ../shared.

Measured on 2026-11-25 (this file's thresholds leave a margin below these figures):

* RoadObstacle21 val, share of pixels labelled road that are predicted road: all 30 frames ESPNetv2 0.992, ESPNet
  0.353 (ESPNet suffers badly from the domain shift; the shared notes report 34 % too); every other frame, as the
  test reads them (re-measured 2026-12-03): 0.993 and 0.352.
  With the colour channels swapped: ESPNetv2 0.977, ESPNet 0.761 — so this check alone cannot catch a
  channel-order bug, hence the second test.
* FS Static val (Cityscapes images), pixel agreement of the two independently trained networks' argmax:
  0.838 with each network's published channel order (4 frames); 0.733 with ESPNet's channels swapped and 0.806
  with ESPNetv2's swapped (ESPNetv2 is more robust to colour changes, as on RoadObstacle21).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from vl_anomaly import create_predictor, read_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def predictors():
    return {name: create_predictor(name) for name in ("espnet_p2_q8_cityscapes", "espnetv2_s2.0_cityscapes")}


def _label(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


@pytest.fixture(scope="module")
def road_rates(predictors, anomaly_val):
    """Share of RoadObstacle21 'road' pixels (label 0) predicted road, per model, over every other frame (15 of 30:
    the same rates to 0.001 as all 30, in half the time)."""
    rates = {}
    folder = anomaly_val / "RoadObstacle21"
    for name, predictor in predictors.items():
        hit = total = 0
        for i in range(0, 30, 2):
            image = read_image(folder / "images" / f"{i}.webp")
            label = _label(folder / "labels_masks" / f"{i}.png")
            _, semantic, _ = predictor.score_image(image)
            road = label == 0
            hit += int((semantic[road] == 0).sum())
            total += int(road.sum())
        rates[name] = hit / total
    return rates


def test_road_pixels_predicted_road(road_rates):
    assert road_rates["espnetv2_s2.0_cityscapes"] >= 0.95
    # ESPNet: a large domain-shift loss, but a broken normalisation or scale would give ~0.
    assert road_rates["espnet_p2_q8_cityscapes"] >= 0.25


def _argmax(predictor, image, swap):
    x = image[..., ::-1].copy() if swap else image
    return predictor.score_image(x)[1]


def test_published_channel_order_maximises_cross_model_agreement(predictors, anomaly_val):
    """On Cityscapes-domain images two independently trained networks agree strongly only when each gets its
    published channel order (ESPNet: BGR, ESPNetv2: RGB)."""
    v1, v2 = predictors["espnet_p2_q8_cityscapes"], predictors["espnetv2_s2.0_cityscapes"]
    agree = {"ok": [], "v1_swapped": [], "v2_swapped": []}
    for i in range(4):
        image = read_image(anomaly_val / "FS_Static" / "images" / f"{i}.jpg")
        a1, a2 = _argmax(v1, image, False), _argmax(v2, image, False)
        agree["ok"].append((a1 == a2).mean())
        agree["v1_swapped"].append((_argmax(v1, image, True) == a2).mean())
        agree["v2_swapped"].append((a1 == _argmax(v2, image, True)).mean())
    mean = {k: float(np.mean(v)) for k, v in agree.items()}
    assert mean["ok"] >= 0.78, mean
    assert mean["ok"] - mean["v1_swapped"] >= 0.04, mean
    assert mean["ok"] - mean["v2_swapped"] >= 0.015, mean


@pytest.mark.parametrize("score", ["msp", "max_logit", "entropy", "energy"])
def test_scores_on_a_real_frame(espnetv2_predictor, road_obstacle_image, score, anomaly_val):
    from vl_anomaly.factory import create_predictor as make
    from vl_anomaly.scores import SCORES

    predictor = make("espnetv2_s2.0_cityscapes", score=score)
    pred = predictor.predict(road_obstacle_image)
    assert pred.score_map.shape == road_obstacle_image.shape[:2] and pred.score_map.dtype == np.float32
    lo, hi = SCORES[score].range
    assert np.isfinite(pred.score_map).all()
    assert pred.score_map.min() >= lo - 1e-6 and pred.score_map.max() <= hi + 1e-6
    # the obstacle (label 1) scores higher on average than the road (label 0): a real anomaly signal
    label = _label(anomaly_val / "RoadObstacle21" / "labels_masks" / "0.png")
    assert pred.score_map[label == 1].mean() > pred.score_map[label == 0].mean()


def test_prediction_is_deterministic_and_input_size_override(espnetv2_predictor, road_obstacle_image):
    a = espnetv2_predictor.predict(road_obstacle_image).score_map
    b = espnetv2_predictor.predict(road_obstacle_image).score_map
    assert np.array_equal(a, b)
    small = create_predictor("espnetv2_s2.0_cityscapes", input_size=(256, 512))
    c = small.predict(road_obstacle_image).score_map
    assert c.shape == a.shape and not np.array_equal(a, c)


def test_torch_threads_do_not_change_scores(espnetv2_predictor, road_obstacle_image):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = espnetv2_predictor.predict(road_obstacle_image).score_map
    finally:
        torch.set_num_threads(before)
    two = espnetv2_predictor.predict(road_obstacle_image).score_map
    assert np.abs(one - two).max() < 1e-4


def test_lite_models_segment_the_road(predictors, anomaly_val):
    """ESPNetv2 at width scales 1.5 and 1.0 and DiCENet s1.75 (registered weights, strict loading): measured
    2026-12-01 on every third RoadObstacle21 frame, road pixels predicted road 0.987 (ESPNetv2 s1.5), 0.891 (s1.0)
    and 0.995 (DiCENet); argmax agreement with ESPNetv2 s2.0 on 4 FS Static frames 0.907, 0.898 and 0.904. A wrong
    width fails to load; a wrong pipeline or a wrong DiCE detail (row/column resizing, shuffles) breaks both."""
    reference = predictors["espnetv2_s2.0_cityscapes"]
    fs_static = [read_image(anomaly_val / "FS_Static" / "images" / f"{i}.jpg") for i in range(4)]
    reference_argmax = [reference.score_image(image)[1] for image in fs_static]     # once, not once per model
    folder = anomaly_val / "RoadObstacle21"
    for name, min_road in (("espnetv2_s1.5_cityscapes", 0.95), ("espnetv2_s1.0_cityscapes", 0.8),
                           ("dicenet_s1.75_cityscapes", 0.95)):
        predictor = create_predictor(name)
        hit = total = 0
        for i in range(0, 30, 3):
            road = _label(folder / "labels_masks" / f"{i}.png") == 0
            semantic = predictor.score_image(read_image(folder / "images" / f"{i}.webp"))[1]
            hit += int((semantic[road] == 0).sum())
            total += int(road.sum())
        agree = [float((predictor.score_image(image)[1] == argmax).mean())
                 for image, argmax in zip(fs_static, reference_argmax)]
        assert hit / total >= min_road, (name, hit / total)
        assert np.mean(agree) >= 0.85, (name, agree)


def test_channels_last_is_the_cpu_default_where_it_is_faster_and_changes_no_result(road_obstacle_image):
    """ESPNet and ESPNetv2 (and the VL model on ESPNetv2) run channels-last on the CPU by default, DiCENet and
    exported graphs as they are; on a real frame the channels-last score map equals the contiguous one to float
    rounding and every pixel keeps its class."""
    from vl_anomaly import create_model
    from vl_anomaly.factory import get_preprocess_cfg
    from vl_anomaly.pipeline import AnomalyPredictor

    size = (256, 512)
    for name in ("espnet_p2_q8_cityscapes", "espnetv2_s2.0_cityscapes"):
        fast = create_predictor(name, input_size=size)
        plain = create_predictor(name, input_size=size, channels_last=False)
        assert fast.memory_format == torch.channels_last and plain.memory_format == torch.contiguous_format
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in fast.model.parameters() if p.dim() == 4)
        a, b = fast.predict(road_obstacle_image), plain.predict(road_obstacle_image)
        assert float(np.abs(a.score_map - b.score_map).max()) < 1e-4, name
        assert (a.semantic != b.semantic).mean() < 1e-4, name
    assert create_predictor("dicenet_s1.75_cityscapes", input_size=size).memory_format == torch.contiguous_format
    vl = create_model("vl_anomaly_espnetv2_vitb16", weights="untrained", clip_weights="none")
    cfg = get_preprocess_cfg("vl_anomaly_espnetv2_vitb16", size)
    assert AnomalyPredictor(vl, cfg, score="msp").memory_format == torch.channels_last
    assert AnomalyPredictor(vl, cfg, score="msp", device="cpu", channels_last=False).memory_format \
        == torch.contiguous_format
