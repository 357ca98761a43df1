"""Reading images and writing score maps, masks and obstacle lists in standard formats.

Files written for an image ``<stem>``:

* ``<stem>.score.npy``: the score map, float32 ``(H, W)``, exactly :attr:`Prediction.score_map`;
* ``<stem>.score.png``: the same quantised to 16 bits, ``v = round((s − lo) / (hi − lo) · 65535)`` clipped,
  with ``lo, hi`` recorded in ``<stem>.json`` (``score_png_range``);
* ``<stem>.mask.png``: obstacle mask, 8-bit, 0 / 255;
* ``<stem>.overlay.png``: colour overlay for people;
* ``<stem>.json``: obstacles and per-image information.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

from .errors import InvalidImageError
from .preprocess import describe_array, validate_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def _check_complete(path: Path, data: bytes) -> None:
    """Detect truncated JPEG / PNG / WebP files, which decoders may otherwise half-decode silently."""
    suffix = path.suffix.lower()
    if data[:3] == b"\xff\xd8\xff" or suffix in (".jpg", ".jpeg"):
        if data[:2] != b"\xff\xd8" or b"\xff\xd9" not in data[-4096:]:
            raise InvalidImageError(f"{path}: truncated or corrupt JPEG (no end-of-image marker)")
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in data[-64:]:
            raise InvalidImageError(f"{path}: truncated PNG (no IEND chunk)")
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        declared = int.from_bytes(data[4:8], "little") + 8
        if declared > len(data):
            raise InvalidImageError(f"{path}: truncated WebP ({len(data)} of {declared} bytes)")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` RGB uint8.

    Raises :class:`InvalidImageError` for missing, empty, truncated or undecodable files, and for grayscale,
    alpha (RGBA) or 16-bit images (accepted: 8-bit, 3-channel colour files).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidImageError(f"{path}: no such file")
    data = path.read_bytes()
    if not data:
        raise InvalidImageError(f"{path}: empty file (0 bytes)")
    _check_complete(path, data)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise InvalidImageError(f"{path}: could not decode the file as an image "
                                f"(supported: {', '.join(IMAGE_EXTENSIONS)})")
    if decoded.ndim == 3 and decoded.shape[2] == 3:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    try:
        return validate_image(decoded)
    except InvalidImageError as exc:
        raise InvalidImageError(f"{path}: {exc}") from None


def list_inputs(inputs: list[str | Path]) -> list[tuple[Path, str]]:
    """Expand files and folders into ``(path, output stem)`` pairs; folders are searched recursively for images
    and videos and keep their relative layout in the stems. Unknown paths raise ``FileNotFoundError``."""
    items: list[tuple[Path, str]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS):
                items.append((file, str(file.relative_to(path).with_suffix(""))))
        elif path.is_file():
            items.append((path, path.stem))
        else:
            raise FileNotFoundError(f"input {path} does not exist")
    seen: dict[str, int] = {}
    unique = []
    for path, stem in items:
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        unique.append((path, stem if n == 0 else f"{stem}_{n}"))
    return unique


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def score_png_range(score_map: np.ndarray, documented: tuple[float, float]) -> tuple[float, float]:
    """The (lo, hi) used to quantise a score map to 16 bits: the score's documented range when it is finite,
    else the map's own min/max (a constant map gets hi = lo + 1)."""
    lo, hi = documented
    if not math.isfinite(lo):
        lo = float(score_map.min())
    if not math.isfinite(hi):
        hi = float(score_map.max())
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def encode_score_png(score_map: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(H, W)`` float → ``(H, W)`` uint16, ``round((s − lo) / (hi − lo) · 65535)`` clipped to [0, 65535]."""
    scaled = (score_map.astype(np.float64) - lo) / (hi - lo) * 65535.0
    return np.clip(np.rint(scaled), 0, 65535).astype(np.uint16)


def decode_score_png(encoded: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Inverse of :func:`encode_score_png` (up to quantisation, |error| ≤ (hi − lo) / 131070)."""
    return (encoded.astype(np.float64) / 65535.0 * (hi - lo) + lo).astype(np.float32)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an array with OpenCV; RGB ``(H, W, 3)`` arrays are converted to OpenCV's BGR order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path} ({describe_array(image)})")


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
