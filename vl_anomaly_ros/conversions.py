"""``sensor_msgs/Image`` ↔ numpy, with the semantics of cv_bridge (encodings, row step/padding, endianness).

Pure functions over message objects: no node, no executor. Every rejected input raises :class:`RejectedFrame`
with a short ``reason`` code (counted by the node's diagnostics) and a message saying what was wrong and what is
accepted. Validation is always ours; the pixel conversion uses cv_bridge where it is installed (a real ROS
install) and otherwise our own numpy converter with the same semantics (tested on every accepted encoding).
Set ``VL_ANOMALY_NO_CV_BRIDGE=1`` to force our converter (e.g. around cv_bridge's NumPy-2 problems,
vision_opencv #535).
"""

from __future__ import annotations

import os

import numpy as np


def _load_bridge():
    if os.environ.get("VL_ANOMALY_NO_CV_BRIDGE"):
        return None
    try:
        from cv_bridge import CvBridge
    except Exception:   # not installed (PyPI-only set-ups) or broken against this NumPy
        return None
    return CvBridge()


_BRIDGE = _load_bridge()


def cv_bridge_in_use() -> bool:
    """True when pixel conversions go through cv_bridge."""
    return _BRIDGE is not None

#: encoding → (channels, channel order) accepted for camera input.
INPUT_ENCODINGS: dict[str, tuple[int, str]] = {
    "rgb8": (3, "rgb"), "bgr8": (3, "bgr"), "rgba8": (4, "rgba"), "bgra8": (4, "bgra"), "mono8": (1, "mono"),
}
#: encodings we publish: encoding → (channels, numpy dtype).
OUTPUT_ENCODINGS: dict[str, tuple[int, np.dtype]] = {
    "32FC1": (1, np.dtype(np.float32)), "mono8": (1, np.dtype(np.uint8)), "bgr8": (3, np.dtype(np.uint8)),
    "rgb8": (3, np.dtype(np.uint8)),
}
#: default cap on input pixels (8K UHD, 7680 × 4320); parameter ``max_input_pixels``.
MAX_PIXELS = 7680 * 4320


class RejectedFrame(ValueError):
    """An input frame the node cannot process. ``reason`` is a short code for counters."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def stamp_ns(msg) -> int:
    """Header stamp of a message (rclpy or rosbags) in nanoseconds."""
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def check_image_msg(msg, max_pixels: int = MAX_PIXELS) -> None:
    """Validate an input ``sensor_msgs/Image`` without touching its pixels (cheap: header fields and length).

    Raises :class:`RejectedFrame` with reason ``encoding`` (not one of :data:`INPUT_ENCODINGS`; float images
    such as ``32FC3`` land here, NaN or not), ``empty`` (zero width or height), ``too_large`` (more than
    ``max_pixels`` pixels), ``step`` (row step shorter than ``width × channels``) or ``truncated`` (fewer than
    ``step × height`` bytes).
    """
    encoding = msg.encoding
    if encoding not in INPUT_ENCODINGS:
        raise RejectedFrame("encoding", f"image encoding {encoding!r} is not accepted; accepted: "
                                        f"{', '.join(INPUT_ENCODINGS)}")
    channels, _ = INPUT_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise RejectedFrame("empty", f"image has zero size ({width}x{height}); accepted: width and height ≥ 1")
    if height * width > max_pixels:
        raise RejectedFrame("too_large", f"image of {width}x{height} px exceeds the limit of {max_pixels} pixels "
                                         "(parameter max_input_pixels)")
    row = width * channels
    if step < row:
        raise RejectedFrame("step", f"step {step} is smaller than width × channels = {row} bytes for {encoding} "
                                    f"{width}x{height}; accepted: step ≥ {row}")
    if len(msg.data) < step * height:
        raise RejectedFrame("truncated", f"image data has {len(msg.data)} bytes; {encoding} {width}x{height} with "
                                         f"step {step} needs {step * height}")


def image_msg_to_rgb(msg, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """``sensor_msgs/Image`` → ``(H, W, 3)`` RGB uint8 (a copy), after :func:`check_image_msg`.

    Accepted encodings: rgb8, bgr8, rgba8, bgra8 (alpha dropped), mono8 (replicated to 3 channels). Row padding
    (``step > width · channels``) is honoured; ``is_bigendian`` is irrelevant for 8-bit channels.
    """
    check_image_msg(msg, max_pixels)
    channels, order = INPUT_ENCODINGS[msg.encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if _BRIDGE is not None:
        return np.ascontiguousarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
    buffer = np.frombuffer(msg.data, dtype=np.uint8)       # no copy for bytes / array.array
    pixels = buffer[: step * height].reshape(height, step)[:, : width * channels].reshape(height, width, channels)
    if order == "rgb":
        return pixels.copy()
    import cv2                          # channel reordering: cv2 is ~10x faster than a strided numpy copy

    code = {"bgr": cv2.COLOR_BGR2RGB, "rgba": cv2.COLOR_RGBA2RGB, "bgra": cv2.COLOR_BGRA2RGB,
            "mono": cv2.COLOR_GRAY2RGB}[order]
    return cv2.cvtColor(pixels[..., 0] if order == "mono" else pixels, code)


def compressed_msg_to_rgb(msg) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (JPEG/PNG) → ``(H, W, 3)`` RGB uint8. Reasons: ``empty``, ``decode``."""
    import cv2

    data = bytes(msg.data)
    if not data:
        raise RejectedFrame("empty", "compressed image has no data; accepted: JPEG or PNG bytes")
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise RejectedFrame("decode", f"compressed image ({msg.format or 'no format'}, {len(data)} bytes) could "
                                      "not be decoded; accepted: JPEG or PNG data")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def array_to_image_msg(array: np.ndarray, encoding: str, header=None):
    """numpy → ``sensor_msgs/Image`` with ``header`` copied (stamp and frame_id), little-endian, no padding.

    ``32FC1``: ``(H, W)`` float32; ``mono8``: ``(H, W)`` uint8; ``bgr8`` / ``rgb8``: ``(H, W, 3)`` uint8.
    """
    from sensor_msgs.msg import Image

    if encoding not in OUTPUT_ENCODINGS:
        raise ValueError(f"cannot publish encoding {encoding!r}; supported: {', '.join(OUTPUT_ENCODINGS)}")
    channels, dtype = OUTPUT_ENCODINGS[encoding]
    array = np.ascontiguousarray(array, dtype=dtype)
    expected_ndim = 2 if channels == 1 else 3
    if array.ndim != expected_ndim or (channels > 1 and array.shape[2] != channels):
        raise ValueError(f"{encoding} needs an array of {'(H, W)' if channels == 1 else f'(H, W, {channels})'}, "
                         f"got {array.shape}")
    if _BRIDGE is not None:
        msg = _BRIDGE.cv2_to_imgmsg(array, encoding=encoding)
        if header is not None:
            msg.header = header
        return msg
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(array.strides[0])
    msg.data = array.tobytes()
    return msg


def image_msg_to_array(msg) -> np.ndarray:
    """A ``sensor_msgs/Image`` of an output encoding (rclpy message, or rosbags' deserialised one) → numpy,
    honouring step and endianness; the inverse of :func:`array_to_image_msg` and the one decoder of published and
    recorded images: 32FC1 → float32 ``(H, W)``, mono8 → uint8 ``(H, W)``, rgb8/bgr8 → ``(H, W, 3)`` (channel order
    unchanged). Camera input goes through :func:`image_msg_to_rgb` (more encodings, validation, RGB out)."""
    if msg.encoding not in OUTPUT_ENCODINGS:
        raise ValueError(f"image encoding {msg.encoding!r} is not one of {', '.join(OUTPUT_ENCODINGS)}")
    channels, dtype = OUTPUT_ENCODINGS[msg.encoding]
    dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    itemsize = dtype.itemsize
    rows = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step)
    pixels = rows[:, : msg.width * channels * itemsize].copy().view(dtype)
    shape = (msg.height, msg.width) if channels == 1 else (msg.height, msg.width, channels)
    return pixels.reshape(shape).astype(dtype.newbyteorder("="))


def obstacle_array_msg(obstacles, header, score: str, threshold: float, ground_positions=None):
    """Obstacles of one frame → ``vl_anomaly_msgs/ObstacleArray`` with ``header`` copied.

    Args:
        obstacles: :class:`vl_anomaly.postprocess.Obstacle` list (pixels of the input image).
        header: the input image's ``std_msgs/Header``.
        score, threshold: score name and threshold used for the mask.
        ground_positions: optional list (one per obstacle) of ``(x, y, z)`` metres in the header's frame, or
            None entries where the flat-ground model has no solution.
    """
    from geometry_msgs.msg import Point
    from vl_anomaly_msgs.msg import Obstacle as ObstacleMsg, ObstacleArray

    out = ObstacleArray(header=header, score=score, threshold=float(threshold))
    for index, obstacle in enumerate(obstacles):
        x, y, w, h = obstacle.bbox
        msg = ObstacleMsg(id=int(obstacle.id), x=int(x), y=int(y), width=int(w), height=int(h),
                          area_px=int(obstacle.area_px), centroid_x=float(obstacle.centroid[0]),
                          centroid_y=float(obstacle.centroid[1]), mean_score=float(obstacle.mean_score),
                          max_score=float(obstacle.max_score), distance_m=float("nan"))
        position = ground_positions[index] if ground_positions is not None else None
        if position is not None:
            msg.has_ground_position = True
            msg.ground_position = Point(x=float(position[0]), y=float(position[1]), z=float(position[2]))
            msg.distance_m = float(np.linalg.norm(position))
        out.obstacles.append(msg)
    return out
