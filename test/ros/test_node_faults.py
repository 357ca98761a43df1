"""Faults a vehicle's graph produces, each over real transport with the node in its own process: a camera driver
that restarts, camera_info missing / late / for another image shape, header stamps going backwards or jumping
(ROS time and sim time), an encoding that changes mid-stream, and a second node with the same name. In each the
node keeps working, every frame is processed, dropped or rejected with a count, and nothing hangs."""

from __future__ import annotations

import time

import numpy as np
import pytest
import rclpy
from rclpy.context import Context
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from ros_harness import NODE_TEST_PARAMS, start_node
from vl_anomaly import read_image
from vl_anomaly_msgs.msg import ObstacleArray
from vl_anomaly_ros.conversions import array_to_image_msg

NODE = "vl_anomaly_faults"
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope="module")
def rgb(anomaly_val) -> np.ndarray:
    """A RoadAnomaly21 frame (1280×720) with obstacles at the default threshold."""
    return read_image(anomaly_val / "RoadAnomaly21" / "images" / "1.png")


@pytest.fixture(scope="module")
def node(probe, ros_log_dir):
    probe.subscribe(ObstacleArray, f"/{NODE}/obstacles", RELIABLE)
    params = {**NODE_TEST_PARAMS, "input_qos": "default", "input_qos_depth": 10, "queue_policy": "queue",
              "queue_depth": 20, "camera_height_m": 1.5}
    process = start_node(probe, NODE, params, ros_log_dir,
                         remaps={"image": "/faults/image", "camera_info": "/faults/camera_info"})
    yield process
    assert process.stop() == 0, process.log()


def _stamped(msg, sec: int, nanosec: int = 0):
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    msg.header.frame_id = "camera"
    return msg


def _obstacles(probe, sec: int, timeout: float = 60.0, node: str = NODE):
    topic = f"/{node}/obstacles"
    found = []

    def arrived():
        found[:] = [m for m in probe.messages(topic) if m.header.stamp.sec == sec]
        return bool(found)

    assert probe.wait_for(arrived, timeout), f"no obstacle list for stamp {sec}"
    return found[0]


def _settled(probe, name: str = NODE) -> dict:
    values = probe.wait_diagnostics(name, lambda v: int(v["in_flight"]) == 0, 60.0)
    received = int(values["received"])
    assert received == int(values["processed"]) + int(values["dropped"]) + int(values["rejected"]), values
    return values


def _publisher(probe, topic: str, msg_type=Image):
    pub = probe.publisher(msg_type, topic, RELIABLE)
    assert probe.wait_for(lambda: pub.get_subscription_count() > 0, 10.0)
    time.sleep(0.5)                                     # the node's reader matched us too (volatile QoS)
    return pub


def test_camera_driver_restarting_mid_stream(probe, node, rgb):
    """A driver process that dies and comes back is a new DDS participant: the node takes its frames as before."""
    for generation, sec in ((1, 100), (2, 101)):
        context = Context()
        rclpy.init(context=context)
        driver = rclpy.create_node(f"camera_driver_{generation}", context=context)
        pub = driver.create_publisher(Image, "/faults/image", RELIABLE)
        deadline = time.monotonic() + 10.0
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        pub.publish(_stamped(array_to_image_msg(rgb, "rgb8"), sec))
        _obstacles(probe, sec)
        driver.destroy_node()
        rclpy.try_shutdown(context=context)                # the "driver" process is gone
    assert node.alive()
    _settled(probe)


def test_camera_info_missing_late_and_for_another_shape(probe, node, rgb):
    pub = _publisher(probe, "/faults/image")
    info_pub = _publisher(probe, "/faults/camera_info", CameraInfo)
    h, w = rgb.shape[:2]
    pub.publish(_stamped(array_to_image_msg(rgb, "rgb8"), 200))              # missing: no positions, no error
    assert not any(o.has_ground_position for o in _obstacles(probe, 200).obstacles)
    assert probe.wait_diagnostics(NODE, lambda v: True, 10.0)["camera_info"] == "none"

    info = CameraInfo(width=w, height=h)
    info.k = [1000.0, 0.0, (w - 1) / 2, 0.0, 1000.0, (h - 1) / 2, 0.0, 0.0, 1.0]
    info_pub.publish(_stamped(info, 201))                                    # late: from now on, positions
    probe.wait_diagnostics(NODE, lambda v: v["camera_info"] == f"ok {w}x{h}", 10.0)
    pub.publish(_stamped(array_to_image_msg(rgb, "rgb8"), 202))
    assert any(o.has_ground_position for o in _obstacles(probe, 202).obstacles)

    before = int(_settled(probe).get("events.camera_info_mismatch", 0))
    wrong = CameraInfo(width=640, height=640)                                # another aspect ratio
    wrong.k = [500.0, 0.0, 319.5, 0.0, 500.0, 319.5, 0.0, 0.0, 1.0]
    info_pub.publish(_stamped(wrong, 203))
    probe.wait_diagnostics(NODE, lambda v: v["camera_info"] == "ok 640x640", 10.0)
    pub.publish(_stamped(array_to_image_msg(rgb, "rgb8"), 204))
    assert not any(o.has_ground_position for o in _obstacles(probe, 204).obstacles)
    after = _settled(probe)
    assert int(after["events.camera_info_mismatch"]) == before + 1
    info_pub.publish(_stamped(info, 205))                                    # put the right one back
    probe.wait_diagnostics(NODE, lambda v: v["camera_info"] == f"ok {w}x{h}", 10.0)


def test_stamps_going_backwards_and_jumping(probe, node, rgb):
    pub = _publisher(probe, "/faults/image")
    before = _settled(probe)
    for sec in (300, 301, 150, 5000):                                        # back by 151 s, forward by 4850 s
        pub.publish(_stamped(array_to_image_msg(rgb, "rgb8"), sec))
        _obstacles(probe, sec)                                               # every one is processed
    after = _settled(probe)
    assert int(after["events.stamp_backwards"]) - int(before.get("events.stamp_backwards", 0)) == 1
    # 200 → 300 (previous test's last frame) and 150 → 5000 are both jumps of more than a second
    assert int(after["events.stamp_jump"]) - int(before.get("events.stamp_jump", 0)) >= 1
    assert int(after["processed"]) - int(before["processed"]) == 4


def test_encoding_changing_mid_stream(probe, node, rgb):
    pub = _publisher(probe, "/faults/image")
    before = _settled(probe)
    gray = np.ascontiguousarray(rgb[..., 1])
    frames = [("rgb8", rgb), ("bgr8", np.ascontiguousarray(rgb[..., ::-1])), ("mono8", gray),
              ("rgba8", np.dstack([rgb, np.full_like(gray, 255)])), ("rgb8", rgb)]
    for index, (encoding, array) in enumerate(frames):
        msg = Image(height=array.shape[0], width=array.shape[1], encoding=encoding, step=array.strides[0])
        msg.data = array.tobytes()
        pub.publish(_stamped(msg, 400 + index))
        _obstacles(probe, 400 + index)
    float_frame = array_to_image_msg(rgb.astype(np.float32)[..., 0].copy(), "32FC1")     # not a camera encoding
    pub.publish(_stamped(float_frame, 410))
    after = probe.wait_diagnostics(NODE, lambda v: int(v.get("rejected.encoding", 0))
                                   > int(before.get("rejected.encoding", 0)), 30.0)
    assert int(after["processed"]) - int(before["processed"]) == len(frames)
    assert after["last_rejection"].startswith("encoding: ")
    pub.publish(_stamped(array_to_image_msg(rgb, "rgb8"), 411))              # and it goes on
    _obstacles(probe, 411)
    _settled(probe)


def test_sim_time_stale_frames_and_a_clock_that_goes_back(probe, ros_log_dir, rgb):
    """``use_sim_time``: ages come from /clock. A frame older than max_input_age_ms on that clock is dropped as
    ``stale`` (counted); when /clock goes back (a bag played in a loop), frames are judged on the new clock."""
    from rosgraph_msgs.msg import Clock

    name = "vl_anomaly_faults_sim"
    probe.subscribe(ObstacleArray, f"/{name}/obstacles", RELIABLE)
    params = {**NODE_TEST_PARAMS, "input_qos": "default", "max_input_age_ms": 2000.0, "use_sim_time": True}
    process = start_node(probe, name, params, ros_log_dir, remaps={"image": "/faults_sim/image"})
    try:
        clock = probe.publisher(Clock, "/clock", 10)
        pub = _publisher(probe, "/faults_sim/image")

        def tick(sec: int):
            msg = Clock()
            msg.clock.sec = sec
            clock.publish(msg)

        tick(1000)
        time.sleep(0.5)
        pub.publish(_stamped(array_to_image_msg(rgb, "rgb8"), 999))          # 1 s old on the sim clock: fresh
        _obstacles(probe, 999, node=name)
        tick(1000)
        pub.publish(_stamped(array_to_image_msg(rgb, "rgb8"), 500))          # 500 s old: stale, counted
        values = probe.wait_diagnostics(name, lambda v: int(v.get("dropped.stale", 0)) == 1, 30.0)
        assert int(values["events.stamp_backwards"]) == 1
        tick(10)                                                             # the clock goes back
        time.sleep(0.5)
        pub.publish(_stamped(array_to_image_msg(rgb, "rgb8"), 9))
        _obstacles(probe, 9, node=name)
        _settled(probe, name)
    finally:
        assert process.stop() == 0, process.log()


def test_second_node_with_the_same_name(probe, ros_log_dir, rgb):
    """Documented behaviour (docs/ros.md): ROS 2 does not stop a second node of the same name. Both run,
    subscribe the same topics and publish on the same outputs, so every frame is answered twice; their
    /diagnostics share one status name. Give each node its own name (``node_name:=``)."""
    name = "vl_anomaly_twin"
    probe.subscribe(ObstacleArray, f"/{name}/obstacles", RELIABLE)
    first = start_node(probe, name, {**NODE_TEST_PARAMS, "input_qos": "default"}, ros_log_dir,
                       remaps={"image": "/twin/image"})
    second = None
    try:
        (ros_log_dir / "twin").mkdir(exist_ok=True)
        second = start_node(probe, name, {**NODE_TEST_PARAMS, "input_qos": "default"}, ros_log_dir / "twin",
                            remaps={"image": "/twin/image"})
        pub = probe.publisher(Image, "/twin/image", RELIABLE)
        assert probe.wait_for(lambda: pub.get_subscription_count() == 2, 20.0)
        time.sleep(0.5)
        pub.publish(_stamped(array_to_image_msg(rgb, "rgb8"), 600))
        assert probe.wait_for(lambda: sum(m.header.stamp.sec == 600 for m in probe.messages(f"/{name}/obstacles"))
                              == 2, 60.0)
        assert first.alive() and second.alive()
    finally:
        assert first.stop() == 0, first.log()
        if second is not None:
            assert second.stop() == 0, second.log()
