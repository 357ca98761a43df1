"""TensorRT backend: build an engine from a checked ONNX export, cache it, load it on start, run on a CUDA stream.

**Never run on our machines**: TensorRT cannot be installed here (no binary wheels reachable, no Debian package,
no GPU; ENGINEERING-NOTES §6.6). The code is written against the TensorRT 10 Python API and imported only when
``backend="tensorrt"`` is asked for; without TensorRT or CUDA that request fails with a clear error (tested).

Engine cache (ENGINEERING-NOTES §7.5): ``<cache>/<model>.<onnx sha256[:12]>.trt<version>.<gpu name>.sm<major><minor>.
<precision>.<H>x<W>.plan`` plus a JSON sidecar (versions, GPU, flags, profile, date). Lookup: explicit engine path →
cache → build (if ``allow_build``) under a file lock, written to a temporary file and renamed, so concurrent starts
never read a half-written engine. A plan that fails to deserialise, or whose I/O names or static output shapes
differ from the ONNX export's record, is a cache miss. Graphs with a dynamic batch (the CLIP image encoder) get one
optimisation profile ``1 … max_batch`` (from the export record).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from pathlib import Path

import torch

from ..errors import ConfigError, VLAnomalyError
from .records import ExportRecord

PRECISIONS = ("fp32", "fp16")
_LOG = logging.getLogger(__name__)


def import_tensorrt():
    """The ``tensorrt`` module, or a :class:`ConfigError` saying what is missing (TensorRT, a CUDA GPU)."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ConfigError("backend 'tensorrt' needs the TensorRT Python package (JetPack, NGC containers or "
                          "NVIDIA's pip index) and a CUDA GPU; it is not installed here. Use backend "
                          "'onnxruntime' or 'torch'") from exc
    if not torch.cuda.is_available():
        raise ConfigError("backend 'tensorrt' needs a CUDA GPU; none is available")
    return trt


def engine_key(record: ExportRecord, trt_version: str, precision: str, gpu_name: str,
               capability: tuple[int, int]) -> str:
    """Cache key: model, ONNX hash, TensorRT version, GPU name and compute capability, precision, input size."""
    gpu = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    h, w = record.input_size
    return (f"{record.model}.{record.sha256[:12]}.trt{trt_version}.{gpu}.sm{capability[0]}{capability[1]}."
            f"{precision}.{h}x{w}")


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool, trt.DataType.INT8: torch.int8}
    if dtype not in table:
        raise ConfigError(f"TensorRT tensor type {dtype} is not supported by this backend")
    return table[dtype]


class TensorRTRunner:
    """A TensorRT engine of an ONNX export; ``run({input: tensor}) → {output: CUDA tensor}``.

    Args:
        onnx_path: the ONNX export (with its sidecar record).
        precision: ``fp32`` or ``fp16`` (``BuilderFlag.FP16``; TensorRT keeps layers in fp32 where it must).
        cache_dir: engine cache folder (never the install space; default ``$VL_ANOMALY_CACHE_DIR/tensorrt``).
        engine_path: an explicit engine file to load instead of the cache.
        workspace_mb: builder workspace limit.
        allow_build: build on a cache miss (minutes on embedded GPUs); otherwise a miss is an error.
        force_rebuild: build even when the cache holds a matching engine (``force_engine_update``; after a
            TensorRT or driver update, or to replace a suspect engine). Not with ``engine_path``.

    A build is announced before it starts (logger ``vl_anomaly.deploy.tensorrt_runner``, a message starting
    "building TensorRT engine"; the node shows it in its diagnostics).
    """

    def __init__(self, onnx_path: str | Path, precision: str = "fp16", cache_dir: str | Path | None = None,
                 engine_path: str | Path | None = None, workspace_mb: int = 1024, allow_build: bool = True,
                 force_rebuild: bool = False) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if force_rebuild and (engine_path is not None or not allow_build):
            raise ConfigError("force_rebuild builds into the engine cache; it cannot be combined with an explicit "
                              "engine_path or allow_build=False")
        trt = import_tensorrt()
        self.trt = trt
        self.path = self.onnx_path = Path(onnx_path)
        self.record = ExportRecord.load(self.onnx_path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if engine_path is not None:
            plan_path = Path(engine_path)
        else:
            from ..paths import cache_dir as default_cache

            folder = Path(cache_dir) if cache_dir else default_cache() / "tensorrt"
            key = engine_key(self.record, trt.__version__, precision, torch.cuda.get_device_name(),
                             torch.cuda.get_device_capability())
            plan_path = folder / f"{key}.plan"
        self.engine = self._load(plan_path) if plan_path.is_file() and not force_rebuild else None
        if self.engine is None:
            if engine_path is not None or not allow_build:
                raise ConfigError(f"no usable TensorRT engine at {plan_path}; build one with allow_build=True or "
                                  f"trtexec --onnx={self.onnx_path} --saveEngine={plan_path}"
                                  + (" --fp16" if precision == "fp16" else ""))
            _LOG.warning("building TensorRT engine %s (%s, %s) from %s: first start takes minutes, later starts load "
                         "it from the cache", plan_path.name, precision,
                         "forced by force_engine_update" if force_rebuild else "none cached for this GPU and version",
                         self.onnx_path.name)
            self._build(plan_path, precision, workspace_mb, force=force_rebuild)
            self.engine = self._load(plan_path)
            if self.engine is None:
                raise ConfigError(f"the TensorRT engine built at {plan_path} does not match the ONNX export")
        self.context = self.engine.create_execution_context()
        self.plan_path = plan_path

    def _load(self, plan_path: Path):
        """Deserialise and validate I/O against the export record; None on any mismatch (a cache miss)."""
        engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if engine is None:
            return None
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        if names != {*self.record.inputs, *self.record.outputs}:
            return None
        for name in self.record.outputs:
            expected = self.record.output_shapes[name]
            got = list(engine.get_tensor_shape(name))
            if len(got) != len(expected) or any(e >= 0 and g != e for g, e in zip(got, expected)):
                return None
        return engine

    def _profile(self, builder, network):
        """One optimisation profile over the dynamic input dimensions (batch ``1 … max_batch``), or None."""
        profile, dynamic = builder.create_optimization_profile(), False
        max_batch = int(self.record.extras.get("max_batch", 1))
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = list(tensor.shape)
            if all(d >= 0 for d in shape):
                continue
            dynamic = True
            low = [1 if d < 0 else d for d in shape]
            opt = [min(8, max_batch) if d < 0 else d for d in shape]
            high = [max_batch if d < 0 else d for d in shape]
            profile.set_shape(tensor.name, low, opt, high)
        return profile if dynamic else None

    def _build(self, plan_path: Path, precision: str, workspace_mb: int, force: bool = False) -> None:
        import fcntl

        trt = self.trt
        plan_path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{plan_path}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)                     # one builder per engine; others wait, then load
            if not force and plan_path.is_file() and self._load(plan_path) is not None:
                return                                           # another process built it while we waited
            builder = trt.Builder(self.logger)
            network = builder.create_network(0)                  # explicit batch is the only mode in TensorRT 10
            parser = trt.OnnxParser(network, self.logger)
            if not parser.parse_from_file(str(self.onnx_path)):
                errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise ConfigError(f"TensorRT cannot parse {self.onnx_path}:\n{errors}")
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
            if precision == "fp16":
                if not hasattr(trt.BuilderFlag, "FP16"):
                    raise ConfigError(f"TensorRT {trt.__version__} has no FP16 builder flag (strongly typed "
                                      "networks only): use precision 'fp32'")
                config.set_flag(trt.BuilderFlag.FP16)
            profile = self._profile(builder, network)
            if profile is not None:
                config.add_optimization_profile(profile)
            plan = builder.build_serialized_network(network, config)
            if plan is None:
                raise ConfigError(f"TensorRT failed to build an engine from {self.onnx_path} (see its log above)")
            tmp = plan_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(bytes(plan))
            os.replace(tmp, plan_path)
            Path(f"{plan_path}.json").write_text(json.dumps({
                "onnx": str(self.onnx_path), "onnx_sha256": self.record.sha256, "tensorrt": trt.__version__,
                "gpu": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
                "precision": precision, "workspace_mb": workspace_mb,
                "max_batch": int(self.record.extras.get("max_batch", 1)) if profile is not None else None,
                "date": dt.datetime.now().isoformat(timespec="seconds")}, indent=1) + "\n")

    @torch.no_grad()
    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        trt = self.trt
        feeds = {}
        for name in self.record.inputs:
            x = inputs[name].to("cuda", _torch_dtype(trt, self.engine.get_tensor_dtype(name))).contiguous()
            self.context.set_input_shape(name, tuple(x.shape))
            self.context.set_tensor_address(name, x.data_ptr())
            feeds[name] = x                                      # keep alive until the stream is done
        outputs = {}
        for name in self.record.outputs:
            shape = tuple(self.context.get_tensor_shape(name))   # resolved for the input shapes just set
            outputs[name] = torch.empty(shape, device="cuda", dtype=_torch_dtype(trt, self.engine.get_tensor_dtype(name)))
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise VLAnomalyError(f"TensorRT execution failed for {self.plan_path}")
        stream.synchronize()
        return {name: value.float() for name, value in outputs.items()}
