"""ONNX export with its built-in check, and the ONNX Runtime backend against PyTorch on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vl_anomaly import create_model, create_predictor
from vl_anomaly.backends import OnnxRuntimeSegmenter
from vl_anomaly.errors import ConfigError
from vl_anomaly.export import ExportError, ExportRecord, export_onnx

SIZE = (256, 512)
TINY_CLIP = dict(embed_dim=64, vision_cfg=dict(image_size=64, layers=2, width=64, patch_size=16, head_width=32),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))


@pytest.mark.parametrize("name", ["espnetv2_s2.0_cityscapes", "espnet_p2_q8_cityscapes"])
def test_onnxruntime_matches_pytorch_on_a_real_image(name, road_obstacle_image):
    onnx = create_predictor(name, backend="onnxruntime", input_size=SIZE)            # exported + checked once
    torch_predictor = create_predictor(name, input_size=SIZE)
    record = onnx.model.record
    assert record.outputs == ["logits", "pixel_features", "void_logits"] and record.input_size == SIZE
    a, b = onnx.predict(road_obstacle_image), torch_predictor.predict(road_obstacle_image)
    assert float(np.abs(a.score_map - b.score_map).max()) < 1e-4                  # MSP differences
    assert (a.semantic != b.semantic).mean() < 1e-4
    again = create_predictor(name, backend="onnxruntime", input_size=SIZE)         # from the cache, not re-exported
    assert again.model.path == onnx.model.path and again.model.record.sha256 == record.sha256


def test_ap_on_a_shared_set_within_a_tenth_of_a_point(tmp_path):
    from vl_anomaly.datasets import load_dataset
    from vl_anomaly.evaluation import run_evaluation

    dataset = load_dataset("road_anomaly_21")
    results = {}
    for backend in ("torch", "onnxruntime"):
        predictor = create_predictor("espnetv2_s2.0_cityscapes", backend=backend, input_size=SIZE)
        results[backend] = run_evaluation([dataset], ["msp"], tmp_path / backend, predictor, workers=1)
    ap = {b: r["datasets"]["road_anomaly_21"]["scores"]["msp"]["pixel"]["AuPRC"] for b, r in results.items()}
    assert abs(ap["torch"] - ap["onnxruntime"]) < 0.1, ap


def test_export_of_a_mask_query_model(tiny_mask2former, tmp_path):
    """Mask2Former (tiny Swin, eager attention) through the dynamo exporter: every output checked, then run."""
    record = export_onnx(tiny_mask2former, tmp_path / "m2f.onnx", (128, 256), name="tiny_m2f")
    assert record.outputs == ["logits", "pixel_features", "class_queries_logits", "masks_queries_logits",
                              "query_embeddings"] and record.has_mask_queries
    segmenter = OnnxRuntimeSegmenter(tmp_path / "m2f.onnx")
    x = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        expected = tiny_mask2former(x)
    got = segmenter(x)
    assert got.has_mask_queries
    torch.testing.assert_close(got.masks_queries_logits, expected.masks_queries_logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="exported for input"):
        segmenter(torch.randn(1, 3, 256, 256))


def test_export_errors_are_clear(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        OnnxRuntimeSegmenter(tmp_path / "missing.onnx")
    model = create_model("espnetv2_s2.0_cityscapes", weights=None)
    export_onnx(model, tmp_path / "m.onnx", (64, 128), name="espnetv2")
    (tmp_path / "m.onnx").write_bytes(b"not onnx")
    with pytest.raises(ExportError, match="cannot load"):
        OnnxRuntimeSegmenter(tmp_path / "m.onnx")
    (tmp_path / "n.onnx").write_bytes(b"")
    with pytest.raises(ExportError, match="sidecar"):
        ExportRecord.load(tmp_path / "n.onnx")
    with pytest.raises(ConfigError, match="needs the TensorRT Python package"):      # not installable here
        create_predictor("espnetv2_s2.0_cityscapes", backend="tensorrt")
    with pytest.raises(ConfigError, match="torch, onnxruntime, tensorrt"):
        create_predictor("espnetv2_s2.0_cityscapes", backend="tvm")


def test_export_command(tmp_path):
    from vl_anomaly.cli import main

    out = tmp_path / "e.onnx"
    assert main(["export", "--model", "espnetv2_s2.0_cityscapes", "--input-size", "128", "256", "-o", str(out)]) == 0
    assert ExportRecord.load(out).input_size == (128, 256)


def test_clip_image_encoder_export_with_a_dynamic_batch_of_crops(tmp_path, road_obstacle_image):
    from vl_anomaly.backends import OnnxRuntimeClipImages
    from vl_anomaly.export import export_clip_image_onnx
    from vl_anomaly.networks.clip_towers import FrozenCLIP
    from vl_anomaly.vl_scores import clip_crop_score, handcrafted_text_embeddings

    torch.manual_seed(0)
    clip = FrozenCLIP.create(config=TINY_CLIP, pretrained=None)
    record = export_clip_image_onnx(clip, tmp_path / "clip.onnx")
    assert record.max_abs_diff["image_embeddings"] < 1e-4
    encoder = OnnxRuntimeClipImages(tmp_path / "clip.onnx")
    crops = torch.randn(7, 3, 64, 64)
    torch.testing.assert_close(encoder.encode_images(crops), clip.encode_images(crops), atol=1e-4, rtol=1e-4)
    image = road_obstacle_image[::4, ::4].copy()
    detector = np.zeros(image.shape[:2], np.float32)
    detector[20:80, 20:80] = detector[150:200, 300:380] = 0.9
    text = handcrafted_text_embeddings(clip, ["road", "car"])
    ours, n = clip_crop_score(image, detector, encoder, text, 0.5, min_area_frac=0.0)
    reference, _ = clip_crop_score(image, detector, clip, text, 0.5, min_area_frac=0.0)
    assert n == 2
    np.testing.assert_allclose(ours, reference, atol=1e-4)
