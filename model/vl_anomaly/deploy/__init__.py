"""Deployment: ONNX export checked against PyTorch, the export cache, the runners that execute exported graphs
(ONNX Runtime, TensorRT) and the adapters that give them the PyTorch models' interfaces.

| module | holds |
|---|---|
| ``records.py`` | :class:`ExportRecord` (the ``.onnx.json`` sidecar), :class:`ExportError`, companion file names |
| ``export.py`` | :func:`export_model` → ``export_onnx`` / ``export_vl_onnx`` / ``export_clip_image_onnx`` |
| ``runners.py`` | :data:`BACKENDS`, :class:`OnnxRuntimeRunner` (provider check), :func:`make_runner` |
| ``parity.py`` | :func:`check_parity`: an engine against ONNX Runtime on a real frame (classes, score map, embeddings) |
| ``tensorrt_runner.py`` | :class:`TensorRTRunner` (version check, engine build, cache, run; never run on our machines) |
| ``adapters.py`` | :class:`ExportedSegmenter`, :class:`ExportedClipImages`, :class:`ExportedVLModel`, :func:`load_exported` |
| ``cache.py`` | :func:`load_deployed_model`: the one loader used by :func:`vl_anomaly.create_predictor` |
"""

from .adapters import ExportedClipImages, ExportedSegmenter, ExportedVLModel, load_exported
from .cache import load_deployed_model, weights_tag
from .export import export_clip_image_onnx, export_model, export_onnx, export_vl_onnx
from .parity import PARITY, ParityTolerance, check_parity, parity_frame
from .records import ExportError, ExportRecord, vl_companion_paths
from .runners import (BACKENDS, PROVIDER_FALLBACKS, OnnxRuntimeRunner, check_backend, make_runner, ort_session,
                      providers_in_use)

__all__ = [
    "BACKENDS", "ExportError", "ExportRecord", "ExportedClipImages", "ExportedSegmenter", "ExportedVLModel",
    "OnnxRuntimeRunner", "PARITY", "PROVIDER_FALLBACKS", "ParityTolerance", "check_backend", "check_parity",
    "export_clip_image_onnx", "export_model", "export_onnx", "export_vl_onnx", "load_deployed_model", "load_exported",
    "make_runner", "ort_session", "parity_frame", "providers_in_use", "vl_companion_paths", "weights_tag",
]
