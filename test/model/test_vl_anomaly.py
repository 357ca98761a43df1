"""The vision-language parts on tiny random CLIP configs (real BPE tokenizer) and real or tiny segmenters.

Random CLIP weights make the text and CLIP scores meaningless: these tests check shapes, ranges, what is frozen,
where gradients go, caching, saving and loading — never the scores' quality.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vl_anomaly.errors import WeightsError
from vl_anomaly.networks.clip_towers import FrozenCLIP
from vl_anomaly.networks.prompt_learner import PromptLearner
from vl_anomaly.networks.vl_anomaly import VLAnomalyModel
from vl_anomaly.networks.clip_towers import template_text_embeddings
from vl_anomaly.vl_scores import clip_crop_score, text_guided_score

TINY_CLIP = dict(embed_dim=64, vision_cfg=dict(image_size=64, layers=2, width=64, patch_size=16, head_width=32),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))


@pytest.fixture
def clip():
    torch.manual_seed(0)
    return FrozenCLIP.create(config=TINY_CLIP, pretrained=None)


def test_frozen_clip_towers(clip):
    assert not any(p.requires_grad for p in clip.parameters())
    clip.train()
    assert not clip.model.training                                     # stays in eval mode
    texts = ["a photo of a road.", "an unusual object on the road."]
    tokens = clip.tokenize(texts)
    assert tokens.shape == (2, 77) and tokens.dtype == torch.int64
    direct = clip.encode_text(texts)
    via_embeddings = clip.encode_prompt_embeddings(clip.token_embeddings(tokens), tokens)
    torch.testing.assert_close(via_embeddings, direct)
    torch.testing.assert_close(direct.norm(dim=-1), torch.ones(2))
    assert clip.encode_images(torch.randn(3, 3, 64, 64)).shape == (3, 64)
    with pytest.raises(Exception, match="64×64"):
        clip.encode_images(torch.randn(1, 3, 32, 32))


def test_prompt_learner_trains_only_its_context(clip):
    learner = PromptLearner(clip, ["road", "traffic_light", "sky"], n_ctx=4)
    text = learner(clip)
    assert text.shape == (3, 64)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    text.sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip.parameters())
    assert [n for n, p in learner.named_parameters()] == ["ctx"]


def test_vl_model_on_real_espnetv2_features(clip, espnetv2_predictor, road_obstacle_image):
    segmenter = espnetv2_predictor.model
    model = VLAnomalyModel(segmenter, clip, n_ctx=4, heads=8)
    trainable = model.trainable_parameters()
    assert "prompts.ctx" in trainable and all(n.startswith(("prompts.", "pixel_aligner.")) for n in trainable)
    assert model.mask_aligner is None
    from vl_anomaly.preprocess import preprocess

    x = preprocess(road_obstacle_image, espnetv2_predictor.preprocess_cfg.with_input_size((128, 256)), "cpu")
    model.train()
    out = model(x)
    h, w = out.base.pixel_features.shape[-2:]
    assert out.s_pix.shape == (1, 19, h, w) and out.s_mask is None
    loss = torch.nn.functional.cross_entropy(out.s_pix, torch.zeros(1, h, w, dtype=torch.long))
    loss.backward()
    assert model.prompts.ctx.grad.abs().sum() > 0 and model.pixel_aligner.proj.weight.grad is not None
    assert all(p.grad is None for p in model.clip.parameters())            # frozen parts receive no gradient
    assert all(p.grad is None for p in model.segmenter.parameters())
    model.eval()
    with torch.no_grad():
        s_txt = text_guided_score(model(x), (128, 256))
    assert s_txt.shape == (1, 128, 256) and 0.0 <= float(s_txt.min()) and float(s_txt.max()) <= 1.0


def test_text_cache_and_save_reload_give_identical_scores(clip, espnetv2_predictor, tmp_path):
    model = VLAnomalyModel(espnetv2_predictor.model, clip, n_ctx=4).eval()
    x = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        first = model(x)
    assert bool(model.text_cache_valid)
    torch.testing.assert_close(model.text_embeddings, model.prompts(model.clip).detach())
    calls = []
    model.prompts.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model(x)
    assert calls == []                                                   # the text tower does not run per frame
    state = {k: v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "vl.pt")
    torch.manual_seed(123)
    clip2 = FrozenCLIP.create(config=TINY_CLIP, pretrained=None)
    other = VLAnomalyModel(espnetv2_predictor.model, clip2, n_ctx=4)
    other.load_state_dict(torch.load(tmp_path / "vl.pt", weights_only=True))
    other.eval()
    with torch.no_grad():
        second = other(x)
    torch.testing.assert_close(second.s_pix, first.s_pix)
    torch.testing.assert_close(text_guided_score(second, (128, 256)), text_guided_score(first, (128, 256)))
    model.train()
    assert not bool(model.text_cache_valid)                              # training invalidates the cache


def test_vl_model_with_mask_queries(clip, tiny_mask2former):
    model = VLAnomalyModel(tiny_mask2former, clip, n_ctx=4, heads=4).eval()
    assert model.mask_aligner is not None
    with torch.no_grad():
        out = model(torch.randn(2, 3, 128, 256))
    assert out.s_mask.shape == (2, 10, 20)
    s_txt = text_guided_score(out, (128, 256))
    assert s_txt.shape == (2, 128, 256) and float(s_txt.min()) >= 0 and float(s_txt.max()) <= 1


def test_clip_crop_score_batches_capped_regions(clip, road_obstacle_image):
    image = road_obstacle_image[::4, ::4].copy()                          # 480 × 270
    detector = np.zeros(image.shape[:2], np.float32)
    for k, (y, x, size) in enumerate([(20, 20, 40), (150, 300, 30), (200, 100, 20), (100, 400, 10)]):
        detector[y:y + size, x:x + size] = 0.9
    text = template_text_embeddings(clip, ["road", "car", "sky"])
    assert text.shape == (3, 64)
    score, crops = clip_crop_score(image, detector, clip, text, threshold=0.5, max_crops=3, min_area_frac=0.0)
    assert crops == 3 and score.shape == detector.shape and score.dtype == np.float32
    assert 0.0 <= score.min() and score.max() <= 1.0
    assert (score[detector == 0] == 0).all() and (score[100:110, 400:410] == 0).all()     # smallest region capped
    assert (score[20:60, 20:60] > 0).all()
    none, zero = clip_crop_score(image, np.zeros_like(detector), clip, text, threshold=0.5)
    assert zero == 0 and not none.any()


def test_clip_checkpoint_loads_from_a_local_file_by_configuration(clip, tmp_path):
    import open_clip

    path = tmp_path / "tiny_clip.pt"
    torch.save(clip.model.state_dict(), path)
    loaded = FrozenCLIP.create(config=TINY_CLIP, pretrained=path)
    torch.testing.assert_close(loaded.encode_text(["a car."]), clip.encode_text(["a car."]))
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "tiny-clip-test.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config_dir)
    by_name = FrozenCLIP.create("tiny-clip-test", pretrained=path)          # open_clip's registry + local file
    torch.testing.assert_close(by_name.encode_text(["a car."]), clip.encode_text(["a car."]))
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="broken.pt"):
        FrozenCLIP.create(config=TINY_CLIP, pretrained=tmp_path / "broken.pt")
    with pytest.raises(WeightsError, match="does not exist"):
        FrozenCLIP.create("ViT-B-16", pretrained=tmp_path / "missing.pt")


def test_vl_pipeline_end_to_end_on_a_real_image(tiny_vl_model, road_obstacle_image, tmp_path, monkeypatch):
    """All sources and their fusion from one predictor, as predict / eval / the node use it; a saved head
    checkpoint reloads by configuration and gives identical maps."""
    from safetensors.torch import save_file

    from vl_anomaly import ConfigError, create_predictor
    from vl_anomaly.fusion import fuse

    image = road_obstacle_image[::2, ::2].copy()
    torch.manual_seed(0)
    predictor = create_predictor(tiny_vl_model, weights="untrained", score="fused", input_size=(128, 256))
    names = ["msp", "text_guided", "clip_crops", "fused"]
    maps, semantic, _ = predictor.score_maps(image, names)
    for name in names:
        assert maps[name].shape == image.shape[:2] and maps[name].dtype == np.float32
        assert np.isfinite(maps[name]).all() and 0.0 <= maps[name].min() and maps[name].max() <= 1.0
    np.testing.assert_allclose(maps["fused"], fuse(maps, predictor.scoring.fusion), atol=1e-6)
    assert predictor.predict(image).score_map.shape == image.shape[:2]
    head = {k: v.contiguous() for k, v in predictor.model.state_dict().items()
            if not k.startswith(("clip.", "segmenter."))}
    save_file(head, tmp_path / "head.safetensors")
    torch.manual_seed(99)
    reloaded = create_predictor(tiny_vl_model, weights=str(tmp_path / "head.safetensors"), score="fused",
                                input_size=(128, 256))
    # CLIP itself is random in both (seeded differently): compare the parts the head checkpoint determines.
    again, _, _ = reloaded.score_maps(image, ["msp"])
    np.testing.assert_array_equal(again["msp"], maps["msp"])
    torch.testing.assert_close(reloaded.model.text_embeddings, predictor.model.text_embeddings)
    torch.testing.assert_close(reloaded.model.prompts.ctx, predictor.model.prompts.ctx)
    with pytest.raises(WeightsError, match="no trained vl_anomaly head"):
        create_predictor(tiny_vl_model, weights="default")
    with pytest.raises(ConfigError, match="vision-language model"):
        create_predictor("espnetv2_s2.0_cityscapes", score="text_guided")


def test_clip_weights_by_configuration_alone(tiny_vl_model, clip, tmp_path, monkeypatch):
    """clip_weights points the registered VL model at a local open_clip checkpoint (the CLI's --clip-weights,
    default $VL_ANOMALY_CLIP_WEIGHTS; the core reads no environment variable for it)."""
    from vl_anomaly import create_model

    path = tmp_path / "clip_tiny.pt"
    torch.save(clip.model.state_dict(), path)
    monkeypatch.setenv("VL_ANOMALY_CLIP_WEIGHTS", str(tmp_path / "ignored.pt"))     # read by the CLI only
    model = create_model(tiny_vl_model, weights="untrained", clip_weights=path)
    torch.testing.assert_close(model.clip.encode_text(["a deer on the road."]), clip.encode_text(["a deer on the road."]))
    with pytest.raises(WeightsError, match="does not exist"):
        create_model(tiny_vl_model, weights="untrained", clip_weights=tmp_path / "missing.pt")


def test_anomaly_prompts_take_probability_from_the_known_classes(clip, road_obstacle_image):
    """The crop score with anomaly prompts: a = 1 − max over the known classes of the softmax over known + anomaly
    prompts, computed by hand from the same embeddings."""
    import torch.nn.functional as F

    from vl_anomaly.vl_scores import _crop_square
    from vl_anomaly.networks.clip_towers import CLIP_MEAN, CLIP_STD

    image = road_obstacle_image[::4, ::4].copy()
    detector = np.zeros(image.shape[:2], np.float32)
    detector[20:60, 20:60] = 0.9
    known = template_text_embeddings(clip, ["road", "car"])
    anomaly = clip.encode_text(["an animal on the road", "debris"])
    with_prompts, _ = clip_crop_score(image, detector, clip, known, 0.5, min_area_frac=0.0, anomaly_text=anomaly)
    without, _ = clip_crop_score(image, detector, clip, known, 0.5, min_area_frac=0.0)
    crop = torch.from_numpy(_crop_square(image, (20, 20, 40, 40), 64, 0.1)).permute(2, 0, 1)[None].float() / 255
    crop = (crop - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    e = clip.encode_images(crop)
    probs = (100.0 * e @ F.normalize(torch.cat([known, anomaly]), dim=-1).T).softmax(-1)[0]
    assert with_prompts[30, 30] == pytest.approx(float(1 - probs[:2].max()), abs=1e-5)
    assert with_prompts[30, 30] >= without[30, 30] - 1e-6            # anomaly prompts can only take mass away


def test_run_time_vocabulary(tiny_vl_model, road_obstacle_image):
    """Known classes and anomaly prompts change without rebuilding the model: the text embeddings are recomputed
    once (K' rows), the learned context is kept, every score runs with the new vocabulary; bad vocabularies and
    plain segmenters are refused with the reason."""
    from vl_anomaly import ConfigError, create_predictor

    image = road_obstacle_image[::4, ::4].copy()
    torch.manual_seed(0)
    predictor = create_predictor(tiny_vl_model, weights="untrained", score="fused", input_size=(128, 256))
    model = predictor.model
    assert predictor.vocabulary["known_classes"][:2] == ["road", "sidewalk"] and len(model.text_embeddings) == 19
    context = model.prompts.ctx.detach().clone()
    before, _, _ = predictor.score_maps(image, ["text_guided"])
    changed = predictor.set_vocabulary(["road", "sidewalk", "car", "person", "traffic cone"],
                                       ["an animal on the road", "a lost cargo box"])
    assert changed["known_classes"][-1] == "traffic cone" and changed["seconds"] >= 0
    assert model.text_embeddings.shape == (5, 64) and bool(model.text_cache_valid)
    assert model.crop_text_embeddings().shape == (5, 64) and model.anomaly_text_embeddings().shape == (2, 64)
    torch.testing.assert_close(model.prompts.ctx, context)                      # no training, same context
    calls = []
    original = model.clip.encode_prompt_embeddings
    model.clip.encode_prompt_embeddings = lambda *a: calls.append(1) or original(*a)
    maps, _, _ = predictor.score_maps(image, ["text_guided", "clip_crops", "fused"])
    maps, _, _ = predictor.score_maps(image, ["text_guided"])
    assert calls == []                                                          # not recomputed per frame
    assert all(np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1 for m in maps.values())
    assert not np.array_equal(maps["text_guided"], before["text_guided"])        # K' = 5 classes now
    predictor.set_vocabulary(anomaly_prompts=[])                               # one part at a time
    assert predictor.vocabulary["anomaly_prompts"] == [] and len(predictor.vocabulary["known_classes"]) == 5
    for known, anomaly, match in [([], None, "at least one known class"), (["road", "road"], None, "duplicate"),
                                  (["road", ""], None, "empty entries"), (None, ["road"], "both known classes"),
                                  ("road", None, "list of strings")]:
        with pytest.raises(ConfigError, match=match):
            predictor.set_vocabulary(known, anomaly)
    assert len(predictor.vocabulary["known_classes"]) == 5                      # a refused change changes nothing
    with pytest.raises(ConfigError, match="plain segmenter: its classes are fixed by its weights"):
        create_predictor("espnetv2_s2.0_cityscapes", input_size=(64, 128)).set_vocabulary(["road"])


def test_vocabulary_flags_of_predict(tiny_vl_model, road_obstacle_image, tmp_path, tiny_vl_config_dir, monkeypatch):
    import cv2

    from vl_anomaly.cli import main

    monkeypatch.setenv("VL_ANOMALY_MODEL_CONFIGS", str(tiny_vl_config_dir))
    cv2.imwrite(str(tmp_path / "frame.png"), road_obstacle_image[::4, ::4, ::-1])
    assert main(["predict", str(tmp_path / "frame.png"), "-o", str(tmp_path / "out"), "--model", tiny_vl_model,
                 "--weights", "untrained", "--clip-weights", "none", "--score", "clip_crops", "--input-size", "128",
                 "256", "--known-classes", "road", "car", "--anomaly-prompts", "a deer", "--save", "json"]) == 0
    assert main(["predict", str(tmp_path / "frame.png"), "-o", str(tmp_path / "out2"), "--model",
                 "espnetv2_s2.0_cityscapes", "--input-size", "64", "128", "--known-classes", "road"]) == 2


def test_zero_shot_mode_needs_no_head(tiny_vl_config_dir, road_obstacle_image, tmp_path):
    """The zero-shot arrangement (as vl_zero_shot_espnetv2_vitb16, with a tiny CLIP): 'default' weights need no head
    checkpoint; its default score fuses the detector and the CLIP crops with the shipped anomaly prompts; the
    text-guided score is refused (no trained head); the vocabulary changes at run time like any VL model's."""
    import yaml

    from vl_anomaly import ConfigError, add_model_config, create_predictor, get_model_config

    cfg = get_model_config("vl_zero_shot_espnetv2_vitb16")
    assert cfg["arch"]["zero_shot"] and cfg["score"] == "fused" and set(cfg["fusion"]["weights"]) == {"msp",
                                                                                                    "clip_crops"}
    cfg.pop("name")
    cfg["clip"] = yaml.safe_load((tiny_vl_config_dir / "vl_tiny_test.yaml").read_text())["clip"]
    cfg["arch"]["n_ctx"] = 4
    (tmp_path / "vl_zero_shot_tiny.yaml").write_text(yaml.safe_dump(cfg))
    add_model_config(tmp_path / "vl_zero_shot_tiny.yaml")
    torch.manual_seed(0)
    predictor = create_predictor("vl_zero_shot_tiny", input_size=(128, 256))      # weights="default": no head
    assert predictor.score_name == "fused" and predictor.model.zero_shot
    assert predictor.vocabulary["anomaly_prompts"] == cfg["arch"]["anomaly_prompts"]
    image = road_obstacle_image[::4, ::4].copy()
    maps, _, _ = predictor.score_maps(image, ["msp", "clip_crops", "fused"])
    assert all(np.isfinite(m).all() and 0 <= m.min() and m.max() <= 1 for m in maps.values())
    assert maps["clip_crops"].max() > 0                                          # crops were found and scored
    with pytest.raises(ConfigError, match="zero-shot \\(no trained head\\)"):
        predictor.score_maps(image, ["text_guided"])
    predictor.set_vocabulary(["road", "car"], ["a deer"])
    assert predictor.model.anomaly_text_embeddings().shape == (1, 64)


def test_clip_crops_can_take_the_text_guided_score_as_detector(tiny_vl_model, road_obstacle_image):
    """``sources.detector: text_guided``: the CLIP crops are taken where the trained head's score fires (the
    synthetic-world benchmark does this); a crop detector must not be a composite score, nor a VL score on a plain
    segmenter."""
    from dataclasses import replace

    from vl_anomaly import ConfigError, create_predictor
    from vl_anomaly.scores import ScoringCfg, check_score_fits

    image = road_obstacle_image[::2, ::2].copy()
    torch.manual_seed(0)
    predictor = create_predictor(tiny_vl_model, weights="untrained", score="text_guided", input_size=(128, 256))
    predictor.scoring = replace(predictor.scoring, detector="text_guided")
    maps, _, _ = predictor.score_maps(image, ["text_guided", "clip_crops"])
    painted = maps["clip_crops"] > 0
    assert not (painted & (maps["text_guided"] < 0.5)).any()          # only on text-guided candidate regions
    for bad in ("clip_crops", "fused", "no_such_score"):
        with pytest.raises(ConfigError, match="CLIP crop detector must be"):
            ScoringCfg(detector=bad)
    plain = create_predictor("espnetv2_s2.0_cityscapes", score="msp")
    with pytest.raises(ConfigError, match="vision-language model"):
        check_score_fits("clip_crops", plain.model, ScoringCfg(detector="text_guided"))
