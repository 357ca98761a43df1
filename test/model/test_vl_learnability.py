"""The synthetic road world (vl_anomaly.train.synthetic) is read by the real data code, and VL-Anomaly training
learns on it (benchmarks/vl_learnability.py, run here in a short version of the same path)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vl_anomaly.datasets import load_dataset
from vl_anomaly.preprocess import PreprocessCfg
from vl_anomaly.train.data import OUTLIER_LABEL, AugmentCfg, CityscapesTrain, CocoOutliers
from vl_anomaly.train.synthetic import (CLASSES, NOVEL_OBJECTS, TRAIN_GREYS, TRAIN_OUTLIERS, hue_saturation,
                                        write_anomaly_set, write_cityscapes, write_coco_outliers)

ROOT = Path(__file__).resolve().parents[2]


def test_synthetic_world_in_the_real_layouts(tmp_path):
    write_cityscapes(tmp_path / "cs", "train", 4, (64, 128))
    write_coco_outliers(tmp_path / "coco", 6)
    write_anomaly_set(tmp_path / "novel", 3, (64, 128))
    outliers = CocoOutliers(tmp_path / "coco")
    train = CityscapesTrain(tmp_path / "cs", "train", PreprocessCfg(input_size=(64, 128)),
                            AugmentCfg((64, 128), 1.0, 1.0, False), outliers, paste_prob=1.0)
    assert len(train) == 4
    image, label = train[0]
    assert tuple(image.shape) == (3, 64, 128)
    values = set(np.unique(label.numpy()).tolist())
    assert OUTLIER_LABEL in values and values - {OUTLIER_LABEL, 255} <= set(CLASSES) and 0 in values   # road
    frames = load_dataset(f"road_anomaly_21={tmp_path / 'novel'}")
    assert len(frames) == 3
    _, rgb, truth = frames.load(0)
    assert rgb.shape == (64, 128, 3) and set(np.unique(truth)) <= {0, 1, 255} and (truth == 1).any()
    assert not set(TRAIN_OUTLIERS[0]) & set(NOVEL_OBJECTS[0])                     # novel shapes …
    for colour in NOVEL_OBJECTS[1]:                                               # … and colours: outside every
        hue, saturation = hue_saturation(colour)                                  # training hue band, and no
        assert not any(lo <= hue <= hi for lo, hi in TRAIN_OUTLIERS[1]), colour   # pale one as bright as a
        assert saturation >= 0.55 or max(colour) / 255 > TRAIN_GREYS[2][1], colour  # training grey


def test_training_learns_on_the_synthetic_world(tmp_path):
    """A short version of benchmarks/vl_learnability.py (same path: real train() of head and segmenter, the
    checkpoint through create_predictor, fusion fitted on the validation split, run_evaluation on novel objects):
    the trained text-guided score and the calibrated fusion find novel objects far better than untrained ones,
    and the loss falls."""
    import sys

    from vl_anomaly.cpu import set_threads

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import vl_learnability

    set_threads(2)
    # 50 iterations (measured 2026-12-03, AMD EPYC): loss 3.69 → 0.47, text-guided AP 1.2 → 16.7, fused 1.2 → 22.9;
    # 80 gave 0.25, 23.7 and 28.8 in 20 s more.
    report = vl_learnability.run(quick=True, workdir=tmp_path, progress=False, sizes=(48, 12, 50))
    first, last = report["loss_first_last"]
    assert last < 0.5 * first
    untrained, trained = report["untrained_ap"], report["trained_ap"]
    assert set(trained) == {"msp", "text_guided", "clip_crops", "fused", "fused_sum"}
    assert trained["text_guided"] > untrained["text_guided"] + 5.0, (untrained, trained)
    assert trained["fused"] > untrained["fused"] + 5.0, (untrained, trained)
    assert trained["msp"] != untrained["msp"]                    # the checkpoint carries the trained segmenter
    for name, weights in report["fusion_weights"].items():     # fitted on the validation split, either form
        assert set(weights) == {"msp", "text_guided", "clip_crops"} and abs(sum(weights.values()) - 1) < 1e-6
        assert report["fusion_form"][name] in {"sum", "gated by msp", "gated by text_guided", "gated by clip_crops"}
        if report["fusion_form"][name] == "sum":               # then the weighted sum alone is the same fusion
            assert report["fusion_sum_weights"][name] == weights
    by_kind = report["trained_ap_by_kind"]                      # per kind of novel object, every source
    assert {"texture=plain", "texture=striped"} <= set(by_kind) and any(k.startswith("colour=") for k in by_kind)
    assert all(set(v) == set(trained) and all(0 <= a <= 100 for a in v.values()) for v in by_kind.values())


def test_ap_by_kind_scores_each_kind_of_novel_object_on_its_own(tmp_path):
    """A map that is perfect on the cyan objects only: cyan AP 100, the other colours far lower, every kind
    scored against all the known pixels."""
    import sys

    import cv2

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import vl_learnability

    data = write_anomaly_set(tmp_path / "novel", 12, (64, 128), seed=1)
    objects = json.loads((data / "objects.json").read_text())
    assert {o["colour"] for f in objects.values() for o in f} == {0, 1, 2}           # cyan, magenta, near-white
    (tmp_path / "maps" / "fused").mkdir(parents=True)
    for frame, found in objects.items():
        instances = cv2.imread(str(data / "objects" / f"{frame}.png"), cv2.IMREAD_UNCHANGED)
        truth = cv2.imread(str(data / "labels_masks" / f"{frame}.png"), cv2.IMREAD_UNCHANGED)
        assert ((instances > 0) == (truth == 1)).all()
        cyan = np.isin(instances, [k for k, o in enumerate(found, start=1) if o["colour"] == 0])
        np.save(tmp_path / "maps" / "fused" / f"{frame}.npy", cyan.astype(np.float16))
    ap = vl_learnability.ap_by_kind(data, tmp_path / "maps", ["fused"])
    assert ap["colour=cyan"]["fused"] == 100.0
    assert ap["colour=magenta"]["fused"] < 50 and ap["colour=near-white"]["fused"] < 50


def test_mask2former_arrangement_trains_from_random_weights(tmp_path):
    """The Mask2Former arrangement of the same benchmark, much shorter: a small Mask2Former and its head train
    from random weights (Mask2Former's loss, R6, R9, R10), the checkpoint — which holds the segmenter — loads
    through create_predictor without any registered Mask2Former weights, and the text-guided score improves."""
    import sys

    from vl_anomaly.cpu import set_threads

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import vl_learnability

    set_threads(2)
    report = vl_learnability.run(quick=True, workdir=tmp_path, progress=False, sizes=(32, 8, 40),
                                 arrangement="mask2former")
    first, last = report["loss_first_last"]
    assert last < 0.8 * first
    untrained, trained = report["untrained_ap"], report["trained_ap"]
    assert set(trained) == {"msp", "text_guided", "clip_crops", "fused", "fused_sum"}
    assert trained["text_guided"] > untrained["text_guided"] + 2.0, (untrained, trained)
    assert report["arrangement"] == "mask2former"
