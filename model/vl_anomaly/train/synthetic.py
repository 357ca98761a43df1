"""A synthetic road world made in code, for proving that VL-Anomaly training learns (issue 17; no downloads).

Three folders, each in the layout the real data uses, so the real code reads them unchanged:

* :func:`write_cityscapes` — training scenes in the official Cityscapes layout (``leftImg8bit/<split>/synth/
  <stem>_leftImg8bit.png``, ``gtFine/<split>/synth/<stem>_gtFine_labelTrainIds.png``): sky, buildings,
  vegetation, a road with lane marks, sidewalks, cars and people, each class a textured colour family, labelled
  with Cityscapes train IDs (:data:`CLASSES`).
* :func:`write_coco_outliers` — outlier objects in the COCO layout (``train2017/*.jpg``, ``annotations/
  instances_train2017.json`` with polygon instances) that training pastes into the scenes (outlier exposure, as
  the real recipe pastes COCO objects): discs, ellipses, triangles, squares and pentagons in many colours —
  every hue in :data:`TRAIN_OUTLIERS`' bands (reds, oranges, yellows, greens), mostly saturated, some greyish
  (dark to light grey, :data:`TRAIN_GREYS`) — so that, as with COCO, what training teaches is "not one of the
  known classes" rather than one colour.
* :func:`write_anomaly_set` — held-out test scenes in the shared validation layout (``images/``,
  ``labels_masks/``: 0 known, 1 anomaly, 255 void) with **novel** objects on the road: crosses, rings and stars in
  cyan, magenta and near-white, some striped — shapes, hues and textures never pasted in training.

All randomness comes from ``seed``; scenes are ``size`` = (H, W) pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

#: train ID → (name, base RGB colour) of the classes the world draws.
CLASSES = {0: ("road", (95, 95, 100)), 1: ("sidewalk", (170, 150, 160)), 2: ("building", (120, 80, 60)),
           8: ("vegetation", (60, 130, 50)), 10: ("sky", (120, 170, 230)), 11: ("person", (200, 60, 60)),
           13: ("car", (30, 40, 120))}


def _texture(rng: np.random.Generator, shape: tuple[int, int], colour, amplitude: float) -> np.ndarray:
    noise = rng.normal(0.0, amplitude, (*shape, 1)).astype(np.float32)
    coarse = cv2.resize(rng.normal(0.0, amplitude, (max(1, shape[0] // 8), max(1, shape[1] // 8), 1))
                        .astype(np.float32), (shape[1], shape[0]))[..., None]
    return np.asarray(colour, np.float32) + noise + coarse


def _paint(image: np.ndarray, label: np.ndarray, mask: np.ndarray, train_id: int, rng: np.random.Generator,
           amplitude: float = 12.0) -> None:
    colour = np.asarray(CLASSES[train_id][1], np.float32) * rng.uniform(0.85, 1.15)
    image[mask] = _texture(rng, image.shape[:2], colour, amplitude)[mask]
    label[mask] = train_id


def _scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: ``(H, W, 3)`` float32 RGB and ``(H, W)`` uint8 train IDs."""
    h, w = size
    image = np.zeros((h, w, 3), np.float32)
    label = np.full((h, w), 255, np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    horizon = int(h * rng.uniform(0.35, 0.5))
    _paint(image, label, yy < horizon, 10, rng, 4.0)
    for _ in range(rng.integers(2, 5)):                                          # buildings
        x0, bw = rng.integers(0, w), rng.integers(w // 8, w // 3)
        top = rng.integers(horizon // 4, horizon)
        _paint(image, label, (xx >= x0) & (xx < x0 + bw) & (yy >= top) & (yy < horizon + 4), 2, rng)
    for _ in range(rng.integers(1, 4)):                                          # trees
        cx, cy, r = rng.integers(0, w), rng.integers(horizon // 2, horizon + 6), rng.integers(h // 12, h // 6)
        _paint(image, label, (xx - cx) ** 2 + (yy - cy) ** 2 < r * r, 8, rng, 20.0)
    ground = yy >= horizon
    half = (yy - horizon) / max(1, h - horizon) * w * 0.55 + w * 0.05
    road = ground & (np.abs(xx - w / 2) < half)
    _paint(image, label, ground & ~road, 1, rng)
    _paint(image, label, road, 0, rng, 8.0)
    lane = road & (np.abs(xx - w / 2) < 2 + (yy - horizon) / h * 6) & (((yy - horizon) // 10) % 2 == 0)
    image[lane] = 230.0                                                          # lane marks are road
    for _ in range(rng.integers(1, 4)):                                          # cars on the road
        cy = rng.integers(horizon + (h - horizon) // 5, h - 4)
        scale = (cy - horizon) / max(1, h - horizon)
        cw, ch = int(w * 0.18 * scale) + 4, int(h * 0.12 * scale) + 3
        cx = int(w / 2 + rng.uniform(-0.8, 0.8) * half[cy, 0]) - cw // 2
        _paint(image, label, (xx >= cx) & (xx < cx + cw) & (yy >= cy - ch) & (yy < cy), 13, rng)
    for _ in range(rng.integers(0, 3)):                                          # people on the sidewalk
        cy = rng.integers(horizon + 4, h - 2)
        scale = (cy - horizon) / max(1, h - horizon)
        pw, ph = int(w * 0.015 * scale) + 2, int(h * 0.15 * scale) + 4
        side = rng.choice([-1, 1])
        cx = int(w / 2 + side * (half[cy, 0] + rng.integers(2, max(3, w // 10))))
        _paint(image, label, ((xx - cx) / pw) ** 2 + ((yy - cy + ph / 2) / (ph / 2)) ** 2 < 1, 11, rng)
    return image, label


def _shape_mask(kind: str, shape: tuple[int, int], centre: tuple[int, int], radius: int, angle: float) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cx, cy = centre
    if kind == "disc":
        cv2.circle(mask, centre, radius, 1, -1)
    elif kind == "ellipse":
        cv2.ellipse(mask, centre, (radius, max(2, radius // 2)), float(np.degrees(angle)), 0, 360, 1, -1)
    elif kind in ("triangle", "square", "pentagon", "star"):
        corners = {"triangle": 3, "square": 4, "pentagon": 5, "star": 10}[kind]
        points = []
        for i in range(corners):
            r = radius * (0.45 if kind == "star" and i % 2 else 1.0)
            a = angle + 2 * np.pi * i / corners
            points.append((cx + r * np.cos(a), cy + r * np.sin(a)))
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    elif kind == "cross":
        t = max(2, radius // 3)
        mask[max(0, cy - radius): cy + radius, max(0, cx - t): cx + t] = 1
        mask[max(0, cy - t): cy + t, max(0, cx - radius): cx + radius] = 1
    elif kind == "ring":
        cv2.circle(mask, centre, radius, 1, max(2, radius // 3))
    else:
        raise ValueError(kind)
    return mask.astype(bool)


#: training outliers (pasted): shapes and hue bands in degrees (saturated: saturation 0.55–1, value 0.6–1).
TRAIN_OUTLIERS = (("disc", "ellipse", "triangle", "square", "pentagon"), ((0.0, 150.0), (345.0, 360.0)))
#: share of training outliers that are greyish instead — hue still in :data:`TRAIN_OUTLIERS`' bands, saturation
#: ``TRAIN_GREYS[1]``, value ``TRAIN_GREYS[2]`` (dark to light grey, never white): COCO's objects are often grey,
#: black or white; with saturated colours only, training teaches "saturated = anomaly" and every pale object is
#: read as a lane mark (docs/method.md, recipe bug 6).
TRAIN_GREYS = (0.3, (0.0, 0.15), (0.1, 0.75))
#: novel test objects: shapes and RGB colours (hues 180°, 294°, and a near-white) outside every training band.
NOVEL_OBJECTS = (("cross", "ring", "star"), ((0, 230, 230), (200, 0, 220), (240, 240, 255)))
#: names of :data:`NOVEL_OBJECTS`' colours, in palette order (the ``colour`` index of ``objects.json``).
NOVEL_COLOUR_NAMES = ("cyan", "magenta", "near-white")


def hue_saturation(rgb) -> tuple[float, float]:
    """HSV hue in degrees and saturation in [0, 1] of an RGB colour (0–255)."""
    hue, saturation, _ = cv2.cvtColor(np.asarray([[rgb]], np.float32) / 255.0, cv2.COLOR_RGB2HSV)[0, 0]
    return float(hue), float(saturation)


def _training_colour(rng: np.random.Generator) -> np.ndarray:
    """An RGB colour (0–255) whose hue lies in one of :data:`TRAIN_OUTLIERS`' bands: saturated, or with
    probability ``TRAIN_GREYS[0]`` greyish (:data:`TRAIN_GREYS`)."""
    bands = TRAIN_OUTLIERS[1]
    widths = np.array([hi - lo for lo, hi in bands])
    lo, hi = bands[rng.choice(len(bands), p=widths / widths.sum())]
    share, saturation, value = TRAIN_GREYS
    if rng.uniform() >= share:
        saturation, value = (0.55, 1.0), (0.6, 1.0)
    hsv = np.array([[[rng.uniform(lo, hi) / 2.0, rng.uniform(*saturation) * 255, rng.uniform(*value) * 255]]])
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _object(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, palette, striped: bool) -> int:
    """Paint ``mask`` with a textured colour: one of ``palette`` (RGB), or a training colour when it is None;
    returns the palette index (−1 for a training colour)."""
    index = -1 if palette is None else int(rng.integers(len(palette)))
    colour = _training_colour(rng) if palette is None else np.asarray(palette[index], np.float32)
    texture = _texture(rng, image.shape[:2], colour, 10.0)
    if striped:
        yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
        texture[((xx + yy) // 4) % 2 == 0] *= 0.35
    image[mask] = texture[mask]
    return index


def write_cityscapes(root: str | Path, split: str, count: int, size: tuple[int, int] = (128, 256),
                     seed: int = 0) -> Path:
    """``count`` training scenes in the official Cityscapes layout under ``root``; returns ``root``."""
    root = Path(root)
    images, labels = root / "leftImg8bit" / split / "synth", root / "gtFine" / split / "synth"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    for i in range(count):
        image, label = _scene(rng, size)
        stem = f"synth_{i:06d}_000019"
        cv2.imwrite(str(images / f"{stem}_leftImg8bit.png"), np.clip(image, 0, 255).astype(np.uint8)[..., ::-1])
        cv2.imwrite(str(labels / f"{stem}_gtFine_labelTrainIds.png"), label)
    return root


def write_coco_outliers(root: str | Path, count: int, size: int = 96, seed: int = 0) -> Path:
    """``count`` images of one training outlier each, with polygon annotations, in the COCO layout."""
    root = Path(root)
    (root / "train2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2])
    images, annotations = [], []
    shapes = TRAIN_OUTLIERS[0]
    for i in range(count):
        image = _texture(rng, (size, size), (128, 128, 128), 30.0)
        mask = _shape_mask(shapes[i % len(shapes)], (size, size), (size // 2, size // 2),
                           int(size * rng.uniform(0.3, 0.45)), float(rng.uniform(0, np.pi)))
        _object(rng, image, mask, None, striped=False)
        name = f"{i:012d}.jpg"
        cv2.imwrite(str(root / "train2017" / name), np.clip(image, 0, 255).astype(np.uint8)[..., ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        polygons = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
        x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
        images.append({"id": i + 1, "file_name": name, "height": size, "width": size})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                            "segmentation": polygons, "bbox": [x, y, w, h], "area": float(mask.sum())})
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "outlier"}]}))
    return root


def write_anomaly_set(root: str | Path, count: int, size: tuple[int, int] = (128, 256), seed: int = 1,
                      objects: tuple = NOVEL_OBJECTS) -> Path:
    """``count`` test scenes with 1–3 novel objects each on the road, in the shared validation layout.

    Also writes what each object is, for per-kind figures: ``objects/<frame>.png`` (uint8, 0 none, k the frame's
    k-th object where it is visible) and ``objects.json`` (``{frame: [{"shape", "colour", "striped"}, …]}``;
    ``colour`` is the palette index, −1 for a training colour)."""
    root = Path(root)
    for folder in ("images", "labels_masks", "objects"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 3])
    shapes, palette = objects
    h, w = size
    kinds: dict[str, list[dict]] = {}
    for i in range(count):
        image, label = _scene(rng, size)
        truth = np.where(label == 255, 255, 0).astype(np.uint8)
        instances = np.zeros((h, w), np.uint8)
        road = np.argwhere(label == 0)
        kinds[str(i)] = []
        for k in range(1, int(rng.integers(1, 4)) + 1):
            cy, cx = road[rng.integers(len(road))]
            radius = int(max(4, h * rng.uniform(0.04, 0.1) * (0.4 + cy / h)))
            shape = shapes[rng.integers(len(shapes))]
            mask = _shape_mask(shape, (h, w), (int(cx), int(cy)), radius, float(rng.uniform(0, np.pi)))
            striped = bool(rng.integers(2))
            colour = _object(rng, image, mask, palette, striped=striped)
            truth[mask] = 1
            instances[mask] = k
            kinds[str(i)].append({"shape": str(shape), "colour": colour, "striped": striped})
        cv2.imwrite(str(root / "images" / f"{i}.png"), np.clip(image, 0, 255).astype(np.uint8)[..., ::-1])
        cv2.imwrite(str(root / "labels_masks" / f"{i}.png"), truth)
        cv2.imwrite(str(root / "objects" / f"{i}.png"), instances)
    (root / "objects.json").write_text(json.dumps(kinds))
    return root
