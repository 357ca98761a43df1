"""Parity of a deployed graph with its reference, checked when an engine is loaded: on a real road frame and in the
numbers a user sees (classes, score map, CLIP embeddings), not only in raw outputs on noise.

* Segmenter-like graphs (``pixel_values (1, 3, H, W)``): a frame prepared as the predictor prepares it
  (``pixel_values`` from the caller, else the default :class:`~vl_anomaly.preprocess.PreprocessCfg`: RGB, ImageNet
  normalisation, at the export size). ``logits``
  (and an ensemble's ``member_logits``): share of pixels whose arg-max class agrees, and the largest difference of
  the max-softmax score map; every other output: ``max|a − b| ≤ 1e-4 + rtol · max|b|``.
* The CLIP image encoder (``images (B, 3, S, S)``, dynamic batch): crops of the frame at batch 1, 8 and the
  engine's maximum; the cosine similarity of every embedding with the reference's.

The frame (:func:`parity_frame`): the first RoadObstacle21 image of the shared validation data when it is there
(our machines, CI), else a road scene drawn in code (sky, road, lane marks, a box), so a vehicle without the data
still checks on structured content rather than noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..networks.clip_towers import CLIP_MEAN, CLIP_STD
from ..preprocess import PreprocessCfg, preprocess
from .records import ExportError


@dataclass(frozen=True)
class ParityTolerance:
    """What an engine must reproduce. ``argmax``: least share of pixels with the same class; ``msp``: largest
    difference of the max-softmax score map; ``cosine``: least cosine similarity of a CLIP embedding; ``rtol``:
    other outputs, relative to the reference's largest magnitude."""

    argmax: float
    msp: float
    cosine: float
    rtol: float


#: Tolerances per engine precision.
PARITY: dict[str, ParityTolerance] = {
    "fp32": ParityTolerance(argmax=0.999, msp=1e-3, cosine=0.9999, rtol=1e-3),
    "fp16": ParityTolerance(argmax=0.99, msp=2e-2, cosine=0.999, rtol=5e-2),
}


def parity_frame() -> np.ndarray:
    """``(H, W, 3)`` RGB uint8: the first RoadObstacle21 frame of the shared data when present, else a drawn road
    scene (1024 × 2048 px)."""
    from ..paths import anomaly_val_dir

    root = anomaly_val_dir()
    if root is not None:
        import cv2

        images = sorted((root / "RoadObstacle21" / "images").glob("*"))
        for path in images[:1]:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return np.ascontiguousarray(image[..., ::-1])
    return _drawn_road_scene(1024, 2048)


def _drawn_road_scene(height: int, width: int) -> np.ndarray:
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    frame = np.empty((height, width, 3), np.float32)
    frame[:] = np.array([110, 160, 220], np.float32) * (1 - rows) + np.array([200, 210, 220], np.float32) * rows
    horizon = height // 2
    frame[horizon:] = np.array([70, 110, 60], np.float32)                                     # verges
    for y in range(horizon, height):                                                           # road trapezoid
        half = int((y - horizon) / (height - horizon) * width * 0.6) + width // 40
        frame[y, max(0, width // 2 - half): width // 2 + half] = (90, 90, 95)
        if (y // 24) % 2 == 0:
            frame[y, width // 2 - 4: width // 2 + 4] = (235, 235, 235)                          # lane mark
    frame[int(height * 0.7): int(height * 0.78), int(width * 0.45): int(width * 0.52)] = (180, 60, 40)  # obstacle
    noise = np.random.default_rng(0).normal(0.0, 6.0, frame.shape).astype(np.float32)
    return np.clip(frame + noise, 0, 255).astype(np.uint8)


def default_pixel_values(frame: np.ndarray, input_size: tuple[int, int]) -> torch.Tensor:
    """``(1, 3, H, W)``: the frame pre-processed with the default :class:`PreprocessCfg` (RGB, ImageNet
    normalisation) at ``input_size``."""
    return preprocess(frame, PreprocessCfg(input_size=tuple(input_size), antialias=True))


def clip_crops(frame: np.ndarray, size: int, count: int) -> torch.Tensor:
    """``(count, 3, size, size)`` CLIP-normalised square crops tiled over the lower two thirds of the frame."""
    h, w = frame.shape[:2]
    side = max(16, min(h, w) // 3)
    x = torch.from_numpy(frame).permute(2, 0, 1).float() / 255.0
    crops = []
    for i in range(count):
        top = h // 3 + (i * 37) % max(1, h - h // 3 - side)
        left = (i * 211) % max(1, w - side)
        crops.append(F.interpolate(x[None, :, top: top + side, left: left + side], size=(size, size),
                                   mode="bicubic", align_corners=False)[0])
    batch = torch.stack(crops)
    return (batch - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def _fail(runner, reference, problems: list[str]) -> None:
    raise ExportError(f"{runner.path.name} on {type(runner).__name__} differs from {type(reference).__name__} on a "
                      f"real frame: {'; '.join(problems)}. Do not deploy this engine; try precision fp32 or another "
                      "TensorRT version")


def check_parity(runner, reference, precision: str = "fp32", pixel_values: torch.Tensor | None = None,
                 frame: np.ndarray | None = None) -> dict[str, float]:
    """Run ``runner`` and ``reference`` (both ``run({input: tensor}) → {output: tensor}`` over the same export) on
    a real frame and raise :class:`ExportError` when they disagree beyond :data:`PARITY` ``[precision]`` (module
    docstring). Returns the measured figures: ``<output>.argmax_agreement``, ``<output>.msp_max_diff``,
    ``<output>.max_abs_diff``, ``image_embeddings.min_cosine@B``."""
    tolerance = PARITY[precision]
    record = reference.record
    name = record.inputs[0]
    frame = parity_frame() if frame is None else frame
    figures: dict[str, float] = {}
    problems: list[str] = []
    if record.kind == "clip_image":
        size = int(record.input_size[0])
        max_batch = int(record.extras.get("max_batch", 2))
        for batch in sorted({1, min(8, max_batch), max_batch}):
            crops = clip_crops(frame, size, batch)
            a = runner.run({name: crops})["image_embeddings"].float().cpu()
            b = reference.run({name: crops})["image_embeddings"].float().cpu()
            if a.shape != b.shape:
                _fail(runner, reference, [f"image_embeddings at batch {batch} has shape {tuple(a.shape)}, reference "
                                          f"{tuple(b.shape)}"])
            cosine = float(F.cosine_similarity(a, b, dim=1).min())
            figures[f"image_embeddings.min_cosine@{batch}"] = cosine
            if not cosine >= tolerance.cosine:
                problems.append(f"image_embeddings cosine {cosine:.5f} < {tolerance.cosine} at batch {batch}")
    else:
        x = default_pixel_values(frame, record.input_size) if pixel_values is None else pixel_values
        got, expected = runner.run({name: x}), reference.run({name: x})
        for output in record.outputs:
            a, b = got[output].float().cpu(), expected[output].float().cpu()
            if a.shape != b.shape:
                _fail(runner, reference, [f"output {output} has shape {tuple(a.shape)}, reference {tuple(b.shape)}"])
            if output in ("logits", "member_logits") and a.ndim >= 4:
                agreement = float((a.argmax(-3) == b.argmax(-3)).float().mean())
                msp = float((a.softmax(-3).amax(-3) - b.softmax(-3).amax(-3)).abs().max())
                figures[f"{output}.argmax_agreement"], figures[f"{output}.msp_max_diff"] = agreement, msp
                if not agreement >= tolerance.argmax:
                    problems.append(f"{output} arg-max classes agree on {agreement:.2%} of pixels < "
                                    f"{tolerance.argmax:.1%}")
                if not msp <= tolerance.msp:
                    problems.append(f"{output} max-softmax score differs by {msp:.3g} > {tolerance.msp}")
            else:
                diff = float((a - b).abs().max())
                limit = 1e-4 + tolerance.rtol * float(b.abs().max())
                figures[f"{output}.max_abs_diff"] = diff
                if not diff <= limit:
                    problems.append(f"{output} max abs diff {diff:.3g} > {limit:.3g}")
    if problems:
        _fail(runner, reference, problems)
    return figures
