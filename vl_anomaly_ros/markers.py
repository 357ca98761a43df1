"""Obstacles → ``visualization_msgs/MarkerArray`` for RViz (``~/obstacle_markers``). Pure message building.

Every array starts with a ``DELETEALL`` marker, so the obstacles of the previous frame disappear. Then, per
obstacle, in the image header's frame (the camera's optical frame: x right, y down, z forward):

* namespace ``image_boxes`` / ``image_labels``: its bounding box as a closed line strip and a label
  (``#id score`` and the distance when known), drawn on the image plane **1 m in front of the camera**: pixel
  ``(u, v)`` → ``((u − cx)/fx, (v − cy)/fy, 1)``. Seen through RViz's Camera display of the same camera they
  coincide with the obstacle in the image. Without ``camera_info`` a nominal pinhole (fx = fy = image width,
  principal point at the centre) keeps the layout but not the true directions.
* namespace ``ground_boxes`` / ``ground_labels`` (only with ``camera_info`` and ``camera_height_m``, i.e. when
  the obstacle has a ground position): a box standing on the ground at the obstacle's ground contact point, as
  wide and tall as its bounding box subtends at that distance (its depth along the ray is unknown and drawn
  equal to its width), and a label above it.

Colours: red, more opaque for higher mean score. Marker ids are the obstacle ids of the frame.
"""

from __future__ import annotations

import math

from .ground import PinholeCamera

#: line width of the image-plane boxes (metres at 1 m, i.e. about 0.3 % of a 90° field of view)
IMAGE_LINE_WIDTH_M = 0.004
#: text height of the image-plane labels (metres at 1 m)
IMAGE_TEXT_HEIGHT_M = 0.025
#: text height of the ground labels (metres)
GROUND_TEXT_HEIGHT_M = 0.5


def nominal_camera(width: int, height: int) -> PinholeCamera:
    """The pinhole used without ``camera_info``: fx = fy = width, principal point at the image centre."""
    return PinholeCamera(fx=float(width), fy=float(width), cx=(width - 1) / 2.0, cy=(height - 1) / 2.0,
                         width=width, height=height)


def _color(score: float):
    from std_msgs.msg import ColorRGBA

    alpha = 0.5 + 0.5 * min(max(score, 0.0), 1.0) if math.isfinite(score) else 0.5
    return ColorRGBA(r=1.0, g=0.15, b=0.1, a=float(alpha))


def _label(obstacle, distance_m: float | None) -> str:
    text = f"#{obstacle.id} {obstacle.mean_score:.2f}"
    return text + (f" {distance_m:.1f} m" if distance_m is not None else "")


def obstacle_markers(obstacles, header, image_width: int, image_height: int, camera: PinholeCamera | None = None,
                     ground_positions=None):
    """Markers of one frame's obstacles (module docstring).

    Args:
        obstacles: :class:`vl_anomaly.postprocess.Obstacle` list, pixels of the ``image_width × image_height``
            input image.
        header: the input image's ``std_msgs/Header`` (frame and stamp of every marker).
        camera: intrinsics from ``camera_info`` (scaled to the image if it was resized), or None.
        ground_positions: per obstacle ``(x, y, z)`` metres in the header's frame, or None entries (as for
            :func:`vl_anomaly_ros.conversions.obstacle_array_msg`).
    Returns: ``visualization_msgs/MarkerArray``: one DELETEALL, then 2 markers per obstacle, plus 2 per obstacle
        with a ground position.
    """
    from geometry_msgs.msg import Point
    from visualization_msgs.msg import Marker, MarkerArray

    if camera is None:
        camera = nominal_camera(image_width, image_height)
    elif (camera.width, camera.height) != (image_width, image_height):
        camera = camera.scaled_to(image_width, image_height)

    def on_image_plane(u: float, v: float) -> Point:
        return Point(x=(u - camera.cx) / camera.fx, y=(v - camera.cy) / camera.fy, z=1.0)

    markers = [Marker(header=header, action=Marker.DELETEALL)]
    for index, obstacle in enumerate(obstacles):
        x, y, w, h = obstacle.bbox
        left, top, right, bottom = x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5        # pixel edges
        position = ground_positions[index] if ground_positions is not None else None
        distance = math.sqrt(sum(c * c for c in position)) if position is not None else None
        color = _color(obstacle.mean_score)
        box = Marker(header=header, ns="image_boxes", id=int(obstacle.id), type=Marker.LINE_STRIP,
                     action=Marker.ADD, color=color)
        box.pose.orientation.w = 1.0
        box.scale.x = IMAGE_LINE_WIDTH_M
        box.points = [on_image_plane(u, v) for u, v in ((left, top), (right, top), (right, bottom), (left, bottom),
                                                        (left, top))]
        label = Marker(header=header, ns="image_labels", id=int(obstacle.id), type=Marker.TEXT_VIEW_FACING,
                       action=Marker.ADD, color=color, text=_label(obstacle, distance))
        label.pose.position = on_image_plane((left + right) / 2.0, top)
        label.pose.position.y -= IMAGE_TEXT_HEIGHT_M                              # just above the box
        label.pose.orientation.w = 1.0
        label.scale.z = IMAGE_TEXT_HEIGHT_M
        markers += [box, label]
        if position is None:
            continue
        depth = position[2]
        width_m, height_m = w * depth / camera.fx, h * depth / camera.fy       # what the box subtends there
        solid = Marker(header=header, ns="ground_boxes", id=int(obstacle.id), type=Marker.CUBE, action=Marker.ADD,
                       color=color)
        solid.pose.position = Point(x=float(position[0]), y=float(position[1]) - height_m / 2.0,
                                    z=float(position[2]) + width_m / 2.0)       # standing on the ground, behind contact
        solid.pose.orientation.w = 1.0
        solid.scale.x, solid.scale.y, solid.scale.z = width_m, height_m, width_m
        text = Marker(header=header, ns="ground_labels", id=int(obstacle.id), type=Marker.TEXT_VIEW_FACING,
                      action=Marker.ADD, color=color, text=_label(obstacle, distance))
        text.pose.position = Point(x=float(position[0]), y=float(position[1]) - height_m - GROUND_TEXT_HEIGHT_M,
                                   z=float(position[2]))
        text.pose.orientation.w = 1.0
        text.scale.z = GROUND_TEXT_HEIGHT_M
        markers += [solid, text]
    return MarkerArray(markers=markers)
