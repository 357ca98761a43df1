"""Inference backends behind one interface: a module mapping ``pixel_values (1, 3, H, W)`` to a
:class:`~vl_anomaly.outputs.SegmenterOutput`, so :class:`~vl_anomaly.pipeline.AnomalyPredictor` (and with it
``predict``, ``eval``, the node and replay) runs the same scores and post-processing on every backend.

* ``torch``: the PyTorch module itself.
* ``onnxruntime`` (:class:`OnnxRuntimeSegmenter`): an exported graph (:mod:`vl_anomaly.export`), CPU here;
  ``CUDAExecutionProvider`` / ``TensorrtExecutionProvider`` are used when ONNX Runtime offers them (not on our
  machines).
* ``tensorrt`` (:class:`vl_anomaly.tensorrt_backend.TensorRTSegmenter`): an engine built from the ONNX export and
  cached; written against the TensorRT 10 API, **never run here** (no TensorRT, no GPU; docs/deployment.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError
from .export import ExportError, ExportRecord, _session
from .outputs import SegmenterOutput

BACKENDS = ("torch", "onnxruntime", "tensorrt")


class OnnxRuntimeSegmenter(nn.Module):
    """An exported segmenter run by ONNX Runtime. ``threads``: intra-op threads (None: ONNX Runtime's default).

    Attributes mirror the PyTorch segmenters (``feature_stride``, ``has_mask_queries``, ``feature_channels``).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"ONNX model {self.path} does not exist")
        self.record = ExportRecord.load(self.path)
        self.session = _session(self.path, threads)
        self.feature_stride = self.record.feature_stride
        self.has_mask_queries = self.record.has_mask_queries
        self.feature_channels = self.record.output_shapes["pixel_features"][1]
        self.input_size = tuple(self.record.input_size)

    def forward(self, pixel_values: torch.Tensor) -> SegmenterOutput:
        if tuple(pixel_values.shape) != (1, 3, *self.input_size):
            raise ConfigError(f"{self.path.name} was exported for input (1, 3, {self.input_size[0]}, "
                              f"{self.input_size[1]}); got {tuple(pixel_values.shape)}. Export one graph per size "
                              "(vl-anomaly export --input-size H W)")
        names = self.record.outputs
        values = self.session.run(names, {"pixel_values": pixel_values.detach().cpu().float().numpy()})
        out = {name: torch.from_numpy(value) for name, value in zip(names, values)}
        return SegmenterOutput(feature_stride=self.feature_stride, **out)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


class OnnxRuntimeClipImages:
    """The exported CLIP image encoder (:func:`vl_anomaly.export.export_clip_image_onnx`) with the
    ``image_size`` / ``encode_images`` interface of :class:`~vl_anomaly.networks.clip_towers.FrozenCLIP`, so
    :func:`vl_anomaly.vl_scores.clip_crop_score` runs it unchanged (one batched call for all crops)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"ONNX model {self.path} does not exist")
        self.record = ExportRecord.load(self.path)
        self.session = _session(self.path, threads)
        self.image_size = int(self.record.input_size[0])

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` CLIP-normalised crops → ``(B, D)`` L2-normalised embeddings."""
        if tuple(images.shape[1:]) != (3, self.image_size, self.image_size):
            raise ConfigError(f"CLIP expects (B, 3, {self.image_size}, {self.image_size}) crops, got "
                              f"{tuple(images.shape)}")
        out = self.session.run(["image_embeddings"], {"images": images.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out)
