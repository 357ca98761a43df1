"""The node's ROS-free parts: frame hand-off, accounting, flat-ground model, parameter table and shipped config."""

from __future__ import annotations

import math
import threading
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import yaml

import ros_harness  # noqa: F401  (environment before rclpy)
from ros_harness import REPO_ROOT
from vl_anomaly.postprocess import Obstacle
from vl_anomaly_ros import params as P
from vl_anomaly_ros.frame_queue import FrameQueue
from vl_anomaly_ros.ground import PinholeCamera, ground_point, horizon_row_frac, obstacle_ground_points
from vl_anomaly_ros.model_worker import ModelWorker, WorkerStopped, WorkerTimeout
from vl_anomaly_ros.stats import FrameStats, diagnostic_values, frame_status


def _queue(policy, depth=1):
    drops = []
    return FrameQueue(policy, depth, on_drop=lambda item, reason: drops.append((item, reason))), drops


def test_latest_policy_keeps_the_newest_and_reports_each_drop():
    queue, drops = _queue("latest")
    for i in range(5):
        queue.put(i)
    assert queue.get(0) == 4 and queue.get(0) is None
    assert drops == [(0, "superseded"), (1, "superseded"), (2, "superseded"), (3, "superseded")]


def test_queue_policy_drops_the_oldest_when_full():
    queue, drops = _queue("queue", 3)
    for i in range(5):
        queue.put(i)
    assert [queue.get(0) for _ in range(3)] == [2, 3, 4]
    assert drops == [(0, "queue_full"), (1, "queue_full")]


def test_policy_change_and_close_account_for_waiting_frames():
    queue, drops = _queue("queue", 4)
    for i in range(4):
        queue.put(i)
    queue.configure("latest", 1)
    assert drops == [(0, "superseded"), (1, "superseded"), (2, "superseded")]
    queue.close()
    assert drops[-1] == (3, "shutdown") and len(queue) == 0
    queue.put(9)
    assert drops[-1] == (9, "shutdown")
    with pytest.raises(ValueError, match="latest, queue"):
        queue.configure("fifo", 1)


def test_get_blocks_until_a_frame_arrives():
    queue, _ = _queue("latest")
    threading.Timer(0.05, queue.put, args=("frame",)).start()
    assert queue.get(timeout=5.0) == "frame"


def test_model_worker_runs_jobs_and_frames_on_one_thread():
    queue, _ = _queue("queue", 10)
    seen = []
    worker = ModelWorker(queue, lambda frame: seen.append((frame, threading.current_thread().name)))
    assert worker.call(lambda: threading.current_thread().name, "naming") == "vl_anomaly_model"
    with pytest.raises(ZeroDivisionError):                      # a job's exception reaches the caller
        worker.call(lambda: 1 / 0, "dividing")
    queue.put("a")
    worker.enable_frames()
    queue.put("b")
    deadline = time.monotonic() + 5.0
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.disable_frames(5.0)
    queue.put("c")                                              # frames off: it stays in the queue
    time.sleep(0.1)
    assert len(queue) == 1
    assert seen == [("a", "vl_anomaly_model"), ("b", "vl_anomaly_model")]
    assert worker.stop(5.0) and not worker.alive()
    with pytest.raises(WorkerStopped):
        worker.call(lambda: None, "anything")


def test_model_worker_waits_are_bounded_and_say_what_it_was_doing():
    queue, _ = _queue("latest")
    release = threading.Event()
    worker = ModelWorker(queue, lambda frame: None)
    with pytest.raises(WorkerTimeout, match=r"within 0.3 s \(it is loading the model\)"):
        worker.call(lambda: release.wait(10.0), "loading the model", timeout=0.3)
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    start = time.monotonic()
    with pytest.raises(WorkerTimeout, match="shutdown requested"):
        worker.call(lambda: None, "a job behind the load", cancel=cancel.is_set)
    assert time.monotonic() - start < 2.0
    assert not worker.disable_frames(0.2)                       # the load is still running
    assert not worker.stop(0.2)
    release.set()
    assert worker.stop(5.0)


def test_stats_invariant_and_percentiles():
    stats = FrameStats()
    for _ in range(10):
        stats.on_received()
    for latency in (10.0, 20.0, 30.0, 40.0):
        stats.on_processed(latency, latency + 1, {"inference": latency / 2})
    stats.on_dropped("superseded")
    stats.on_dropped("stale")
    stats.on_rejected("encoding", "image encoding '32FC3' is not accepted")
    snap = stats.snapshot()
    assert snap["processed"] + snap["dropped_total"] + snap["rejected_total"] + snap["in_flight"] == 10
    assert snap["in_flight"] == 3 and snap["dropped"] == {"superseded": 1, "stale": 1}
    assert snap["latency_ms"]["p50"] == pytest.approx(25.0) and snap["latency_ms"]["max"] == 40.0
    assert snap["last_rejection"].startswith("encoding:")
    values = diagnostic_values(snap, {"model": "m", "score": "msp", "queue_policy": "latest", "camera_info": "none"})
    assert values["received"] == "10" and values["dropped.stale"] == "1" and values["rejected.encoding"] == "1"
    assert values["latency_ms.p50"] == "25.0" and values["camera_info"] == "none" and values["model"] == "m"
    assert all(isinstance(v, str) for v in values.values())
    status = dict(configured=True, error="", active=True, no_input_warn_s=5.0, image_topic="/cam/image")
    level, message = frame_status(snap, **status)
    assert level == "OK" and message.startswith("processing; last rejection encoding:")
    assert frame_status(snap, **{**status, "active": False}) == ("WARN", "configured, inactive")
    assert frame_status(snap, **{**status, "configured": False, "error": "configure failed: x"}) == \
        ("ERROR", "configure failed: x")
    idle = frame_status(FrameStats().snapshot(), **status)
    assert idle == ("WARN", "no input on /cam/image yet (check topic and QoS)")
    level, message = frame_status(snap, **{**status, "enabled": False})
    assert level == "OK" and message.startswith("disabled through ~/enable")
    building = "building TensorRT engine x.plan (fp16, none cached): first start takes minutes"
    assert frame_status(snap, **{**status, "configured": False, "configuring": building}) == ("WARN", building)


def test_obstacle_markers_by_hand():
    """Image-plane boxes at 1 m through the camera's K (or the nominal pinhole), ground boxes from the flat-ground
    point, one DELETEALL first."""
    from std_msgs.msg import Header
    from visualization_msgs.msg import Marker

    from vl_anomaly_ros.markers import nominal_camera, obstacle_markers

    header = Header(frame_id="cam")
    obstacles = [Obstacle(id=1, bbox=(960, 540, 100, 50), area_px=5000, centroid=(1009.5, 564.5), mean_score=0.8,
                          max_score=0.9),
                 Obstacle(id=2, bbox=(0, 0, 10, 10), area_px=100, centroid=(4.5, 4.5), mean_score=0.6, max_score=0.7)]
    ground = [(0.05, 1.5, 15.0), None]
    markers = obstacle_markers(obstacles, header, 1920, 1080, CAMERA, ground).markers
    assert markers[0].action == Marker.DELETEALL
    assert [(m.ns, m.id) for m in markers[1:]] == [("image_boxes", 1), ("image_labels", 1), ("ground_boxes", 1),
                                                   ("ground_labels", 1), ("image_boxes", 2), ("image_labels", 2)]
    box = markers[1]
    corners = [(p.x, p.y, p.z) for p in box.points]
    # left/top pixel edge 959.5 / 539.5 is the principal point: (0, 0, 1); right edge 1059.5 → x = 0.1
    assert corners[0] == pytest.approx((0.0, 0.0, 1.0)) and corners[2] == pytest.approx((0.1, 0.05, 1.0))
    assert corners[4] == corners[0] and box.header.frame_id == "cam"
    solid = markers[3]
    # 100 × 50 px at 15 m depth with f = 1000 px: 1.5 m wide, 0.75 m tall, standing on the ground (y = 1.5 down)
    assert (solid.scale.x, solid.scale.y) == pytest.approx((1.5, 0.75))
    assert solid.pose.position.y == pytest.approx(1.5 - 0.375) and solid.pose.position.x == pytest.approx(0.05)
    assert markers[4].text == f"#1 0.80 {math.sqrt(0.05 ** 2 + 1.5 ** 2 + 15.0 ** 2):.1f} m"
    assert markers[6].text == "#2 0.60"
    nominal = obstacle_markers(obstacles[:1], header, 640, 480).markers         # no camera_info
    camera = nominal_camera(640, 480)
    assert (camera.fx, camera.cx, camera.cy) == (640.0, 319.5, 239.5)
    assert nominal[1].points[0].x == pytest.approx((959.5 - 319.5) / 640.0) and len(nominal) == 3


CAMERA = PinholeCamera(fx=1000.0, fy=1000.0, cx=959.5, cy=539.5, width=1920, height=1080)


def test_flat_ground_by_hand():
    # Level camera 1.5 m above ground; a pixel 100 rows below the principal point sees ground at z = 1.5·1000/100.
    x, y, z = ground_point(CAMERA, 959.5, 639.5, 1.5)
    assert (x, y, z) == pytest.approx((0.0, 1.5, 15.0))
    assert ground_point(CAMERA, 959.5, 539.5, 1.5) is None          # horizon
    assert ground_point(CAMERA, 959.5, 300.0, 1.5) is None          # sky
    # Pitched down 10°: the principal ray hits the ground at h / sin(10°) along the axis.
    x, y, z = ground_point(CAMERA, 959.5, 539.5, 1.5, camera_pitch_deg=10.0)
    assert z == pytest.approx(1.5 / math.sin(math.radians(10.0)))


def test_ground_points_of_obstacles_scale_the_intrinsics():
    obstacle = Obstacle(id=1, bbox=(950, 600, 20, 40), area_px=800, centroid=(960.0, 620.0), mean_score=0.9,
                        max_score=1.0)
    full = obstacle_ground_points([obstacle], CAMERA, 1920, 1080, 1.5)[0]
    half_obstacle = Obstacle(id=1, bbox=(475, 300, 10, 20), area_px=200, centroid=(480.0, 310.0), mean_score=0.9,
                             max_score=1.0)
    half = obstacle_ground_points([half_obstacle], CAMERA, 960, 540, 1.5)[0]
    assert full[2] == pytest.approx(1.5 * 1000 / (639 - 539.5))
    assert half[2] == pytest.approx(full[2], rel=0.02)                 # same point seen at half resolution


def test_horizon_of_the_size_rule_from_camera_info():
    """The obstacle size rule's horizon (vl_anomaly.postprocess) sits at the principal point's row for a level
    camera and fy·tan(pitch) higher for one pitched down, the same share of the height at any resolution; the
    ground points of the flat-ground model meet it there."""
    assert horizon_row_frac(CAMERA) == pytest.approx(0.5)
    pitched = horizon_row_frac(CAMERA, 10.0)
    assert pitched * 1080 == pytest.approx(540.0 - 1000.0 * math.tan(math.radians(10.0)))
    assert horizon_row_frac(CAMERA.scaled_to(960, 540), 10.0) == pytest.approx(pitched)
    row = pitched * 1080 - 0.5                           # pixel-centre row of that horizon
    assert ground_point(CAMERA, 959.5, row - 1.0, 1.5, 10.0) is None
    assert ground_point(CAMERA, 959.5, row + 1.0, 1.5, 10.0) is not None
    assert horizon_row_frac(CAMERA, -60.0) == 0.99 and horizon_row_frac(CAMERA, 80.0) == 0.0


def test_node_parameters_at_their_defaults_run_the_shipped_obstacle_rules():
    """What the node runs from its rule parameters (P.postprocess_from_params): at the defaults (threshold NaN,
    area 0, drivable_only true) exactly the model's shipped rules — what predict and the calibration measure —;
    a threshold set is fixed; drivable_only false drops the drivable rule; a model that ships none gets the
    anomalous pixels cut to the drivable region."""
    from dataclasses import replace

    from vl_anomaly.factory import default_postprocess

    ensemble = default_postprocess("lite_ensemble_cityscapes")
    assert ensemble.adaptive_quantile is not None and ensemble.min_drivable_overlap > 0
    assert P.postprocess_from_params(ensemble, float("nan"), 0, True, 20) == ensemble
    fixed = P.postprocess_from_params(ensemble, 0.7, 300, True, 20)
    assert fixed == replace(ensemble, threshold=0.7, adaptive_quantile=None, min_area_px=300)
    anywhere = P.postprocess_from_params(ensemble, float("nan"), 0, False, 20)
    assert (anywhere.drivable_only, anywhere.min_drivable_overlap) == (False, 0.0)
    single = default_postprocess("espnetv2_s2.0_cityscapes")
    assert not single.drivable_only and single.min_drivable_overlap == 0
    assert P.postprocess_from_params(single, float("nan"), 0, True, 10) == replace(single, drivable_only=True,
                                                                                  drivable_margin_px=10)
    assert not P.postprocess_from_params(single, float("nan"), 0, False, 10).drivable_only


def test_parameter_validation_reasons():
    assert P.validate("threshold", 0.7) is None and P.validate("threshold", float("nan")) is None
    assert "type" in P.validate("threshold", "high")
    assert "≥ 0" in P.validate("min_obstacle_area_px", -1)
    assert "unknown score" in P.validate("score", "msq") and P.validate("score", "default") is None
    assert "latest, queue" in P.validate("queue_policy", "fifo")
    assert "registered" in P.validate("model", "resnet")
    assert "cuda:N" in P.validate("device", "gpu0")
    assert "multiple of 32" in P.validate("input_height", 250)
    assert "must be a number" in P.validate("max_input_age_ms", float("nan"))
    assert P.validate("nonexistent", 1) == "unknown parameter 'nonexistent'"
    for name, spec in P.PARAMS.items():
        assert P.validate(name, spec.default) is None, name
        assert spec.description


def test_descriptors_carry_ranges_and_read_only():
    desc = P.descriptor("min_obstacle_area_px")
    assert desc.integer_range[0].from_value == 0 and not desc.read_only
    assert P.descriptor("model").read_only
    assert P.descriptor("camera_pitch_deg").floating_point_range[0].to_value == 89.0
    assert "latest" in P.descriptor("queue_policy").description


def test_default_yaml_matches_the_parameter_table():
    data = yaml.safe_load((REPO_ROOT / "config" / "vl_anomaly.yaml").read_text())
    values = data["/**"]["ros__parameters"]
    assert set(values) == set(P.PARAMS)
    for name, value in values.items():
        default = P.PARAMS[name].default
        if isinstance(default, float) and math.isnan(default):
            assert math.isnan(value)
        else:
            assert value == default and type(value) is type(default), name


def test_launch_defaults_are_the_core_defaults():
    """XML cannot import Python: the launch file's model default is checked against vl_anomaly.defaults, where it
    is defined once (the parameter table and config/vl_anomaly.yaml take it from there); the score default is
    'default' everywhere: the model's own default score (an empty value cannot pass as a `-p` override)."""
    from vl_anomaly.defaults import DEFAULT_MODEL

    args = {a.get("name"): a.get("default") for a in ET.parse(REPO_ROOT / "launch" / "vl_anomaly.launch.xml").getroot()
            .iter("arg")}
    assert args["model"] == DEFAULT_MODEL == P.PARAMS["model"].default
    assert args["score"] == "default" == P.PARAMS["score"].default


def test_fastdds_profile_and_rviz_config():
    profile = ET.parse(REPO_ROOT / "config" / "fastdds_shm.xml").getroot()
    ns = {"p": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}
    assert profile.find(".//p:transport_descriptor/p:segment_size", ns).text == "67108864"
    assert profile.find(".//p:participant", ns).get("is_default_profile") == "true"
    rviz = yaml.safe_load((REPO_ROOT / "config" / "vl_anomaly.rviz").read_text())
    displays = {d["Name"]: d for d in rviz["Visualization Manager"]["Displays"]}
    assert displays["Anomaly overlay"]["Topic"]["Value"] == "/vl_anomaly/overlay"
    assert displays["Obstacle mask"]["Topic"]["Value"] == "/vl_anomaly/obstacle_mask"
    score = displays["Anomaly score"]
    assert score["Topic"]["Value"] == "/vl_anomaly/anomaly_score" and score["Normalize Range"] is False
    assert (score["Min Value"], score["Max Value"]) == (0, 1)
    assert displays["Camera"]["Topic"]["Reliability Policy"] == "Best Effort"
    markers = displays.pop("Obstacles")
    assert markers["Class"] == "rviz_default_plugins/MarkerArray"
    assert markers["Topic"]["Value"] == "/vl_anomaly/obstacle_markers"
    assert set(markers["Namespaces"]) == {"image_boxes", "image_labels", "ground_boxes", "ground_labels"}
    assert all(d["Class"] == "rviz_default_plugins/Image" for d in displays.values())


def test_score_map_stays_finite_for_rviz(espnetv2_predictor, road_obstacle_image):
    pred = espnetv2_predictor.predict(road_obstacle_image[::4, ::4].copy())
    assert np.isfinite(pred.score_map).all() and pred.score_map.dtype == np.float32


def test_main_job_runs_the_demo_model():
    """The README's main job (`ros-demo`) shows the best real-weight model; replay and the node keep the fast
    default unless told."""
    import argparse

    from vl_anomaly.defaults import DEFAULT_MODEL, DEMO_MODEL
    from vl_anomaly.registry import list_models
    from vl_anomaly_ros.cli import register_replay, register_ros_demo

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register_ros_demo(sub)
    register_replay(sub)
    assert parser.parse_args(["ros-demo"]).model == DEMO_MODEL != DEFAULT_MODEL
    assert DEMO_MODEL in list_models()
    assert parser.parse_args(["replay", "in_bag", "-o", "out_bag"]).model == DEFAULT_MODEL
