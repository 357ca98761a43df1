"""Image ↔ array conversions (our converter, cv_bridge semantics) and the obstacle message, without transport."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

import ros_harness  # noqa: F401  (environment before rclpy)
from vl_anomaly.postprocess import Obstacle
from vl_anomaly_ros import conversions as C

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(7, 11, 3), dtype=np.uint8)     # odd sizes: no accidental alignment


def _msg(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: int = 0) -> Image:
    """An Image with ``pad`` bytes of garbage after each row (as from drivers with aligned rows)."""
    rows = pixels.reshape(pixels.shape[0], -1)
    padded = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    return Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding, is_bigendian=bigendian,
                 step=padded.shape[1], data=padded.tobytes())


# Each accepted encoding: how a camera lays out RGB, and what RGB comes back (cv2 as the reference converter).
ENCODED = {
    "rgb8": (RGB, RGB),
    "bgr8": (cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR), RGB),
    "rgba8": (cv2.cvtColor(RGB, cv2.COLOR_RGB2RGBA), RGB),
    "bgra8": (cv2.cvtColor(RGB, cv2.COLOR_RGB2BGRA), RGB),
    "mono8": (RGB[..., 0].copy(), np.repeat(RGB[..., :1], 3, axis=2)),
}


def test_converter_is_ours_here():
    assert not C.cv_bridge_in_use()       # cv_bridge is not installable from PyPI; our converter is under test


@pytest.mark.parametrize("encoding", list(ENCODED))
@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("bigendian", [0, 1])
def test_every_accepted_encoding(encoding, pad, bigendian):
    raw, expected = ENCODED[encoding]
    out = C.image_msg_to_rgb(_msg(raw, encoding, pad, bigendian))
    assert out.dtype == np.uint8 and out.shape == (7, 11, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("encoding, reason", [("32FC3", "encoding"), ("16UC1", "encoding"), ("yuv422", "encoding"),
                                              ("", "encoding")])
def test_rejected_encodings_name_the_accepted_ones(encoding, reason):
    msg = Image(height=2, width=2, encoding=encoding, step=24, data=bytes(48))
    with pytest.raises(C.RejectedFrame) as err:
        C.image_msg_to_rgb(msg)
    assert err.value.reason == reason
    assert "rgb8, bgr8, rgba8, bgra8, mono8" in str(err.value) and repr(encoding) in str(err.value)


def test_nan_float_image_is_rejected_by_encoding():
    pixels = np.full((4, 4, 3), np.nan, np.float32)
    msg = Image(height=4, width=4, encoding="32FC3", step=48, data=pixels.tobytes())
    with pytest.raises(C.RejectedFrame) as err:
        C.image_msg_to_rgb(msg)
    assert err.value.reason == "encoding"


@pytest.mark.parametrize("kwargs, reason", [
    (dict(height=0, width=4, step=12, data=b""), "empty"),
    (dict(height=4, width=0, step=0, data=b""), "empty"),
    (dict(height=4, width=4, step=11, data=bytes(48)), "step"),
    (dict(height=4, width=4, step=12, data=bytes(47)), "truncated"),
    (dict(height=100_000, width=100_000, step=300_000, data=bytes(16)), "too_large"),
])
def test_malformed_frames(kwargs, reason):
    with pytest.raises(C.RejectedFrame) as err:
        C.check_image_msg(Image(encoding="rgb8", **kwargs))
    assert err.value.reason == reason


def test_pixel_limit_is_a_parameter():
    msg = _msg(RGB, "rgb8")
    C.check_image_msg(msg, max_pixels=77)
    with pytest.raises(C.RejectedFrame, match="limit of 76 pixels"):
        C.check_image_msg(msg, max_pixels=76)


def test_compressed_round_trip_and_corrupt_bytes():
    ok, png = cv2.imencode(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(C.compressed_msg_to_rgb(CompressedImage(format="png", data=png.tobytes())), RGB)
    with pytest.raises(C.RejectedFrame) as err:
        C.compressed_msg_to_rgb(CompressedImage(format="jpeg", data=b"\xff\xd8 not a jpeg"))
    assert err.value.reason == "decode" and "jpeg" in str(err.value)
    with pytest.raises(C.RejectedFrame) as err:
        C.compressed_msg_to_rgb(CompressedImage(format="jpeg", data=b""))
    assert err.value.reason == "empty"


@pytest.mark.parametrize("encoding, array", [
    ("32FC1", RNG.standard_normal((5, 9)).astype(np.float32)),
    ("mono8", RNG.integers(0, 256, (5, 9), dtype=np.uint8)),
    ("bgr8", RNG.integers(0, 256, (5, 9, 3), dtype=np.uint8)),
])
def test_output_round_trip_bit_exact_with_header(encoding, array):
    from std_msgs.msg import Header

    header = Header(frame_id="camera_optical")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = C.array_to_image_msg(array, encoding, header)
    assert (msg.encoding, msg.height, msg.width, msg.is_bigendian) == (encoding, 5, 9, 0)
    assert msg.step == array.strides[0] and msg.header.frame_id == "camera_optical" and msg.header.stamp.nanosec == 345
    np.testing.assert_array_equal(C.image_msg_to_array(msg), array)


def test_reading_big_endian_float_output():
    values = np.array([[1.5, -2.25]], dtype=">f4")
    msg = Image(height=1, width=2, encoding="32FC1", is_bigendian=1, step=8, data=values.tobytes())
    np.testing.assert_array_equal(C.image_msg_to_array(msg), [[1.5, -2.25]])


def test_output_shape_errors():
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        C.array_to_image_msg(np.zeros((4, 4), np.uint8), "bgr8")
    with pytest.raises(ValueError, match="supported"):
        C.array_to_image_msg(np.zeros((4, 4), np.uint8), "16UC1")


def test_obstacle_array_message():
    from std_msgs.msg import Header

    obstacles = [Obstacle(id=1, bbox=(10, 20, 30, 40), area_px=900, centroid=(24.5, 39.5), mean_score=0.7,
                          max_score=0.95),
                 Obstacle(id=2, bbox=(0, 0, 5, 5), area_px=25, centroid=(2.0, 2.0), mean_score=0.6, max_score=0.8)]
    msg = C.obstacle_array_msg(obstacles, Header(frame_id="cam"), "msp", 0.5, [(1.0, 2.0, 2.0), None])
    assert msg.header.frame_id == "cam" and msg.score == "msp" and msg.threshold == 0.5
    first, second = msg.obstacles
    assert (first.id, first.x, first.y, first.width, first.height, first.area_px) == (1, 10, 20, 30, 40, 900)
    assert first.has_ground_position and first.distance_m == pytest.approx(3.0)
    assert (first.ground_position.x, first.ground_position.z) == (1.0, 2.0)
    assert not second.has_ground_position and np.isnan(second.distance_m)


# rosbags-image (PyPI; cv_bridge's conversions for rosbags users) as a reference no one here wrote. It ignores
# ``step`` (it reads rows as packed), so it is compared on packed rows; padding is covered above against cv2.
@pytest.mark.parametrize("encoding", list(ENCODED))
@pytest.mark.parametrize("bigendian", [0, 1])
def test_input_conversion_equals_rosbags_image(encoding, bigendian):
    from rosbags.image import image_to_cvimage

    raw, _ = ENCODED[encoding]
    msg = _msg(raw, encoding, 0, bigendian)
    np.testing.assert_array_equal(C.image_msg_to_rgb(msg), image_to_cvimage(msg, "rgb8"))


@pytest.mark.parametrize("fmt, pixels", [("png", RGB), ("jpeg", RGB), ("png", RGB[..., 0].copy())])
def test_compressed_input_equals_rosbags_image(fmt, pixels):
    from rosbags.image import compressed_image_to_cvimage

    image = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png" if fmt == "png" else ".jpg", image)
    msg = CompressedImage(format=fmt, data=data.tobytes())
    np.testing.assert_array_equal(C.compressed_msg_to_rgb(msg), compressed_image_to_cvimage(msg, "rgb8"))


@pytest.mark.parametrize("encoding, array", [
    ("32FC1", RNG.random((7, 11), dtype=np.float32)), ("mono8", RGB[..., 1].copy()), ("bgr8", RGB), ("rgb8", RGB)])
def test_published_images_read_back_equal_with_rosbags_image(encoding, array):
    """What the node publishes, as a consumer using rosbags-image reads it (score map floats bit for bit)."""
    from rosbags.image import image_to_cvimage

    msg = C.array_to_image_msg(array, encoding)
    theirs = image_to_cvimage(msg)
    assert theirs.dtype == array.dtype and theirs.shape == array.shape
    np.testing.assert_array_equal(theirs, array)
    np.testing.assert_array_equal(C.image_msg_to_array(msg), theirs)


def test_big_endian_score_map_reads_like_rosbags_image():
    from rosbags.image import image_to_cvimage

    scores = RNG.random((5, 9), dtype=np.float32)
    msg = Image(height=5, width=9, encoding="32FC1", is_bigendian=1, step=36, data=scores.astype(">f4").tobytes())
    np.testing.assert_array_equal(C.image_msg_to_array(msg), image_to_cvimage(msg))
    np.testing.assert_array_equal(C.image_msg_to_array(msg), scores)
