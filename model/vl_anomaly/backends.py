"""Inference backends behind one interface: a module mapping ``pixel_values (1, 3, H, W)`` to a
:class:`~vl_anomaly.outputs.SegmenterOutput`, so :class:`~vl_anomaly.pipeline.AnomalyPredictor` (and with it
``predict``, ``eval``, the node and replay) runs the same scores and post-processing on every backend.

* ``torch``: the PyTorch module itself.
* ``onnxruntime`` (:class:`OnnxRuntimeSegmenter`): an exported graph (:mod:`vl_anomaly.export`), CPU here;
  ``CUDAExecutionProvider`` / ``TensorrtExecutionProvider`` are used when ONNX Runtime offers them (not on our
  machines).
* ``tensorrt``: not implemented yet (TensorRT cannot be installed here; docs/deployment.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError
from .export import ExportError, ExportRecord, _session
from .outputs import SegmenterOutput

BACKENDS = ("torch", "onnxruntime")


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
    if backend == "tensorrt":
        raise ConfigError("backend 'tensorrt' is not available yet: TensorRT cannot be installed on our machines "
                          "and its backend is not written; use 'onnxruntime' (ONNX Runtime picks the TensorRT "
                          "execution provider where it is installed) or 'torch'")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend
