"""ONNX export with its built-in check, and the ONNX Runtime backend against PyTorch on real images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vl_anomaly import create_model, create_predictor
from vl_anomaly.errors import ConfigError
from vl_anomaly.deploy import (ExportError, ExportRecord, ExportedSegmenter, OnnxRuntimeRunner, export_onnx,
                               load_exported)

SIZE = (256, 512)
TINY_CLIP = dict(embed_dim=64, vision_cfg=dict(image_size=64, layers=2, width=64, patch_size=16, head_width=32),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))


@pytest.fixture(scope="module")
def random_espnetv2_onnx(tmp_path_factory):
    """One export (≈ 11 s on 2 cores) of a randomly initialised ESPNetv2 at 64×128, named after its registered
    model, shared by the tests that only read it; a test that alters the file copies it first (:func:`_copy`)."""
    path = tmp_path_factory.mktemp("onnx") / "espnetv2_random.onnx"
    export_onnx(create_model("espnetv2_s2.0_cityscapes", weights=None), path, (64, 128), name="espnetv2_s2.0_cityscapes")
    return path


def _copy(onnx_path, folder, name: str):
    """``onnx_path`` and its sidecar record copied to ``folder/name``; returns the copy's path."""
    import shutil

    target = folder / name
    shutil.copyfile(onnx_path, target)
    shutil.copyfile(f"{onnx_path}.json", f"{target}.json")
    return target


@pytest.mark.parametrize("name", ["espnetv2_s2.0_cityscapes", "espnet_p2_q8_cityscapes", "dicenet_s1.75_cityscapes"])
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


@pytest.mark.parametrize("name", ["espnetv2_s2.0_cityscapes", "espnet_p2_q8_cityscapes"])
def test_ap_on_a_shared_set_within_a_tenth_of_a_point(name, tmp_path):
    from vl_anomaly.datasets import load_dataset
    from vl_anomaly.evaluation import run_evaluation

    dataset = load_dataset("road_anomaly_21")
    results = {}
    for backend in ("torch", "onnxruntime"):
        predictor = create_predictor(name, backend=backend, input_size=SIZE)
        results[backend] = run_evaluation([dataset], ["msp"], tmp_path / backend, predictor, workers=1)
    ap = {b: r["datasets"]["road_anomaly_21"]["scores"]["msp"]["pixel"]["AuPRC"] for b, r in results.items()}
    assert abs(ap["torch"] - ap["onnxruntime"]) < 0.1, ap


def test_export_of_a_mask_query_model(tiny_mask2former, tmp_path):
    """Mask2Former (tiny Swin, eager attention) through the dynamo exporter: every output checked, then run."""
    record = export_onnx(tiny_mask2former, tmp_path / "m2f.onnx", (128, 256), name="tiny_m2f")
    assert record.outputs == ["logits", "pixel_features", "class_queries_logits", "masks_queries_logits",
                              "query_embeddings"] and record.has_mask_queries
    segmenter = load_exported(tmp_path / "m2f.onnx")
    assert isinstance(segmenter, ExportedSegmenter)
    x = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        expected = tiny_mask2former(x)
    got = segmenter(x)
    assert got.has_mask_queries
    torch.testing.assert_close(got.masks_queries_logits, expected.masks_queries_logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match="exported for input"):
        segmenter(torch.randn(1, 3, 256, 256))


def test_export_errors_are_clear(tmp_path, random_espnetv2_onnx):
    with pytest.raises(ExportError, match="does not exist"):
        load_exported(tmp_path / "missing.onnx")
    _copy(random_espnetv2_onnx, tmp_path, "m.onnx")
    (tmp_path / "m.onnx").write_bytes(b"not onnx")
    with pytest.raises(ExportError, match="cannot load"):
        OnnxRuntimeRunner(tmp_path / "m.onnx")
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
    from vl_anomaly.deploy import ExportedClipImages, export_clip_image_onnx
    from vl_anomaly.networks.clip_towers import FrozenCLIP
    from vl_anomaly.networks.clip_towers import template_text_embeddings
    from vl_anomaly.vl_scores import clip_crop_score

    torch.manual_seed(0)
    clip = FrozenCLIP.create(config=TINY_CLIP, pretrained=None)
    record = export_clip_image_onnx(clip, tmp_path / "clip.onnx")
    assert record.max_abs_diff["image_embeddings"] < 1e-4
    encoder = load_exported(tmp_path / "clip.onnx")
    assert isinstance(encoder, ExportedClipImages)
    crops = torch.randn(7, 3, 64, 64)
    torch.testing.assert_close(encoder.encode_images(crops), clip.encode_images(crops), atol=1e-4, rtol=1e-4)
    image = road_obstacle_image[::4, ::4].copy()
    detector = np.zeros(image.shape[:2], np.float32)
    detector[20:80, 20:80] = detector[150:200, 300:380] = 0.9
    text = template_text_embeddings(clip, ["road", "car"])
    ours, n = clip_crop_score(image, detector, encoder, text, 0.5, min_area_frac=0.0)
    reference, _ = clip_crop_score(image, detector, clip, text, 0.5, min_area_frac=0.0)
    assert n == 2
    np.testing.assert_allclose(ours, reference, atol=1e-4)


@pytest.fixture
def clip_file(tmp_path):
    """A tiny CLIP's weights saved as a local open_clip checkpoint (fixed CLIP weights, as on a vehicle)."""
    from vl_anomaly.networks.clip_towers import FrozenCLIP

    torch.manual_seed(1)
    path = tmp_path / "clip_tiny.pt"
    torch.save(FrozenCLIP.create(config=TINY_CLIP, pretrained=None).model.state_dict(), path)
    return path


VL_SCORES = ["msp", "text_guided", "clip_crops", "fused"]


def _assert_same_maps(exported, reference, image, names=VL_SCORES, atol=1e-4):
    ours, semantic, _ = exported.score_maps(image, names)
    theirs, semantic_ref, _ = reference.score_maps(image, names)
    for name in names:
        assert float(np.abs(ours[name] - theirs[name]).max()) < atol, name
    assert (semantic != semantic_ref).mean() < 1e-4
    return theirs


def test_vl_model_export_reproduces_every_vl_score_on_a_real_image(tiny_vl_model, road_obstacle_image, tmp_path):
    """The per-frame VL graph (real ESPNetv2 + aligner, cached text as constants), the CLIP crop encoder and the
    text tables reproduce the PyTorch model's sources and fusion; no text tower runs on the export."""
    from vl_anomaly.deploy import ExportedVLModel, export_vl_onnx, vl_companion_paths
    from vl_anomaly.factory import default_scoring, get_preprocess_cfg
    from vl_anomaly.pipeline import AnomalyPredictor

    torch.manual_seed(0)
    model = create_model(tiny_vl_model, weights="untrained")
    record = export_vl_onnx(model, tmp_path / "vl.onnx", SIZE, name=tiny_vl_model, weights="untrained")
    assert record.kind == "vl_anomaly"
    assert record.outputs == ["logits", "pixel_features", "void_logits", "s_pix"]
    assert record.output_shapes["s_pix"] == [1, 19, SIZE[0] // 8, SIZE[1] // 8]
    clip_path, text_path = vl_companion_paths(tmp_path / "vl.onnx")
    assert ExportRecord.load(clip_path).extras["max_batch"] == 20 and text_path.is_file()
    exported = create_predictor(tiny_vl_model, score="fused", backend="onnxruntime",
                                onnx_path=tmp_path / "vl.onnx", input_size=SIZE)
    assert isinstance(exported.model, ExportedVLModel) and not hasattr(exported.model, "prompts")
    reference = AnomalyPredictor(model, get_preprocess_cfg(tiny_vl_model, SIZE), score="fused",
                                 scoring=default_scoring(tiny_vl_model))
    maps = _assert_same_maps(exported, reference, road_obstacle_image)
    assert maps["clip_crops"].max() > 0                          # candidate regions were cropped and encoded
    text_path.write_bytes(text_path.read_bytes()[:-8] + b"\0" * 8)    # a tampered companion is refused
    with pytest.raises(ExportError, match="does not match the export record"):
        load_exported(tmp_path / "vl.onnx")
    clip_path.unlink()
    with pytest.raises(ExportError, match="needs its CLIP image encoder"):
        load_exported(tmp_path / "vl.onnx")


def test_vl_export_with_mask_queries(tiny_mask2former, tmp_path):
    """Mask2Former + both aligner layers: ``s_mask`` is exported and the text-guided score (with its mask term)
    matches PyTorch."""
    from vl_anomaly.deploy import ExportedVLModel, export_vl_onnx
    from vl_anomaly.networks.clip_towers import FrozenCLIP
    from vl_anomaly.networks.vl_anomaly import VLAnomalyModel
    from vl_anomaly.vl_scores import text_guided_score

    torch.manual_seed(0)
    clip = FrozenCLIP.create(config=TINY_CLIP, pretrained=None)
    model = VLAnomalyModel(tiny_mask2former, clip, n_ctx=4, heads=4).eval()
    record = export_vl_onnx(model, tmp_path / "vlm.onnx", (128, 256), name="tiny_vl_m2f")
    assert record.outputs[-2:] == ["s_pix", "s_mask"] and record.output_shapes["s_mask"] == [1, 10, 20]
    exported = load_exported(tmp_path / "vlm.onnx")
    assert isinstance(exported, ExportedVLModel) and exported.has_mask_queries
    x = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        expected = model(x)
    got = exported(x)
    torch.testing.assert_close(got.s_mask, expected.s_mask, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(text_guided_score(got, (128, 256)), text_guided_score(expected, (128, 256)),
                               atol=1e-4, rtol=1e-4)


def test_vl_exports_are_cached_only_for_fixed_weights(tiny_vl_model, clip_file, road_obstacle_image, tmp_path,
                                                      monkeypatch):
    """A head checkpoint + CLIP weights file are exported once into the cache and reused; random or untrained
    parts are refused with the command that exports them."""
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = create_model(tiny_vl_model, weights="untrained", clip_weights=clip_file)
    head = tmp_path / "head.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith(("clip.", "segmenter."))},
              head)
    exported = create_predictor(tiny_vl_model, weights=str(head), score="fused", backend="onnxruntime",
                                input_size=SIZE, clip_weights=clip_file)
    again = create_predictor(tiny_vl_model, weights=str(head), score="fused", backend="onnxruntime",
                             input_size=SIZE, clip_weights=clip_file)
    assert again.model.path == exported.model.path and again.model.record.sha256 == exported.model.record.sha256
    reference = create_predictor(tiny_vl_model, weights=str(head), score="fused", input_size=SIZE,
                                 clip_weights=clip_file)
    _assert_same_maps(exported, reference, road_obstacle_image[::2, ::2].copy())
    with pytest.raises(ConfigError, match="vl-anomaly export --model"):
        create_predictor(tiny_vl_model, weights="untrained", backend="onnxruntime", clip_weights=clip_file)
    with pytest.raises(ConfigError, match="CLIP has random weights"):
        create_predictor(tiny_vl_model, weights=str(head), backend="onnxruntime", clip_weights="none")


def test_export_command_for_a_vl_model(tiny_vl_model, tmp_path, capsys):
    from vl_anomaly.cli import main

    out = tmp_path / "vl.onnx"
    assert main(["export", "--model", tiny_vl_model, "--weights", "untrained", "--input-size", "128", "256",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "vl.clip_image.onnx" in printed and "images (B, 3, 64, 64), 1 ≤ B ≤ 20" in printed
    assert "s_pix (1, 19, 16, 32)" in printed and "vl.text.safetensors" in printed
    assert main(["export", "--model", tiny_vl_model, "--format", "tensorrt", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "needs the TensorRT Python package" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()                   # refused before any export work


def test_engine_parity_check_catches_a_graph_that_computes_something_else(tmp_path, random_espnetv2_onnx):
    """The check every TensorRT engine gets on load (against ONNX Runtime on the CPU), exercised here with two ONNX
    Runtime runners on a real road frame: the same graph passes with every class agreeing; a graph with other
    weights behind the same interface is refused for its classes and score map, not for raw magnitudes."""
    from vl_anomaly.deploy import check_parity, parity_frame

    torch.manual_seed(0)                                          # other random weights than the shared export's
    export_onnx(create_model("espnetv2_s2.0_cityscapes", weights=None), tmp_path / "b.onnx", (64, 128))
    a, b = OnnxRuntimeRunner(random_espnetv2_onnx, threads=1), OnnxRuntimeRunner(random_espnetv2_onnx)
    frame = parity_frame()
    assert frame.shape == (1080, 1920, 3)                         # the shared RoadObstacle21 frame on our machines
    figures = check_parity(a, b, "fp32", frame=frame)
    assert figures["logits.argmax_agreement"] == 1.0 and figures["logits.msp_max_diff"] < 1e-5
    assert set(figures) == {"logits.argmax_agreement", "logits.msp_max_diff", "pixel_features.max_abs_diff",
                            "void_logits.max_abs_diff"}
    with pytest.raises(ExportError, match="differs from OnnxRuntimeRunner on a real frame: logits arg-max classes agree"):
        check_parity(OnnxRuntimeRunner(tmp_path / "b.onnx"), a, "fp16", frame=frame)


def test_clip_parity_at_batches_1_8_and_the_maximum(tmp_path):
    """CLIP engines are checked by the cosine of every embedding at batch 1, 8 and the profile's maximum."""
    from vl_anomaly.deploy import check_parity, export_clip_image_onnx, parity_frame
    from vl_anomaly.networks.clip_towers import FrozenCLIP

    torch.manual_seed(0)
    export_clip_image_onnx(FrozenCLIP.create(config=TINY_CLIP, pretrained=None), tmp_path / "a.onnx", max_batch=12)
    export_clip_image_onnx(FrozenCLIP.create(config=TINY_CLIP, pretrained=None), tmp_path / "b.onnx", max_batch=12)
    reference = OnnxRuntimeRunner(tmp_path / "a.onnx")
    figures = check_parity(OnnxRuntimeRunner(tmp_path / "a.onnx", threads=1), reference, "fp16", frame=parity_frame())
    assert set(figures) == {f"image_embeddings.min_cosine@{b}" for b in (1, 8, 12)}
    assert min(figures.values()) > 0.9999
    with pytest.raises(ExportError, match="image_embeddings cosine .* < 0.999 at batch 1"):
        check_parity(OnnxRuntimeRunner(tmp_path / "b.onnx"), reference, "fp16")


def test_the_graph_runs_the_network_once(random_espnetv2_onnx):
    """One forward pass per frame in the graph: as many Conv nodes as the network has Conv2d layers (a wrapper
    that called the model once per output would export it once per output)."""
    import onnx

    model = create_model("espnetv2_s2.0_cityscapes", weights=None)
    convs = sum(node.op_type == "Conv" for node in onnx.load(str(random_espnetv2_onnx)).graph.node)
    assert convs == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def test_an_export_must_fit_the_predictor(tmp_path, random_espnetv2_onnx):
    """Model name and input size of an explicit export are checked when the predictor is built, not per frame."""
    path = _copy(random_espnetv2_onnx, tmp_path, "e.onnx")
    assert create_predictor("espnetv2_s2.0_cityscapes", backend="onnxruntime", onnx_path=path, input_size=(64, 128))
    with pytest.raises(ConfigError, match="exported for input 64x128"):
        create_predictor("espnetv2_s2.0_cityscapes", backend="onnxruntime", onnx_path=path)
    with pytest.raises(ConfigError, match="not of 'espnet_p2_q8_cityscapes'"):
        create_predictor("espnet_p2_q8_cityscapes", backend="onnxruntime", onnx_path=path, input_size=(64, 128))
    with pytest.raises(ConfigError, match="not 'torch'"):
        create_predictor("espnetv2_s2.0_cityscapes", onnx_path=path)
    junk = tmp_path / "junk.onnx"                       # the fit is checked on the record, before any session/engine
    junk.write_bytes(b"not onnx")
    (tmp_path / "junk.onnx.json").write_text((tmp_path / "e.onnx.json").read_text())
    with pytest.raises(ConfigError, match="exported for input 64x128"):
        create_predictor("espnetv2_s2.0_cityscapes", backend="onnxruntime", onnx_path=junk)


def test_onnxruntime_tensorrt_provider_caches_its_engines(tmp_path, monkeypatch):
    """Where ONNX Runtime offers TensorRT (never here) the session asks for it first: fp32, an engine cache folder
    keyed by the ONNX file's SHA-256 (the provider's own key ignores weights: a re-export to the same path would
    reuse the old engine), and for a dynamic batch an explicit profile (no rebuild mid-run at a new batch size).
    Checked on the session arguments, since the provider itself cannot run on our machines."""
    import onnxruntime as ort

    from vl_anomaly.deploy import export_clip_image_onnx, ort_session
    from vl_anomaly.networks.clip_towers import FrozenCLIP

    class Session:
        def __init__(self, path, options, providers):
            seen["providers"] = providers

        def get_providers(self):
            return [p if isinstance(p, str) else p[0] for p in seen["providers"]]

    seen = {}
    export_clip_image_onnx(FrozenCLIP.create(config=TINY_CLIP, pretrained=None), tmp_path / "clip.onnx", max_batch=20)
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", Session)
    monkeypatch.setenv("VL_ANOMALY_CACHE_DIR", str(tmp_path / "cache"))
    ort_session(tmp_path / "clip.onnx")
    providers = seen["providers"]
    name, options = providers[0]
    assert name == "TensorrtExecutionProvider" and providers[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    digest = ExportRecord.load(tmp_path / "clip.onnx").sha256
    assert options["trt_engine_cache_enable"] and options["trt_fp16_enable"] is False
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache" / "ort_tensorrt" / digest[:16])
    assert (options["trt_profile_min_shapes"], options["trt_profile_opt_shapes"], options["trt_profile_max_shapes"]) \
        == ("images:1x3x64x64", "images:8x3x64x64", "images:20x3x64x64")


def test_a_gpu_provider_that_did_not_load_is_reported(random_espnetv2_onnx, monkeypatch, caplog):
    """ONNX Runtime lists CUDA but the session runs on the CPU (its libraries did not load): a warning by default,
    an error with provider_fallback='error'; the providers in use are what the runner reports."""
    import logging

    import onnxruntime as ort

    from vl_anomaly.deploy import ort_session, providers_in_use

    real_session = ort.InferenceSession
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession",
                        lambda path, options, providers: real_session(path, options,
                                                                      providers=["CPUExecutionProvider"]))
    with caplog.at_level(logging.WARNING, logger="vl_anomaly"):
        runner = OnnxRuntimeRunner(random_espnetv2_onnx)
    assert "CUDAExecutionProvider did not load" in caplog.text
    assert runner.providers_in_use == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="asked for CUDAExecutionProvider, CPUExecutionProvider .* runs on "
                                          "CPUExecutionProvider"):
        ort_session(random_espnetv2_onnx, provider_fallback="error")
    model = load_exported(random_espnetv2_onnx)
    assert providers_in_use(model) == ["CPUExecutionProvider"]
    assert providers_in_use(torch.nn.Identity()) == ["PyTorch"]
