"""Training data: Cityscapes (official layout) with optional COCO outlier-exposure pasting.

* **Cityscapes** (official layout): ``<root>/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` with
  ``<root>/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png`` (train IDs 0–18, 255 void; produced by
  cityscapesScripts' ``createTrainIdLabelImgs``) or, when those are absent, ``..._gtFine_labelIds.png`` mapped to
  train IDs here.
* **COCO outliers** (official layout): ``<root>/train2017/*.jpg`` + ``<root>/annotations/instances_train2017.json``;
  polygon instances (not crowd RLE) are cut out and pasted onto Cityscapes crops with probability ``paste_prob``,
  their pixels labelled :data:`OUTLIER_LABEL` (254), as in Mask2Anomaly / RbA outlier exposure. Each pasted
  sample gets 1 … ``paste_count`` instances whose height is a log-uniform fraction ``paste_size`` = (lo, hi) of
  the crop height (road anomalies range from a few pixels to half the frame: small ones must be seen in training).

Samples: ``image (3, H, W)`` float32 normalised like the segmenter's weights, ``label (H, W)`` int64.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..preprocess import PreprocessCfg

OUTLIER_LABEL = 254
VOID_LABEL = 255
#: Cityscapes label IDs → train IDs (the 19 evaluated classes; everything else void).
LABEL_ID_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _label_lut() -> np.ndarray:
    lut = np.full(256, VOID_LABEL, np.uint8)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


@dataclass(frozen=True)
class AugmentCfg:
    """Random scale in ``[min_scale, max_scale]``, random crop ``crop`` (H, W), horizontal flip."""

    crop: tuple[int, int] = (512, 1024)
    min_scale: float = 0.5
    max_scale: float = 2.0
    flip: bool = True


class CityscapesTrain(Dataset):
    """Cityscapes train/val split in the official layout, with augmentation and optional outlier pasting."""

    def __init__(self, root: str | Path, split: str, preprocess: PreprocessCfg, augment: AugmentCfg | None = None,
                 outliers: "CocoOutliers | None" = None, paste_prob: float = 0.0, seed: int = 0,
                 paste_size: tuple[float, float] = (0.25, 0.5), paste_count: int = 1) -> None:
        lo, hi = (float(v) for v in paste_size)
        if not 0.0 < lo <= hi <= 1.0 or int(paste_count) < 1:
            raise ConfigError(f"paste_size must be (lo, hi) with 0 < lo ≤ hi ≤ 1 (fractions of the crop height) and "
                              f"paste_count ≥ 1; got {paste_size!r}, {paste_count!r}")
        self.paste_size, self.paste_count = (lo, hi), int(paste_count)
        self.root = Path(root)
        images = self.root / "leftImg8bit" / split
        labels = self.root / "gtFine" / split
        if not images.is_dir() or not labels.is_dir():
            raise ConfigError(f"{self.root} is not a Cityscapes root: expected leftImg8bit/{split}/ and gtFine/{split}/")
        self.items: list[tuple[Path, Path, bool]] = []
        missing = []
        for image in sorted(images.glob("*/*_leftImg8bit.png")):
            stem = image.name[: -len("_leftImg8bit.png")]
            train_ids = labels / image.parent.name / f"{stem}_gtFine_labelTrainIds.png"
            label_ids = labels / image.parent.name / f"{stem}_gtFine_labelIds.png"
            if train_ids.is_file():
                self.items.append((image, train_ids, False))
            elif label_ids.is_file():
                self.items.append((image, label_ids, True))
            else:
                missing.append(image.name)
        if missing:
            raise ConfigError(f"{len(missing)} Cityscapes images have no gtFine label (e.g. {missing[0]})")
        if not self.items:
            raise ConfigError(f"no *_leftImg8bit.png under {images}")
        self.preprocess, self.augment = preprocess, augment
        self.outliers, self.paste_prob = outliers, paste_prob
        self.seed, self.epoch = seed, 0
        self._lut = _label_lut()

    def set_epoch(self, epoch: int) -> None:
        """Augmentation randomness is a function of (seed, epoch, index): resumable and worker-independent."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, label_path, needs_mapping = self.items[index]
        image = cv2.cvtColor(cv2.imread(str(image_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        if image is None or label is None:
            raise ConfigError(f"cannot read {image_path} or {label_path}")
        if needs_mapping:
            label = self._lut[label]
        self.rng = random.Random(f"{self.seed}/{self.epoch}/{index}")
        if self.augment is not None:
            image, label = self._augment(image, label)
        if self.outliers is not None and self.rng.random() < self.paste_prob:
            for _ in range(self.rng.randint(1, self.paste_count)):
                image, label = self.outliers.paste(image, label, self.rng, self.paste_size)
        x = image.astype(np.float32)                                  # 0–255, like PreprocessCfg's mean/std
        if self.preprocess.channel_order == "bgr":
            x = x[..., ::-1]
        cfg = self.preprocess
        x = (x - np.array(cfg.mean, np.float32)) / np.array(cfg.std, np.float32) * np.float32(cfg.scale)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), torch.from_numpy(label.astype(np.int64))

    def _augment(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = self.augment
        scale = self.rng.uniform(a.min_scale, a.max_scale)
        h, w = label.shape
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
        ch, cw = a.crop
        pad_h, pad_w = max(0, ch - label.shape[0]), max(0, cw - label.shape[1])
        if pad_h or pad_w:
            image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
            label = cv2.copyMakeBorder(label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=VOID_LABEL)
        y = self.rng.randint(0, label.shape[0] - ch)
        x = self.rng.randint(0, label.shape[1] - cw)
        image, label = image[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]
        if a.flip and self.rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(label)


class CocoOutliers:
    """Polygon instances of COCO (official layout) to paste as outliers. ``min_area`` in pixels (COCO units)."""

    def __init__(self, root: str | Path, split: str = "train2017", min_area: float = 1000.0,
                 max_instances: int | None = None) -> None:
        self.root = Path(root)
        annotations = self.root / "annotations" / f"instances_{split}.json"
        if not annotations.is_file() or not (self.root / split).is_dir():
            raise ConfigError(f"{self.root} is not a COCO root: expected {split}/ and annotations/instances_{split}.json")
        data = json.loads(annotations.read_text())
        files = {img["id"]: self.root / split / img["file_name"] for img in data["images"]}
        self.instances = [(files[a["image_id"]], a["segmentation"], a["bbox"]) for a in data["annotations"]
                          if not a.get("iscrowd") and isinstance(a.get("segmentation"), list)
                          and a.get("area", 0) >= min_area and a["image_id"] in files]
        if max_instances is not None:
            self.instances = self.instances[:max_instances]
        if not self.instances:
            raise ConfigError(f"no polygon instances of at least {min_area} px in {annotations}")

    def paste(self, image: np.ndarray, label: np.ndarray, rng: random.Random,
              size: tuple[float, float] = (0.25, 0.5)) -> tuple[np.ndarray, np.ndarray]:
        """Paste one random instance at a random place, its height a log-uniform fraction ``size`` = (lo, hi) of
        the image height (then shrunk to at most half the image either way); its pixels → 254."""
        path, polygons, (bx, by, bw, bh) = self.instances[rng.randrange(len(self.instances))]
        source = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if source is None:
            raise ConfigError(f"cannot read COCO image {path}")
        mask = np.zeros(source.shape[:2], np.uint8)
        for polygon in polygons:
            cv2.fillPoly(mask, [np.asarray(polygon, np.float64).reshape(-1, 2).round().astype(np.int32)], 1)
        x0, y0 = int(bx), int(by)
        x1, y1 = max(x0 + 1, int(np.ceil(bx + bw))), max(y0 + 1, int(np.ceil(by + bh)))
        patch = cv2.cvtColor(source[y0:y1, x0:x1], cv2.COLOR_BGR2RGB)
        patch_mask = mask[y0:y1, x0:x1]
        h, w = label.shape
        height = h * math.exp(rng.uniform(math.log(size[0]), math.log(size[1])))
        scale = min(height / patch.shape[0], 0.5 * h / patch.shape[0], 0.5 * w / patch.shape[1])
        dsize = (max(1, round(patch.shape[1] * scale)), max(1, round(patch.shape[0] * scale)))
        patch = cv2.resize(patch, dsize)
        patch_mask = cv2.resize(patch_mask, dsize, interpolation=cv2.INTER_NEAREST).astype(bool)
        y = rng.randint(0, h - dsize[1])
        x = rng.randint(0, w - dsize[0])
        image, label = image.copy(), label.copy()
        region = image[y:y + dsize[1], x:x + dsize[0]]
        region[patch_mask] = patch[patch_mask]
        label[y:y + dsize[1], x:x + dsize[0]][patch_mask] = OUTLIER_LABEL
        return image, label
