"""Model registry: names, configs, and a sweep building every registered model."""

from __future__ import annotations

import pytest
import torch

from vl_anomaly import ConfigError, add_model_config, create_model, get_model_config, list_models
from vl_anomaly.factory import get_preprocess_cfg


def test_registered_names():
    assert {"espnet_p2_q8_cityscapes", "espnetv2_s2.0_cityscapes", "mask2former_swin_t_cityscapes"} <= set(list_models())


def test_config_is_a_copy():
    cfg = get_model_config("espnet_p2_q8_cityscapes")
    cfg["arch"]["p"] = 99
    assert get_model_config("espnet_p2_q8_cityscapes")["arch"]["p"] == 2


def test_unknown_model_lists_registered_ones():
    with pytest.raises(ConfigError) as info:
        get_model_config("espnet_p9")
    assert "espnetv2_s2.0_cityscapes" in str(info.value)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_and_fulfils_the_contract(name):
    model = create_model(name, weights=None)
    size = (128, 256)
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    cfg = get_model_config(name)
    if cfg["family"] == "vl_anomaly":                           # the segmenter's contract, plus the VL outputs
        assert out.s_pix.shape[:2] == (1, 19) and out.text.shape == (19, model.clip.embed_dim)
        model, out, cfg = model.segmenter, out.base, get_model_config(cfg["segmenter"])
    assert out.logits.shape == (1, 19, *size)
    assert torch.isfinite(out.logits).all()
    stride = out.feature_stride
    assert out.pixel_features.shape[-2:] == (size[0] // stride, size[1] // stride)
    assert out.pixel_features.shape[1] == model.feature_channels
    if cfg["family"] == "ensemble":                             # mean of the members; their logits kept
        assert out.member_logits.shape == (1, len(cfg["members"]), 19, *size) and not out.has_mask_queries
        assert torch.allclose(out.logits.softmax(1), out.member_logits.softmax(2).mean(1), atol=1e-5)
    elif cfg["family"] in ("espnet", "espnetv2", "dicenet"):
        assert out.void_logits.shape == (1, 1, *size) and not out.has_mask_queries
    else:
        assert out.has_mask_queries
    assert get_preprocess_cfg(name).input_size == (512, 1024)


def test_user_config_folder(tmp_path):
    (tmp_path / "espnet_p1_q2_test.yaml").write_text(
        "family: espnet\nclasses: cityscapes\narch: {num_outputs: 20, p: 1, q: 2}\n")
    assert add_model_config(tmp_path) == ["espnet_p1_q2_test"]
    model = create_model("espnet_p1_q2_test", weights=None)
    assert len(model.encoder.level3) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: {}\n")
    with pytest.raises(ConfigError, match="family"):
        add_model_config(bad)
