"""``vl-anomaly eval`` end to end on the shared RoadAnomaly21 set (10 real frames, ESPNetv2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vl_anomaly.cli import main
from vl_anomaly.datasets import load_dataset
from vl_anomaly.metrics import ComponentMetrics, PixelMetrics

MODEL = "espnetv2_s2.0_cityscapes"


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    assert main(["eval", "--model", MODEL, "--scores", "msp", "entropy", "--dataset", "road_anomaly_21",
                 "-o", str(out), "--workers", "2"]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_results_and_report(evaluation):
    out, results = evaluation
    ds = results["datasets"]["road_anomaly_21"]
    assert ds["num_frames"] == 10 and ds["frames_inferred"] == 10 and ds["track"] == "anomaly"
    for score in ("msp", "entropy"):
        r = ds["scores"][score]
        assert 0 < r["pixel"]["AuPRC"] < 100 and 0 < r["pixel"]["FPR95"] <= 100
        assert {"sIoU_gt", "PPV", "mean_F1"} <= set(r["component"])
        assert abs(r["pixel"]["AuPRC"] - r["pixel_exact"]["AuPRC"]) < 1.0      # binning costs ~0.1 point
        for plot in r["plots"].values():
            assert (out / plot).stat().st_size > 5_000
    report = (out / "report.md").read_text()
    assert "road_anomaly_21" in report and "AuPRC" in report
    assert results["timings_s"]["inference"] > 0 and results["timings_s"]["metrics"] > 0


def test_metrics_equal_the_offline_core(evaluation):
    """The saved float16 maps are the predictor's maps, and the metrics are those of the metric classes."""
    from vl_anomaly import create_predictor

    out, results = evaluation
    predictor = create_predictor(MODEL, score="msp")
    dataset = load_dataset("road_anomaly_21")
    pixel = PixelMetrics("official")
    maps = []
    for i in range(len(dataset)):
        fid, image, label = dataset.load(i)
        score = predictor.score_image(image)[0]
        saved = np.load(out / "score_maps" / "road_anomaly_21" / "msp" / f"{fid}.npy")
        assert np.array_equal(saved, score.astype(np.float16))
        pixel.add(score, label)
        maps.append((score, label))
    px = pixel.compute().to_dict()
    assert px["AuPRC"] == results["datasets"]["road_anomaly_21"]["scores"]["msp"]["pixel"]["AuPRC"]
    comp = ComponentMetrics(px["best_f1_threshold"], "anomaly")
    for score, label in maps:
        comp.add(score, label)
    expected = comp.compute().to_dict()["mean_F1"]
    assert expected == results["datasets"]["road_anomaly_21"]["scores"]["msp"]["component"]["mean_F1"]


def test_rerun_reuses_score_maps(evaluation):
    out, first = evaluation
    assert main(["eval", "--model", MODEL, "--scores", "msp", "entropy", "--dataset", "road_anomaly_21",
                 "-o", str(out)]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["datasets"]["road_anomaly_21"]["frames_inferred"] == 0
    assert again["datasets"]["road_anomaly_21"]["scores"]["msp"]["pixel"] == \
        first["datasets"]["road_anomaly_21"]["scores"]["msp"]["pixel"]


def test_saved_score_maps_without_a_model(tmp_path, anomaly_val):
    dataset = load_dataset("road_anomaly_21")
    maps = tmp_path / "maps" / "road_anomaly_21"
    maps.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(len(dataset)):
        label = dataset.load_label(i)
        score = (label == 1) * 0.6 + rng.random(label.shape) * 0.5      # an informative fake method
        np.save(maps / f"{dataset.frames[i].frame_id}.npy", score.astype(np.float32))
    out = tmp_path / "out"
    assert main(["eval", "--score-maps", str(tmp_path / "maps"), "--dataset", "road_anomaly_21",
                 "-o", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())["datasets"]["road_anomaly_21"]["scores"]["msp"]
    assert r["pixel"]["AuPRC"] > 90 and r["pixel"]["FPR95"] < 10


def test_eval_errors(tmp_path, capsys):
    assert main(["eval", "--model", MODEL, "--dataset", "nope", "-o", str(tmp_path)]) == 2
    assert "unknown dataset" in capsys.readouterr().err
