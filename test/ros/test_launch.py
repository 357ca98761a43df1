"""The launch file under the real ROS 2 Jazzy launch system (``ros2 launch`` from the shared launch wheels, which
the README's set-up installs): arguments, the package lookup a ROS install does, and failures that leave nothing
running. The node doing real work under launch is in test_node_transport.py."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import ros_harness  # noqa: F401  (environment)
from ros_harness import REPO_ROOT, LaunchProcess

LAUNCH = REPO_ROOT / "launch" / "vl_anomaly.launch.xml"
ROS2 = Path(sys.prefix) / "bin" / "ros2"


def _launch_arguments(path: Path) -> dict:
    from launch import LaunchContext
    from launch.launch_description_sources import AnyLaunchDescriptionSource

    description = AnyLaunchDescriptionSource(str(path)).get_launch_description(LaunchContext())
    return {arg.name: arg for arg in description.get_launch_arguments()}


def test_every_argument_is_described_and_defaulted():
    from launch.utilities import perform_substitutions

    args = _launch_arguments(LAUNCH)
    assert {"image", "camera_info", "params_file", "model", "device", "score", "rviz", "use_shm_profile"} <= set(args)
    for name, arg in args.items():
        assert arg.default_value is not None and arg.description, name
    from launch import LaunchContext

    assert perform_substitutions(LaunchContext(), args["rviz"].default_value) == "false"


def test_the_venv_is_a_ros_prefix_for_the_package():
    """What ``<node pkg="vl_anomaly_ros" exec="anomaly_node">`` and ``$(find-pkg-share ...)`` resolve in the venv."""
    prefix = subprocess.run([str(ROS2), "pkg", "prefix", "vl_anomaly_ros"], capture_output=True, text=True)
    assert prefix.returncode == 0, prefix.stderr
    assert Path(prefix.stdout.strip()) == Path(sys.prefix)
    executables = subprocess.run([str(ROS2), "pkg", "executables", "vl_anomaly_ros"], capture_output=True, text=True)
    assert "vl_anomaly_ros anomaly_node" in executables.stdout.splitlines(), executables.stdout + executables.stderr
    shown = subprocess.run([str(ROS2), "launch", "vl_anomaly_ros", "vl_anomaly.launch.xml", "--show-args"],
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "'image':" in shown.stdout and "'rviz':" in shown.stdout


def _wait_exit(process: LaunchProcess, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while process.proc.poll() is None and time.monotonic() < deadline:
        process.record_children()
        time.sleep(0.05)
    return process.stop(timeout=1.0)                   # already exited, or killed and reported


def test_rviz_without_rviz2_fails_before_the_node_starts(ros_log_dir):
    process = LaunchProcess("vl_anomaly_rviz_missing", {"rviz": "true", "node_name": "vl_anomaly_rviz_missing"},
                            ros_log_dir)
    code = _wait_exit(process, 60.0)
    log = process.log()
    assert code == 1, log
    assert "package 'rviz2' not found" in log and "apt install ros-jazzy-rviz2" in log
    assert not any("anomaly_node" in command for command in process.commands), process.commands
    assert "process started" not in log, log
    assert process.leftovers() == [], log


def test_a_node_that_fails_to_start_ends_the_launch(ros_log_dir, tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02 not a checkpoint" * 20)
    process = LaunchProcess("vl_anomaly_bad_weights", {"weights": str(corrupt), "node_name": "vl_anomaly_bad_weights"},
                            ros_log_dir)
    code = _wait_exit(process, 120.0)
    log = process.log()
    assert "configure failed" in log and "corrupt.pth" in log, log
    assert "was required: shutting down launched system" in log, log      # on_exit="shutdown"
    assert code == 0, log                                                  # upstream: a Shutdown action exits 0
    assert process.leftovers() == [], log
