"""Mask2Former through transformers: tiny random configs built in code (no weights can be downloaded here)."""

from __future__ import annotations

import pytest
import torch

from vl_anomaly import WeightsError, compute_score, create_model
from vl_anomaly.networks.mask2former import Mask2FormerSegmenter


def test_tiny_forward_output_contract(tiny_mask2former):
    x = torch.randn(2, 3, 128, 256)
    with torch.no_grad():
        out = tiny_mask2former(x)
    assert out.logits.shape == (2, 19, 128, 256)
    assert out.class_queries_logits.shape == (2, 10, 20)
    assert out.masks_queries_logits.shape == (2, 10, 32, 64)
    assert out.pixel_features.shape == (2, 64, 32, 64) and out.feature_stride == 4
    assert out.query_embeddings.shape == (2, 10, 64)
    assert out.has_mask_queries and torch.isfinite(out.logits).all()


def test_outputs_equal_transformers_own_outputs(tiny_mask2former):
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        ours = tiny_mask2former(x)
        ref = tiny_mask2former.model(pixel_values=x)
    assert torch.equal(ours.class_queries_logits, ref.class_queries_logits)
    assert torch.equal(ours.masks_queries_logits, ref.masks_queries_logits)
    # semantic logits: the standard query-mask product
    masks = torch.nn.functional.interpolate(ref.masks_queries_logits, size=(96, 160), mode="bilinear",
                                            align_corners=False).sigmoid()
    expected = torch.einsum("bqc,bqhw->bchw", ref.class_queries_logits.softmax(-1)[..., :-1], masks)
    assert torch.allclose(ours.logits, expected, atol=1e-6)


def test_eager_attention_everywhere(tiny_mask2former):
    assert tiny_mask2former.model.config._attn_implementation == "eager"
    assert tiny_mask2former.model.config.backbone_config._attn_implementation == "eager"


@pytest.mark.parametrize("score", ["msp", "max_logit", "entropy", "energy", "rba", "mask2anomaly"])
def test_every_score_runs_on_mask_queries(tiny_mask2former, score):
    with torch.no_grad():
        s = compute_score(score, tiny_mask2former(torch.randn(1, 3, 64, 128)))
    assert s.shape == (1, 64, 128) and torch.isfinite(s).all()


def test_local_checkpoint_directory_round_trip(tiny_mask2former, tmp_path):
    tiny_mask2former.model.save_pretrained(tmp_path / "ckpt")
    loaded = create_model("mask2former_swin_t_cityscapes", weights=tmp_path / "ckpt")
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert torch.equal(tiny_mask2former(x).logits, loaded(x).logits)
    assert loaded.model.config.backbone_config._attn_implementation == "eager"


def test_missing_checkpoint_directory_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        Mask2FormerSegmenter.from_pretrained(tmp_path / "nothing")


def test_default_hub_checkpoint_unreachable_offline_is_a_clear_error():
    with pytest.raises(WeightsError, match="facebook/mask2former-swin-tiny-cityscapes-semantic"):
        create_model("mask2former_swin_t_cityscapes", weights="default")


def test_training_loss_reuses_the_forward_pass_and_equals_transformers_own(tiny_mask2former):
    """``segmentation_loss`` on the training forward's output (no second pass): the same loss and the same
    gradients as ``Mask2FormerForUniversalSegmentation(pixel_values, mask_labels, class_labels).loss`` (auxiliary
    losses on every decoder layer included); an eval-mode output is refused with what to do."""
    x = torch.randn(2, 3, 64, 128)
    labels = torch.randint(0, 19, (2, 64, 128))
    labels[0, :8] = 255                                                   # void is left out of every mask
    tiny_mask2former.train()
    try:
        torch.manual_seed(3)                                              # the loss samples points at random
        out = tiny_mask2former(x)
        ours = tiny_mask2former.segmentation_loss(out, labels)
        ours.backward()
        grads = {n: p.grad.clone() for n, p in tiny_mask2former.named_parameters() if p.grad is not None}
        tiny_mask2former.zero_grad(set_to_none=True)
        masks = [torch.stack([(lab == c).float() for c in lab.unique().tolist() if c != 255]) for lab in labels]
        classes = [torch.tensor([c for c in lab.unique().tolist() if c != 255]) for lab in labels]
        torch.manual_seed(3)
        ref = tiny_mask2former.model(pixel_values=x, mask_labels=masks, class_labels=classes).loss
        ref.backward()
        layers = tiny_mask2former.model.model.transformer_module.decoder.layers    # + the one before any layer
        assert len(out.decoder_layer_predictions) == len(layers) + 1 > 1           # so auxiliary terms exist
        assert out.decoder_layer_predictions[-1][1] is not None
        torch.testing.assert_close(out.decoder_layer_predictions[-1][0], out.class_queries_logits)
        torch.testing.assert_close(out.decoder_layer_predictions[-1][1], out.masks_queries_logits)
        torch.testing.assert_close(ours, ref)
        for name, p in tiny_mask2former.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(grads[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)
        assert grads.keys() == {n for n, p in tiny_mask2former.named_parameters() if p.grad is not None}
    finally:
        tiny_mask2former.zero_grad(set_to_none=True)
        tiny_mask2former.eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"training mode only: call \.train\(\)"):
        tiny_mask2former.segmentation_loss(tiny_mask2former(x), labels)
