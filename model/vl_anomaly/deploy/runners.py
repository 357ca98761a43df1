"""Runners: the backends that execute an exported graph (:mod:`vl_anomaly.deploy.export`), each a **runner**, ``run({input: tensor}) →
{output: tensor}``:

* ``torch``: no runner, the PyTorch module itself.
* ``onnxruntime`` (:class:`OnnxRuntimeRunner`): CPU here; ``TensorrtExecutionProvider`` / ``CUDAExecutionProvider``
  are used when ONNX Runtime offers them (not on our machines).
* ``tensorrt`` (:class:`vl_anomaly.deploy.tensorrt_runner.TensorRTRunner`): an engine built from the ONNX export and
  cached; written against the TensorRT 10 API, **never run here** (no TensorRT, no GPU; docs/deployment.md).

The adapters that give runners the PyTorch models' interfaces are in :mod:`vl_anomaly.deploy.adapters`.
"""

from __future__ import annotations


import logging
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from ..errors import ConfigError
from .records import ExportError, ExportRecord

BACKENDS = ("torch", "onnxruntime", "tensorrt")
_LOG = logging.getLogger(__name__)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


class GraphRunner(Protocol):
    """Runs one exported graph: named input tensors → named output tensors (on the runner's device)."""

    path: Path
    record: ExportRecord

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


#: what an ONNX Runtime session does when a requested GPU provider did not load (its libraries are missing, etc.)
PROVIDER_FALLBACKS = ("warn", "error")


def _ort_tensorrt_options(path: Path) -> dict:
    """Options of ONNX Runtime's TensorRT provider for one export: an engine cache folder keyed by the ONNX file's
    SHA-256 (the provider identifies engines by file name, input/initializer names and versions, not by weights:
    a re-export to the same path would silently reuse the old engine), fp32, and for a dynamic batch an explicit
    optimisation profile ``1 / min(8, max) / max`` (without one the provider may rebuild the engine mid-run when a
    new batch size appears)."""
    from ..paths import cache_dir
    from ..pretrained import sha256_file

    try:
        record = ExportRecord.load(path)
        digest = record.sha256
    except Exception:                                                          # noqa: BLE001 — a bare ONNX file
        record, digest = None, sha256_file(path)
    engines = cache_dir() / "ort_tensorrt" / digest[:16]
    engines.mkdir(parents=True, exist_ok=True)
    options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(engines), "trt_fp16_enable": False}
    if record is not None and "max_batch" in record.extras:
        size = "x".join(str(int(d)) for d in (3, *record.input_size))
        max_batch = int(record.extras["max_batch"])
        name = record.inputs[0]
        options.update(trt_profile_min_shapes=f"{name}:1x{size}",
                       trt_profile_opt_shapes=f"{name}:{min(8, max_batch)}x{size}",
                       trt_profile_max_shapes=f"{name}:{max_batch}x{size}")
    return options


def ort_session(path: Path, threads: int | None = None, providers: list[str] | None = None,
                provider_fallback: str = "warn"):
    """An ONNX Runtime session; ``providers`` default: TensorRT, CUDA, CPU — those installed, in that order.

    ONNX Runtime's TensorRT provider (never available on our machines, so never run here) gets
    :func:`_ort_tensorrt_options`: fp32 (this backend promises the export's numbers; fp16 engines are the
    ``tensorrt`` backend's job), an engine cache per ONNX file hash, an explicit profile for a dynamic batch.

    A provider that ONNX Runtime lists is not necessarily one that loads: without the CUDA / TensorRT libraries the
    session silently runs on the CPU. The providers the session really uses (``get_providers()``) are compared
    with those asked for; a missing one is logged as a warning (``provider_fallback="warn"``) or raises
    :class:`ConfigError` (``"error"``)."""
    import onnxruntime as ort

    if provider_fallback not in PROVIDER_FALLBACKS:
        raise ConfigError(f"provider_fallback must be one of {', '.join(PROVIDER_FALLBACKS)}; got {provider_fallback!r}")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    preferred = providers or ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    available = [p for p in preferred if p in ort.get_available_providers()]
    if not available:
        raise ExportError(f"none of the ONNX Runtime providers {preferred} is available here "
                          f"(available: {ort.get_available_providers()})")
    chosen: list = list(available)
    if "TensorrtExecutionProvider" in chosen:
        chosen[chosen.index("TensorrtExecutionProvider")] = ("TensorrtExecutionProvider", _ort_tensorrt_options(path))
    try:
        session = ort.InferenceSession(str(path), options, providers=chosen)
    except Exception as exc:                                                   # noqa: BLE001
        raise ExportError(f"ONNX Runtime cannot load {path}: {exc}") from exc
    active = list(session.get_providers())
    missing = [p for p in available if p not in active]
    if missing:
        message = (f"ONNX Runtime was asked for {', '.join(available)} for {Path(path).name} but runs on "
                   f"{', '.join(active) or 'nothing'}: {', '.join(missing)} did not load (CUDA / cuDNN / TensorRT "
                   "libraries missing or of another version; ONNX Runtime's log says which)")
        if provider_fallback == "error":
            raise ConfigError(message + "; set provider_fallback 'warn' to run on what loaded")
        _LOG.warning(message)
    return session


class OnnxRuntimeRunner:
    """An exported graph in an ONNX Runtime session. ``threads``: intra-op threads (None: ONNX Runtime's
    default); ``providers``: execution providers in order of preference (default: TensorRT, CUDA, CPU — those
    installed); ``provider_fallback``: see :func:`ort_session`. ``providers_in_use``: what the session runs on."""

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None,
                 provider_fallback: str = "warn") -> None:
        self.path = Path(path)
        self.record = ExportRecord.load(self.path)
        self.session = ort_session(self.path, threads, providers, provider_fallback)
        self.providers_in_use = list(self.session.get_providers())

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feed = {name: value.detach().cpu().float().numpy() for name, value in inputs.items()}
        values = self.session.run(self.record.outputs, feed)
        return {name: torch.from_numpy(np.asarray(value)) for name, value in zip(self.record.outputs, values)}


def make_runner(path: str | Path, backend: str, threads: int | None = None, precision: str = "fp16",
                engine_path: str | Path | None = None, verify: bool = True,
                force_engine_update: bool = False, device: str = "cuda", provider_fallback: str = "warn",
                parity_pixels: Callable[[], torch.Tensor] | None = None) -> GraphRunner:
    """The runner of ``backend`` (``onnxruntime`` or ``tensorrt``) for the ONNX export at ``path``.

    A TensorRT engine (on ``device``) is checked against ONNX Runtime on the CPU on load (``verify``;
    :func:`vl_anomaly.deploy.parity.check_parity` on a real frame; ``parity_pixels`` gives the frame as the
    predictor prepares it); ``force_engine_update`` rebuilds it even when a cached one matches."""
    if backend == "onnxruntime":
        return OnnxRuntimeRunner(path, threads, provider_fallback=provider_fallback)
    if backend == "tensorrt":
        from .parity import check_parity
        from .tensorrt_runner import TensorRTRunner

        runner = TensorRTRunner(path, precision=precision, engine_path=engine_path, force_rebuild=force_engine_update,
                                device=device)
        if verify:
            reference = OnnxRuntimeRunner(path, threads, ["CPUExecutionProvider"])
            pixels = parity_pixels() if parity_pixels is not None and reference.record.kind != "clip_image" else None
            runner.parity = check_parity(runner, reference, precision, pixel_values=pixels)
        return runner
    if backend == "torch":
        raise ConfigError("backend 'torch' runs the PyTorch module, not an exported graph")
    check_backend(backend)                                  # unknown name: the error lists the backends
    raise AssertionError(backend)


def providers_in_use(model) -> list[str]:
    """What executes ``model`` (a PyTorch module or an adapter of :mod:`vl_anomaly.deploy.adapters`): ONNX Runtime's
    providers in use, ``["TensorRT"]``, or ``["PyTorch"]``; a VL model's CLIP graph is listed after a ``+``."""
    runner = getattr(model, "runner", None)
    if runner is None:
        return ["PyTorch"]
    names = list(getattr(runner, "providers_in_use", None) or ["TensorRT"])
    clip = getattr(getattr(model, "clip", None), "runner", None)
    if clip is not None:
        names += ["+"] + list(getattr(clip, "providers_in_use", None) or ["TensorRT"])
    return names
