"""Play a bag through the real node over ROS 2 transport and record what the node publishes.

The node runs in its own process (as deployed; started here unless ``start_node=False``). This process
publishes the bag's camera messages as raw CDR (byte for byte what the bag holds, any topic name, raw or
compressed images) and records the node's outputs, its ``/diagnostics`` and the publish times into an output
mcap bag (bag time = receive time). Two paces:

* ``flow`` (default): as fast as the node allows with no frame lost — the next frame is published when the
  node has published (or rejected) the previous one;
* ``recorded``: at the bag's recorded rate (× ``rate``), as a live camera would; frames the node cannot keep up
  with are dropped by its queue policy and counted in its diagnostics.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

from .bags import BagError, BagFile, typestore

OUTPUT_TOPICS = {"anomaly_score": "sensor_msgs/msg/Image", "obstacle_mask": "sensor_msgs/msg/Image",
                 "overlay": "sensor_msgs/msg/Image", "obstacles": "vl_anomaly_msgs/msg/ObstacleArray"}
#: topic of the replay's own record of what it published: one std_msgs/String JSON per frame.
PLAYED_TOPIC = "/vl_anomaly_replay/played"


def register_our_types(store) -> None:
    """Teach a rosbags typestore our messages (from msg/ in the source tree or the installed share)."""
    from rosbags.typesys import get_types_from_msg

    folders = [Path(__file__).resolve().parents[1] / "msg"]
    try:
        from ament_index_python.packages import get_package_share_directory

        folders.append(Path(get_package_share_directory("vl_anomaly_msgs")) / "msg")
    except Exception:                                                          # noqa: BLE001
        pass
    folder = next((f for f in folders if (f / "ObstacleArray.msg").is_file()), None)
    if folder is None:
        raise BagError("cannot find the vl_anomaly_msgs .msg files (msg/ or the installed share)")
    types = {}
    for name in ("Obstacle", "ObstacleArray"):
        types.update(get_types_from_msg((folder / f"{name}.msg").read_text(), f"vl_anomaly_msgs/msg/{name}"))
    store.register(types)


@dataclass
class ReplayResult:
    """Summary of one replay (also written as ``replay.json`` next to the output bag)."""

    input_bag: str
    output_bag: str
    image_topic: str
    pace: str
    frames_in_bag: int
    frames_published: int
    outputs: dict[str, int]
    node_counters: dict
    latency_ms: dict
    seconds: float
    node_log: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _Recorder:
    """Raw subscriptions → rosbags Writer (called on the executor thread only)."""

    def __init__(self, node, out: Path, node_name: str, record_overlay: bool) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosbags.rosbag2 import StoragePlugin, Writer
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
        from vl_anomaly_msgs.msg import ObstacleArray

        self.store = typestore()
        register_our_types(self.store)
        self.out = out
        self.writer = Writer(out, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.error: OSError | None = None          # first failed write (disk full, …): recording stops there
        self.written = 0
        self.lock = threading.Condition()
        self.stamps: dict[str, dict[int, float]] = {}           # output → {stamp ns: receive monotonic}
        self.diagnostics: dict | None = None
        self.diag_time = 0.0
        self.counts: dict[str, int] = {}
        self.node_name = node_name
        classes = {"sensor_msgs/msg/Image": Image, "vl_anomaly_msgs/msg/ObstacleArray": ObstacleArray}
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.connections = {}
        for short, msgtype in OUTPUT_TOPICS.items():
            if short == "overlay" and not record_overlay:
                continue
            topic = f"/{node_name}/{short}"
            self.connections[topic] = self.writer.add_connection(topic, msgtype, typestore=self.store)
            self.stamps[short] = {}
            node.create_subscription(classes[msgtype], topic,
                                     lambda data, s=short, t=topic, m=msgtype: self._on_output(s, t, m, data),
                                     qos, raw=True)
        self.connections["/diagnostics"] = self.writer.add_connection(
            "/diagnostics", "diagnostic_msgs/msg/DiagnosticArray", typestore=self.store)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50, raw=True)
        self.connections[PLAYED_TOPIC] = self.writer.add_connection(PLAYED_TOPIC, "std_msgs/msg/String",
                                                                    typestore=self.store)

    def _on_output(self, short: str, topic: str, msgtype: str, data: bytes) -> None:
        now = time.monotonic()
        with self.lock:
            self._write(self.connections[topic], data)
            self.counts[topic] = self.counts.get(topic, 0) + 1
            self.stamps[short][_cdr_header_stamp(data)] = now            # every output starts with the header
            self.lock.notify_all()

    def _on_diagnostics(self, data: bytes) -> None:
        msg = self.store.deserialize_cdr(data, "diagnostic_msgs/msg/DiagnosticArray")
        with self.lock:
            self._write(self.connections["/diagnostics"], data)
            for status in msg.status:
                if status.name == f"/{self.node_name}: frames":
                    self.diagnostics = {kv.key: kv.value for kv in status.values} | {"message": status.message}
                    self.diag_time = time.monotonic()
            self.lock.notify_all()

    def note_played(self, stamp: int, published_monotonic: float) -> None:
        String = self.store.types["std_msgs/msg/String"]
        payload = json.dumps({"stamp_ns": stamp, "published_monotonic": published_monotonic})
        with self.lock:
            self._write(self.connections[PLAYED_TOPIC],
                        self.store.serialize_cdr(String(data=payload), "std_msgs/msg/String"))

    def _write(self, connection, data: bytes) -> None:
        """Write one message (lock held). The first OSError stops the recording and wakes the waiting player
        (an exception here would end the executor thread and leave the player waiting for answers)."""
        if self.error is not None:
            return
        try:
            self.writer.write(connection, time.time_ns(), data)
            self.written += 1
        except OSError as exc:
            self.error = exc
            self.lock.notify_all()

    def failure(self) -> BagError:
        """The error to raise after a failed write, saying what was kept and how to read it."""
        return BagError(f"writing the output bag {self.out} failed after {self.written} messages: {self.error}. "
                        f"The messages written before the failure stay in {self.out}; read them with --recover "
                        f"(e.g. vl-anomaly replay-eval ... --recover)")

    def close(self) -> str:
        """Close the bag; returns '' or why closing failed (a full disk cannot take the mcap summary either)."""
        with self.lock:
            try:
                self.writer.close()
            except OSError as exc:
                return f"closing {self.out} failed ({exc}): its summary is missing, read it with --recover"
        return ""


def _cdr_header_stamp(data: bytes) -> int:
    """Header stamp of a CDR-serialised message whose first field is a std_msgs/Header (4-byte CDR header, then
    int32 sec, uint32 nanosec, little-endian as ROS 2 writes them)."""
    sec = int.from_bytes(data[4:8], "little", signed=True)
    nanosec = int.from_bytes(data[8:12], "little")
    return sec * 1_000_000_000 + nanosec


def _diag_int(values: dict | None, key: str) -> int:
    if not values or values.get(key) in (None, ""):
        return 0
    return int(float(values[key]))


def start_node_process(node_name: str, params: dict, remaps: dict, log: IO[str],
                       params_file: Path | None = None) -> subprocess.Popen:
    """The node in its own process, as ``anomaly_node --ros-args ...`` would start it; stdout and stderr go to
    ``log`` (an open text file the caller closes). ``ROS_PYTHON_CHECK_FIELDS`` is not passed on: the node runs as
    deployed (the checks walk every byte of an image: 0.2 s instead of 5 ms to publish a 720p score map)."""
    from .environment import use_shipped_fastdds_profile

    use_shipped_fastdds_profile()
    cmd = [sys.executable, "-m", "vl_anomaly_ros.node_main", "--ros-args", "-r", f"__node:={node_name}"]
    if params_file is not None:
        cmd += ["--params-file", str(params_file)]
    for key, value in params.items():
        cmd += ["-p", f"{key}:={value}"]
    for source, target in remaps.items():
        cmd += ["-r", f"{source}:={target}"]
    env = {k: v for k, v in os.environ.items() if k != "ROS_PYTHON_CHECK_FIELDS"}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=Path(__file__).resolve().parents[1])


def replay(input_bag: Path, output_bag: Path, node_name: str = "vl_anomaly", image_topic: str | None = None,
           pace: str = "flow", rate: float = 1.0, node_params: dict | None = None, start_node: bool = True,
           record_overlay: bool = True, frame_timeout_s: float = 120.0, startup_timeout_s: float = 180.0,
           progress: bool = True, recover: bool = False) -> ReplayResult:
    """Play ``input_bag`` through the node; record its outputs to ``output_bag`` (an mcap folder).

    ``recover=True`` plays the intact part of a truncated mcap bag (:class:`BagFile`).
    ``node_params`` are node parameters (e.g. ``{"model": ..., "input_height": 256, "input_width": 512}``);
    the replay sets ``input_qos=default`` (reliable) so no middleware loss hides in the figures.
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image
    from tqdm import tqdm

    from .environment import ensure_venv_ament_prefix, use_shipped_fastdds_profile

    if pace not in ("flow", "recorded"):
        raise ValueError(f"pace must be 'flow' or 'recorded', got {pace!r}")
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    output_bag = Path(output_bag)
    if output_bag.exists():
        raise BagError(f"{output_bag} already exists; choose a new output bag folder")
    ensure_venv_ament_prefix()
    use_shipped_fastdds_profile()
    bag = BagFile(input_bag, recover=recover)
    topic, msgtype = bag.find_image_topic(image_topic)
    compressed = msgtype.endswith("CompressedImage")
    info_topics = [t for t, ty in bag.topics.items() if ty == "sensor_msgs/msg/CameraInfo"]
    frames_in_bag = bag.message_count(topic)
    output_bag.parent.mkdir(parents=True, exist_ok=True)
    log_path = output_bag.parent / f"{output_bag.name}.node.log"
    process = None
    node_log = None
    if start_node:
        params = {"input_qos": "default", "input_qos_depth": 10, "diagnostics_period_s": 0.1,
                  "publish_overlay": record_overlay, **(node_params or {})}
        if compressed:
            params["subscribe_compressed"] = True
        base = topic[: -len("/compressed")] if compressed else topic
        remaps = {"image": base, "image/compressed": f"{base}/compressed"}
        if info_topics:
            remaps["camera_info"] = info_topics[0]
        node_log = open(log_path, "w")
        process = start_node_process(node_name, params, remaps, node_log)

    context = rclpy.context.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("vl_anomaly_replay", context=context)
    recorder = _Recorder(node, output_bag, node_name, record_overlay)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    image_pub = node.create_publisher(CompressedImage if compressed else Image, topic, qos)
    info_pubs = {t: node.create_publisher(CameraInfo, t, qos) for t in info_topics}
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    stop_spinning = threading.Event()

    def spin() -> None:
        # Our own loop, so that the thread has returned before the executor is shut down: rclpy's
        # Executor.shutdown destroys its guard condition without waiting for a spin in progress, which then raised
        # InvalidHandle in this thread (a traceback on Ctrl-C under load).
        while not stop_spinning.is_set() and context.ok():
            executor.spin_once(timeout_sec=0.1)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    published: dict[int, float] = {}
    notes: list[str] = []
    start = time.monotonic()

    def accounted(values) -> int:
        return (_diag_int(values, "processed") + _diag_int(values, "dropped") + _diag_int(values, "rejected"))

    try:
        with recorder.lock:
            ok = recorder.lock.wait_for(lambda: recorder.diagnostics is not None and
                                        recorder.diagnostics["message"].startswith(("no input", "processing")),
                                        startup_timeout_s)
        if not ok:
            raise BagError(f"the node {node_name} did not become active in {startup_timeout_s} s"
                           + (f"; its log {log_path}:\n{log_path.read_text()[-2000:]}" if start_node else ""))
        with recorder.lock:
            base_accounted = accounted(recorder.diagnostics)
            base_received = _diag_int(recorder.diagnostics, "received")
        while image_pub.get_subscription_count() == 0:                   # discovery of the node's subscription
            if time.monotonic() - start > startup_timeout_s:
                raise BagError(f"the node never subscribed {topic}")
            time.sleep(0.05)
        first_bag_ns = None
        play_start = time.monotonic()
        bar = tqdm(total=frames_in_bag, desc=f"replay {Path(input_bag).name}", unit="frame", disable=not progress)
        for msg_topic, _, t_ns, data in bag.raw_messages([topic, *info_topics]):
            if first_bag_ns is None:
                first_bag_ns = t_ns
            if pace == "recorded":
                due = play_start + (t_ns - first_bag_ns) / 1e9 / rate
                time.sleep(max(0.0, due - time.monotonic()))
            if msg_topic in info_pubs:
                info_pubs[msg_topic].publish(data)
                continue
            stamp = _cdr_header_stamp(data)
            published[stamp] = time.monotonic()
            image_pub.publish(data)
            recorder.note_played(stamp, published[stamp])
            bar.update(1)
            if pace == "flow":
                sent = len(published)
                with recorder.lock:
                    done = recorder.lock.wait_for(
                        lambda: stamp in recorder.stamps["obstacles"] or recorder.error is not None
                        or accounted(recorder.diagnostics) - base_accounted >= sent, frame_timeout_s)
                if not done:
                    notes.append(f"no answer from the node for frame stamp {stamp} within {frame_timeout_s} s")
            if recorder.error is not None:
                raise recorder.failure()
        bar.close()
        # Wait until the node has accounted for every frame it received, and the last outputs arrived.
        deadline = time.monotonic() + frame_timeout_s
        with recorder.lock:
            recorder.lock.wait_for(
                lambda: recorder.diag_time > time.monotonic() - 0.05
                and _diag_int(recorder.diagnostics, "in_flight") == 0
                and _diag_int(recorder.diagnostics, "received") - base_received >= len(published)
                or recorder.error is not None, max(0.0, deadline - time.monotonic()))
        if recorder.error is not None:
            raise recorder.failure()
        time.sleep(0.3)
        with recorder.lock:
            counters = dict(recorder.diagnostics or {})
            obstacle_times = dict(recorder.stamps["obstacles"])
            outputs = dict(recorder.counts)
    finally:
        stop_spinning.set()                      # the executor thread ends (bounded) before what it uses goes away
        spinner.join(timeout=10.0)
        close_problem = recorder.close()
        if close_problem:
            notes.append(close_problem)
        if spinner.is_alive():
            notes.append("the replay's ROS executor thread did not stop within 10 s; its node is left to the process exit")
        else:
            executor.shutdown(timeout_sec=2.0)
            node.destroy_node()
            rclpy.try_shutdown(context=context)
        bag.close()
        if process is not None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if node_log is not None:
            node_log.close()
    latencies = np.array([1e3 * (obstacle_times[s] - t) for s, t in published.items() if s in obstacle_times])
    node_counters = {k: v for k, v in counters.items()
                     if k.split(".")[0] in ("received", "processed", "dropped", "rejected", "in_flight")}
    node_counters = {k: int(float(v)) for k, v in node_counters.items()}
    node_counters["received_in_replay"] = node_counters.get("received", 0) - base_received
    node_counters["lost_before_node"] = len(published) - node_counters["received_in_replay"]
    if node_counters["lost_before_node"]:
        notes.append(f"{node_counters['lost_before_node']} published frames never reached the node")
    result = ReplayResult(
        input_bag=str(input_bag), output_bag=str(output_bag), image_topic=topic, pace=pace,
        frames_in_bag=frames_in_bag, frames_published=len(published), outputs=outputs,
        node_counters=node_counters,
        latency_ms={"n": int(latencies.size), **({"p50": float(np.percentile(latencies, 50)),
                                                  "p95": float(np.percentile(latencies, 95)),
                                                  "max": float(latencies.max())} if latencies.size else {})},
        seconds=round(time.monotonic() - start, 3), node_log=str(log_path) if start_node else "", notes=notes)
    (output_bag.parent / f"{output_bag.name}.replay.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    return result
