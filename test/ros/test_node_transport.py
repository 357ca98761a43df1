"""The node over real ROS 2 transport: real road images in (node in its own process, as on a vehicle), outputs
checked against ``vl-anomaly predict``; bad-input corpus; overload; parameters; lifecycle; the launch file under real ``ros2 launch``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from visualization_msgs.msg import Marker, MarkerArray

from ros_harness import NODE_TEST_PARAMS, REPO_ROOT, NodeProcess, start_node
from vl_anomaly import read_image
from vl_anomaly_msgs.msg import ObstacleArray
from vl_anomaly_ros.conversions import array_to_image_msg, image_msg_to_array

NODE = "vl_anomaly_under_test"
OUT = f"/{NODE}"
FRAME_ID = "front_camera_optical"


@pytest.fixture(scope="module")
def images(anomaly_val) -> dict[str, Path]:
    return {"0": anomaly_val / "RoadObstacle21" / "images" / "0.webp",       # 1920×1080
            "1": anomaly_val / "RoadAnomaly21" / "images" / "1.png"}          # 1280×720


@pytest.fixture(scope="module")
def node(probe, ros_log_dir):
    for topic, kind in (("anomaly_score", Image), ("obstacle_mask", Image), ("overlay", Image),
                        ("obstacles", ObstacleArray), ("obstacle_markers", MarkerArray)):
        probe.subscribe(kind, f"{OUT}/{topic}", 50)
    process = start_node(probe, NODE, {**NODE_TEST_PARAMS, "subscribe_compressed": True}, ros_log_dir)
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def image_pub(probe):
    return probe.publisher(Image, "/image", 10)


def _stamped(msg, sec: int, nanosec: int = 0):
    msg.header.frame_id = FRAME_ID
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    return msg


def _by_stamp(probe, topic: str, sec: int):
    for msg in probe.messages(topic):
        if msg.header.stamp.sec == sec:
            return msg
    return None


def _markers_of(probe, sec: int, timeout: float = 30.0) -> MarkerArray:
    """The ~/obstacle_markers array of the frame stamped ``sec`` (its markers carry the image header)."""
    def find():
        for msg in probe.messages(f"{OUT}/obstacle_markers"):
            if msg.markers and msg.markers[0].header.stamp.sec == sec:
                return msg
        return None

    assert probe.wait_for(lambda: find() is not None, timeout), f"no markers for stamp {sec}"
    return find()


def _check_markers(markers: MarkerArray, obstacles, ground: bool) -> None:
    assert markers.markers[0].action == Marker.DELETEALL                   # last frame's markers go away
    by_ns: dict[str, list] = {}
    for marker in markers.markers[1:]:
        assert marker.header.frame_id == FRAME_ID and marker.action == Marker.ADD
        by_ns.setdefault(marker.ns, []).append(marker)
    ids = [o.id for o in obstacles]
    assert [m.id for m in by_ns["image_boxes"]] == ids == [m.id for m in by_ns["image_labels"]]
    assert all(len(m.points) == 5 and m.points[0] == m.points[4] for m in by_ns["image_boxes"])
    grounded = [o.id for o in obstacles if o.has_ground_position]
    assert [m.id for m in by_ns.get("ground_boxes", [])] == (grounded if ground else [])
    for marker in by_ns.get("ground_labels", []):
        obstacle = next(o for o in obstacles if o.id == marker.id)
        assert f"#{obstacle.id} " in marker.text and f"{obstacle.distance_m:.1f} m" in marker.text


def _wait_output(probe, sec: int, timeout: float = 60.0, topics=("anomaly_score", "obstacle_mask", "obstacles")):
    ok = probe.wait_for(lambda: all(_by_stamp(probe, f"{OUT}/{t}", sec) is not None for t in topics), timeout)
    assert ok, f"no output for stamp {sec}"
    return {t: _by_stamp(probe, f"{OUT}/{t}", sec) for t in topics}


def _counters(probe, node_name=NODE, settle=lambda v: int(v["in_flight"]) == 0):
    values = probe.wait_diagnostics(node_name, settle, 60.0)
    return values


def test_real_images_equal_offline_predict(probe, node, image_pub, images, tmp_path):
    """Score maps published for real images equal what ``vl-anomaly predict`` writes for the same files."""
    predict = subprocess.run(
        [str(Path(sys.executable).parent / "vl-anomaly"), "predict", *map(str, images.values()), "-o", str(tmp_path),
         "--model", "espnetv2_s2.0_cityscapes", "--input-size", "256", "512", "--threads", "2", "--drivable-only",
         "--save", "npy", "mask", "json"], capture_output=True, text=True, timeout=300)
    assert predict.returncode == 0, predict.stderr
    total_obstacles = 0
    for index, (stem, path) in enumerate(images.items()):
        rgb = read_image(path)
        sec = 1000 + index
        image_pub.publish(_stamped(array_to_image_msg(rgb, "rgb8"), sec, 123456789))
        out = _wait_output(probe, sec)
        score, mask, obstacles = out["anomaly_score"], out["obstacle_mask"], out["obstacles"]
        for msg in (score, mask, obstacles):
            assert msg.header.frame_id == FRAME_ID
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (sec, 123456789)
        assert (score.encoding, mask.encoding) == ("32FC1", "mono8")
        assert (score.height, score.width) == rgb.shape[:2] == (mask.height, mask.width)
        offline = np.load(tmp_path / f"{stem}.score.npy")
        np.testing.assert_array_equal(image_msg_to_array(score), offline)            # bit-exact
        offline_mask = cv2.imread(str(tmp_path / f"{stem}.mask.png"), cv2.IMREAD_GRAYSCALE)
        np.testing.assert_array_equal(image_msg_to_array(mask), offline_mask)
        assert set(np.unique(offline_mask)) <= {0, 255}
        record = json.loads((tmp_path / f"{stem}.json").read_text())
        assert [(o.x, o.y, o.width, o.height, o.area_px) for o in obstacles.obstacles] == \
            [(*o["bbox"], o["area_px"]) for o in record["obstacles"]]
        assert obstacles.score == "msp" and obstacles.threshold == pytest.approx(0.5)
        total_obstacles += len(obstacles.obstacles)
    assert total_obstacles > 0                                 # the obstacle lists were compared on real content


def test_every_accepted_encoding_and_compressed_input(probe, node, image_pub, images):
    rgb = read_image(images["1"])
    reference = None
    variants = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]),
                "bgra8": np.dstack([rgb[..., ::-1], np.zeros(rgb.shape[:2], np.uint8)])}
    for offset, (encoding, pixels) in enumerate(variants.items()):
        msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding, step=pixels.shape[1] * pixels.shape[2],
                    data=np.ascontiguousarray(pixels).tobytes())
        sec = 2000 + offset
        image_pub.publish(_stamped(msg, sec))
        score = image_msg_to_array(_wait_output(probe, sec)["anomaly_score"])
        if reference is None:
            reference = score
        np.testing.assert_array_equal(score, reference, err_msg=encoding)
    gray = rgb[..., 1].copy()
    image_pub.publish(_stamped(Image(height=gray.shape[0], width=gray.shape[1], encoding="mono8",
                                     step=gray.shape[1], data=gray.tobytes()), 2010))
    assert image_msg_to_array(_wait_output(probe, 2010)["anomaly_score"]).shape == gray.shape
    ok, png = cv2.imencode(".png", rgb[..., ::-1])
    compressed_pub = probe.publisher(CompressedImage, "/image/compressed", 10)
    time.sleep(1.0)                                                            # discovery of the new publisher
    compressed_pub.publish(_stamped(CompressedImage(format="png", data=png.tobytes()), 2011))
    np.testing.assert_array_equal(image_msg_to_array(_wait_output(probe, 2011)["anomaly_score"]), reference)


def test_overlay_is_published_while_subscribed(probe, node, image_pub, images):
    rgb = read_image(images["0"])
    image_pub.publish(_stamped(array_to_image_msg(rgb, "bgr8"), 2500))
    overlay = _wait_output(probe, 2500, topics=("overlay",))["overlay"]
    assert overlay.encoding == "bgr8" and (overlay.height, overlay.width) == rgb.shape[:2]
    assert overlay.header.frame_id == FRAME_ID


def _bad_corpus(good: np.ndarray) -> list[tuple[str, object, str]]:
    """(reason expected, message, topic) for each kind of bad input."""
    h, w = good.shape[:2]
    data = good.tobytes()
    nan_float = np.full((8, 8, 3), np.nan, np.float32)
    return [
        ("encoding", Image(height=h, width=w, encoding="yuv422", step=w * 2, data=data[: h * w * 2]), "/image"),
        ("encoding", Image(height=8, width=8, encoding="32FC3", step=96, data=nan_float.tobytes()), "/image"),
        ("step", Image(height=h, width=w, encoding="rgb8", step=w * 3 - 1, data=data), "/image"),
        ("truncated", Image(height=h, width=w, encoding="rgb8", step=w * 3, data=data[: len(data) // 2]), "/image"),
        ("empty", Image(height=0, width=0, encoding="rgb8", step=0, data=b""), "/image"),
        ("too_large", Image(height=50_000, width=50_000, encoding="mono8", step=50_000, data=bytes(1024)), "/image"),
        ("decode", CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0 truncated jpeg"), "/image/compressed"),
        ("empty", CompressedImage(format="jpeg", data=b""), "/image/compressed"),
    ]


def test_bad_input_corpus_is_counted_and_the_node_survives(probe, node, image_pub, images):
    good = read_image(images["1"])
    before = _counters(probe)
    compressed_pub = probe.publisher(CompressedImage, "/image/compressed", 10)
    time.sleep(1.0)
    corpus = _bad_corpus(good)
    for index, (reason, msg, topic) in enumerate(corpus):
        (image_pub if topic == "/image" else compressed_pub).publish(_stamped(msg, 3000 + index))
        time.sleep(0.3)                                       # one at a time: each is rejected, none superseded
    image_pub.publish(_stamped(array_to_image_msg(good, "rgb8"), 3100))
    _wait_output(probe, 3100)
    assert node.alive()
    after = _counters(probe)
    expected: dict[str, int] = {}
    for reason, _, _ in corpus:
        expected[reason] = expected.get(reason, 0) + 1
    for reason, count in expected.items():
        assert int(after.get(f"rejected.{reason}", 0)) - int(before.get(f"rejected.{reason}", 0)) == count, reason
    assert int(after["received"]) - int(before["received"]) == len(corpus) + 1
    assert int(after["processed"]) - int(before["processed"]) == 1
    assert int(after["dropped"]) == int(before["dropped"])
    # The last rejection is a diagnostics key (the status message itself may say "no input for N s" when the
    # good frame took longer than no_input_warn_s on a loaded machine: that warning ranks first, rightly).
    assert after["last_rejection"].startswith(f"{corpus[-1][0]}: "), after
    for stamp in range(3000, 3000 + len(corpus)):                 # nothing was published for a bad frame
        assert _by_stamp(probe, f"{OUT}/anomaly_score", stamp) is None


def _blast(probe, image_pub, msg_rgb, first_sec: int, count: int, interval: float) -> dict[int, float]:
    """Publish ``count`` frames every ``interval`` s, stamped ``first_sec``, ``first_sec + 1``, …; the image is
    converted once before the blast (``publish`` serialises the message, so only the stamp changes between
    sends), so that conversion work does not stretch the interval on a loaded machine. Returns stamp sec → send time."""
    msg = array_to_image_msg(msg_rgb, "rgb8")
    sent = {}
    for sec in range(first_sec, first_sec + count):
        sent[sec] = time.monotonic()
        image_pub.publish(_stamped(msg, sec))
        time.sleep(max(0.0, sent[sec] + interval - time.monotonic()))
    return sent


def _latencies(probe, sent: dict[int, float]) -> list[float]:
    with probe.cond:
        entries = list(probe.received[f"{OUT}/anomaly_score"])
    return [t - sent[m.header.stamp.sec] for m, t in entries if m.header.stamp.sec in sent]


@pytest.mark.parametrize("policy", ["latest", "queue"])
def test_overload_bounded_latency_and_every_frame_accounted(probe, node, image_pub, images, policy):
    from rclpy.parameter_client import AsyncParameterClient

    # A 640×360 camera frame: the network input (256×512) costs the node the same as for the full 1280×720, but
    # the publisher's per-message cost and the node's output publishing are a quarter, so the blast's rate is
    # what the test asks for (with the full frame the publisher managed barely half of it on 2 cores).
    rgb = cv2.resize(read_image(images["1"]), (640, 360), interpolation=cv2.INTER_AREA)
    # The node's own rate on this frame, measured now (sequentially, no queueing); the fastest of three round
    # trips, so that a machine that gets less busy during the blast is still overloaded.
    round_trips = []
    for i in range(3):
        start = time.monotonic()
        image_pub.publish(_stamped(array_to_image_msg(rgb, "rgb8"), 4000 + i + (100 if policy == "queue" else 0)))
        _wait_output(probe, 4000 + i + (100 if policy == "queue" else 0))
        round_trips.append(time.monotonic() - start)
    per_frame = min(round_trips)
    depth = 3
    client = AsyncParameterClient(probe.node, NODE)
    assert client.wait_for_services(10.0)
    future = client.set_parameters([Parameter("queue_policy", value=policy), Parameter("queue_depth", value=depth)])
    assert probe.wait_for(lambda: future.done(), 10.0) and all(r.successful for r in future.result().results)
    before = _counters(probe)
    # The node's own serialized work per frame (its stage times, from its diagnostics) can be well below the round
    # trip: transport into the node and out to this probe overlap the next frame's work. Send at six times the
    # faster of the two rates: at three times, a machine that was busy while the rates were measured and idle
    # during the blast let the node keep up, and nothing was dropped (seen once in CI for each policy).
    node_work = sum(float(before[f"{stage}_ms.p50"]) for stage in ("convert", "inference", "publish", "overlay")
                    if before.get(f"{stage}_ms.p50") not in (None, "", "None")) / 1e3
    interval = min(per_frame, node_work) / 6 if node_work > 0 else per_frame / 6
    first = 5000 if policy == "latest" else 6000
    count = 30
    sent = _blast(probe, image_pub, rgb, first, count, interval)               # six times the node's rate
    after = _counters(probe, settle=lambda v: int(v["in_flight"]) == 0
                      and int(v["received"]) - int(before["received"]) >= count)
    received = int(after["received"]) - int(before["received"])
    processed = int(after["processed"]) - int(before["processed"])
    dropped = int(after["dropped"]) - int(before["dropped"])
    rejected = int(after["rejected"]) - int(before["rejected"])
    assert received == count                                 # nothing lost before the node
    assert processed + dropped + rejected == received and rejected == 0
    reason = "superseded" if policy == "latest" else "queue_full"
    assert int(after.get(f"dropped.{reason}", 0)) - int(before.get(f"dropped.{reason}", 0)) == dropped > 0
    latencies = _latencies(probe, sent)
    # Bounded latency: a frame waits for at most the frame in work plus the frames ahead of it in the queue, each
    # taking the node's own per-frame time *under this load* (on 2 cores the publisher and the node share the
    # CPU, so it is longer than the idle round trip measured above).
    work_ms = sum(float(after[f"{stage}_ms.max"]) for stage in ("convert", "inference", "publish", "overlay")
                  if after.get(f"{stage}_ms.max") not in (None, ""))
    print(f"{policy}: {per_frame * 1e3:.0f} ms round trip, {node_work * 1e3:.0f} ms node work idle, "
          f"sent every {interval * 1e3:.0f} ms, {work_ms:.0f} ms max under load, {received} in, "
          f"{processed} processed, {dropped} dropped, latency max {max(latencies) * 1e3:.0f} ms, "
          f"achieved send interval {(max(sent.values()) - min(sent.values())) / (count - 1) * 1e3:.0f} ms")
    assert len(latencies) == processed
    waiting = 1 if policy == "latest" else depth
    assert max(latencies) < (waiting + 2) * work_ms / 1e3 + 1.0, (latencies, work_ms)
    future = client.set_parameters([Parameter("queue_policy", value="latest")])
    assert probe.wait_for(lambda: future.done(), 10.0)


def test_parameters_validated_at_run_time(probe, node, image_pub, images):
    from rclpy.parameter_client import AsyncParameterClient

    client = AsyncParameterClient(probe.node, NODE)
    assert client.wait_for_services(10.0)

    def set_one(name, value):
        future = client.set_parameters([Parameter(name, value=value)])
        assert probe.wait_for(lambda: future.done(), 10.0)
        return future.result().results[0]

    bad = {"queue_policy": "fifo", "min_obstacle_area_px": -1, "threshold": "high", "model": "espnet_p2_q8_cityscapes",
           "camera_pitch_deg": 120.0, "max_input_age_ms": -1.0}
    for name, value in bad.items():
        result = set_one(name, value)
        assert not result.successful and result.reason, name
    assert "latest, queue" in set_one("queue_policy", "fifo").reason
    assert set_one("threshold", 0.9).successful
    image_pub.publish(_stamped(array_to_image_msg(read_image(images["1"]), "rgb8"), 7000))
    assert _wait_output(probe, 7000)["obstacles"].threshold == pytest.approx(0.9)
    assert set_one("threshold", float("nan")).successful                     # back to the score's default
    assert node.alive()


def test_ground_positions_with_camera_info(probe, node, image_pub, images):
    from rclpy.parameter_client import AsyncParameterClient

    rgb = read_image(images["1"])
    h, w = rgb.shape[:2]
    info_pub = probe.publisher(CameraInfo, "/camera_info", 10)
    client = AsyncParameterClient(probe.node, NODE)
    assert client.wait_for_services(10.0)
    future = client.set_parameters([Parameter("camera_height_m", value=1.5)])
    assert probe.wait_for(lambda: future.done(), 10.0) and future.result().results[0].successful
    time.sleep(1.0)
    info = CameraInfo(width=w, height=h)
    info.k = [1000.0, 0.0, (w - 1) / 2, 0.0, 1000.0, (h - 1) / 2, 0.0, 0.0, 1.0]
    info_pub.publish(_stamped(info, 7100))
    time.sleep(0.5)
    image_pub.publish(_stamped(array_to_image_msg(rgb, "rgb8"), 7101))
    obstacles = _wait_output(probe, 7101)["obstacles"].obstacles
    assert obstacles, "this RoadAnomaly21 frame has obstacles at the default threshold"
    assert any(o.has_ground_position for o in obstacles)
    for o in obstacles:
        bottom = o.y + o.height - 1
        if bottom > (h - 1) / 2:                                    # below the horizon: on the ground
            assert o.has_ground_position
            assert o.ground_position.y == pytest.approx(1.5, rel=1e-5)
            assert o.ground_position.z == pytest.approx(1.5 * 1000 / (bottom - (h - 1) / 2), rel=1e-4)
            assert o.distance_m == pytest.approx(np.linalg.norm([o.ground_position.x, 1.5, o.ground_position.z]),
                                                 rel=1e-5)
        else:
            assert not o.has_ground_position and np.isnan(o.distance_m)
    _check_markers(_markers_of(probe, 7101), obstacles, ground=True)


def test_markers_without_camera_info_and_enable_service(probe, node, image_pub, images):
    """~/obstacle_markers on the image plane for every obstacle; ~/enable false pauses inference (frames counted
    as dropped, reason disabled; the model stays loaded), true resumes it."""
    from std_srvs.srv import SetBool

    rgb = read_image(images["1"])
    image_pub.publish(_stamped(array_to_image_msg(rgb, "rgb8"), 7200))
    obstacles = _wait_output(probe, 7200)["obstacles"].obstacles
    assert obstacles
    _check_markers(_markers_of(probe, 7200), obstacles, ground=any(o.has_ground_position for o in obstacles))

    enable = probe.node.create_client(SetBool, f"{OUT}/enable")
    assert enable.wait_for_service(10.0)

    def call(value: bool):
        future = enable.call_async(SetBool.Request(data=value))
        assert probe.wait_for(lambda: future.done(), 10.0)
        return future.result()

    before = _counters(probe)
    reply = call(False)
    assert reply.success and reply.message.startswith("disabled")
    values = probe.wait_diagnostics(NODE, lambda v: v["enabled"] == "False", 10.0)
    assert values["message"].startswith("disabled through ~/enable") and values["level"] == 0
    assert values["runs_on"] == "PyTorch"                                # what executes the model
    for sec in (7201, 7202, 7203):
        image_pub.publish(_stamped(array_to_image_msg(rgb, "rgb8"), sec))
    after = probe.wait_diagnostics(NODE, lambda v: int(v.get("dropped.disabled", 0))
                                   - int(before.get("dropped.disabled", 0)) == 3, 30.0)
    assert int(after["processed"]) == int(before["processed"])          # frame 7200 was counted before; no other
    assert _by_stamp(probe, f"{OUT}/anomaly_score", 7202) is None
    assert call(False).message.startswith("already disabled")
    assert call(True).success
    image_pub.publish(_stamped(array_to_image_msg(rgb, "rgb8"), 7204))
    _wait_output(probe, 7204)                                            # no reload: the next frame is processed
    final = _counters(probe)
    assert int(final["received"]) == int(final["processed"]) + int(final["dropped"]) + int(final["rejected"])


def test_input_qos_overrides(probe, ros_log_dir):
    """``qos_overrides.<topic>.subscription.<policy>`` (rclpy's QoS overriding) changes the input subscription."""
    name = "vl_anomaly_qos_override"
    process = start_node(probe, name, {**NODE_TEST_PARAMS,
                                       "qos_overrides./qos/image.subscription.reliability": "reliable",
                                       "qos_overrides./qos/image.subscription.depth": 3},
                         ros_log_dir, remaps={"image": "/qos/image"})
    try:
        assert "subscribed /qos/image (sensor_data: reliable, depth 3" in process.log()
    finally:
        assert process.stop() == 0, process.log()


def test_service_replies_wait_for_a_late_client(probe):
    """The shipped Fast DDS profile's "service" data_writer profile reaches every service's response writer: a
    server waits up to 5 s (Fast DDS default 100 ms) for the client's response reader to be discovered before it
    gives a reply up. Too short a wait lost a ``get_state`` reply on a loaded CI machine. Here the client's
    response reader can never match (it asks for transient-local durability, the server writes volatile), so the
    server's wait is seen whole."""
    import warnings

    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_srvs.srv import Trigger

    context = Context()
    rclpy.init(context=context)
    server_node = rclpy.create_node("late_client_server", context=context)
    answered: list[float] = []

    def answer(request, response):
        answered.append(time.monotonic())
        response.success = True
        return response

    server_node.create_service(Trigger, "/late_client/trigger", answer)
    server = SingleThreadedExecutor(context=context)
    server.add_node(server_node)
    unmatched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
    client = probe.node.create_client(Trigger, "/late_client/trigger", qos_profile=unmatched)

    def reply_lost(caught) -> bool:
        return any("client will not receive response" in str(w.message) for w in caught)

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            deadline, next_request = time.monotonic() + 60.0, 0.0
            while time.monotonic() < deadline and not reply_lost(caught):
                if not answered and time.monotonic() >= next_request:     # until the request writer has matched
                    client.call_async(Trigger.Request())
                    next_request = time.monotonic() + 1.0
                server.spin_once(timeout_sec=0.1)
            gave_up = time.monotonic()
        assert answered, "the request never reached the server"
        assert reply_lost(caught), [str(w.message) for w in caught]
        assert gave_up - answered[0] >= 4.9                  # the profile's 5 s, not Fast DDS's default 100 ms
    finally:
        probe.node.destroy_client(client)
        server.shutdown(timeout_sec=2.0)
        server_node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_lifecycle_transitions(probe, ros_log_dir, images):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    name = "vl_anomaly_lifecycle"
    probe.subscribe(Image, f"/{name}/anomaly_score", 10)
    process = start_node(probe, name, {**NODE_TEST_PARAMS, "autostart": False}, ros_log_dir,
                         remaps={"image": "/lifecycle/image"}, ready=("unconfigured",))
    try:
        change = probe.node.create_client(ChangeState, f"/{name}/change_state")
        get = probe.node.create_client(GetState, f"/{name}/get_state")
        assert change.wait_for_service(10.0) and get.wait_for_service(10.0)

        def call(client, request):
            future = client.call_async(request)
            assert probe.wait_for(lambda: future.done(), 60.0)
            return future.result()

        assert call(get, GetState.Request()).current_state.label == "unconfigured"
        assert call(change, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE))).success
        assert call(get, GetState.Request()).current_state.label == "inactive"
        pub = probe.publisher(Image, "/lifecycle/image", 10)
        time.sleep(1.0)
        rgb = read_image(images["1"])
        pub.publish(_stamped(array_to_image_msg(rgb, "rgb8"), 8000))               # inactive: not subscribed
        time.sleep(1.0)
        assert probe.count(f"/{name}/anomaly_score") == 0
        assert call(change, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_ACTIVATE))).success
        time.sleep(1.0)
        pub.publish(_stamped(array_to_image_msg(rgb, "rgb8"), 8001))
        assert probe.wait_for(lambda: probe.count(f"/{name}/anomaly_score") == 1, 60.0)
        assert call(change, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE))).success
        assert call(get, GetState.Request()).current_state.label == "inactive"
    finally:
        assert process.stop() == 0, process.log()


def test_corrupt_weights_fail_configure_with_the_reason(ros_log_dir, tmp_path):
    weights = tmp_path / "corrupt.pth"
    weights.write_bytes(b"PK\x03\x04 definitely not a checkpoint" * 10)
    process = NodeProcess("vl_anomaly_corrupt", {**NODE_TEST_PARAMS, "weights": str(weights)}, ros_log_dir)
    assert process.proc.wait(120) == 1
    log = process.log()
    process.stop()
    assert "configure failed" in log and "corrupt.pth" in log


def test_launch_file_under_real_ros2_launch(probe, ros_log_dir, tmp_path, images):
    """``ros2 launch vl_anomaly_ros vl_anomaly.launch.xml`` (real Jazzy launch, config/ YAML + per-argument
    overrides + remaps): the node becomes active, a frame in gives a score out, SIGINT ends launch with 0 and
    leaves no process behind."""
    import yaml
    from lifecycle_msgs.srv import GetState

    from ros_harness import LaunchProcess

    params = yaml.safe_load((REPO_ROOT / "config" / "vl_anomaly.yaml").read_text())
    params["/**"]["ros__parameters"].update(NODE_TEST_PARAMS)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    name = "vl_anomaly_launched"
    probe.subscribe(Image, f"/{name}/anomaly_score", 10)
    launch = LaunchProcess(name, {"node_name": name, "image": "/launched/image_raw", "params_file": params_file,
                                  "score": "msp"}, ros_log_dir)
    try:
        probe.wait_diagnostics(name, lambda v: v["message"].startswith("no input"), 90.0)
        commands = launch.record_children()
        assert any(f"__node:={name}" in c and "lib/vl_anomaly_ros/anomaly_node" in c for c in commands), commands
        get = probe.node.create_client(GetState, f"/{name}/get_state")
        assert get.wait_for_service(10.0)
        future = get.call_async(GetState.Request())
        assert probe.wait_for(lambda: future.done(), 30.0)
        assert future.result().current_state.label == "active"
        pub = probe.publisher(Image, "/launched/image_raw", qos_profile_sensor_data)     # a camera's QoS
        time.sleep(1.0)
        pub.publish(_stamped(array_to_image_msg(read_image(images["0"]), "bgr8"), 9000))
        assert probe.wait_for(lambda: probe.count(f"/{name}/anomaly_score") == 1, 60.0), launch.log()
    finally:
        code = launch.stop(timeout=30.0)
    log = launch.log()
    assert code == 0, log
    assert "process started with pid" in log and "process has finished cleanly" in log, log
    assert "score msp, threshold 0.5, device cpu, network input [256, 512]" in log, log   # arg + params_file
    assert "subscribed /launched/image_raw" in log, log                                    # remap
    assert launch.leftovers() == [], log
