"""Anomaly scores: formulas on hand-computed cases, documented ranges and shapes, mask-query scores."""

from __future__ import annotations

import math

import pytest
import torch

from vl_anomaly import ConfigError, SegmenterOutput, compute_score, list_scores
from vl_anomaly.networks.mask2former import semantic_from_queries
from vl_anomaly.scores import SCORES, energy, entropy, mask2anomaly, max_logit, msp, pixel_scores, rba


def _logits(values):
    """K logits for a single pixel → (1, K, 1, 1)."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def test_hand_computed_values():
    x = _logits([2.0, 0.0, 0.0])
    p_max = math.exp(2) / (math.exp(2) + 2)
    assert msp(x).item() == pytest.approx(1 - p_max, abs=1e-6)
    assert max_logit(x).item() == pytest.approx(-2.0)
    assert energy(x).item() == pytest.approx(-math.log(math.exp(2) + 2), abs=1e-6)
    p = torch.tensor([math.exp(2), 1, 1]) / (math.exp(2) + 2)
    assert entropy(x).item() == pytest.approx(float(-(p * p.log()).sum() / math.log(3)), abs=1e-6)


def test_uniform_and_confident_extremes():
    uniform = _logits([0.0] * 19)
    assert msp(uniform).item() == pytest.approx(1 - 1 / 19, abs=1e-6)
    assert entropy(uniform).item() == pytest.approx(1.0, abs=1e-6)
    confident = _logits([50.0] + [0.0] * 18)
    assert msp(confident).item() == pytest.approx(0.0, abs=1e-6)
    assert entropy(confident).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", pixel_scores())
def test_pixel_scores_shape_dtype_and_documented_range(name):
    torch.manual_seed(0)
    out = SegmenterOutput(logits=torch.randn(2, 19, 8, 12) * 5, pixel_features=torch.zeros(2, 4, 1, 2),
                          feature_stride=8)
    s = compute_score(name, out)
    assert s.shape == (2, 8, 12) and s.dtype == torch.float32 and torch.isfinite(s).all()
    lo, hi = SCORES[name].range
    assert s.min().item() >= lo - 1e-6 and s.max().item() <= hi + 1e-6


def _query_output(b=1, q=4, k=19, h=6, w=8, size=(12, 16)):
    torch.manual_seed(1)
    cls = torch.randn(b, q, k + 1) * 3
    masks = torch.randn(b, q, h, w) * 3
    return SegmenterOutput(logits=semantic_from_queries(cls, masks, size), pixel_features=torch.zeros(b, 2, h, w),
                           feature_stride=4, class_queries_logits=cls, masks_queries_logits=masks)


def test_rba_matches_explicit_sum():
    out = _query_output()
    s = compute_score("rba", out)
    masks = torch.nn.functional.interpolate(out.masks_queries_logits, size=(12, 16), mode="bilinear",
                                            align_corners=False).sigmoid()
    expected = torch.zeros(1, 12, 16)
    for k in range(19):
        l_k = sum(out.class_queries_logits[0, q, k] * masks[0, q] for q in range(4))
        expected -= torch.tanh(l_k)
    assert torch.allclose(s, expected, atol=1e-5)
    assert s.abs().max() <= 19


def test_mask2anomaly_is_one_minus_max_of_query_mask_product():
    out = _query_output()
    s = compute_score("mask2anomaly", out)
    probs = out.class_queries_logits.softmax(-1)[..., :-1]
    masks = torch.nn.functional.interpolate(out.masks_queries_logits, size=(12, 16), mode="bilinear",
                                            align_corners=False).sigmoid()
    semantic = (probs[0, :, :, None, None] * masks[0, :, None]).sum(0)
    assert torch.allclose(s[0], 1 - semantic.max(0).values, atol=1e-6)
    assert torch.allclose(mask2anomaly(out.logits), s)
    assert s.max() <= 1.0


def test_rba_direct_function_range():
    out = _query_output(q=30)
    s = rba(out.class_queries_logits, out.masks_queries_logits, (12, 16))
    assert s.shape == (1, 12, 16) and s.min() >= -19 and s.max() <= 19


@pytest.mark.parametrize("name", ["rba", "mask2anomaly"])
def test_mask_scores_refuse_pixel_classifiers(name):
    out = SegmenterOutput(logits=torch.randn(1, 19, 4, 4), pixel_features=torch.zeros(1, 1, 1, 1), feature_stride=8)
    with pytest.raises(ConfigError, match="mask-query model"):
        compute_score(name, out)


def test_unknown_score_lists_choices():
    out = SegmenterOutput(logits=torch.randn(1, 19, 4, 4), pixel_features=torch.zeros(1, 1, 1, 1), feature_stride=8)
    with pytest.raises(ConfigError) as info:
        compute_score("softmax_magic", out)
    assert all(name in str(info.value) for name in list_scores())
