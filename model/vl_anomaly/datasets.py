"""Road-anomaly evaluation datasets: a small registry of loaders, each mapping its labels to
{0 = in-distribution, 1 = anomaly, 255 = void}.

``load_dataset("NAME")`` reads the shared copy in ``<shared>/data/anomaly_val``; ``load_dataset("NAME=PATH")``
reads PATH, whose layout (the shared one or the dataset's official one) is detected:

| name | shared folder | official layout at PATH | raw labels → ours |
|---|---|---|---|
| ``road_anomaly`` | RoadAnomaly | ``frame_list.json``, ``frames/<name>.{webp,jpg}``, ``frames/<stem>.labels/labels_semantic.png`` | 0 → 0, 2 → 1 |
| ``road_anomaly_21`` | RoadAnomaly21 | ``[dataset_AnomalyTrack/]images/<fid>.jpg``, ``labels_masks/<fid>_labels_semantic.png`` | 0 / 1 / 255 |
| ``road_obstacle_21`` | RoadObstacle21 | ``[dataset_ObstacleTrack/]images/<fid>.webp``, same label pattern | 0 / 1 / 255 |
| ``fs_static`` | FS_Static | ``<fs>_<cityscapes id>_labels.png`` + ``<fs>_…rgb.npz`` (key ``rgb``) added to ``leftImg8bit/**/<cityscapes id>_leftImg8bit.png``, clipped to [0, 255] | 0 / 1 / 255 |
| ``fs_lost_found`` | – | ``<fs>_<laf id>_labels.png`` over ``leftImg8bit/**/<laf id>_leftImg8bit.png`` | 0 / 1 / 255 |
| ``lost_and_found`` | – | ``leftImg8bit/<split>/<scene>/<id>_leftImg8bit.png``, ``gtCoarse/<split>/<scene>/<id>_gtCoarse_labelIds.png`` | 0 → 255, 1 → 0, ≥ 2 → 1 |

Only frames with labels are used (SMIYC test labels are hidden). Wrong folders, missing labels, size
mismatches and unexpected label values raise :class:`DatasetError` naming the file and what was expected.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from .errors import VLAnomalyError
from .io import IMAGE_EXTENSIONS, read_image
from .paths import ENV_SHARED_DIR, anomaly_val_dir


class DatasetError(VLAnomalyError, ValueError):
    """A dataset folder does not have the expected layout or content."""


@dataclass(frozen=True)
class Frame:
    """One labelled frame: ids and file locations."""

    frame_id: str
    image: Path
    label: Path
    overlay: Path | None = None     # Fishyscapes Static: additive RGB overlay (.npz, key "rgb")


def _map_smiyc(raw: np.ndarray) -> np.ndarray:
    return raw


def _map_road_anomaly(raw: np.ndarray) -> np.ndarray:
    out = np.zeros_like(raw)
    out[raw == 2] = 1
    return out


def _map_lost_and_found(raw: np.ndarray) -> np.ndarray:
    out = np.full_like(raw, 255)
    out[raw == 1] = 0
    out[raw >= 2] = 1
    return out


@dataclass(frozen=True)
class LabelScheme:
    """Raw label values a dataset may contain and how they map to ours."""

    allowed: frozenset
    mapping: Callable[[np.ndarray], np.ndarray]
    description: str


SMIYC_LABELS = LabelScheme(frozenset({0, 1, 255}), _map_smiyc, "0 inlier, 1 anomaly, 255 void")
ROAD_ANOMALY_LABELS = LabelScheme(frozenset({0, 2}), _map_road_anomaly, "0 background, 2 anomaly")
LAF_LABELS = LabelScheme(frozenset(range(256)), _map_lost_and_found, "0 outside ROI, 1 free space, ≥2 obstacle")


class AnomalyDataset:
    """A list of labelled frames plus how to read them.

    Attributes:
        name: registry name; ``layout``: "shared" or "official"; ``root``: folder read;
        track: benchmark track for component metrics ("anomaly", "obstacle") or None.
    """

    def __init__(self, name: str, root: Path, layout: str, frames: list[Frame], scheme: LabelScheme,
                 track: str | None, expected_count: int | None = None) -> None:
        if not frames:
            raise DatasetError(f"{name}: no labelled frames found in {root} ({layout} layout)")
        self.name, self.root, self.layout, self.frames = name, root, layout, frames
        self.scheme, self.track, self.expected_count = scheme, track, expected_count

    def __len__(self) -> int:
        return len(self.frames)

    def __repr__(self) -> str:
        return f"AnomalyDataset({self.name!r}, {len(self)} frames, {self.layout} layout at {self.root})"

    def load_label(self, index: int) -> np.ndarray:
        """``(H, W)`` uint8 label in {0, 1, 255}."""
        frame = self.frames[index]
        raw = cv2.imread(str(frame.label), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise DatasetError(f"{self.name}: cannot read label {frame.label}")
        if raw.ndim == 3:
            raw = raw[..., 2]          # 3-channel label PNGs carry the class in the (RGB) first channel
        if raw.dtype != np.uint8:
            raise DatasetError(f"{self.name}: label {frame.label} has dtype {raw.dtype}; expected 8-bit")
        bad = sorted(set(np.unique(raw).tolist()) - self.scheme.allowed)
        if bad:
            raise DatasetError(f"{self.name}: label {frame.label} has unexpected values {bad[:10]}; "
                               f"expected {self.scheme.description}")
        return self.scheme.mapping(raw)

    def load_image(self, index: int) -> np.ndarray:
        """``(H, W, 3)`` RGB uint8."""
        frame = self.frames[index]
        image = read_image(frame.image)
        if frame.overlay is not None:
            overlay = np.load(frame.overlay)["rgb"].astype(np.int32)
            if overlay.shape != image.shape:
                raise DatasetError(f"{self.name}: overlay {frame.overlay} {overlay.shape} does not match base "
                                   f"image {frame.image} {image.shape}")
            image = np.clip(image.astype(np.int32) + overlay, 0, 255).astype(np.uint8)
        return image

    def load(self, index: int) -> tuple[str, np.ndarray, np.ndarray]:
        """``(frame id, image (H, W, 3) RGB uint8, label (H, W) uint8)``; sizes checked."""
        image, label = self.load_image(index), self.load_label(index)
        if image.shape[:2] != label.shape:
            raise DatasetError(f"{self.name}: image {self.frames[index].image} is {image.shape[1]}x{image.shape[0]} "
                               f"but its label is {label.shape[1]}x{label.shape[0]}")
        return self.frames[index].frame_id, image, label

    def count_note(self) -> str:
        """'' when the frame count matches the dataset's published count, else a note saying both."""
        if self.expected_count is None or self.expected_count == len(self):
            return ""
        return f"{len(self)} frames (the published split has {self.expected_count})"


def _images_by_stem(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}


def _shared_frames(root: Path, name: str) -> list[Frame]:
    images, labels = root / "images", root / "labels_masks"
    if not images.is_dir() or not labels.is_dir():
        raise DatasetError(f"{name}: {root} is not in the shared layout (expected images/ and labels_masks/)")
    frames, missing = [], []
    for stem, image in _images_by_stem(images).items():
        label = labels / f"{stem}.png"
        (frames.append(Frame(stem, image, label)) if label.is_file() else missing.append(image.name))
    if missing:
        raise DatasetError(f"{name}: {len(missing)} images in {images} have no label in {labels} "
                           f"(e.g. {', '.join(missing[:3])})")
    return sorted(frames, key=lambda f: (len(f.frame_id), f.frame_id))


def _smiyc_frames(root: Path, name: str, subfolder: str) -> list[Frame]:
    base = root / subfolder if (root / subfolder).is_dir() else root
    images, labels = base / "images", base / "labels_masks"
    if not images.is_dir() or not labels.is_dir():
        raise DatasetError(f"{name}: expected {subfolder}/images and {subfolder}/labels_masks under {root}")
    frames = [Frame(stem, image, labels / f"{stem}_labels_semantic.png")
              for stem, image in _images_by_stem(images).items() if (labels / f"{stem}_labels_semantic.png").is_file()]
    if not frames:
        raise DatasetError(f"{name}: no image in {images} has a label <fid>_labels_semantic.png in {labels} "
                           "(test-split labels are hidden; only validation frames can be evaluated)")
    return frames


def _road_anomaly_frames(root: Path, name: str) -> list[Frame]:
    listing = root / "frame_list.json"
    names = json.loads(listing.read_text())
    frames = []
    for file_name in names:
        image = root / "frames" / file_name
        if not image.is_file():
            alt = [p for p in (root / "frames").glob(Path(file_name).stem + ".*") if p.suffix.lower() in IMAGE_EXTENSIONS]
            if not alt:
                raise DatasetError(f"{name}: {listing} lists {file_name} but {image} does not exist")
            image = alt[0]
        label = root / "frames" / f"{Path(file_name).stem}.labels" / "labels_semantic.png"
        if not label.is_file():
            raise DatasetError(f"{name}: label {label} for {image.name} is missing")
        frames.append(Frame(Path(file_name).stem, image, label))
    return frames


_FS_LABEL = re.compile(r"^(\d+)_(.+)_labels\.png$")


def _left_images(root: Path) -> dict[str, Path]:
    return {p.name[: -len("_leftImg8bit.png")]: p for p in root.glob("leftImg8bit/**/*_leftImg8bit.png")}


def _fishyscapes_frames(root: Path, name: str, with_overlay: bool) -> list[Frame]:
    labels = sorted(p for p in root.rglob("*_labels.png") if _FS_LABEL.match(p.name))
    if not labels:
        raise DatasetError(f"{name}: no Fishyscapes label files <fs id>_<base id>_labels.png under {root}")
    bases = _left_images(root)
    frames = []
    for label in labels:
        fs_id, base_id = _FS_LABEL.match(label.name).groups()
        if base_id not in bases:
            raise DatasetError(f"{name}: base image {base_id}_leftImg8bit.png for {label.name} not found under "
                               f"{root / 'leftImg8bit'}")
        overlay = None
        if with_overlay:
            candidates = sorted(label.parent.glob(f"{fs_id}*rgb.npz"))
            if not candidates:
                raise DatasetError(f"{name}: overlay {fs_id}_…rgb.npz for {label.name} is missing")
            overlay = candidates[0]
        frames.append(Frame(fs_id, bases[base_id], label, overlay))
    return frames


def _lost_and_found_frames(root: Path, name: str, split: str = "test") -> list[Frame]:
    images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
    if not images:
        raise DatasetError(f"{name}: no images in {root / 'leftImg8bit' / split}/<scene>/")
    frames = []
    for image in images:
        fid = image.name[: -len("_leftImg8bit.png")]
        label = root / "gtCoarse" / split / image.parent.name / f"{fid}_gtCoarse_labelIds.png"
        if not label.is_file():
            raise DatasetError(f"{name}: label {label} for {image.name} is missing")
        frames.append(Frame(fid, image, label))
    return frames


@dataclass(frozen=True)
class DatasetSpec:
    shared_folder: str | None
    scheme: LabelScheme
    track: str | None
    expected_count: int | None
    official: Callable[[Path, str], list[Frame]]
    is_official: Callable[[Path], bool]


DATASETS: dict[str, DatasetSpec] = {
    "road_anomaly": DatasetSpec("RoadAnomaly", ROAD_ANOMALY_LABELS, None, 60, _road_anomaly_frames,
                                lambda r: (r / "frame_list.json").is_file()),
    "road_anomaly_21": DatasetSpec("RoadAnomaly21", SMIYC_LABELS, "anomaly", 10,
                                   lambda r, n: _smiyc_frames(r, n, "dataset_AnomalyTrack"),
                                   lambda r: (r / "dataset_AnomalyTrack").is_dir()
                                   or any((r / "labels_masks").glob("*_labels_semantic.png"))),
    "road_obstacle_21": DatasetSpec("RoadObstacle21", SMIYC_LABELS, "obstacle", 30,
                                    lambda r, n: _smiyc_frames(r, n, "dataset_ObstacleTrack"),
                                    lambda r: (r / "dataset_ObstacleTrack").is_dir()
                                    or any((r / "labels_masks").glob("*_labels_semantic.png"))),
    "fs_static": DatasetSpec("FS_Static", SMIYC_LABELS, None, 30,
                             lambda r, n: _fishyscapes_frames(r, n, with_overlay=True),
                             lambda r: any(r.rglob("*rgb.npz"))),
    "fs_lost_found": DatasetSpec(None, SMIYC_LABELS, None, 100,
                                 lambda r, n: _fishyscapes_frames(r, n, with_overlay=False),
                                 lambda r: True),
    "lost_and_found": DatasetSpec(None, LAF_LABELS, "obstacle", None, _lost_and_found_frames,
                                  lambda r: True),
}


def list_datasets() -> list[str]:
    return list(DATASETS)


def load_dataset(spec: str) -> AnomalyDataset:
    """``"NAME"`` (shared copy) or ``"NAME=PATH"`` (shared or official layout at PATH, detected)."""
    name, _, path = spec.partition("=")
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    info = DATASETS[name]
    if path:
        root = Path(path).expanduser()
        if not root.is_dir():
            raise DatasetError(f"{name}: {root} is not a directory")
    else:
        shared = anomaly_val_dir()
        if info.shared_folder is None or shared is None:
            raise DatasetError(f"{name}: no shared copy available; pass {name}=PATH to the official layout"
                               + ("" if shared else f" (or set ${ENV_SHARED_DIR})"))
        root = shared / info.shared_folder
    if (root / "images").is_dir() and (root / "labels_masks").is_dir() and not info.is_official(root):
        return AnomalyDataset(name, root, "shared", _shared_frames(root, name), info.scheme, info.track,
                              info.expected_count)
    return AnomalyDataset(name, root, "official", info.official(root, name), info.scheme, info.track,
                          info.expected_count)
