"""Flat-ground model: where an obstacle touches the road, in metres, from one camera image.

Assumptions (documented in docs/ros.md): the ground is a plane; the camera sits ``camera_height_m`` above it
with zero roll and a downward pitch of ``camera_pitch_deg``; the image is undistorted (the pinhole matrix ``K`` of
``camera_info`` is used, distortion ignored); an obstacle touches the ground at the bottom centre of its bounding
box. Positions are in the camera's optical frame (the image header's frame: x right, y down, z forward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics of an image of ``width × height`` pixels (pixel centres at integer coordinates, as in ROS).

    Attributes: fx, fy, cx, cy in pixels; width, height of the image the intrinsics belong to.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_camera_info(cls, msg) -> "PinholeCamera | None":
        """From ``sensor_msgs/CameraInfo``; None when ``K`` is unset (all zeros) or the size is zero."""
        k = list(msg.k)
        if len(k) != 9 or k[0] <= 0 or k[4] <= 0 or msg.width == 0 or msg.height == 0:
            return None
        return cls(fx=k[0], fy=k[4], cx=k[2], cy=k[5], width=int(msg.width), height=int(msg.height))

    def fits(self, width: int, height: int, tolerance: float = 0.01) -> bool:
        """True when an image of ``width × height`` is this camera's image, possibly resized: same aspect ratio
        within ``tolerance`` (relative). Another aspect ratio means cropped or another camera's intrinsics."""
        return abs((width / height) / (self.width / self.height) - 1.0) <= tolerance

    def scaled_to(self, width: int, height: int) -> "PinholeCamera":
        """The same camera for an image resized to ``width × height`` (pixel-centre convention)."""
        sx, sy = width / self.width, height / self.height
        return PinholeCamera(fx=self.fx * sx, fy=self.fy * sy, cx=(self.cx + 0.5) * sx - 0.5,
                             cy=(self.cy + 0.5) * sy - 0.5, width=width, height=height)


def ground_point(camera: PinholeCamera, u: float, v: float, camera_height_m: float,
                 camera_pitch_deg: float = 0.0) -> tuple[float, float, float] | None:
    """Intersection of pixel ``(u, v)``'s viewing ray with the ground plane.

    Returns ``(x, y, z)`` metres in the optical frame, or None when the ray does not meet the ground in front of
    the camera (pixel at or above the horizon).
    """
    if camera_height_m <= 0:
        return None
    ray = np.array([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, 1.0])
    pitch = math.radians(camera_pitch_deg)
    # Level frame (x right, y down, z forward): y_level = y_cam·cos(pitch) + z_cam·sin(pitch); ground at y_level = h.
    down = ray[1] * math.cos(pitch) + ray[2] * math.sin(pitch)
    if down <= 1e-9:
        return None
    point = ray * (camera_height_m / down)
    return float(point[0]), float(point[1]), float(point[2])


def obstacle_ground_points(obstacles, camera: PinholeCamera, image_width: int, image_height: int,
                           camera_height_m: float, camera_pitch_deg: float = 0.0
                           ) -> list[tuple[float, float, float] | None]:
    """Ground contact point of each obstacle (bottom centre of its bbox), None where the model has no solution."""
    if (camera.width, camera.height) != (image_width, image_height):
        camera = camera.scaled_to(image_width, image_height)
    points = []
    for obstacle in obstacles:
        x, y, w, h = obstacle.bbox
        points.append(ground_point(camera, x + (w - 1) / 2.0, y + h - 1, camera_height_m, camera_pitch_deg))
    return points


def horizon_row_frac(camera: PinholeCamera, camera_pitch_deg: float = 0.0) -> float:
    """Image row of the flat ground's horizon as a share of the image height (the size rule's
    ``horizon_row_frac``, :mod:`vl_anomaly.postprocess`): ``cy − fy · tan(pitch)`` for a camera pitched down by
    ``pitch``, clipped to ``[0, 0.99]`` (a horizon above the image: every row is ground)."""
    row = camera.cy - camera.fy * math.tan(math.radians(camera_pitch_deg))
    return float(min(max((row + 0.5) / camera.height, 0.0), 0.99))
