"""Shared fixtures: the real shared data/weights (required; never copied into the repo), an isolated weights
cache, real images, and tiny model configs built in code."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")       # no test may reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Every test session converts weights into its own cache (the cache is part of what is tested)."""
    os.environ["VL_ANOMALY_CACHE_DIR"] = str(tmp_path_factory.mktemp("vl_anomaly_cache"))
    yield


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    from vl_anomaly.paths import shared_dir as find

    path = find()
    if path is None:
        pytest.fail("../shared (real data and weights) not found: set VL_ANOMALY_SHARED_DIR")
    return path


@pytest.fixture(scope="session")
def anomaly_val(shared_dir) -> Path:
    return shared_dir / "data" / "anomaly_val"


@pytest.fixture(scope="session")
def weights_dir(shared_dir) -> Path:
    return shared_dir / "weights"


@pytest.fixture(scope="session")
def road_obstacle_image(anomaly_val) -> np.ndarray:
    """RoadObstacle21 validation frame 0 (1920×1080 WebP), RGB uint8."""
    from vl_anomaly import read_image

    return read_image(anomaly_val / "RoadObstacle21" / "images" / "0.webp")


@pytest.fixture(scope="session")
def espnetv2_predictor():
    from vl_anomaly import create_predictor

    return create_predictor("espnetv2_s2.0_cityscapes", score="msp")


TINY_MASK2FORMER = dict(
    backbone=dict(type="swin", embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=7),
    feature_size=64, mask_feature_size=64, hidden_dim=64, encoder_feedforward_dim=128, encoder_layers=1,
    decoder_layers=2, num_attention_heads=4, dim_feedforward=128, num_queries=10)


@pytest.fixture
def tiny_mask2former():
    """A 1.4 M-parameter Mask2Former (Swin) with random weights, built in code."""
    import torch
    from vl_anomaly.networks.mask2former import Mask2FormerSegmenter

    torch.manual_seed(0)
    return Mask2FormerSegmenter.from_config(TINY_MASK2FORMER).eval()


TINY_CLIP = dict(embed_dim=64, vision_cfg=dict(image_size=64, layers=2, width=64, patch_size=16, head_width=32),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))


@pytest.fixture(scope="session")
def tiny_vl_config_dir(tmp_path_factory) -> Path:
    """A model-config folder holding ``vl_tiny_test.yaml``: the real ESPNetv2 with a tiny CLIP built from its
    config (random weights, the real tokenizer) and 4 prompt context vectors. Other processes (the node) register
    it through ``VL_ANOMALY_MODEL_CONFIGS``."""
    import yaml

    from vl_anomaly import get_model_config

    cfg = get_model_config("vl_anomaly_espnetv2_vitb16")
    cfg.pop("name")
    cfg["clip"] = {"name": "tiny", "weights": None, "config": TINY_CLIP}
    cfg["arch"] = {"n_ctx": 4, "heads": 8, "tau": 0.07}
    folder = tmp_path_factory.mktemp("vl_cfg")
    (folder / "vl_tiny_test.yaml").write_text(yaml.safe_dump(cfg))
    return folder


@pytest.fixture(scope="session")
def tiny_vl_model(tiny_vl_config_dir) -> str:
    """Name of the registered tiny vl_anomaly model of :func:`tiny_vl_config_dir` (registered in this process)."""
    from vl_anomaly import add_model_config

    add_model_config(tiny_vl_config_dir / "vl_tiny_test.yaml")
    return "vl_tiny_test"
