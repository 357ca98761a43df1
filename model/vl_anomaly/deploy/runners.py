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


from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import ConfigError
from .records import ExportError, ExportRecord

BACKENDS = ("torch", "onnxruntime", "tensorrt")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


class GraphRunner(Protocol):
    """Runs one exported graph: named input tensors → named output tensors (on the runner's device)."""

    path: Path
    record: ExportRecord

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


def ort_session(path: Path, threads: int | None = None, providers: list[str] | None = None):
    """An ONNX Runtime session; ``providers`` default: TensorRT, CUDA, CPU — those installed, in that order.

    ONNX Runtime's TensorRT provider (never available on our machines, so never run here) keeps its engines in
    ``$VL_ANOMALY_CACHE_DIR/ort_tensorrt`` (``trt_engine_cache_enable``), in fp32: this backend promises the
    export's numbers; fp16 engines are the ``tensorrt`` backend's job."""
    import onnxruntime as ort

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
        from ..paths import cache_dir

        engines = cache_dir() / "ort_tensorrt"
        engines.mkdir(parents=True, exist_ok=True)
        chosen[chosen.index("TensorrtExecutionProvider")] = (
            "TensorrtExecutionProvider", {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(engines),
                                          "trt_fp16_enable": False})
    try:
        return ort.InferenceSession(str(path), options, providers=chosen)
    except Exception as exc:                                                   # noqa: BLE001
        raise ExportError(f"ONNX Runtime cannot load {path}: {exc}") from exc


class OnnxRuntimeRunner:
    """An exported graph in an ONNX Runtime session. ``threads``: intra-op threads (None: ONNX Runtime's
    default); ``providers``: execution providers in order of preference (default: TensorRT, CUDA, CPU — those
    installed)."""

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        self.path = Path(path)
        self.record = ExportRecord.load(self.path)
        self.session = ort_session(self.path, threads, providers)

    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feed = {name: value.detach().cpu().float().numpy() for name, value in inputs.items()}
        values = self.session.run(self.record.outputs, feed)
        return {name: torch.from_numpy(np.asarray(value)) for name, value in zip(self.record.outputs, values)}


#: Relative tolerance of :func:`check_parity` per TensorRT precision (of ``max|reference output|``).
PARITY_RTOL = {"fp32": 1e-3, "fp16": 5e-2}


def check_parity(runner: GraphRunner, reference: GraphRunner, rtol: float, atol: float = 1e-4,
                 seed: int = 0) -> dict[str, float]:
    """Run ``runner`` and ``reference`` on one random input of the export's shape (batch 2 for the CLIP encoder)
    and raise :class:`ExportError` when an output differs by more than ``atol + rtol · max|reference|``.
    Returns the max abs difference per output. Guards against engines that build but compute something else
    (TensorRT has miscompiled GridSample, which Mask2Former's pixel decoder uses)."""
    record = reference.record
    name = record.inputs[0]
    size = tuple(record.input_size)
    shape = (2, 3, *size) if record.kind == "clip_image" else (1, 3, *size)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    got, expected = runner.run({name: x}), reference.run({name: x})
    diffs, bad = {}, {}
    for output in record.outputs:
        a, b = got[output].float().cpu(), expected[output].float().cpu()
        if a.shape != b.shape:
            raise ExportError(f"{runner.path.name}: output {output} has shape {tuple(a.shape)}, reference "
                              f"{tuple(b.shape)}")
        diffs[output] = float((a - b).abs().max())
        limit = atol + rtol * float(b.abs().max())
        if not diffs[output] <= limit:
            bad[output] = (diffs[output], limit)
    if bad:
        raise ExportError(f"{runner.path.name} on {type(runner).__name__} differs from {type(reference).__name__}: "
                          + ", ".join(f"{o} max abs diff {d:.3g} > {lim:.3g}" for o, (d, lim) in bad.items())
                          + ". Do not deploy this engine; try precision fp32 or another TensorRT version")
    return diffs


def make_runner(path: str | Path, backend: str, threads: int | None = None, precision: str = "fp16",
                engine_path: str | Path | None = None, verify: bool = True,
                force_engine_update: bool = False) -> GraphRunner:
    """The runner of ``backend`` (``onnxruntime`` or ``tensorrt``) for the ONNX export at ``path``. A TensorRT
    engine is checked against ONNX Runtime on the CPU on load (``verify``; :func:`check_parity`);
    ``force_engine_update`` rebuilds it even when a cached one matches."""
    if backend == "onnxruntime":
        return OnnxRuntimeRunner(path, threads)
    if backend == "tensorrt":
        from .tensorrt_runner import TensorRTRunner

        runner = TensorRTRunner(path, precision=precision, engine_path=engine_path, force_rebuild=force_engine_update)
        if verify:
            check_parity(runner, OnnxRuntimeRunner(path, threads, ["CPUExecutionProvider"]), PARITY_RTOL[precision])
        return runner
    if backend == "torch":
        raise ConfigError("backend 'torch' runs the PyTorch module, not an exported graph")
    check_backend(backend)                                  # unknown name: the error lists the backends
    raise AssertionError(backend)
