"""The TensorRT runner's logic against a stand-in ``tensorrt`` module that follows the TensorRT 10 Python API's
documented contracts (``set_input_shape`` / ``set_tensor_address`` return False on error, shapes resolve from the
inputs, ``get_tensor_profile_shape`` gives (min, opt, max), addresses must be 256-byte aligned,
``create_execution_context`` returns None when out of memory). TensorRT cannot be installed here and there is no
GPU: this checks our control flow and checks, not TensorRT (docs/deployment.md says what has not run). The
stand-in engine "computes" per-image channel means, written through the addresses it was given."""

from __future__ import annotations

import ctypes
import logging
import sys
import types

import numpy as np
import pytest
import torch

from vl_anomaly.deploy.records import ExportRecord
from vl_anomaly.errors import ConfigError, VLAnomalyError

DIM = 6                                                   # stand-in embedding size


def _read(address: int, shape) -> np.ndarray:
    count = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * count).from_address(address)).reshape(shape).copy()


class _Context:
    def __init__(self, engine: "_Engine") -> None:
        self.engine, self.shapes, self.addresses, self.executed = engine, {}, {}, 0

    def set_input_shape(self, name, shape):
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)
        if not all(lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
            return False                                  # TensorRT logs an error and returns False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        if name in self.engine.inputs:
            return self.shapes[name]
        batch = self.shapes[self.engine.inputs[0]][0] + self.engine.output_batch_error
        return (batch, DIM)

    def set_tensor_address(self, name, address):
        if address % 256:
            return False
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle):
        self.executed += 1
        name = self.engine.inputs[0]
        x = _read(self.addresses[name], self.shapes[name])
        means = x.mean(axis=(2, 3))                                            # (B, 3)
        out = np.tile(means, (1, DIM // 3)).astype(np.float32)
        ctypes.memmove(self.addresses["image_embeddings"], out.ctypes.data, out.nbytes)
        return True


class _Engine:
    def __init__(self, trt, record: ExportRecord, max_batch: int) -> None:
        self.trt, self.inputs, self.outputs = trt, list(record.inputs), list(record.outputs)
        self.max_batch, self.output_batch_error = max_batch, 0
        self.num_io_tensors = len(self.inputs) + len(self.outputs)
        self.size = tuple(record.input_size)

    def get_tensor_name(self, i):
        return (self.inputs + self.outputs)[i]

    def get_tensor_shape(self, name):
        return (-1, 3, *self.size) if name in self.inputs else (-1, DIM)

    def get_tensor_dtype(self, name):
        return self.trt.DataType.FLOAT

    def get_tensor_profile_shape(self, name, profile):
        return (1, 3, *self.size), (min(8, self.max_batch), 3, *self.size), (self.max_batch, 3, *self.size)

    def create_execution_context(self):
        return None if self.trt.out_of_memory else _Context(self)


def _fake_tensorrt(record: ExportRecord, version: str = "10.3.0", fp16_flag: bool = True):
    """Just enough of the TensorRT Python API for TensorRTRunner; ``builds`` counts engine builds, ``built_max``
    is the maximum batch the next build's profile gets (the record's, unless a test changes it)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.builds, trt.out_of_memory, trt.built_max = [], False, int(record.extras["max_batch"])
    trt.engines = []
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    trt.BuilderFlag = types.SimpleNamespace(**({"FP16": 1} if fp16_flag else {}))
    trt.DataType = types.SimpleNamespace(FLOAT=0, HALF=1, INT32=2, BOOL=3, INT8=4, **({"INT64": 5}
                                                                                       if version >= "10" else {}))
    network = types.SimpleNamespace(num_inputs=1, get_input=lambda i: types.SimpleNamespace(
        shape=(-1, 3, *record.input_size), name=record.inputs[0]))

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            if not data.startswith(b"plan max="):
                return None
            engine = _Engine(trt, record, int(data.split(b"=")[1].split(b" ")[0]))
            trt.engines.append(engine)
            return engine

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return network

        def create_builder_config(self):
            return types.SimpleNamespace(set_memory_pool_limit=lambda *a: None, set_flag=lambda *a: None,
                                         add_optimization_profile=lambda p: None)

        def create_optimization_profile(self):
            return types.SimpleNamespace(set_shape=lambda *a: None)

        def build_serialized_network(self, network, config):
            trt.builds.append(1)
            return b"plan max=%d build %d" % (trt.built_max, len(trt.builds))

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            return True

    trt.Runtime, trt.Builder, trt.OnnxParser = Runtime, Builder, OnnxParser
    return trt


@pytest.fixture
def clip_export(tmp_path):
    onnx = tmp_path / "clip.onnx"
    onnx.write_bytes(b"not read by the stand-in parser")
    record = ExportRecord(model="clip", weights="w", input_size=(32, 32), outputs=["image_embeddings"],
                          output_shapes={"image_embeddings": [-1, DIM]}, feature_stride=0, has_mask_queries=False,
                          opset=18, sha256="ab" * 32, max_abs_diff={}, torch_version=torch.__version__,
                          onnxruntime_version="", date="2026-12-02", kind="clip_image", inputs=["images"],
                          extras={"max_batch": 20})
    record.save(onnx)
    return onnx, record


@pytest.fixture
def fake_gpu(clip_export, monkeypatch):
    onnx, record = clip_export
    trt = _fake_tensorrt(record)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU 9000")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 9))
    return onnx, trt


def _runner(onnx, tmp_path, **kwargs):
    from vl_anomaly.deploy.tensorrt_runner import TensorRTRunner

    return TensorRTRunner(onnx, cache_dir=tmp_path / "cache", device="cpu", **kwargs)


def test_engine_is_built_once_announced_and_rebuilt_when_forced(fake_gpu, tmp_path, caplog):
    onnx, trt = fake_gpu
    with caplog.at_level(logging.WARNING, logger="vl_anomaly"):
        first = _runner(onnx, tmp_path, precision="fp16")
    assert len(trt.builds) == 1
    announced = [r.getMessage() for r in caplog.records if r.getMessage().startswith("building TensorRT engine")]
    assert len(announced) == 1 and "first start takes minutes" in announced[0] and first.plan_path.name in announced[0]
    assert first.plan_path.name.endswith("fake-gpu-9000.sm89.fp16.32x32.b20.plan")      # max batch in the key
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vl_anomaly"):
        _runner(onnx, tmp_path, precision="fp16")                              # cached: loaded, not built
    assert len(trt.builds) == 1 and not caplog.records
    with caplog.at_level(logging.WARNING, logger="vl_anomaly"):
        _runner(onnx, tmp_path, precision="fp16", force_rebuild=True)
    assert len(trt.builds) == 2 and any("forced by force_engine_update" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match="cannot be combined"):
        _runner(onnx, tmp_path, engine_path=first.plan_path, force_rebuild=True)


def test_an_engine_with_another_profile_is_a_cache_miss(fake_gpu, tmp_path):
    """Defect 6: an engine whose profile stops at another max batch (another max_crops) is rebuilt, not reused."""
    onnx, trt = fake_gpu
    trt.built_max = 8                                           # a build that ignored the record's maximum
    with pytest.raises(ConfigError, match="does not match the ONNX export"):
        _runner(onnx, tmp_path, precision="fp32")               # built, then refused: profile max 8 ≠ 20
    trt.built_max = 20
    runner = _runner(onnx, tmp_path, precision="fp32")          # the stale plan is a miss: rebuilt
    assert len(trt.builds) == 2 and runner.profile["images"] == ((1, 3, 32, 32), (20, 3, 32, 32))


def test_run_checks_shapes_addresses_and_batches(fake_gpu, tmp_path):
    """Defects 2 and 9: a batch outside the profile raises with the profile's range; an output batch that differs
    from the input's raises; an unaligned view (a chunk of crops) is copied to an aligned buffer, so TensorRT's
    256-byte rule holds and the numbers are right."""
    onnx, trt = fake_gpu
    runner = _runner(onnx, tmp_path, precision="fp32")
    crops = torch.rand(21, 3, 32, 32)
    with pytest.raises(ConfigError, match=r"shape \(21, 3, 32, 32\) is outside .*\(1, 3, 32, 32\) … \(20, 3, 32, 32\)"):
        runner.run({"images": crops})
    flat = torch.rand(21 * 3 * 32 * 32 + 1)
    chunk = flat[1:].view(21, 3, 32, 32)[3:8]                   # a view starting 4 bytes past an aligned block
    assert chunk.data_ptr() % 256 != 0
    out = runner.run({"images": chunk})["image_embeddings"]
    expected = chunk.mean(dim=(2, 3)).repeat(1, DIM // 3)
    torch.testing.assert_close(out, expected)
    trt.engines[-1].output_batch_error = -1                     # an engine answering fewer rows than crops
    with pytest.raises(VLAnomalyError, match="output image_embeddings has batch 4 for an input batch of 5"):
        runner.run({"images": chunk})


def test_exported_clip_images_refuses_fewer_embeddings_than_crops(clip_export):
    from vl_anomaly.deploy.adapters import ExportedClipImages
    from vl_anomaly.deploy.records import ExportError

    _, record = clip_export

    class Short:
        path, record_ = clip_export[0], record

        def run(self, inputs):
            return {"image_embeddings": torch.zeros(inputs["images"].shape[0] - 1, DIM)}

    short = Short()
    short.record = record
    with pytest.raises(ExportError, match="returned 2 embeddings for 3 crops"):
        ExportedClipImages(short).encode_images(torch.zeros(3, 3, 32, 32))


def test_engine_stream_is_ordered_with_the_caller():
    """Defect 1: the engine runs on its own stream, which waits for the caller's stream; the caller's stream then
    waits for the engine's (checked on recording stand-ins: streams are no-ops on the CPU)."""
    from vl_anomaly.deploy.tensorrt_runner import TensorRTRunner

    calls = []

    class Stream:
        def __init__(self, name):
            self.name, self.cuda_stream = name, id(self)

        def wait_stream(self, other):
            calls.append(f"{self.name} waits {other.name}")

    class Context:
        def execute_async_v3(self, handle):
            calls.append("execute on engine" if handle == engine.cuda_stream else "execute elsewhere")
            return True

    caller, engine = Stream("caller"), Stream("engine")
    TensorRTRunner._enqueue(types.SimpleNamespace(context=Context(), stream=engine, plan_path="x"), caller)
    assert calls == ["engine waits caller", "execute on engine", "caller waits engine"]


@pytest.mark.parametrize("version, precision, flag, match", [
    ("8.6.1", "fp32", True, "TensorRT 8.6.1 is not supported: .*JetPack 5"),
    ("11.1.0", "fp16", False, "no BuilderFlag.FP16 .*use precision 'fp32'"),
    ("12.0.0", "fp32", False, "newer than this backend supports"),
])
def test_unsupported_tensorrt_versions_are_refused(version, precision, flag, match):
    """Defect 3."""
    from vl_anomaly.deploy.tensorrt_runner import check_tensorrt_version

    with pytest.raises(ConfigError, match=match):
        check_tensorrt_version(version, precision, flag)
    check_tensorrt_version("10.3.0", "fp16", True)
    check_tensorrt_version("11.1.0", "fp32", False)


def test_out_of_memory_context_and_device_choice(fake_gpu, tmp_path, monkeypatch):
    """Defect 10: the engine is loaded under the runner's device (cuda:1 stays cuda:1); a None execution context
    (out of memory) is an error that says so."""
    from vl_anomaly.deploy import tensorrt_runner

    onnx, trt = fake_gpu
    scopes = []
    monkeypatch.setattr(tensorrt_runner, "_device_scope", lambda device: scopes.append(str(device))
                        or __import__("contextlib").nullcontext())
    _runner(onnx, tmp_path, precision="fp32")
    assert scopes == ["cpu"]
    trt.out_of_memory = True
    with pytest.raises(ConfigError, match="could not create an execution context .*out of GPU memory"):
        _runner(onnx, tmp_path, precision="fp32")


def test_force_engine_update_needs_the_tensorrt_backend():
    from vl_anomaly import create_predictor

    with pytest.raises(ConfigError, match="force_engine_update rebuilds a TensorRT engine; backend 'onnxruntime'"):
        create_predictor("espnetv2_s2.0_cityscapes", backend="onnxruntime", force_engine_update=True)


def test_offline_clip_hub_fails_at_once(monkeypatch):
    """Defect 11: without a model hub and without the weights in the local cache, CLIP creation fails in about a
    second with the usual advice, instead of after the hub client's retries (~50 s)."""
    import socket
    import time

    from vl_anomaly.errors import WeightsError
    from vl_anomaly.networks.clip_towers import FrozenCLIP

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    start = time.monotonic()
    with pytest.raises(WeightsError, match="model hub .* is not reachable .*pass a local checkpoint file"):
        FrozenCLIP.create("ViT-B-16-quickgelu", "openai")
    assert time.monotonic() - start < 10.0
