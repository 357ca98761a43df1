"""The TensorRT runner's engine-cache decisions (load, build, forced rebuild) and the build announcement, run
against a stand-in ``tensorrt`` module: TensorRT cannot be installed here, so this checks our control flow, not
TensorRT (docs/deployment.md says what has not run)."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch

from vl_anomaly.deploy.records import ExportRecord
from vl_anomaly.errors import ConfigError


class _Engine:
    def __init__(self, record: ExportRecord) -> None:
        self.names = [*record.inputs, *record.outputs]
        self.shapes = {name: record.output_shapes.get(name, [1, 3, *record.input_size]) for name in self.names}
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_shape(self, name):
        return self.shapes[name]

    def create_execution_context(self):
        return object()


def _fake_tensorrt(record: ExportRecord, builds: list):
    """Just enough of the TensorRT 10 Python API for TensorRTRunner's constructor; counts engine builds."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    trt.BuilderFlag = types.SimpleNamespace(FP16=1)
    network = types.SimpleNamespace(num_inputs=0, get_input=None)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return _Engine(record) if data.startswith(b"fake-plan") else None

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return network

        def create_builder_config(self):
            return types.SimpleNamespace(set_memory_pool_limit=lambda *a: None, set_flag=lambda *a: None)

        def create_optimization_profile(self):
            return types.SimpleNamespace(set_shape=lambda *a: None)

        def build_serialized_network(self, network, config):
            builds.append(1)
            return b"fake-plan %d" % len(builds)

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            return True

    trt.Runtime, trt.Builder, trt.OnnxParser = Runtime, Builder, OnnxParser
    return trt


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not read by the fake parser")
    record = ExportRecord(model="m", weights="w", input_size=(64, 128), outputs=["logits"],
                          output_shapes={"logits": [1, 20, 64, 128]}, feature_stride=8, has_mask_queries=False,
                          opset=18, sha256="ab" * 32, max_abs_diff={}, torch_version=torch.__version__,
                          onnxruntime_version="", date="2026-12-02")
    record.save(onnx)
    builds: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(record, builds))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU 9000")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 9))
    return onnx, builds


def test_engine_is_built_once_announced_and_rebuilt_when_forced(fake_gpu, tmp_path, caplog):
    from vl_anomaly.deploy.tensorrt_runner import TensorRTRunner

    onnx, builds = fake_gpu
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="vl_anomaly"):
        first = TensorRTRunner(onnx, precision="fp16", cache_dir=cache)
    assert len(builds) == 1 and first.plan_path.read_bytes() == b"fake-plan 1"
    announced = [r.getMessage() for r in caplog.records if r.getMessage().startswith("building TensorRT engine")]
    assert len(announced) == 1 and "first start takes minutes" in announced[0] and first.plan_path.name in announced[0]
    assert "fake-gpu-9000.sm89.fp16.64x128" in first.plan_path.name

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vl_anomaly"):
        TensorRTRunner(onnx, precision="fp16", cache_dir=cache)                 # cached: loaded, not built
    assert len(builds) == 1 and not caplog.records

    with caplog.at_level(logging.WARNING, logger="vl_anomaly"):
        forced = TensorRTRunner(onnx, precision="fp16", cache_dir=cache, force_rebuild=True)
    assert len(builds) == 2 and forced.plan_path.read_bytes() == b"fake-plan 2"
    assert any("forced by force_engine_update" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match="cannot be combined"):
        TensorRTRunner(onnx, cache_dir=cache, engine_path=forced.plan_path, force_rebuild=True)


def test_force_engine_update_needs_the_tensorrt_backend():
    from vl_anomaly import create_predictor

    with pytest.raises(ConfigError, match="force_engine_update rebuilds a TensorRT engine; backend 'onnxruntime'"):
        create_predictor("espnetv2_s2.0_cityscapes", backend="onnxruntime", force_engine_update=True)
