"""Harness for tests over real ROS 2 transport: an isolated DDS domain, a probe node in its own rclpy context
spinning in a background thread, and the node under test in its own process (as on a vehicle).

The environment is set at import, before any participant exists: Fast DDS reads the profile when a participant
is created, and the shared-memory profile is what lets large best-effort images through (docs/ros.md).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[2]
os.environ["ROS_DOMAIN_ID"] = str(20 + os.getpid() % 200)          # parallel runs do not see each other
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(REPO_ROOT / "config" / "fastdds_shm.xml")
os.environ["ROS_PYTHON_CHECK_FIELDS"] = "1"
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="vl_anomaly_ros_log_"))

import rclpy  # noqa: E402  (after the environment)
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402

from vl_anomaly_ros.environment import ensure_venv_ament_prefix  # noqa: E402
from vl_anomaly_ros.replay import start_node_process  # noqa: E402

ensure_venv_ament_prefix()

#: Settings shared by the node under test and the offline reference (small network input for speed).
NODE_TEST_PARAMS = {"input_height": 256, "input_width": 512, "threads": 2, "diagnostics_period_s": 0.2}


class RosProbe:
    """A test-side node: publishers, recording subscriptions and waits, spinning in its own thread."""

    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("vl_anomaly_test_probe", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.cond = threading.Condition()
        self.received: dict[str, list] = collections.defaultdict(list)   # topic → [(message, monotonic time)]
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:                                                     # noqa: BLE001 — shutdown
            pass

    def subscribe(self, msg_type, topic: str, qos=10) -> None:
        def record(msg, topic=topic):
            with self.cond:
                self.received[topic].append((msg, time.monotonic()))
                self.cond.notify_all()

        self.node.create_subscription(msg_type, topic, record, qos)

    def publisher(self, msg_type, topic: str, qos=10):
        return self.node.create_publisher(msg_type, topic, qos)

    def wait_for(self, predicate, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def count(self, topic: str) -> int:
        with self.cond:
            return len(self.received[topic])

    def messages(self, topic: str) -> list:
        with self.cond:
            return [m for m, _ in self.received[topic]]

    def diagnostics(self, node_name: str, after: float = 0.0) -> dict | None:
        """Latest ``/diagnostics`` values of the node received after ``after`` (monotonic seconds); ``level`` and
        ``message`` included. None if there is none."""
        with self.cond:
            entries = [(m, t) for m, t in self.received["/diagnostics"] if t > after]
        for msg, _ in reversed(entries):
            for status in msg.status:
                if status.name == f"/{node_name}: frames":
                    values = {kv.key: kv.value for kv in status.values}
                    values["level"] = int.from_bytes(status.level, "little") if isinstance(status.level, bytes) \
                        else int(status.level)
                    values["message"] = status.message
                    return values
        return None

    def wait_diagnostics(self, node_name: str, predicate, timeout: float) -> dict:
        """Wait for diagnostics of the node *published after this call* that satisfy ``predicate(values)``."""
        start = time.monotonic()
        values = None
        while time.monotonic() < start + timeout:
            values = self.diagnostics(node_name, after=start)
            if values is not None and predicate(values):
                return values
            time.sleep(0.05)
        raise AssertionError(f"diagnostics of {node_name} never satisfied the condition; last: {values}")

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


class NodeProcess:
    """The node under test, started like ``anomaly_node --ros-args --params-file config/vl_anomaly.yaml``.

    Its stdout/stderr go to a file that stays readable at any time (also after :meth:`stop`); every process
    started during a test is listed in :data:`STARTED`, so a failing test shows the logs of its nodes
    (conftest.py) and none is left running.
    """

    def __init__(self, name: str, params: dict | None = None, log_dir: Path | None = None,
                 remaps: dict | None = None) -> None:
        self.name = name
        self.log_path = (log_dir or Path(tempfile.mkdtemp())) / f"{name}.log"
        with open(self.log_path, "w") as log:                  # the child keeps its own descriptor
            self.proc = start_node_process(name, params or {}, remaps or {}, log,
                                           params_file=REPO_ROOT / "config" / "vl_anomaly.yaml")
        self.stop_report = ""
        self.started_at, self.stopped_at = time.time(), None          # wall clock, as pytest's CallInfo
        STARTED.append(self)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        """The node's output so far (readable before and after :meth:`stop`), with how the stop went."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log file)"
        return text + (f"\n[harness] {self.stop_report}" if self.stop_report else "")

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGINT) -> int:
        """Send ``sig`` (once) and wait at most ``timeout`` s for the exit; kill after that. The exit code
        (negative: killed by that signal) is returned; how long the exit took is in :meth:`log`."""
        if self.proc.poll() is None:
            start = time.monotonic()
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
                self.stop_report = (f"{signal.Signals(sig).name} → exit {self.proc.returncode} after "
                                    f"{time.monotonic() - start:.2f} s")
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.stop_report = f"{signal.Signals(sig).name} → still running after {timeout} s; killed"
        elif not self.stop_report:
            self.stop_report = f"had already exited with {self.proc.returncode}"
        self.stopped_at = self.stopped_at or time.time()
        return self.proc.returncode


class LaunchProcess(NodeProcess):
    """``ros2 launch vl_anomaly_ros vl_anomaly.launch.xml ARG:=VALUE ...`` with the real Jazzy launch system (the
    shared launch wheels the README's set-up installs), logged and cleaned up like :class:`NodeProcess`.

    The processes launch starts are recorded while it runs (:meth:`record_children`), so a test can check that
    none outlives it (:meth:`leftovers`).
    """

    def __init__(self, name: str, launch_args: dict, log_dir: Path | None = None) -> None:
        self.name = name
        self.log_path = (log_dir or Path(tempfile.mkdtemp())) / f"{name}.launch.log"
        # SIGINT as on a terminal: a background job of a non-interactive shell (CI scripts, `cmd &`) inherits SIGINT
        # ignored, and launch (which handles signals through set_wakeup_fd, not signal.signal) then never sees it.
        cmd = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                                     "os.execv(sys.argv[1], sys.argv[1:])",
               str(Path(sys.prefix) / "bin" / "ros2"), "launch", "vl_anomaly_ros", "vl_anomaly.launch.xml",
               *(f"{key}:={value}" for key, value in launch_args.items())]
        env = {k: v for k, v in os.environ.items() if k != "ROS_PYTHON_CHECK_FIELDS"}   # the node as deployed
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tempfile.gettempdir())
        self.children: dict[int, float] = {}                 # pid → create time (pids are reused)
        self.commands: set[str] = set()                      # command lines of every child seen
        self.stop_report = ""
        self.started_at, self.stopped_at = time.time(), None
        STARTED.append(self)

    def record_children(self) -> list[str]:
        """Note every process below launch now; returns their command lines."""
        import psutil

        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        lines = []
        for child in children:
            try:
                self.children[child.pid] = child.create_time()
                lines.append(" ".join(child.cmdline()))
            except psutil.NoSuchProcess:
                pass
        self.commands.update(lines)
        return lines

    def leftovers(self) -> list[str]:
        """Recorded children still running (not zombies) after launch has exited."""
        import psutil

        left = []
        for pid, created in self.children.items():
            try:
                process = psutil.Process(pid)
                if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{pid}: {' '.join(process.cmdline())}")
            except psutil.NoSuchProcess:
                pass
        return left

    def kill_leftovers(self) -> None:
        import psutil

        for pid, created in self.children.items():
            try:
                process = psutil.Process(pid)
                if process.create_time() == created:
                    process.kill()
            except psutil.NoSuchProcess:
                pass


#: Node and launch processes started by the harness, for failure reports and clean-up (conftest.py).
STARTED: list[NodeProcess] = []


def start_node(probe: RosProbe, name: str, params: dict, log_dir: Path, timeout: float = 90.0,
               remaps: dict | None = None, ready=("no input", "processing")) -> NodeProcess:
    """Start a node process and wait until its diagnostics message starts with one of ``ready`` (default: active,
    waiting for or processing input)."""
    node = NodeProcess(name, params, log_dir, remaps=remaps)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        values = probe.diagnostics(name)
        if values is not None and values["message"].startswith(ready):
            return node
        if not node.alive():
            raise AssertionError(f"node {name} exited with {node.proc.returncode}:\n{node.log()}")
        time.sleep(0.1)
    node.stop()
    raise AssertionError(f"node {name} did not become active in {timeout} s:\n{node.log()}")


def message_as_plain(message) -> object:
    """A decoded ROS message as plain Python (dicts, lists, bytes, numbers, strings), from either the ``rosbags``
    classes (dataclasses, numpy arrays) or the official ``mcap_ros2`` decoder (namespaces, bytes, lists), so that
    the two decoders' results compare with ``==``."""
    import numpy as np

    if isinstance(message, (bytes, bytearray, memoryview)):
        return bytes(message)
    if isinstance(message, np.ndarray):
        return message.tobytes() if message.dtype == np.uint8 else [message_as_plain(v) for v in message.tolist()]
    if isinstance(message, (list, tuple)):
        return [message_as_plain(item) for item in message]
    if isinstance(message, np.generic):
        message = message.item()
    if isinstance(message, float) and message != message:
        return "NaN"                                             # so that NaN fields (unknown distance) compare equal
    if dataclasses.is_dataclass(message):        # rosbags: skip __msgtype__ and constants (ROS: UPPER_CASE names)
        return {field.name: message_as_plain(getattr(message, field.name)) for field in dataclasses.fields(message)
                if not field.name.startswith("__") and not field.name.isupper()}
    if hasattr(type(message), "__slots__") and type(message).__slots__:
        return {name: message_as_plain(getattr(message, name)) for name in type(message).__slots__}
    return message


def read_with_official_mcap(bag: Path) -> list[tuple[str, int, object]]:
    """Every message of an mcap rosbag2 bag (a folder with one .mcap file) as ``(topic, log time ns, message)``,
    decoded by Foxglove's ``mcap`` + ``mcap-ros2-support`` from the schemas stored in the file."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    (mcap_file,) = sorted(Path(bag).glob("*.mcap"))
    with open(mcap_file, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        return [(channel.topic, message.log_time, decoded)
                for _, channel, message, decoded in reader.iter_decoded_messages(log_time_order=True)]
