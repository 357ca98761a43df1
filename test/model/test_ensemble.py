"""The ensemble family (issue 13): members loaded with their registered weights, each normalised its own way inside
one forward pass, mean probabilities through the usual output contract; its sources; export; a real image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vl_anomaly import ConfigError, add_model_config, create_model, create_predictor
from vl_anomaly.factory import get_preprocess_cfg
from vl_anomaly.networks.ensemble import input_divisor
from vl_anomaly.preprocess import preprocess
from vl_anomaly.scores import (ScoreContext, ScoringCfg, boundary_suppressed, check_score_fits, compute_score, entropy, msp,
                               mutual_information)


@pytest.fixture(scope="module")
def lite_ensemble():
    return create_model("lite_ensemble_cityscapes")


def test_members_carry_their_registered_weights(lite_ensemble):
    assert lite_ensemble.names[0] == "espnetv2_s2.0_cityscapes" and len(lite_ensemble.members) >= 2
    single = create_model(lite_ensemble.names[-1])
    for key, value in single.state_dict().items():
        assert torch.equal(lite_ensemble.members[-1].state_dict()[key], value), key


def test_each_member_sees_its_own_preprocessing(tmp_path):
    """One raw RGB input; inside the forward pass ESPNet gets BGR, its own mean/std and the extra /255, ESPNetv2
    ImageNet RGB: each equals the member's stand-alone pre-processing of the same image."""
    (tmp_path / "mixed_ensemble_test.yaml").write_text(
        "family: ensemble\nclasses: cityscapes\narch: {}\n"
        "members: [{model: espnetv2_s1.0_cityscapes}, {model: espnet_p2_q8_cityscapes}]\n")
    add_model_config(tmp_path)
    model = create_model("mixed_ensemble_test", weights=None)
    image = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    raw = preprocess(image, get_preprocess_cfg("mixed_ensemble_test", (64, 128)))
    assert float(raw.min()) >= 0.0 and float(raw.max()) > 200                     # raw RGB, 0–255 units
    for index, name in enumerate(model.names):
        expected = preprocess(image, get_preprocess_cfg(name, (64, 128)))
        assert torch.allclose(model.member_input(index, raw), expected, atol=1e-5), name


def test_lower_member_resolution_and_clear_config_errors(tmp_path):
    (tmp_path / "half_res_test.yaml").write_text(
        "family: ensemble\nclasses: cityscapes\narch: {}\n"
        "members: [{model: espnetv2_s1.0_cityscapes}, {model: espnetv2_s1.5_cityscapes, resolution: 0.5}]\n")
    (tmp_path / "three_quarter_test.yaml").write_text(
        "family: ensemble\nclasses: cityscapes\narch: {}\n"
        "members: [{model: espnetv2_s1.0_cityscapes, resolution: 0.75}, {model: dicenet_s1.75_cityscapes}]\n")
    (tmp_path / "odd_resolution_test.yaml").write_text(
        "family: ensemble\nclasses: cityscapes\narch: {}\nmembers: [{model: espnetv2_s1.0_cityscapes, resolution: 0.7071}]\n")
    (tmp_path / "vl_member_test.yaml").write_text(
        "family: ensemble\nclasses: cityscapes\narch: {}\nmembers: [{model: vl_anomaly_espnetv2_vitb16}]\n")
    (tmp_path / "bad_resolution_test.yaml").write_text(
        "family: ensemble\nclasses: cityscapes\narch: {}\nmembers: [{model: espnetv2_s1.0_cityscapes, resolution: 2}]\n")
    add_model_config(tmp_path)
    assert get_preprocess_cfg("half_res_test").size_divisor == 64          # the half-size member needs ÷32 too
    assert [input_divisor(32, r) for r in (1.0, 0.5, 0.75, 0.25)] == [32, 64, 128, 128]
    assert get_preprocess_cfg("three_quarter_test").size_divisor == 128      # 0.75 · 128 = 96 = 3 · 32
    three_quarter = create_model("three_quarter_test", weights=None)
    assert three_quarter.size_divisor == 128
    with torch.no_grad():
        assert three_quarter(torch.rand(1, 3, 128, 256) * 255).member_logits.shape == (1, 2, 19, 128, 256)
    with pytest.raises(ConfigError, match="simple fraction"):
        create_model("odd_resolution_test", weights=None)
    model = create_model("half_res_test", weights=None)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 128, 256) * 255)
    assert out.member_logits.shape == (1, 2, 19, 128, 256)
    with pytest.raises(ConfigError, match="pixel classifier"):
        create_model("vl_member_test", weights=None)
    with pytest.raises(ConfigError, match=r"resolution must be in \(0, 1\]"):
        create_model("bad_resolution_test", weights=None)


def test_mutual_information_formula():
    """Agreeing members: 0. Two confident members that disagree: H(mean) = log 2, mean H = 0 → log 2 / log K."""
    k = 19
    agree = torch.zeros(1, 2, k, 1, 2)
    agree[:, :, 3] = 20.0
    assert mutual_information(agree).abs().max() < 1e-6
    disagree = torch.zeros(1, 2, k, 1, 1)
    disagree[0, 0, 3], disagree[0, 1, 7] = 40.0, 40.0
    assert mutual_information(disagree).item() == pytest.approx(math.log(2) / math.log(k), rel=1e-4)
    mixed = torch.randn(2, 3, k, 4, 5) * 3                                   # entropy of mean ≥ mean entropy
    assert (mutual_information(mixed) >= 0).all()


def test_ensemble_sources_and_what_needs_an_ensemble(lite_ensemble):
    with torch.no_grad():
        out = lite_ensemble(torch.rand(1, 3, 64, 128) * 255)
    mean_logits = out.member_logits.mean(1)
    assert torch.allclose(compute_score("max_logit", out), -mean_logits.amax(1))     # the members' mean logits
    assert torch.allclose(compute_score("msp", out), 1 - out.member_logits.softmax(2).mean(1).amax(1), atol=1e-5)
    assert compute_score("mutual_information", out).shape == (1, 64, 128)
    single = create_model("espnetv2_s1.0_cityscapes", weights=None)
    with pytest.raises(ConfigError, match="needs an ensemble"):
        check_score_fits("mutual_information", single, ScoringCfg())
    check_score_fits("mutual_information", lite_ensemble, ScoringCfg())


def test_shared_intermediates_give_the_reference_formulas(lite_ensemble):
    """The registry's scores share log p, the class map and the entropies through one ScoreContext; each must
    still equal its reference function over the raw logits (ensemble and single network), and the ensemble's
    logits the log-sum-exp definition of log mean probabilities."""
    torch.manual_seed(0)
    with torch.no_grad():
        out = lite_ensemble(torch.rand(1, 3, 64, 128) * 255)

        def log_mean_probs(stacked: torch.Tensor) -> torch.Tensor:
            return torch.logsumexp(stacked.log_softmax(dim=2), dim=1) - math.log(stacked.shape[1])

        assert torch.allclose(out.logits.exp(), log_mean_probs(out.member_logits).exp(), atol=1e-6)
        out.member_logits.mul_(8.0)                                            # confident members that disagree
        out.logits = log_mean_probs(out.member_logits)
        single = create_model("espnetv2_s1.0_cityscapes", weights=None)(torch.rand(1, 3, 64, 128))
    for output in (out, single):
        ctx = ScoreContext(output=output)
        assert torch.allclose(get_fn("msp")(ctx), msp(output.logits), atol=1e-6)
        assert torch.allclose(get_fn("entropy")(ctx), entropy(output.logits), atol=1e-5)
        assert torch.equal(ctx.semantic(), output.logits.argmax(dim=1))
        assert torch.allclose(get_fn("msp_boundary")(ctx), boundary_suppressed(msp(output.logits), output.logits),
                              atol=1e-6)
    mi = get_fn("mutual_information")(ScoreContext(output=out))
    assert mi.max() > 0.05                                                      # the case is not trivial
    assert torch.allclose(mi, mutual_information(out.member_logits), atol=1e-5)


def get_fn(name: str):
    from vl_anomaly.scores import get_score
    return get_score(name).fn


def test_boundary_suppression_keeps_small_objects():
    """Two large regions (road left, sidewalk right) and a 6×6 'pole' on the road: the road/sidewalk edge is
    damped, the small object's own edges and inside are not."""
    logits = torch.zeros(1, 19, 64, 128)
    logits[0, 0, :, :64] = 5.0                     # road
    logits[0, 1, :, 64:] = 5.0                     # sidewalk
    logits[0, 5, 30:36, 20:26] = 10.0              # a small "pole" region on the road
    score = torch.full((1, 64, 128), 0.8)
    out = boundary_suppressed(score, logits, radius=2, small_area=200, factor=0.25)
    assert out[0, 10, 63].item() == pytest.approx(0.2) and out[0, 10, 64].item() == pytest.approx(0.2)
    assert out[0, 10, 40].item() == pytest.approx(0.8)                          # far from any edge
    assert (out[0, 28:38, 18:28] == 0.8).all()                                  # around and in the small object


def test_real_image_end_to_end(road_obstacle_image):
    """The registered ensemble through the predictor on a real road frame: every ensemble source is finite and
    at the image size, the semantic map (of the mean probabilities) calls the lower middle of the frame road, and
    boundary suppression only ever lowers MSP."""
    predictor = create_predictor("lite_ensemble_cityscapes", score="msp", input_size=(256, 512))
    maps, semantic, _ = predictor.score_maps(road_obstacle_image, ["msp", "mutual_information", "msp_boundary",
                                                                     "max_logit"])
    h, w = road_obstacle_image.shape[:2]
    for name, m in maps.items():
        assert m.shape == (h, w) and np.isfinite(m).all(), name
    lower = semantic[int(0.75 * h):, int(0.3 * w):int(0.7 * w)]
    assert (lower == 0).mean() > 0.6                                            # road
    assert (maps["msp_boundary"] <= maps["msp"] + 1e-6).all()


def test_onnx_export_is_one_graph_and_matches_pytorch(road_obstacle_image, tmp_path):
    """An ensemble exports as one checked graph with the members' logits as an output; ONNX Runtime gives the
    same ensemble scores as PyTorch on a real frame (two small members with different pre-processing, to keep
    the export short; the registered ensemble takes the same path)."""
    (tmp_path / "export_ensemble_test.yaml").write_text(
        "family: ensemble\nclasses: cityscapes\narch: {}\n"
        "members: [{model: espnetv2_s1.0_cityscapes}, {model: espnet_p2_q8_cityscapes}]\n")
    add_model_config(tmp_path)
    size = (256, 512)
    onnx = create_predictor("export_ensemble_test", backend="onnxruntime", input_size=size)
    assert onnx.model.record.outputs == ["logits", "pixel_features", "member_logits"] and onnx.model.is_ensemble
    reference = create_predictor("export_ensemble_test", input_size=size)
    names = ["msp", "mutual_information", "max_logit"]
    got, _, _ = onnx.score_maps(road_obstacle_image, names)
    expected, _, _ = reference.score_maps(road_obstacle_image, names)
    for name in names:
        assert float(np.abs(got[name] - expected[name]).max()) < 1e-3, name


def test_a_model_config_ships_its_default_score_and_obstacle_rules(tmp_path):
    """``score`` and ``postprocess`` of a model config are what predict / eval / the node run when nothing is
    given; another score gets its own documented threshold and no score-valued rule; typos are errors."""
    from vl_anomaly.factory import default_postprocess, default_score

    (tmp_path / "shipped_rules_test.yaml").write_text(
        "family: espnetv2\nclasses: cityscapes\narch: {num_outputs: 20, scale: 1.0, decoder_base: 16}\n"
        "score: entropy\npostprocess: {threshold: 0.62, min_mean_score: 0.7, min_peak_score: 0.8, max_area_frac: 0.05, "
        "min_area_px: 300, adaptive_quantile: 0.9, adaptive_floor: 0.3, min_peak_margin: 0.1, "
        "min_size_rel_camera_height: 0.1}\n")
    (tmp_path / "bad_rules_test.yaml").write_text(
        "family: espnetv2\nclasses: cityscapes\narch: {scale: 1.0}\nscore: msp\npostprocess: {treshold: 0.5}\n")
    add_model_config(tmp_path)
    assert default_score("shipped_rules_test") == "entropy" and default_score("espnetv2_s1.0_cityscapes") == "msp"
    predictor = create_predictor("shipped_rules_test", weights=None)
    assert predictor.score_name == "entropy"
    post = predictor.postprocess_cfg
    assert (post.threshold, post.min_mean_score, post.max_area_frac, post.min_area_px) == (0.62, 0.7, 0.05, 300)
    other = default_postprocess("shipped_rules_test", "msp")
    assert post.min_peak_score == 0.8
    assert other.threshold == 0.5 and other.min_mean_score is None and other.max_area_frac == 0.05
    assert other.min_peak_score is None
    # the scene-adaptive threshold and the peak margin are in score units: shipped for the default score only; the
    # flat-ground size rule is geometric and stays
    assert (post.adaptive_quantile, post.adaptive_floor, post.min_peak_margin) == (0.9, 0.3, 0.1)
    assert other.adaptive_quantile is None and other.min_peak_margin is None
    assert post.min_size_rel_camera_height == other.min_size_rel_camera_height == 0.1
    fixed = create_predictor("shipped_rules_test", weights=None, threshold=0.8).postprocess_cfg
    assert fixed.threshold == 0.8 and fixed.adaptive_quantile is None        # a threshold given is fixed
    with pytest.raises(ConfigError, match="unknown post-processing settings"):
        create_predictor("bad_rules_test", weights=None)


def test_default_score_is_the_shipped_fusion_and_its_obstacle_list(road_obstacle_image):
    """The ensemble's default score is the shipped weighted fusion (R12) of ``msp_boundary``, mutual information
    and entropy: on a real frame (given at the network size, so no resampling sits between them) the predictor's
    map is the fusion formula over its sources' maps, which is what ``eval --fusion`` scores from maps on disk.
    The shipped obstacle rules then publish only components that obey them, and on RoadObstacle21 frame 6 (one
    where the calibration run found the object) the labelled obstacle is among them."""
    import cv2

    from vl_anomaly.datasets import load_dataset
    from vl_anomaly.factory import default_postprocess, default_score
    from vl_anomaly.fusion import fuse, load_fusion

    assert default_score("lite_ensemble_cityscapes") == "fused"
    cfg = load_fusion("lite_ensemble_cityscapes")
    assert cfg.sources == ["msp_boundary", "mutual_information", "entropy"]
    image = cv2.resize(road_obstacle_image, (1024, 512), interpolation=cv2.INTER_AREA)
    predictor = create_predictor("lite_ensemble_cityscapes", input_size=(512, 1024))
    rules = default_postprocess("lite_ensemble_cityscapes")
    assert predictor.score_name == "fused" and predictor.postprocess_cfg == rules
    maps, _, _ = predictor.score_maps(image, ["fused", *cfg.sources])
    np.testing.assert_allclose(maps["fused"], fuse({s: maps[s] for s in cfg.sources}, cfg), atol=1e-5)
    _, frame, label = load_dataset("road_obstacle_21").load(6)
    result = predictor.predict(frame)
    if rules.adaptive_quantile is not None:                  # the scene-adaptive threshold stays in its bounds
        assert rules.adaptive_floor <= result.threshold <= rules.threshold
    else:
        assert result.threshold == rules.threshold
    peak = max(rules.min_peak_score or 0.0, result.threshold + (rules.min_peak_margin or 0.0))
    horizon = rules.horizon_row_frac * label.shape[0]
    for o in result.obstacles:
        assert rules.min_area_px <= o.area_px <= rules.max_area_frac * label.size and o.max_score >= peak
        below = max(o.bbox[1] + o.bbox[3] - horizon, 0.0)     # the flat-ground size rule
        assert np.sqrt(o.area_px) >= rules.min_size_rel_camera_height * below
    hits = [o for o in result.obstacles
            if (label[o.bbox[1]:o.bbox[1] + o.bbox[3], o.bbox[0]:o.bbox[0] + o.bbox[2]] == 1).any()]
    assert hits, [o.to_dict() for o in result.obstacles]
