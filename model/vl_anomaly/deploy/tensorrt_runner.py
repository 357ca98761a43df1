"""TensorRT backend: build an engine from a checked ONNX export, cache it, load it on start, run on a CUDA stream.

**Never run on our machines**: TensorRT cannot be installed here (no binary wheels reachable, no Debian package,
no GPU; ENGINEERING-NOTES §6.6). The code is written against the TensorRT 10 Python API and imported only when
``backend="tensorrt"`` is asked for; without TensorRT or CUDA that request fails with a clear error (tested).

Supported: TensorRT 10.x (JetPack 6, NGC 24.x and later) in fp32 and fp16; 11.x in fp32 only (11 removed
``BuilderFlag.FP16``: fp16 needs a strongly typed fp16 ONNX graph, which we do not export yet); 8.x (JetPack 5) is
refused (no INT64 tensors, implicit-batch networks). :func:`check_tensorrt_version`.

Engine cache (ENGINEERING-NOTES §7.5): ``<cache>/<model>.<onnx sha256[:12]>.trt<version>.<gpu name>.sm<major><minor>.
<precision>.<H>x<W>[.b<max batch>].plan`` plus a JSON sidecar (versions, GPU, flags, profile, date). Lookup:
explicit engine path → cache → build (if ``allow_build``) under a file lock, written to a temporary file and
renamed, so concurrent starts never read a half-written engine. A plan that fails to deserialise, whose I/O names
or static output shapes differ from the ONNX export's record, or whose optimisation profile does not reach the
record's maximum batch, is a cache miss. Graphs with a dynamic batch (the CLIP image encoder) get one optimisation
profile ``1 … max_batch`` (from the export record; also in the cache key, since the ONNX holds only a symbolic batch).

Running (:meth:`TensorRTRunner.run`): on the runner's own CUDA stream, ordered after the caller's stream and before
the caller's next work (TensorRT warns that the legacy default stream adds device-wide synchronisations); every
``set_input_shape`` / ``set_tensor_address`` result is checked (a batch outside the profile raises with the
profile's range), every output's batch must equal the input's, and tensor addresses are 256-byte aligned (unaligned
views are copied). The engine lives on the runner's ``device`` (``cuda:N``).
"""

from __future__ import annotations

import contextlib
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


#: TensorRT major versions this backend is written for.
SUPPORTED_MAJORS = (10, 11)


def check_tensorrt_version(version: str, precision: str, has_fp16_flag: bool) -> None:
    """Raise :class:`ConfigError` unless TensorRT ``version`` can build ``precision`` engines here (module docstring).
    ``has_fp16_flag``: whether this TensorRT has ``BuilderFlag.FP16``."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        raise ConfigError(f"cannot read the TensorRT version {version!r}") from None
    if major < SUPPORTED_MAJORS[0]:
        raise ConfigError(f"TensorRT {version} is not supported: the tensorrt backend needs TensorRT 10 (INT64 "
                          "tensors, explicit-batch networks, the tensor-address API). JetPack 5 ships 8.6: use backend "
                          "'onnxruntime' there, or JetPack 6")
    if major > SUPPORTED_MAJORS[-1]:
        raise ConfigError(f"TensorRT {version} is newer than this backend supports (10.x; 11.x in fp32); use backend "
                          "'onnxruntime' or TensorRT 10")
    if precision == "fp16" and not has_fp16_flag:
        raise ConfigError(f"TensorRT {version} has no BuilderFlag.FP16 (strongly typed networks only): fp16 engines "
                          "need an fp16 ONNX export, which vl-anomaly does not produce yet; use precision 'fp32'")


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


def _max_batch(record: ExportRecord) -> int | None:
    """The maximum batch of a graph with a dynamic batch (the CLIP image encoder), else None."""
    return int(record.extras["max_batch"]) if "max_batch" in record.extras else None


def engine_key(record: ExportRecord, trt_version: str, precision: str, gpu_name: str,
               capability: tuple[int, int]) -> str:
    """Cache key: model, ONNX hash, TensorRT version, GPU name and compute capability, precision, input size and,
    for a dynamic batch, the profile's maximum batch."""
    gpu = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") or "gpu"
    h, w = record.input_size
    max_batch = _max_batch(record)
    return (f"{record.model}.{record.sha256[:12]}.trt{trt_version}.{gpu}.sm{capability[0]}{capability[1]}."
            f"{precision}.{h}x{w}" + (f".b{max_batch}" if max_batch is not None else ""))


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.BOOL: torch.bool, trt.DataType.INT8: torch.int8}
    if hasattr(trt.DataType, "INT64"):
        table[trt.DataType.INT64] = torch.int64
    if dtype not in table:
        raise ConfigError(f"TensorRT tensor type {dtype} is not supported by this backend")
    return table[dtype]


#: TensorRT requires tensor addresses aligned to this many bytes.
ADDRESS_ALIGNMENT = 256


def aligned(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when its address is :data:`ADDRESS_ALIGNMENT`-aligned, else an aligned contiguous copy (a view
    into a batch, e.g. a chunk of crops, starts wherever the chunk starts)."""
    x = x.contiguous()
    if x.data_ptr() % ADDRESS_ALIGNMENT == 0:
        return x
    nbytes = x.numel() * x.element_size()
    buffer = torch.empty(nbytes + ADDRESS_ALIGNMENT, dtype=torch.uint8, device=x.device)
    offset = (-buffer.data_ptr()) % ADDRESS_ALIGNMENT
    copy = buffer[offset: offset + nbytes].view(x.dtype).view(x.shape)
    copy.copy_(x)
    return copy


def _device_scope(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


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
        device: the CUDA device the engine is built for and runs on (``cuda`` = the current one, ``cuda:N``).
            Only the stand-in tests of our machines use another.

    A build is announced before it starts (logger ``vl_anomaly.deploy.tensorrt_runner``, a message starting
    "building TensorRT engine"; the node shows it in its diagnostics).
    """

    def __init__(self, onnx_path: str | Path, precision: str = "fp16", cache_dir: str | Path | None = None,
                 engine_path: str | Path | None = None, workspace_mb: int = 1024, allow_build: bool = True,
                 force_rebuild: bool = False, device: str | torch.device = "cuda") -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if force_rebuild and (engine_path is not None or not allow_build):
            raise ConfigError("force_rebuild builds into the engine cache; it cannot be combined with an explicit "
                              "engine_path or allow_build=False")
        trt = import_tensorrt()
        check_tensorrt_version(trt.__version__, precision, hasattr(trt.BuilderFlag, "FP16"))
        self.trt = trt
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.path = self.onnx_path = Path(onnx_path)
        self.record = ExportRecord.load(self.onnx_path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        with _device_scope(self.device):
            self.runtime = trt.Runtime(self.logger)
            if engine_path is not None:
                plan_path = Path(engine_path)
            else:
                from ..paths import cache_dir as default_cache

                folder = Path(cache_dir) if cache_dir else default_cache() / "tensorrt"
                key = engine_key(self.record, trt.__version__, precision, torch.cuda.get_device_name(self.device),
                                 torch.cuda.get_device_capability(self.device))
                plan_path = folder / f"{key}.plan"
            self.engine = self._load(plan_path) if plan_path.is_file() and not force_rebuild else None
            if self.engine is None:
                if engine_path is not None or not allow_build:
                    raise ConfigError(f"no usable TensorRT engine at {plan_path}; build one with allow_build=True or "
                                      f"trtexec --onnx={self.onnx_path} --saveEngine={plan_path}"
                                      + (" --fp16" if precision == "fp16" else ""))
                _LOG.warning("building TensorRT engine %s (%s, %s) from %s: first start takes minutes, later starts "
                             "load it from the cache", plan_path.name, precision,
                             "forced by force_engine_update" if force_rebuild else "none cached for this GPU and version",
                             self.onnx_path.name)
                self._build(plan_path, precision, workspace_mb, force=force_rebuild)
                self.engine = self._load(plan_path)
                if self.engine is None:
                    raise ConfigError(f"the TensorRT engine built at {plan_path} does not match the ONNX export")
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise ConfigError(f"TensorRT could not create an execution context for {plan_path.name} on "
                                  f"{self.device} (out of GPU memory?)")
            self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.plan_path = plan_path
        self.profile = self._profile_ranges()

    def _profile_ranges(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """``{input: (min shape, max shape)}`` of the engine's optimisation profile 0, for inputs with one."""
        ranges = {}
        for name in self.record.inputs:
            if _max_batch(self.record) is not None:
                low, _, high = self.engine.get_tensor_profile_shape(name, 0)
                ranges[name] = (tuple(low), tuple(high))
        return ranges

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
        max_batch = _max_batch(self.record)
        if max_batch is not None:                    # an engine built for another max_crops has the wrong profile
            for name in self.record.inputs:
                _, _, high = engine.get_tensor_profile_shape(name, 0)
                if int(high[0]) != max_batch:
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
            network = builder.create_network(0)                  # explicit batch is the only mode from TensorRT 10
            parser = trt.OnnxParser(network, self.logger)
            if not parser.parse_from_file(str(self.onnx_path)):
                errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise ConfigError(f"TensorRT cannot parse {self.onnx_path}:\n{errors}")
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
            if precision == "fp16":                      # the flag exists: check_tensorrt_version ran in __init__
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
                "gpu": torch.cuda.get_device_name(self.device),
                "capability": list(torch.cuda.get_device_capability(self.device)),
                "precision": precision, "workspace_mb": workspace_mb,
                "max_batch": int(self.record.extras.get("max_batch", 1)) if profile is not None else None,
                "date": dt.datetime.now().isoformat(timespec="seconds")}, indent=1) + "\n")

    def _range_message(self, name: str) -> str:
        if name in self.profile:
            low, high = self.profile[name]
            return f"the engine's optimisation profile allows {low} … {high}"
        return "the engine has a static input shape " + str(tuple(self.engine.get_tensor_shape(name)))

    @torch.no_grad()
    def run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named inputs (any device) → named float32 outputs on :attr:`device` (module docstring: stream order,
        checked calls, batch and alignment)."""
        trt = self.trt
        cuda = self.device.type == "cuda"
        with _device_scope(self.device):
            caller = torch.cuda.current_stream(self.device) if cuda else None
            feeds, batch = {}, None
            for name in self.record.inputs:
                x = aligned(inputs[name].to(self.device, _torch_dtype(trt, self.engine.get_tensor_dtype(name))))
                batch = int(x.shape[0]) if batch is None else batch
                if not self.context.set_input_shape(name, tuple(x.shape)):
                    raise ConfigError(f"{self.plan_path.name}: input {name} of shape {tuple(x.shape)} is outside "
                                      f"what the engine accepts: {self._range_message(name)}")
                if not self.context.set_tensor_address(name, x.data_ptr()):
                    raise VLAnomalyError(f"{self.plan_path.name}: TensorRT refused the address of input {name}")
                feeds[name] = x                                  # keep alive until the stream is done
            outputs = {}
            for name in self.record.outputs:
                shape = tuple(self.context.get_tensor_shape(name))   # resolved for the input shapes just set
                if any(d < 0 for d in shape):
                    raise VLAnomalyError(f"{self.plan_path.name}: output {name} has unresolved shape {shape}")
                if self.record.output_shapes[name][0] < 0 and shape[0] != batch:
                    raise VLAnomalyError(f"{self.plan_path.name}: output {name} has batch {shape[0]} for an input "
                                         f"batch of {batch}")
                out = aligned(torch.empty(shape, device=self.device,
                                          dtype=_torch_dtype(trt, self.engine.get_tensor_dtype(name))))
                if not self.context.set_tensor_address(name, out.data_ptr()):
                    raise VLAnomalyError(f"{self.plan_path.name}: TensorRT refused the address of output {name}")
                outputs[name] = out
            self._enqueue(caller)
            if cuda:
                for tensor in (*feeds.values(), *outputs.values()):
                    tensor.record_stream(self.stream)            # not reused while the engine's stream uses them
            return {name: value.float() for name, value in outputs.items()}

    def _enqueue(self, caller) -> None:
        """Execute on the runner's own stream, after the work already queued on the ``caller``'s stream (the inputs)
        and before the caller's next work (which reads the outputs). ``caller`` None: no streams (stand-in tests)."""
        if caller is not None:
            self.stream.wait_stream(caller)
        if not self.context.execute_async_v3(self.stream.cuda_stream if caller is not None else 0):
            raise VLAnomalyError(f"TensorRT execution failed for {self.plan_path}")
        if caller is not None:
            caller.wait_stream(self.stream)
