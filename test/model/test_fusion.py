"""Fusion (R12) and its calibration: validation, YAML round trip, recovery of known weights, eval integration."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_curve

from vl_anomaly.calibration import ap_fpr95, fit_fusion, sample_pixels, write_fused_maps
from vl_anomaly.errors import ConfigError
from vl_anomaly.fusion import FusionCfg, SourceNorm, fuse, simplex_grid


def test_source_norm_and_fuse_by_hand():
    cfg = FusionCfg({"a": 0.25, "b": 0.75}, {"a": SourceNorm(0.0, 2.0), "b": SourceNorm(-10.0, -5.0)})
    maps = {"a": np.array([[0.0, 1.0, 4.0]]), "b": np.array([[-20.0, -7.5, -5.0]])}
    np.testing.assert_allclose(fuse(maps, cfg), [[0.0, 0.25 * 0.5 + 0.75 * 0.5, 0.25 + 0.75]])
    assert fuse(maps, cfg).dtype == np.float32


@pytest.mark.parametrize("weights, norms, match", [
    ({"a": 0.5, "b": 0.6}, {"a": (0, 1), "b": (0, 1)}, "sum to 1"),
    ({"a": -0.5, "b": 1.5}, {"a": (0, 1), "b": (0, 1)}, "≥ 0"),
    ({"a": 1.0}, {}, "no normalisation"),
    ({}, {}, "at least one source"),
])
def test_invalid_fusion_configs(weights, norms, match):
    with pytest.raises(ConfigError, match=match):
        FusionCfg(weights, {k: SourceNorm(*v) for k, v in norms.items()})
    with pytest.raises(ConfigError, match="lo < hi"):
        SourceNorm(1.0, 1.0)


def test_yaml_round_trip_and_bad_files(tmp_path):
    cfg = FusionCfg({"msp": 0.6, "entropy": 0.4}, {"msp": SourceNorm(0.0, 0.7), "entropy": SourceNorm(0.0, 0.6)},
                    {"calibration_sets": {"road_anomaly_21": {"pixels": 10}}})
    loaded = FusionCfg.load(cfg.save(tmp_path / "f.yaml"))
    assert loaded == cfg and loaded.sources == ["msp", "entropy"]
    (tmp_path / "bad.yaml").write_text("weights: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        FusionCfg.load(tmp_path / "bad.yaml")
    (tmp_path / "partial.yaml").write_text("weights: {msp: 1.0}\n")
    with pytest.raises(ConfigError, match="normalization"):
        FusionCfg.load(tmp_path / "partial.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        FusionCfg.load(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="needs source maps"):
        fuse({"msp": np.zeros((2, 2))}, cfg)


def test_simplex_grid():
    grid = simplex_grid(3, 0.1)
    assert grid.shape == (66, 3)                                   # C(10 + 2, 2)
    np.testing.assert_allclose(grid.sum(1), 1.0)
    assert len({tuple(np.round(g, 6)) for g in grid}) == 66
    assert simplex_grid(4, 0.1).shape == (286, 4)
    with pytest.raises(ConfigError, match="divide 1"):
        simplex_grid(2, 0.3)


def test_histogram_ap_matches_scikit_learn():
    rng = np.random.default_rng(1)
    y = (rng.random(200_000) < 0.1).astype(np.uint8)
    score = np.clip(0.3 * y + rng.normal(0.4, 0.15, y.size), 0, 1).astype(np.float32)
    ap, fpr95 = ap_fpr95(score, y)
    assert ap == pytest.approx(average_precision_score(y, score), abs=2e-3)
    fpr, tpr, _ = roc_curve(y, score)
    assert fpr95 == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=2e-3)


def test_calibration_recovers_known_weights():
    """Labels defined by a known mixture of three sources (plus a useless fourth): the grid finds the mixture."""
    rng = np.random.default_rng(0)
    n = 300_000
    raw = rng.random((n, 4)).astype(np.float32)
    scales = np.array([1.0, 4.0, 0.5, 2.0], np.float32)                 # different units per source
    offsets = np.array([0.0, -10.0, 0.2, 3.0], np.float32)
    X = raw * scales + offsets
    truth = 0.5 * raw[:, 0] + 0.3 * raw[:, 1] + 0.2 * raw[:, 2]
    y = (truth > np.quantile(truth, 0.9)).astype(np.uint8)
    half = n // 2
    cfg = fit_fusion({"a": (X[:half], y[:half]), "b": (X[half:], y[half:])}, ["s0", "s1", "s2", "s3"], step=0.1)
    assert cfg.weights == pytest.approx({"s0": 0.5, "s1": 0.3, "s2": 0.2, "s3": 0.0})
    assert cfg.record["calibration_AuPRC"] > 99.0
    assert cfg.record["calibration_sets"]["a"]["pixels"] == half
    assert max(v["AuPRC"] for v in cfg.record["single_sources"].values()) < 90.0


def test_gated_form_by_hand_round_trip_and_validation(tmp_path):
    """``ŝ_g · (w_g + Σ_{i≠g} w_i ŝ_i)``: the gate alone keeps ``w_g ŝ_g``, the other source alone gives 0."""
    norms = {"det": SourceNorm(0.0, 1.0), "txt": SourceNorm(0.0, 1.0)}
    cfg = FusionCfg({"det": 0.8, "txt": 0.2}, norms, gate="txt")
    maps = {"det": np.array([[0.0, 1.0, 1.0, 0.5]]), "txt": np.array([[1.0, 0.0, 1.0, 0.5]])}
    np.testing.assert_allclose(fuse(maps, cfg), [[0.2, 0.0, 1.0, 0.5 * (0.2 + 0.8 * 0.5)]], rtol=1e-6)
    assert cfg.form == "gated" and FusionCfg({"det": 1.0}, norms).form == "sum"
    loaded = FusionCfg.load(cfg.save(tmp_path / "gated.yaml"))
    assert loaded == cfg and loaded.gate == "txt"
    assert "g = txt" in (tmp_path / "gated.yaml").read_text().splitlines()[0]
    with pytest.raises(ConfigError, match="weight > 0"):
        FusionCfg({"det": 1.0, "txt": 0.0}, norms, gate="txt")
    with pytest.raises(ConfigError, match="weight > 0"):
        FusionCfg({"det": 1.0}, norms, gate="clip")
    with pytest.raises(ConfigError, match="forms"):
        fit_fusion({"a": (np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1], np.uint8))}, ["det", "txt"],
                   forms=("max",))


def test_calibration_recovers_a_known_gated_form():
    """Labels from a known gated mixture (the text score gates, the detector boosts; a useless third source):
    ``forms=("sum", "gated")`` recovers gate and weights and beats every weighted sum; with the sum alone the
    record says nothing of forms."""
    rng = np.random.default_rng(4)
    raw = rng.random((200_000, 3)).astype(np.float32)
    X = raw * np.array([2.0, 1.0, 5.0], np.float32) - np.array([1.0, 0.0, 2.0], np.float32)
    truth = raw[:, 1] * (0.2 + 0.8 * raw[:, 0])
    y = (truth > np.median(truth)).astype(np.uint8)
    sources = ["det", "txt", "junk"]
    summed = fit_fusion({"a": (X, y)}, sources, step=0.1)
    both = fit_fusion({"a": (X, y)}, sources, step=0.1, forms=("sum", "gated"))
    assert summed.gate is None and "best_by_form" not in summed.record
    assert both.gate == "txt" and both.weights == pytest.approx({"det": 0.8, "txt": 0.2, "junk": 0.0})
    assert both.record["calibration_AuPRC"] > 99.9 > summed.record["calibration_AuPRC"] + 1.0
    assert set(both.record["best_by_form"]) == {"sum", "gated by det", "gated by txt", "gated by junk"}
    assert both.record["best_by_form"]["sum"]["AuPRC"] == pytest.approx(summed.record["calibration_AuPRC"])
    fused = fuse(dict(zip(sources, X.T)), both)                    # the config applies what the search scored
    assert 100 * ap_fpr95(fused, y)[0] == pytest.approx(both.record["calibration_AuPRC"], abs=0.05)


class _Dataset:
    """A tiny dataset with labels in memory (the loader interface calibration uses)."""

    def __init__(self, labels):
        from vl_anomaly.datasets import Frame

        self.name = "tiny"
        self.labels = labels
        self.frames = [Frame(str(i), None, None) for i in range(len(labels))]

    def __len__(self):
        return len(self.labels)

    def load_label(self, index):
        return self.labels[index]


def test_sampling_and_fused_maps_on_disk(tmp_path):
    rng = np.random.default_rng(3)
    labels = [rng.choice(np.array([0, 1, 255], np.uint8), size=(20, 30), p=[0.7, 0.2, 0.1]) for _ in range(3)]
    dataset = _Dataset(labels)
    for source, offset in (("msp", 0.0), ("entropy", 0.5)):
        folder = tmp_path / "tiny" / source
        folder.mkdir(parents=True)
        for i, label in enumerate(labels):
            np.save(folder / f"{i}.npy", (label == 1).astype(np.float16) * 0.5 + np.float16(offset))
    X, y = sample_pixels(dataset, tmp_path, ["msp", "entropy"], pixels=10_000)
    assert X.shape == (int(sum((lab != 255).sum() for lab in labels)), 2)        # all valid pixels, no void
    np.testing.assert_array_equal(y, (X[:, 0] > 0.25).astype(np.uint8))
    cfg = fit_fusion({"tiny": (X, y)}, ["msp", "entropy"], step=0.5)
    folder = write_fused_maps(dataset, tmp_path, cfg)
    fused = np.load(folder / "0.npy")
    assert fused.dtype == np.float16 and fused.shape == (20, 30)
    assert set(np.unique(fused[labels[0] == 1])) == {1.0} and set(np.unique(fused[labels[0] == 0])) == {0.0}
    with pytest.raises(ConfigError, match="missing"):
        sample_pixels(dataset, tmp_path, ["msp", "energy"])


def test_predict_writes_the_fused_map_that_eval_scores(tmp_path, anomaly_val):
    """One fusion path: ``predict --fusion`` writes the same fused map (float32) that ``eval --fusion`` stores
    (float16) and scores, both from the predictor's ``fused`` score over its sources."""
    from vl_anomaly.cli import main
    from vl_anomaly.datasets import load_dataset
    from vl_anomaly.evaluation import run_evaluation
    from vl_anomaly.factory import create_predictor

    dataset = load_dataset("road_anomaly_21")
    dataset.frames = dataset.frames[:2]
    cfg = FusionCfg({"msp": 0.3, "entropy": 0.7}, {"msp": SourceNorm(0.0, 0.6), "entropy": SourceNorm(0.1, 0.6)})
    path = cfg.save(tmp_path / "fusion.yaml")
    predictor = create_predictor("espnetv2_s2.0_cityscapes", input_size=(128, 256), fusion=path)
    results = run_evaluation([dataset], ["msp", "entropy", "fused"], tmp_path / "eval", predictor, workers=1)
    scores = results["datasets"]["road_anomaly_21"]["scores"]
    assert set(scores) == {"msp", "entropy", "fused"}
    assert results["predictor"]["scoring"]["fusion"]["weights"] == {"msp": 0.3, "entropy": 0.7}
    assert main(["predict", *[str(f.image) for f in dataset.frames], "-o", str(tmp_path / "pred"), "--score", "fused",
                 "--fusion", str(path), "--input-size", "128", "256", "--save", "npy"]) == 0
    for frame in dataset.frames:
        written = np.load(next((tmp_path / "pred").rglob(f"{frame.image.stem}.score.npy")))
        scored = np.load(tmp_path / "eval" / "score_maps" / "road_anomaly_21" / "fused" / f"{frame.frame_id}.npy")
        assert written.dtype == np.float32 and scored.dtype == np.float16 and written.shape == scored.shape
        np.testing.assert_allclose(scored.astype(np.float32), written, atol=1e-3)       # float16 storage only
        assert 0.0 <= written.min() and written.max() <= 1.0


def test_fused_score_for_any_model_and_its_errors():
    """``fused`` is a score of every model: the shipped config of the model's name by default, a YAML or shipped
    name otherwise; without one it says where to get one."""
    from vl_anomaly.factory import create_predictor
    from vl_anomaly.fusion import list_fusion_configs, load_fusion

    assert {"espnetv2_s2.0_cityscapes", "espnet_p2_q8_cityscapes"} <= set(list_fusion_configs())
    predictor = create_predictor("espnetv2_s2.0_cityscapes", weights="none", score="fused", input_size=(64, 128))
    assert predictor.scoring.fusion == load_fusion("espnetv2_s2.0_cityscapes")
    image = np.random.default_rng(0).integers(0, 255, (50, 90, 3), dtype=np.uint8)
    maps, _, _ = predictor.score_maps(image, ["msp", "entropy", "fused"])
    np.testing.assert_allclose(maps["fused"], fuse(maps, predictor.scoring.fusion), atol=1e-6)
    other = create_predictor("espnetv2_s2.0_cityscapes", weights="none", score="fused", input_size=(64, 128),
                             fusion="espnet_p2_q8_cityscapes")
    assert other.scoring.fusion == load_fusion("espnet_p2_q8_cityscapes")
    from vl_anomaly.pipeline import AnomalyPredictor

    with pytest.raises(ConfigError, match="needs a fusion config"):
        AnomalyPredictor(predictor.model, predictor.preprocess_cfg, score="fused")
    with pytest.raises(ConfigError, match="neither a file nor a shipped config"):
        create_predictor("espnetv2_s2.0_cityscapes", weights="none", fusion="no_such_fusion")
    rba_fusion = FusionCfg({"rba": 1.0}, {"rba": SourceNorm(-1.0, 1.0)})
    with pytest.raises(ConfigError, match="mask-query model"):
        create_predictor("espnetv2_s2.0_cityscapes", weights="none", score="fused", fusion=rba_fusion)


def test_calibrate_command_writes_fusion_and_model_config(tmp_path):
    """``vl-anomaly calibrate`` on two real frames (small input): a fusion YAML and a model config with it."""
    import yaml

    from vl_anomaly import add_model_config, get_model_config
    from vl_anomaly.cli import main

    eval_dir = tmp_path / "eval"
    code = main(["calibrate", "--model", "espnetv2_s2.0_cityscapes", "--sources", "msp", "energy",
                 "--dataset", "road_anomaly_21", "--input-size", "128", "256", "--pixels", "20000",
                 "--eval-dir", str(eval_dir), "-o", str(tmp_path / "fusion.yaml"),
                 "--model-config-out", str(tmp_path / "cfg" / "espnetv2_fused_test.yaml")])
    assert code == 0
    cfg = FusionCfg.load(tmp_path / "fusion.yaml")
    assert set(cfg.weights) == {"msp", "energy"} and abs(sum(cfg.weights.values()) - 1) < 1e-9
    assert "road_anomaly_21" in cfg.record["calibration_sets"]
    written = yaml.safe_load((tmp_path / "cfg" / "espnetv2_fused_test.yaml").read_text())
    assert written["fusion"]["weights"] == cfg.weights
    add_model_config(tmp_path / "cfg")
    assert get_model_config("espnetv2_fused_test")["fusion"]["weights"] == cfg.weights
    assert cfg.gate is None and "best_by_form" not in cfg.record                  # the default form: weighted sum
    code = main(["calibrate", "--model", "espnetv2_s2.0_cityscapes", "--sources", "msp", "energy",   # maps reused
                 "--dataset", "road_anomaly_21", "--input-size", "128", "256", "--pixels", "20000", "--form", "auto",
                 "--eval-dir", str(eval_dir), "-o", str(tmp_path / "auto.yaml")])
    auto = FusionCfg.load(tmp_path / "auto.yaml")
    assert code == 0 and set(auto.record["best_by_form"]) == {"sum", "gated by msp", "gated by energy"}
    best = max(auto.record["best_by_form"].values(), key=lambda v: v["AuPRC"])["AuPRC"]
    assert auto.record["calibration_AuPRC"] == pytest.approx(best)
    assert auto.record["best_by_form"]["sum"]["AuPRC"] == pytest.approx(cfg.record["calibration_AuPRC"])


def test_learned_combiner_fit_predict_save_load(tmp_path):
    """A logistic combiner with pairwise terms learns an interaction that no weighted sum expresses (anomalous =
    both sources high or both low), and survives a YAML round trip bit for bit."""
    from vl_anomaly.calibration import ap_fpr95, fit_fusion, fit_logistic_fusion
    from vl_anomaly.fusion import FusionCfg, fuse

    rng = np.random.default_rng(0)
    samples = {}
    for name in ("a", "b"):
        x = rng.uniform(0, 1, (40_000, 2)).astype(np.float32)
        y = ((x[:, 0] - 0.5) * (x[:, 1] - 0.5) > 0.05).astype(np.uint8)
        x[:, 1] = 10.0 * x[:, 1] - 3.0                                   # another range: the norms map it back
        samples[name] = (x, y)
    learned = fit_logistic_fusion(samples, ["msp", "max_logit"], pairwise=True)
    linear = fit_fusion(samples, ["msp", "max_logit"], step=0.1)
    x, y = samples["a"]
    maps = {"msp": x[:, 0].reshape(200, 200), "max_logit": x[:, 1].reshape(200, 200)}
    ap_learned, _ = ap_fpr95(fuse(maps, learned).ravel(), y)
    ap_linear, _ = ap_fpr95(fuse(maps, linear).ravel(), y)
    assert ap_learned > 0.9 and ap_learned > ap_linear + 0.2, (ap_learned, ap_linear)
    assert learned.combiner.pairwise["msp*max_logit"] > 0
    path = learned.save(tmp_path / "learned.yaml")
    again = FusionCfg.load(path)
    assert again.combiner == learned.combiner and np.array_equal(fuse(maps, again), fuse(maps, learned))
    with pytest.raises(ConfigError, match="combiner's sources"):
        FusionCfg(learned.weights, learned.norms, {}, type(learned.combiner)(0.0, {"msp": 1.0}))
