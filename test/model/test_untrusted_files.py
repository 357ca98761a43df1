"""Every file a user hands us is untrusted: weights, VL head checkpoints, CLIP checkpoints, ONNX sidecars, fusion,
model and training YAMLs, bags. Each loader gets the same corpus — truncated, wrong type, wrong shapes, hostile
YAML tags, a pickle that would run code — and must answer with one of our errors naming the file, never run
anything and never leak a raw library exception. Pickle is only ever used for the registered legacy weights,
after their SHA-256 matched (test_weights.py)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from vl_anomaly import ConfigError, VLAnomalyError, WeightsError, create_model
from vl_anomaly.deploy import ExportError, ExportRecord
from vl_anomaly.fusion import FusionCfg
from vl_anomaly.registry import add_model_config

#: YAML that would run a command or build Python objects if loaded with an unsafe loader.
HOSTILE_YAML = [
    "weights: !!python/object/apply:os.system ['touch {marker}']\n",
    "!!python/object/new:subprocess.Popen [['touch', '{marker}']]\n",
    "family: !!python/name:os.system\n",
]


class _Exploit:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _no_code_ran(marker) -> None:
    assert not marker.exists(), "a hostile file ran code"


@pytest.fixture
def espnetv2_state():
    return create_model("espnetv2_s2.0_cityscapes", weights=None).state_dict()


def _safetensors_corpus(tmp_path, state) -> dict[str, object]:
    """name → path of a bad .safetensors file."""
    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(good))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 3])
    text = tmp_path / "text.safetensors"
    text.write_text("this is not a tensor file\n")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    shapes = tmp_path / "shapes.safetensors"
    bad = {k: v.contiguous() for k, v in state.items()}
    key = next(k for k, v in bad.items() if v.ndim == 4)
    bad[key] = torch.zeros(3, 3, 3, 3)
    save_file(bad, str(shapes))
    header = tmp_path / "header.safetensors"                   # a header length pointing far past the end
    header.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    return {"truncated": truncated, "text": text, "empty": empty, "shapes": shapes, "header": header}


def test_segmenter_weights(tmp_path, espnetv2_state):
    for kind, path in _safetensors_corpus(tmp_path, espnetv2_state).items():
        with pytest.raises(WeightsError, match=str(path.name)):
            create_model("espnetv2_s2.0_cityscapes", weights=path)
    wrong_type = tmp_path / "weights.txt"
    wrong_type.write_text("x")
    with pytest.raises(WeightsError, match="unsupported weights file"):
        create_model("espnetv2_s2.0_cityscapes", weights=wrong_type)


def test_a_pickle_that_runs_code_is_never_unpickled(tmp_path):
    """A .pth that is not the registered file is refused by its SHA-256 before anything is unpickled."""
    marker = tmp_path / "pwned"
    hostile = tmp_path / "espnetv2_s2.0_cityscapes_1024x512.pth"
    hostile.write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(WeightsError, match="sha256"):
        create_model("espnetv2_s2.0_cityscapes", weights=hostile)
    _no_code_ran(marker)


def test_vl_head_checkpoints(tmp_path, tiny_vl_model):
    model = create_model(tiny_vl_model, weights=None)
    head = {k: v for k, v in model.state_dict().items() if not k.startswith(("clip.", "segmenter."))}
    for kind, path in _safetensors_corpus(tmp_path, head).items():
        with pytest.raises(WeightsError, match=str(path.name)):
            create_model(tiny_vl_model, weights=path)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"not.a.head.key": torch.zeros(2)}, str(foreign))
    with pytest.raises(WeightsError, match="does not fit"):
        create_model(tiny_vl_model, weights=foreign)


def test_clip_checkpoints(tmp_path, tiny_vl_model, monkeypatch):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "clip.pt"
    hostile.write_bytes(pickle.dumps({"state_dict": _Exploit(str(marker))}))
    truncated = tmp_path / "clip_truncated.pt"
    buffer = tmp_path / "full.pt"
    torch.save({"visual.proj": torch.zeros(4, 4)}, buffer)
    truncated.write_bytes(buffer.read_bytes()[:100])
    not_dict = tmp_path / "clip_list.pt"
    torch.save([torch.zeros(2)], not_dict)
    for path in (hostile, truncated, not_dict, tmp_path / "missing.pt"):
        with pytest.raises(WeightsError, match=path.name):
            create_model(tiny_vl_model, weights="untrained", clip_weights=path)
    _no_code_ran(marker)


@pytest.mark.parametrize("text", HOSTILE_YAML + ["weights: [unclosed\n", "- a list\n- not a mapping\n",
                                                 "weights: {msp: high}\nnormalization: {}\n", ""])
def test_fusion_yaml(tmp_path, text):
    marker = tmp_path / "pwned"
    path = tmp_path / "fusion.yaml"
    path.write_text(text.replace("{marker}", str(marker)))
    with pytest.raises(ConfigError, match="fusion.yaml"):
        FusionCfg.load(path)
    _no_code_ran(marker)


@pytest.mark.parametrize("text", HOSTILE_YAML + ["family: [unclosed\n", "- not a mapping\n",
                                                 "family: espnetv2\narch: 3\n", "family: no_such_family\n", ""])
def test_model_config_yaml(tmp_path, text):
    marker = tmp_path / "pwned"
    path = tmp_path / "user_model.yaml"
    path.write_text(text.replace("{marker}", str(marker)))
    with pytest.raises(ConfigError, match="user_model.yaml"):
        add_model_config(path)
    _no_code_ran(marker)


@pytest.mark.parametrize("text", HOSTILE_YAML + ["model: [unclosed\n", "- not a mapping\n"])
def test_training_config_yaml(tmp_path, text):
    from vl_anomaly.train.trainer import TrainCfg

    marker = tmp_path / "pwned"
    path = tmp_path / "train.yaml"
    path.write_text(text.replace("{marker}", str(marker)))
    with pytest.raises(ConfigError, match="train.yaml"):
        TrainCfg.load(path)
    _no_code_ran(marker)


@pytest.mark.parametrize("content", ['{"kind": "segmenter"', "[1, 2, 3]", '{"model": "x"}', "",
                                     '{"model": "x", "input_size": 3}'])
def test_onnx_sidecars(tmp_path, content):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07")
    (tmp_path / "model.onnx.json").write_text(content)
    with pytest.raises(ExportError, match="model.onnx.json"):
        ExportRecord.load(onnx)


def test_onnx_sidecar_with_unknown_kind(tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07")
    record = dict(model="m", weights="w", input_size=[64, 128], outputs=[], output_shapes={}, feature_stride=0,
                  has_mask_queries=False, opset=18, sha256="0" * 64, max_abs_diff={}, torch_version="",
                  onnxruntime_version="", date="", kind="../../etc/passwd")
    (tmp_path / "model.onnx.json").write_text(json.dumps(record))
    with pytest.raises(ExportError, match="unknown kind"):
        ExportRecord.load(onnx)


def test_bags(tmp_path):
    from vl_anomaly_ros.bags import BagError, BagFile

    not_a_bag = tmp_path / "not_a_bag"
    not_a_bag.mkdir()
    (not_a_bag / "metadata.yaml").write_text(HOSTILE_YAML[0].replace("{marker}", str(tmp_path / "pwned")))
    (not_a_bag / "x.mcap").write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 40)
    a_file = tmp_path / "file.mcap"
    a_file.write_bytes(b"garbage")
    for path in (not_a_bag, a_file, tmp_path / "missing"):
        with pytest.raises(BagError, match=path.name):
            BagFile(path)
    _no_code_ran(tmp_path / "pwned")


def test_every_error_is_ours():
    """The loaders' errors are VLAnomalyError subclasses, so the CLI and the node report them as bad input."""
    for error in (WeightsError, ConfigError, ExportError):
        assert issubclass(error, VLAnomalyError)
