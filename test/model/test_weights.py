"""Weights: strict loading of the shared state dicts, hash verification, safetensors cache, clear errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from vl_anomaly import WeightsError, create_model
from vl_anomaly.networks import ESPNet, ESPNetv2
from vl_anomaly.pretrained import cache_path, get_pretrained_cfg, load_registered_state_dict, sha256_file

CASES = [("espnet_p2_q8_cityscapes", ESPNet), ("espnetv2_s2.0_cityscapes", ESPNetv2)]


@pytest.mark.parametrize("name,cls", CASES)
def test_original_state_dict_loads_strictly(name, cls, weights_dir):
    record = get_pretrained_cfg(name)
    state = torch.load(weights_dir / record.filename, map_location="cpu", weights_only=False)
    model = cls()
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # every tensor of the file landed in the model unchanged
    own = model.state_dict()
    for key, value in state.items():
        assert torch.equal(own[key], value), key


@pytest.mark.parametrize("name,cls", CASES)
def test_registered_hash_matches_file(name, cls, weights_dir):
    record = get_pretrained_cfg(name)
    assert sha256_file(weights_dir / record.filename) == record.sha256


@pytest.mark.parametrize("name,cls", CASES)
def test_create_model_default_uses_verified_cache(name, cls, weights_dir):
    record = get_pretrained_cfg(name)
    model = create_model(name)
    cached = cache_path(name, record.sha256)
    assert cached.is_file(), "first load must write the safetensors cache"
    original = torch.load(weights_dir / record.filename, map_location="cpu", weights_only=False)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in original.items())
    from_cache = load_registered_state_dict(name)
    assert set(from_cache) == set(original)


def _copy_weights(weights_dir, tmp_path, name):
    record = get_pretrained_cfg(name)
    target = tmp_path / record.filename
    shutil.copy(weights_dir / record.filename, target)
    target.chmod(0o644)
    return record, target


def test_wrong_hash_names_file_and_expected_hash(weights_dir, tmp_path):
    record, target = _copy_weights(weights_dir, tmp_path, "espnet_p2_q8_cityscapes")
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(WeightsError) as info:
        create_model("espnet_p2_q8_cityscapes", weights=target)
    message = str(info.value)
    assert str(target) in message and record.sha256 in message


def test_truncated_weights_rejected(weights_dir, tmp_path):
    record, target = _copy_weights(weights_dir, tmp_path, "espnetv2_s2.0_cityscapes")
    target.write_bytes(target.read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="truncated, corrupt") as info:
        create_model("espnetv2_s2.0_cityscapes", weights=target)
    assert record.sha256 in str(info.value) and "100000 bytes" in str(info.value)


def test_missing_weights_error_says_what_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("VL_ANOMALY_WEIGHTS_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("VL_ANOMALY_CACHE_DIR", str(tmp_path / "empty_cache"))
    record = get_pretrained_cfg("espnet_p2_q8_cityscapes")
    with pytest.raises(WeightsError) as info:
        create_model("espnet_p2_q8_cityscapes")
    message = str(info.value)
    assert record.filename in message and record.sha256 in message and "nowhere" in message


def test_weights_found_through_environment_variable(weights_dir, tmp_path, monkeypatch):
    _copy_weights(weights_dir, tmp_path, "espnetv2_s2.0_cityscapes")
    monkeypatch.setenv("VL_ANOMALY_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("VL_ANOMALY_CACHE_DIR", str(tmp_path / "cache"))
    create_model("espnetv2_s2.0_cityscapes")
    assert any((tmp_path / "cache" / "weights").glob("espnetv2_s2.0_cityscapes-*.safetensors"))


def test_cache_alone_serves_when_source_is_gone(weights_dir, tmp_path, monkeypatch):
    _copy_weights(weights_dir, tmp_path, "espnet_p2_q8_cityscapes")
    monkeypatch.setenv("VL_ANOMALY_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("VL_ANOMALY_CACHE_DIR", str(tmp_path / "cache"))
    first = create_model("espnet_p2_q8_cityscapes").state_dict()
    (tmp_path / "espnet_p2_q8_cityscapes.pth").unlink()
    second = create_model("espnet_p2_q8_cityscapes").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_corrupt_cache_is_rebuilt(weights_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("VL_ANOMALY_CACHE_DIR", str(tmp_path / "cache"))
    record = get_pretrained_cfg("espnet_p2_q8_cityscapes")
    create_model("espnet_p2_q8_cityscapes")
    cached = cache_path("espnet_p2_q8_cityscapes", record.sha256)
    cached.write_bytes(b"not a safetensors file")
    model = create_model("espnet_p2_q8_cityscapes")
    original = torch.load(weights_dir / record.filename, map_location="cpu", weights_only=False)
    assert torch.equal(model.state_dict()["classifier.weight"], original["classifier.weight"])
    assert cached.stat().st_size > 1000


def test_safetensors_round_trip_and_mismatch(tmp_path):
    from safetensors.torch import save_file

    model = create_model("espnetv2_s2.0_cityscapes")
    path = tmp_path / "finetuned.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    again = create_model("espnetv2_s2.0_cityscapes", weights=path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(WeightsError, match="do not fit the architecture"):
        create_model("espnet_p2_q8_cityscapes", weights=path)


def test_unknown_weights_suffix_rejected(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(WeightsError, match="unsupported weights file"):
        create_model("espnet_p2_q8_cityscapes", weights=path)
