"""Input validation, image files and the published pre-processing."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from vl_anomaly import InvalidImageError, get_preprocess_cfg, read_image, validate_image
from vl_anomaly.preprocess import PreprocessCfg, preprocess
from vl_anomaly.errors import ConfigError


@pytest.mark.parametrize("image,match", [
    (np.zeros((64, 64), np.uint8), "grayscale"),
    (np.zeros((64, 64, 1), np.uint8), "grayscale"),
    (np.zeros((64, 64, 4), np.uint8), "4-channel"),
    (np.zeros((64, 64, 3), np.uint16), "16-bit"),
    (np.zeros((0, 64, 3), np.uint8), "empty"),
    (np.zeros((8, 64, 3), np.uint8), "too small"),
    (np.zeros((4, 64, 64, 3), np.uint8), "3 dimensions"),
    (np.zeros((64, 64, 2), np.uint8), "3 colour channels"),
    (np.zeros((64, 64, 3), np.int32), "unsupported dtype"),
    (np.full((64, 64, 3), 2.0, np.float32), r"\[0, 1\]"),
    ([[1, 2, 3]], "numpy array"),
])
def test_bad_arrays_rejected_with_reason(image, match):
    with pytest.raises(InvalidImageError, match=match) as info:
        validate_image(image)
    assert "accepted" in str(info.value) or "px" in str(info.value)


def test_nan_array_rejected():
    image = np.random.rand(64, 64, 3).astype(np.float32)
    image[3, 4, 1] = np.nan
    image[5, 5, 0] = np.inf
    with pytest.raises(InvalidImageError, match="2 NaN/Inf"):
        validate_image(image)


def test_float_image_in_unit_range_is_converted():
    image = np.random.default_rng(0).random((32, 48, 3))
    out = validate_image(image)
    assert out.dtype == np.uint8 and out.shape == (32, 48, 3)
    assert np.array_equal(out, np.rint(image * 255).astype(np.uint8))


@pytest.fixture
def sample_files(tmp_path, road_obstacle_image):
    small = np.ascontiguousarray(road_obstacle_image[:240, :320])
    bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    files = {}
    for ext in ("jpg", "png", "webp"):
        path = tmp_path / f"ok.{ext}"
        cv2.imwrite(str(path), bgr)
        files[ext] = path
    return files, small


def test_files_round_trip_rgb(sample_files):
    files, small = sample_files
    assert np.array_equal(read_image(files["png"]), small)     # lossless: exact and RGB order
    assert np.abs(read_image(files["jpg"]).astype(int) - small).mean() < 8


@pytest.mark.parametrize("ext", ["jpg", "png", "webp"])
def test_truncated_files_rejected(sample_files, tmp_path, ext):
    files, _ = sample_files
    data = files[ext].read_bytes()
    broken = tmp_path / f"broken.{ext}"
    broken.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InvalidImageError, match="truncated|could not decode"):
        read_image(broken)


def test_empty_missing_and_garbage_files(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InvalidImageError, match="empty file"):
        read_image(empty)
    with pytest.raises(InvalidImageError, match="no such file"):
        read_image(tmp_path / "missing.png")
    garbage = tmp_path / "garbage.bmp"
    garbage.write_bytes(b"definitely not an image" * 10)
    with pytest.raises(InvalidImageError, match="could not decode"):
        read_image(garbage)


@pytest.mark.parametrize("array,match", [
    (np.zeros((64, 64), np.uint8), "grayscale"),
    (np.zeros((64, 64, 4), np.uint8), "4-channel"),
    (np.zeros((64, 64, 3), np.uint16), "16-bit"),
])
def test_unsupported_image_files_name_the_file(tmp_path, array, match):
    path = tmp_path / "input.png"
    cv2.imwrite(str(path), array)
    with pytest.raises(InvalidImageError, match=match) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_espnet_preprocessing_matches_published_opencv_pipeline(road_obstacle_image):
    """ESPNet's release: BGR float, (x − mean) / std, cv2.resize to 1024×512, / 255."""
    cfg = get_preprocess_cfg("espnet_p2_q8_cityscapes")
    ours = preprocess(road_obstacle_image, cfg)[0].permute(1, 2, 0).numpy()
    bgr = cv2.cvtColor(road_obstacle_image, cv2.COLOR_RGB2BGR).astype(np.float32)
    bgr = (bgr - np.array(cfg.mean, np.float32)) / np.array(cfg.std, np.float32)
    reference = cv2.resize(bgr, (1024, 512), interpolation=cv2.INTER_LINEAR) / 255
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() < 1e-4


def test_espnetv2_preprocessing_is_imagenet_normalised_rgb(road_obstacle_image):
    cfg = get_preprocess_cfg("espnetv2_s2.0_cityscapes")
    x = preprocess(road_obstacle_image, cfg)
    assert x.shape == (1, 3, 512, 1024) and x.dtype == torch.float32
    # mean colour of a flat region survives the antialiased resize; check against the formula
    ref = (road_obstacle_image.reshape(-1, 3).mean(0) / 255 - np.array([0.485, 0.456, 0.406])) / \
        np.array([0.229, 0.224, 0.225])
    assert np.allclose(x[0].mean(dim=(1, 2)).numpy(), ref, atol=0.02)


def test_preprocess_cfg_validation():
    with pytest.raises(ConfigError, match="multiples of 32"):
        PreprocessCfg(input_size=(500, 1000))
    with pytest.raises(ConfigError, match="channel_order"):
        PreprocessCfg(channel_order="yuv")
    assert get_preprocess_cfg("espnetv2_s2.0_cityscapes", (256, 512)).input_size == (256, 512)
