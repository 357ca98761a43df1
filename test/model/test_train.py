"""Training pipeline on a tiny Cityscapes-format dataset and a tiny COCO built by the test, tiny random CLIP,
the real ESPNetv2 segmenter (frozen): data, losses, a short run whose loss falls, exact resume, frozen parts."""

from __future__ import annotations

import json
import random

import cv2
import numpy as np
import pytest
import torch
import yaml

from vl_anomaly.errors import ConfigError
from vl_anomaly.preprocess import PreprocessCfg
from vl_anomaly.train.data import OUTLIER_LABEL, AugmentCfg, CityscapesTrain, CocoOutliers
from vl_anomaly.train.losses import hungarian_match, mask_text_loss, outlier_margin_loss, pixel_alignment_loss

TINY_MASK2FORMER = dict(
    backbone=dict(type="swin", embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=7),
    feature_size=64, mask_feature_size=64, hidden_dim=64, encoder_feedforward_dim=128, encoder_layers=1,
    decoder_layers=2, num_attention_heads=4, dim_feedforward=128, num_queries=10)
TINY_CLIP = dict(embed_dim=64, vision_cfg=dict(image_size=64, layers=2, width=64, patch_size=16, head_width=32),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    """4 frames of 128×256: sky (train ID 10) above road (0), a car (13) block, void border; one frame has only
    labelIds (mapped by the loader)."""
    root = tmp_path_factory.mktemp("cityscapes")
    rng = np.random.default_rng(0)
    for i in range(4):
        city = "aachen" if i < 2 else "bremen"
        (root / "leftImg8bit" / "train" / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / "train" / city).mkdir(parents=True, exist_ok=True)
        label = np.full((128, 256), 10, np.uint8)
        label[64:] = 0
        x = 40 + 40 * i
        label[70:110, x:x + 50] = 13
        label[:, :4] = 255
        colours = {10: (180, 130, 70), 0: (128, 64, 128), 13: (142, 0, 0), 255: (0, 0, 0)}
        image = np.zeros((128, 256, 3), np.uint8)
        for train_id, bgr in colours.items():
            image[label == train_id] = bgr
        image = np.clip(image.astype(int) + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)
        stem = f"{city}_{i:06d}_000019"
        cv2.imwrite(str(root / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png"), image)
        if i == 3:                                            # labelIds only: 23 sky, 7 road, 26 car, 0 unlabelled
            ids = np.select([label == 10, label == 0, label == 13], [23, 7, 26], 0).astype(np.uint8)
            cv2.imwrite(str(root / "gtFine" / "train" / city / f"{stem}_gtFine_labelIds.png"), ids)
        else:
            cv2.imwrite(str(root / "gtFine" / "train" / city / f"{stem}_gtFine_labelTrainIds.png"), label)
    return root


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    (root / "train2017").mkdir()
    (root / "annotations").mkdir()
    image = np.zeros((100, 100, 3), np.uint8)
    image[20:80, 30:70] = (0, 255, 255)
    cv2.imwrite(str(root / "train2017" / "000000000001.jpg"), image)
    annotations = {"images": [{"id": 1, "file_name": "000000000001.jpg", "height": 100, "width": 100}],
                   "annotations": [{"id": 1, "image_id": 1, "iscrowd": 0, "area": 2400.0, "bbox": [30, 20, 40, 60],
                                    "segmentation": [[30, 20, 70, 20, 70, 80, 30, 80]]},
                                   {"id": 2, "image_id": 1, "iscrowd": 1, "area": 2400.0, "bbox": [0, 0, 10, 10],
                                    "segmentation": {"counts": [0, 100], "size": [100, 100]}}]}
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(annotations))
    return root


def test_cityscapes_loader_augmentation_and_label_mapping(cityscapes):
    cfg = PreprocessCfg()
    plain = CityscapesTrain(cityscapes, "train", cfg)
    assert len(plain) == 4
    x, y = plain[3]                                                              # the labelIds frame
    assert x.shape == (3, 128, 256) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.unique().tolist()) == {0, 10, 13, 255}
    augmented = CityscapesTrain(cityscapes, "train", cfg, AugmentCfg((64, 128), 0.5, 1.5))
    a1, l1 = augmented[0]
    a2, l2 = augmented[0]
    assert a1.shape == (3, 64, 128) and torch.equal(l1, l2)                    # deterministic per (seed, epoch, index)
    augmented.set_epoch(1)
    assert set(augmented[0][1].unique().tolist()) <= {0, 10, 13, 255}
    with pytest.raises(Exception, match="not a Cityscapes root"):
        CityscapesTrain(cityscapes / "missing", "train", cfg)


def test_coco_outlier_pasting(cityscapes, coco):
    outliers = CocoOutliers(coco)
    assert len(outliers.instances) == 1                                          # crowd RLE skipped
    data = CityscapesTrain(cityscapes, "train", PreprocessCfg(), outliers=outliers, paste_prob=1.0)
    _, label = data[0]
    pasted = label == OUTLIER_LABEL
    assert 0 < int(pasted.sum()) < label.numel() // 4


def test_outlier_paste_size_and_count(cityscapes, coco):
    """``paste_size`` sets the pasted object's height as a fraction of the crop's; ``paste_count`` pastes 1 … N."""
    outliers = CocoOutliers(coco)
    data = CityscapesTrain(cityscapes, "train", PreprocessCfg(), outliers=outliers, paste_prob=1.0,
                           paste_size=(0.25, 0.25))
    for index in range(len(data)):
        rows = (data[index][1] == OUTLIER_LABEL).any(dim=1).nonzero()
        assert abs(int(rows.max() - rows.min() + 1) - 0.25 * 128) <= 1              # the 60-px instance at 32 px
    many = CityscapesTrain(cityscapes, "train", PreprocessCfg(), outliers=outliers, paste_prob=1.0,
                           paste_size=(0.05, 0.1), paste_count=3)
    counts = []
    for epoch in range(3):
        many.set_epoch(epoch)
        for index in range(len(many)):
            pasted = (many[index][1] == OUTLIER_LABEL).numpy().astype(np.uint8)
            counts.append(cv2.connectedComponents(pasted)[0] - 1)
    assert 1 <= min(counts) and max(counts) <= 3 and max(counts) > 1                # (small ones rarely touch)
    for bad in ((0.0, 0.5), (0.5, 0.25), (0.1, 1.5)):
        with pytest.raises(ConfigError, match="paste_size must be"):
            CityscapesTrain(cityscapes, "train", PreprocessCfg(), outliers=outliers, paste_size=bad)
    with pytest.raises(ConfigError, match="paste_count"):
        CityscapesTrain(cityscapes, "train", PreprocessCfg(), outliers=outliers, paste_count=0)


def test_losses_by_hand():
    labels = torch.tensor([[[0, 1], [255, OUTLIER_LABEL]]])
    s_pix = torch.zeros(1, 19, 2, 2)
    s_pix[0, 0, 0, 0] = 10.0
    s_pix[0, 1, 0, 1] = 10.0
    assert float(pixel_alignment_loss(s_pix, labels)) < 1e-3                     # void and outlier ignored
    score = torch.tensor([[[0.0, 0.0], [0.7, 0.25]]])
    assert float(outlier_margin_loss(score, labels, margin=1.0)) == pytest.approx(0.5 * 0.75 ** 2)
    gt_masks = torch.stack([labels[0] == 0, labels[0] == 1])
    mask_logits = torch.full((3, 2, 2), -10.0)
    mask_logits[2][labels[0] == 0] = 10.0
    mask_logits[0][labels[0] == 1] = 10.0
    rows, cols = hungarian_match(mask_logits, torch.zeros(3, 20), gt_masks, torch.tensor([0, 1]))
    assert dict(zip(rows.tolist(), cols.tolist())) == {2: 0, 0: 1}
    s_mask = torch.zeros(1, 3, 20, requires_grad=True)
    mask_text_loss(s_mask, mask_logits[None], labels).backward()
    assert s_mask.grad[0, 2, 0] < 0 and s_mask.grad[0, 0, 1] < 0 and s_mask.grad[0, 1, 19] < 0


def _cfg(tiny_vl_model, cityscapes, coco, out, iterations):
    from vl_anomaly.train.trainer import TrainCfg

    return TrainCfg(model=tiny_vl_model, cityscapes=str(cityscapes), coco=str(coco), paste_prob=0.5,
                    output=str(out), crop=(64, 128), min_scale=0.5, max_scale=1.0, iterations=iterations,
                    batch_size=2, lr=3e-3, weight_decay=0.05, grad_clip=1.0, workers=0, log_every=1,
                    checkpoint_every=1000, seed=0)


def test_short_training_run_loss_falls_and_frozen_parts_do_not_move(tiny_vl_model, cityscapes, coco, tmp_path):
    from safetensors.torch import load_file

    from vl_anomaly import create_model
    from vl_anomaly.train.trainer import train

    torch.manual_seed(0)
    before = create_model(tiny_vl_model, weights="untrained")
    frozen_before = {k: v.clone() for k, v in before.state_dict().items() if k.startswith("segmenter.")}
    result = train(_cfg(tiny_vl_model, cityscapes, coco, tmp_path / "run", 40), progress=False)
    losses = result["losses"]
    assert len(losses) == 40 and np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8]), losses
    head = load_file(str(tmp_path / "run" / "checkpoint" / "head.safetensors"))
    assert not any(k.startswith(("clip.", "segmenter.")) for k in head)           # frozen parts are not saved
    assert "prompts.ctx" in head and "text_embeddings" in head
    trained = create_model(tiny_vl_model, weights=str(tmp_path / "run" / "checkpoint" / "head.safetensors"))
    for key, value in trained.state_dict().items():
        if key.startswith("segmenter."):
            torch.testing.assert_close(value, frozen_before[key])               # the registered weights, untouched
    assert (tmp_path / "run" / "tensorboard").is_dir() and any((tmp_path / "run" / "tensorboard").iterdir())


def test_resume_reproduces_an_uninterrupted_run(tiny_vl_model, cityscapes, coco, tmp_path):
    from safetensors.torch import load_file

    from vl_anomaly.train.trainer import train

    random.seed(0)
    straight = train(_cfg(tiny_vl_model, cityscapes, coco, tmp_path / "a", 6), progress=False)
    train(_cfg(tiny_vl_model, cityscapes, coco, tmp_path / "b", 6), progress=False, max_steps=3)    # interrupted
    resumed = train(_cfg(tiny_vl_model, cityscapes, coco, tmp_path / "b", 6), progress=False)
    assert resumed["iteration"] == 6 and len(resumed["losses"]) == 3
    np.testing.assert_allclose(resumed["losses"], straight["losses"][3:], rtol=1e-4)
    a = load_file(str(tmp_path / "a" / "checkpoint" / "head.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint" / "head.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_distributed_training_with_torchrun(tiny_vl_model, cityscapes, coco, tmp_path):
    """Two CPU processes (gloo) through torchrun, DistributedDataParallel: both ranks step, rank 0 saves."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from vl_anomaly import get_model_config

    folder = tmp_path / "cfgs"
    folder.mkdir()
    cfg = get_model_config(tiny_vl_model)
    cfg.pop("name")
    (folder / f"{tiny_vl_model}.yaml").write_text(yaml.safe_dump(cfg))
    config = _cfg(tiny_vl_model, cityscapes, coco, tmp_path / "ddp", 2).__dict__
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if k != "extra"}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "VL_ANOMALY_MODEL_CONFIGS": str(folder), "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "vl_anomaly.cli", "train",
                           "--config", str(tmp_path / "train.yaml")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "trained to iteration 2" in done.stdout
    meta = json.loads((tmp_path / "ddp" / "checkpoint" / "trainer.json").read_text())
    assert meta["iteration"] == 2


def test_mask2former_head_and_segmenter_train_together(cityscapes, tmp_path):
    """Tiny Mask2Former + tiny CLIP, segmenter unfrozen: Mask2Former's own loss, R6 and R9 (Hungarian) all
    contribute; the segmenter's weights move, CLIP's do not."""
    from vl_anomaly import add_model_config, create_model
    from vl_anomaly.train.trainer import TrainCfg, train

    folder = tmp_path / "cfgs"
    folder.mkdir()
    (folder / "m2f_tiny_train_test.yaml").write_text(yaml.safe_dump(
        {"family": "mask2former", "classes": "cityscapes", "arch": TINY_MASK2FORMER}))
    (folder / "vl_m2f_tiny_train_test.yaml").write_text(yaml.safe_dump(
        {"family": "vl_anomaly", "classes": "cityscapes", "segmenter": "m2f_tiny_train_test",
         "clip": {"name": "tiny", "pretrained": None, "config": TINY_CLIP},
         "arch": {"n_ctx": 4, "heads": 4, "tau": 0.07}}))
    add_model_config(folder)
    torch.manual_seed(0)
    initial = create_model("vl_m2f_tiny_train_test", weights=None).state_dict()
    cfg = TrainCfg(model="vl_m2f_tiny_train_test", weights="none", cityscapes=str(cityscapes), output=str(tmp_path / "o"),
                   crop=(64, 128), min_scale=0.5, max_scale=1.0, iterations=3, batch_size=2, lr=1e-3, workers=0,
                   freeze_segmenter=False, segmenter_lr_mult=0.1, seed=0)
    result = train(cfg, progress=False)
    assert all(np.isfinite(result["losses"]))
    groups = json.loads((tmp_path / "o" / "checkpoint" / "trainer.json").read_text())["param_groups"]
    assert [g["lr_mult"] for g in groups] == [1.0, 1.0, 0.1]                   # head, prompt context, segmenter
    assert groups[2]["lr"] == pytest.approx(0.1 * groups[0]["lr"])
    from safetensors.torch import load_file

    head = load_file(str(tmp_path / "o" / "checkpoint" / "head.safetensors"))
    moved = [k for k in head if k.startswith("segmenter.") and not torch.equal(head[k], initial[k])]
    assert moved, "the unfrozen segmenter was not trained"
    assert not any(k.startswith("clip.") for k in head) and "mask_aligner.no_object" in head
    # the checkpoint holds the trained segmenter: it loads without the segmenter's registered weights (this tiny
    # Mask2Former has none, a real one would be downloaded) and gives the trained parameters back
    from safetensors.torch import save_file

    from vl_anomaly import WeightsError

    loaded = create_model("vl_m2f_tiny_train_test", weights=str(tmp_path / "o" / "checkpoint" / "head.safetensors"),
                          clip_weights="none").state_dict()
    for key in moved:
        torch.testing.assert_close(loaded[key], head[key])
    partial = {k: v for k, v in head.items() if k != moved[0]}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(WeightsError, match="does not fit"):
        create_model("vl_m2f_tiny_train_test", weights=str(tmp_path / "partial.safetensors"), clip_weights="none")


def test_segmenter_trains_with_its_stem_and_first_stage_frozen(tiny_vl_model, cityscapes, coco, tmp_path):
    """``segmenter_frozen_modules`` (detectron2's FREEZE_AT): the named ESPNetv2 modules keep their weights *and*
    BatchNorm statistics while the rest of the segmenter trains; a name that is no module is refused with the
    modules there are; one name may be written without a list."""
    from safetensors.torch import load_file

    from vl_anomaly import create_model
    from vl_anomaly.train.trainer import TrainCfg, train

    frozen = ("base_net.level1", "base_net.level2_0")
    initial = create_model(tiny_vl_model, weights="untrained").state_dict()
    cfg = _cfg(tiny_vl_model, cityscapes, coco, tmp_path / "fz", 2)
    cfg.freeze_segmenter, cfg.segmenter_frozen_modules = False, frozen
    train(cfg, progress=False)
    head = load_file(str(tmp_path / "fz" / "checkpoint" / "head.safetensors"))
    in_frozen = [k for k in head if k.startswith(tuple(f"segmenter.{m}." for m in frozen))]
    assert any(k.endswith("running_mean") for k in in_frozen) and any(k.endswith(".weight") for k in in_frozen)
    for key in in_frozen:
        torch.testing.assert_close(head[key], initial[key], rtol=0, atol=0, msg=key)
    moved = [k for k in head if k.startswith("segmenter.base_net.level3_0.") and not torch.equal(head[k], initial[k])]
    assert any(k.endswith("running_mean") for k in moved) and any(k.endswith(".weight") for k in moved)
    cfg.segmenter_frozen_modules, cfg.output = ("base_net.level9",), str(tmp_path / "bad")
    with pytest.raises(ConfigError, match=r"\['base_net.level9'\] are not modules of the segmenter .*base_net"):
        train(cfg, progress=False)
    cfg.freeze_segmenter, cfg.segmenter_frozen_modules = True, frozen
    with pytest.raises(ConfigError, match="whole segmenter is frozen already"):
        train(cfg, progress=False)
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump({"model": tiny_vl_model, "cityscapes": "c", "output": "o",
                                    "segmenter_frozen_modules": "base_net.level1"}))
    assert TrainCfg.load(path).segmenter_frozen_modules == ("base_net.level1",)


def test_mixed_precision_and_gradient_accumulation_run(tiny_vl_model, cityscapes, coco, tmp_path):
    """bf16 autocast on the CPU (fp16 + GradScaler on CUDA, not run here) and accumulation over 2 micro-batches."""
    from vl_anomaly.train.trainer import train

    cfg = _cfg(tiny_vl_model, cityscapes, coco, tmp_path / "amp", 2)
    cfg.amp, cfg.accumulate, cfg.batch_size = True, 2, 1
    result = train(cfg, progress=False)
    assert result["iteration"] == 2 and all(np.isfinite(result["losses"]))


def test_shipped_training_config_loads_with_its_outlier_settings():
    from pathlib import Path

    from vl_anomaly.train.trainer import TrainCfg

    path = Path(__file__).resolve().parents[2] / "model" / "train_configs" / "vl_anomaly_espnetv2_vitb16.yaml"
    cfg = TrainCfg.load(path, iterations=5)
    assert cfg.paste_size == (0.04, 0.4) and cfg.paste_count == 3 and cfg.crop == (512, 1024)
    assert cfg.iterations == 5 and cfg.model == "vl_anomaly_espnetv2_vitb16"
    from vl_anomaly.train.trainer import train

    with pytest.raises(ConfigError, match="segmenter_lr_mult must be"):
        train(TrainCfg.load(path, segmenter_lr_mult=-0.1))
