"""Image validation and the per-weights pre-processing (which travels with the weights, see ``pretrained.py``).

Every public entry point takes images as ``(H, W, 3)`` **RGB** ``uint8`` numpy arrays (the ROS layer and the
file reader convert to that). Floating-point arrays in [0, 1] are accepted too and converted with
``round(x * 255)``. Anything else raises :class:`~vl_anomaly.errors.InvalidImageError` with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, InvalidImageError

# Limits for a single frame; larger inputs are rejected rather than risking an out-of-memory kill.
MIN_SIDE = 16
MAX_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class PreprocessCfg:
    """How a network expects its input.

    The network input is ``((resize(image) − mean) / std) · scale`` in ``channel_order``, where ``mean`` and
    ``std`` are in 0–255 units and in ``channel_order``; ``resize`` is bilinear to ``input_size``
    (half-pixel centres, like OpenCV's INTER_LINEAR; with ``antialias`` like PIL's bilinear when shrinking).
    Because bilinear weights sum to one, resizing before or after the per-channel normalisation gives the same
    result up to float rounding.

    Attributes:
        input_size: network input ``(height, width)`` in pixels; multiples of ``size_divisor``.
        channel_order: ``"rgb"`` or ``"bgr"``.
        mean, std: per channel, 0–255 units, in ``channel_order``.
        scale: factor applied after normalisation (ESPNet's published pipeline divides by 255 again).
        antialias: antialiased (PIL-like) bilinear down-sampling.
        size_divisor: input sides must be multiples of this.
    """

    input_size: tuple[int, int] = (512, 1024)
    channel_order: str = "rgb"
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    scale: float = 1.0
    antialias: bool = False
    size_divisor: int = 32
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.channel_order not in ("rgb", "bgr"):
            raise ConfigError(f"channel_order must be 'rgb' or 'bgr', got {self.channel_order!r}")
        h, w = self.input_size
        d = self.size_divisor
        if h <= 0 or w <= 0 or h % d or w % d:
            raise ConfigError(f"input_size {self.input_size} must be positive multiples of {d} (height, width)")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std must be positive, got {self.std}")

    def with_input_size(self, input_size: tuple[int, int] | None) -> "PreprocessCfg":
        """A copy with another network input size (validated)."""
        if input_size is None:
            return self
        values = asdict(self)
        values["input_size"] = (int(input_size[0]), int(input_size[1]))
        return PreprocessCfg(**values)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("extra")
        out["input_size"] = list(self.input_size)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out


def describe_array(image: object) -> str:
    """Short description of an input for error messages, e.g. ``uint16 array of shape (480, 640)``."""
    if isinstance(image, np.ndarray):
        return f"{image.dtype} array of shape {tuple(image.shape)}"
    return type(image).__name__


def validate_image(image: object) -> np.ndarray:
    """Check an input image and return it as a C-contiguous ``(H, W, 3)`` RGB ``uint8`` array.

    Accepted: ``uint8`` ``(H, W, 3)``; floating ``(H, W, 3)`` with every value finite and in [0, 1].
    Rejected with a reason: non-arrays, grayscale ``(H, W)`` or ``(H, W, 1)``, 4-channel (RGBA/BGRA),
    16-bit or other integer types, empty or tiny images (a side < 16 px), images over 8192² pixels, NaN/Inf
    or out-of-range floats.
    """
    accepted = "accepted: (H, W, 3) RGB uint8, or float in [0, 1]"
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"expected a numpy array, got {describe_array(image)}; {accepted}")
    if image.size == 0:
        raise InvalidImageError(f"empty image ({describe_array(image)}); {accepted}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        raise InvalidImageError(f"grayscale image ({describe_array(image)}) is not supported; {accepted} "
                                "(replicate the channel to RGB if that is what you want)")
    if image.ndim != 3:
        raise InvalidImageError(f"expected 3 dimensions (H, W, 3), got {describe_array(image)}; {accepted}")
    if image.shape[2] == 4:
        raise InvalidImageError(f"4-channel image (RGBA/BGRA, {describe_array(image)}) is not supported; "
                                f"drop the alpha channel first; {accepted}")
    if image.shape[2] != 3:
        raise InvalidImageError(f"expected 3 colour channels, got {describe_array(image)}; {accepted}")
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InvalidImageError(f"image of {w}x{h} px is too small (each side must be ≥ {MIN_SIDE} px)")
    if h * w > MAX_PIXELS:
        raise InvalidImageError(f"image of {w}x{h} px exceeds the limit of {MAX_PIXELS} pixels")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if np.issubdtype(image.dtype, np.floating):
        finite = np.isfinite(image)
        if not finite.all():
            bad = int(image.size - np.count_nonzero(finite))
            raise InvalidImageError(f"image contains {bad} NaN/Inf values ({describe_array(image)}); {accepted}")
        lo, hi = float(image.min()), float(image.max())
        if lo < 0.0 or hi > 1.0:
            raise InvalidImageError(f"float image values must be in [0, 1], got [{lo:.4g}, {hi:.4g}]; "
                                    f"{accepted}")
        return np.ascontiguousarray(np.rint(image * 255.0).astype(np.uint8))
    if image.dtype == np.uint16:
        raise InvalidImageError(f"16-bit image ({describe_array(image)}) is not supported; convert to 8 bit "
                                f"(e.g. image >> 8); {accepted}")
    raise InvalidImageError(f"unsupported dtype {image.dtype} ({describe_array(image)}); {accepted}")


def preprocess(image_rgb: np.ndarray, cfg: PreprocessCfg, device: torch.device | str = "cpu") -> torch.Tensor:
    """Turn one validated RGB ``uint8`` image ``(H, W, 3)`` into the network input ``(1, 3, h, w)`` float32,
    ``(h, w) = cfg.input_size``."""
    x = torch.from_numpy(image_rgb).to(device)
    x = x.permute(2, 0, 1).unsqueeze(0).float()
    if cfg.channel_order == "bgr":
        x = x.flip(1)
    if tuple(x.shape[-2:]) != tuple(cfg.input_size):
        x = F.interpolate(x, size=cfg.input_size, mode="bilinear", align_corners=False, antialias=cfg.antialias)
    mean = torch.tensor(cfg.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    if cfg.scale != 1.0:
        x = x * cfg.scale
    return x.contiguous()
