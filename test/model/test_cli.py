"""``vl-anomaly predict`` end to end on real images: the files it writes are exactly what the model gives."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from vl_anomaly import create_predictor, read_image
from vl_anomaly.cli import main
from vl_anomaly.io import decode_score_png

MODEL = "espnetv2_s2.0_cityscapes"


@pytest.fixture(scope="module")
def inputs(anomaly_val, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    shutil.copy(anomaly_val / "RoadAnomaly21" / "images" / "3.png", folder / "ra21_3.png")
    shutil.copy(anomaly_val / "RoadObstacle21" / "images" / "5.webp", folder / "ro21_5.webp")
    return folder


def test_predict_files_equal_the_model_output(inputs, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(inputs), "-o", str(out), "--model", MODEL, "--score", "msp",
                 "--threshold", "0.6", "--min-area", "200"]) == 0
    predictor = create_predictor(MODEL, score="msp", threshold=0.6, min_area_px=200)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_frames"] == 2 and summary["num_errors"] == 0
    for stem, name in (("ra21_3", "ra21_3.png"), ("ro21_5", "ro21_5.webp")):
        image = read_image(inputs / name)
        expected = predictor.predict(image)
        score = np.load(out / f"{stem}.score.npy")
        assert score.dtype == np.float32 and score.shape == image.shape[:2]
        assert np.array_equal(score, expected.score_map), "the .npy must be bit-identical to the model's map"
        record = json.loads((out / f"{stem}.json").read_text())
        lo, hi = record["score_png_range"]
        png = cv2.imread(str(out / f"{stem}.score.png"), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16 and png.shape == score.shape
        assert np.abs(decode_score_png(png, lo, hi) - score).max() <= (hi - lo) / 65535 + 1e-6
        mask = cv2.imread(str(out / f"{stem}.mask.png"), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask == 255, expected.obstacle_mask)
        assert record["num_obstacles"] == len(expected.obstacles) > 0
        count = cv2.connectedComponents((mask == 255).astype(np.uint8), connectivity=8)[0] - 1
        assert count == record["num_obstacles"]
        assert all(o["area_px"] >= 200 for o in record["obstacles"])
        overlay = cv2.imread(str(out / f"{stem}.overlay.png"))
        assert overlay.shape == image.shape
    assert "ra21_3" in (out / "summary.md").read_text()


def test_predict_reports_bad_files_and_continues(inputs, tmp_path, capsys):
    folder = tmp_path / "mixed"
    shutil.copytree(inputs, folder)
    data = (folder / "ra21_3.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    cv2.imwrite(str(folder / "gray.png"), np.zeros((64, 64), np.uint8))
    out = tmp_path / "out"
    assert main(["predict", str(folder), "-o", str(out), "--model", MODEL, "--save", "npy", "json"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_frames"] == 2 and summary["num_errors"] == 2
    reasons = " ".join(e["error"] for e in summary["errors"])
    assert "truncated" in reasons and "grayscale" in reasons  # the shared RA21 .png files hold JPEG data
    assert not (out / "ra21_3.overlay.png").exists()   # --save honoured


def test_predict_video(anomaly_val, tmp_path):
    frames = [read_image(anomaly_val / "RoadAnomaly" / "images" / f"{i}.jpg") for i in range(3)]
    video = tmp_path / "drive.mp4"
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "out"
    assert main(["predict", str(video), "-o", str(out), "--model", MODEL, "--max-frames", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_frames"] == 2
    assert (out / "drive" / "frame_000001.score.npy").is_file()
    assert (out / "drive.overlay.mp4").stat().st_size > 0
    capture = cv2.VideoCapture(str(out / "drive.overlay.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 2


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing.png"), "-o", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "x.png", "--score", "nonsense"])


def test_mask_score_on_pixel_model_is_refused(anomaly_val, tmp_path, capsys):
    img = anomaly_val / "RoadAnomaly21" / "images" / "0.png"
    assert main(["predict", str(img), "--model", MODEL, "--score", "rba", "-o", str(tmp_path)]) == 2
    assert "mask-query model" in capsys.readouterr().err
    assert not (tmp_path / "summary.json").exists()


def test_list_models(capsys):
    assert main(["list-models"]) == 0
    text = capsys.readouterr().out
    assert "espnet_p2_q8_cityscapes" in text and "facebook/mask2former-swin-tiny-cityscapes-semantic" in text


def test_cuda_request_without_cuda_is_refused(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal path cannot be exercised")
    assert main(["predict", "x.png", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_demo_runs_on_shared_images(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_frames"] == 8 and summary["predictor"]["postprocess"]["drivable_only"] is True
    assert (out / "contact_sheet.png").stat().st_size > 10_000
