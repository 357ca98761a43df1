"""Weights: strict loading of the shared state dicts, hash verification, safetensors cache, clear errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from vl_anomaly import WeightsError, create_model
from vl_anomaly.cpu import (count_subnormal, disable_flush_to_zero, enable_flush_to_zero, flush_subnormals_,
                            flush_to_zero, subnormal_mask)
from vl_anomaly.networks import DiCENet, ESPNet, ESPNetv2
from vl_anomaly.pretrained import (cache_path, find_weight_file, get_pretrained_cfg, load_registered_state_dict,
                                  sha256_file)

CASES = [("espnet_p2_q8_cityscapes", ESPNet), ("espnetv2_s2.0_cityscapes", ESPNetv2),
         ("espnetv2_s1.5_cityscapes", lambda: ESPNetv2(scale=1.5)), ("espnetv2_s1.0_cityscapes", lambda: ESPNetv2(scale=1.0)),
         ("dicenet_s1.75_cityscapes", DiCENet)]


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
    for key, value in original.items():            # bit for bit, except subnormal parameters: zeroed (issue 14)
        mask = subnormal_mask(value)
        if mask is None:
            assert torch.equal(own[key], value), key
            continue
        assert count_subnormal(own[key]) == 0, key
        expected = value.view(torch.int32).masked_fill(mask, 0)
        assert torch.equal(own[key].view(torch.int32), expected), key
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
    flush_subnormals_(original)                                   # as every load does (vl_anomaly.cpu)
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


def test_subnormals_are_found_by_their_bits_and_zeroed():
    """Hand-made bit patterns (built as integers: with flush-to-zero on, converting a Python float would already
    flush it): the smallest normal float32 stays, subnormals become 0, also with DAZ on (which makes the CPU read
    subnormals as zero, so comparisons could not find them)."""
    with flush_to_zero():                               # DAZ on: the bit tests must still find them
        f32 = torch.tensor([0, 0x00800000, -0x7F800000, 0x00400000, 0x00000001, -0x7FFFFFFF, 0x3F800000,
                            0x7F800000, 0x7FC00000], dtype=torch.int32).view(torch.float32)
        # 0, tiny, -tiny, tiny/2, smallest subnormal, its negative, 1.0, inf, nan
        assert count_subnormal(f32) == 3
        f16 = torch.tensor([0x0001, 0x0400, 0x3C00], dtype=torch.int16).view(torch.float16)   # subnormal, tiny, 1.0
        assert count_subnormal(f16) == 1
        state = {"w": f32.clone(), "h": f16.clone(), "steps": torch.tensor([3])}
        assert flush_subnormals_(state) == 4
        expected = torch.tensor([0, 0x00800000, -0x7F800000, 0, 0, 0, 0x3F800000, 0x7F800000, 0x7FC00000],
                                dtype=torch.int32)
        assert torch.equal(state["w"].view(torch.int32), expected)
        assert state["h"].view(torch.int16).tolist() == [0, 0x0400, 0x3C00]
        assert torch.equal(state["steps"], torch.tensor([3]))


def test_espnet_loads_without_subnormal_parameters():
    """The published ESPNet checkpoint has 18 302 subnormal parameters (slow on many Intel CPUs); the loaded
    model has none, and its logits on a real frame are unchanged (a change below 1.2e-38 cannot move them)."""
    record = get_pretrained_cfg("espnet_p2_q8_cityscapes")
    published = load_registered_state_dict("espnet_p2_q8_cityscapes")
    assert sum(count_subnormal(v) for v in published.values()) == 18302
    model = create_model("espnet_p2_q8_cityscapes")
    assert sum(count_subnormal(v) for v in model.state_dict().values()) == 0
    assert record.sha256 == sha256_file(find_weight_file(record)[0])


def test_flush_to_zero_reaches_the_workers_and_stays_out_of_numpy():
    """``set_threads`` creates the thread's OpenMP workers with FTZ/DAZ on, so inside :func:`flush_to_zero` *every*
    worker flushes subnormal results (``torch.set_flush_denormal`` after the workers exist covers only the calling
    thread: half of a 2-thread multiply was measured flushed then). Outside the block the calling thread computes
    IEEE subnormals again — NumPy (the metrics) must not see the flags. Checked on a fresh thread, as the node's
    model thread runs."""
    import threading

    import numpy as np

    from vl_anomaly.cpu import set_threads

    result = {}

    def run():
        if not enable_flush_to_zero():
            result["skip"] = True
            return
        disable_flush_to_zero()
        set_threads(2)
        a = torch.full((4_000_000,), 1e-20)
        with flush_to_zero():
            result["flushed"] = float(((a * a) == 0).float().mean())   # 1e-40 is subnormal: 0 where flushed
        result["numpy_after"] = float(np.float32(1e-20) * np.float32(1e-20))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if result.get("skip"):
        pytest.skip("this CPU has no flush-to-zero control")
    assert result["flushed"] == 1.0
    assert result["numpy_after"] > 0.0                                 # a subnormal, kept


def test_prediction_leaves_the_calling_thread_ieee(espnetv2_predictor, road_obstacle_image):
    """A forward flushes subnormals only inside the call: NumPy work afterwards on the same thread (metrics,
    post-processing) computes IEEE subnormals."""
    import numpy as np

    espnetv2_predictor.predict(road_obstacle_image)
    assert float(np.float32(1e-20) * np.float32(1e-20)) > 0.0
