"""The one loader of deployed models: a registered model run by an exported-graph backend, from an explicit ONNX
file or from the export cache.

Cache: ``$VL_ANOMALY_CACHE_DIR/onnx/<model>.<weights tag>.<H>x<W>.onnx`` (plus its sidecar), keyed by model,
weights and input size; an entry whose record names another torch version, or whose file no longer matches its
recorded SHA-256, is exported again (and checked against PyTorch, :mod:`vl_anomaly.deploy.export`). Random or
untrained weights are never cached: export them explicitly (``vl-anomaly export``) and pass the file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..paths import cache_dir
from ..pretrained import get_pretrained_cfg, sha256_file
from ..registry import get_model_config
from .adapters import load_exported
from .export import export_model
from .records import ExportRecord

_LOG = logging.getLogger(__name__)


def weights_tag(name: str, weights: str | Path, clip_weights: str | None = None) -> str:
    """Short identity of a model's weights for the export cache: the registered SHA-256 or the file's. VL models:
    segmenter, CLIP (``clip_weights``: a file, or the tag of :func:`vl_anomaly.pretrained.resolve_clip_weights`)
    and head checkpoint. Raises :class:`ConfigError` for random
    CLIP weights (never cached)."""
    cfg = get_model_config(name)
    if "segmenter" in cfg:                                   # a composite model (vl_anomaly): its parts and head
        if "clip" in cfg and (clip_weights is None or clip_weights == "random"):
            raise ConfigError(f"{name}: CLIP has random weights; such exports are not cached: run "
                              f"`vl-anomaly export --model {name}` and pass its file as the ONNX model")
        clip_tag = sha256_file(Path(clip_weights))[:12] if Path(clip_weights).is_file() else str(clip_weights)
        return f"{weights_tag(cfg['segmenter'], 'default')[:8]}.{clip_tag}.{sha256_file(Path(weights))[:12]}"
    if "members" in cfg and weights == "default":             # an ensemble: its members' weights and resolutions
        import hashlib

        parts = [f"{m['model']}@{m.get('resolution', 1.0)}:{weights_tag(m['model'], 'default')}" for m in cfg["members"]]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
    if weights == "default":
        record = get_pretrained_cfg(name)
        return (record.sha256 or "hub")[:12] if record is not None else "default"
    return sha256_file(Path(weights))[:12] if Path(weights).is_file() else Path(weights).name


def _check_explicit_export(onnx_path: Path, name: str, input_size: tuple[int, int]) -> None:
    record = ExportRecord.load(onnx_path)                   # checked before a runner (or engine) is built
    if record.kind == "clip_image":
        raise ConfigError(f"{onnx_path} is a CLIP image encoder; pass the model's export (its .onnx next to it)")
    if record.model and record.model != name:
        raise ConfigError(f"{onnx_path} is an export of {record.model!r}, not of {name!r}: its pre-processing and "
                          "scores would not match; pass the same model name")
    if tuple(record.input_size) != tuple(input_size):
        raise ConfigError(f"{onnx_path} was exported for input {record.input_size[0]}x{record.input_size[1]}, the "
                          f"predictor runs at {input_size[0]}x{input_size[1]}: set the input size to the export's "
                          "or export again with --input-size")


def load_deployed_model(name: str, weights: str | Path | None, input_size: tuple[int, int], backend: str,
                        build_model: Callable[[], nn.Module], onnx_path: str | Path | None = None,
                        precision: str = "fp16", threads: int | None = None,
                        clip_weights: str | None = None, force_engine_update: bool = False, device: str = "cuda",
                        provider_fallback: str = "warn",
                        parity_pixels: Callable[[], torch.Tensor] | None = None) -> nn.Module:
    """Registered model ``name`` run by ``backend`` (``onnxruntime`` or ``tensorrt``) from its ONNX export.

    Args:
        name, weights: the registered model and its weights (``"default"`` or a file).
        input_size: ``(H, W)`` network input of the graph.
        build_model: builds the PyTorch model; called only when the cache needs a new export.
        onnx_path: an explicit export (its record must name the same model and input size); else the cache.
        precision: TensorRT engine precision; threads: CPU threads of ONNX Runtime.
        clip_weights: VL models: the CLIP weights the model was built with (part of the cache key).
        force_engine_update: TensorRT: rebuild the engine even when a cached one matches.
        device: the CUDA device of a TensorRT engine; provider_fallback: ONNX Runtime, when a requested GPU
            provider did not load (``warn`` or ``error``); parity_pixels: the parity frame as the predictor
            prepares it (:func:`vl_anomaly.deploy.parity.check_parity`).
    Returns: an adapter with the PyTorch model's interface (:mod:`vl_anomaly.deploy.adapters`).
    """
    options = dict(force_engine_update=force_engine_update, device=device, provider_fallback=provider_fallback,
                   parity_pixels=parity_pixels)
    if backend == "tensorrt":
        from .tensorrt_runner import import_tensorrt

        import_tensorrt()                                       # a clear error before any export work
    if onnx_path is not None:
        _check_explicit_export(Path(onnx_path), name, input_size)
        return load_exported(onnx_path, backend, threads, precision, **options)
    composite = "segmenter" in get_model_config(name)
    if weights is None or str(weights).lower() in ("none", "untrained") or (composite and weights == "default"):
        raise ConfigError(f"{name} with weights={weights!r} has no cached ONNX export (only registered or file "
                          "weights are cached; VL models need a head checkpoint): run "
                          f"`vl-anomaly export --model {name} --weights ...` and pass its file as the ONNX model")
    tag = weights_tag(name, weights, clip_weights)
    path = cache_dir() / "onnx" / f"{name}.{tag}.{input_size[0]}x{input_size[1]}.onnx"
    fresh = False
    if path.is_file():
        try:
            record = ExportRecord.load(path)
            fresh = record.torch_version == torch.__version__ and record.sha256 == sha256_file(path)
        except Exception:                                                      # noqa: BLE001 — re-export
            fresh = False
    if not fresh:
        _LOG.warning("exporting %s to %s (once; checked against PyTorch)", name, path)
        export_model(build_model(), path, tuple(input_size), name=name, weights=str(weights))
    return load_exported(path, backend, threads, precision, **options)
