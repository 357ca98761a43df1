"""The same sources build as a ROS 2 workspace with ``colcon build`` (both packages), as on a Jazzy install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ros_harness  # noqa: F401  (environment)
from ros_harness import REPO_ROOT


def test_colcon_builds_both_packages(tmp_path):
    prefix = Path(sys.prefix)
    env = {**os.environ, "PATH": f"{prefix / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "AMENT_PREFIX_PATH": str(prefix), "CMAKE_PREFIX_PATH": str(prefix)}
    listed = subprocess.run([str(prefix / "bin" / "colcon"), "--log-base", str(tmp_path / "log"), "list",
                             "--base-paths", ".", "msg"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert sorted(line.split("\t")[0] for line in listed.stdout.splitlines()) == ["vl_anomaly_msgs", "vl_anomaly_ros"]
    build = subprocess.run(
        [str(prefix / "bin" / "colcon"), "--log-base", str(tmp_path / "log"), "build", "--base-paths", ".", "msg",
         "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install"),
         "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "2 packages finished" in build.stdout
    install = tmp_path / "install"
    node_share = install / "vl_anomaly_ros" / "share" / "vl_anomaly_ros"
    for relative in ("launch/vl_anomaly.launch.xml", "config/vl_anomaly.yaml", "config/fastdds_shm.xml",
                     "config/vl_anomaly.rviz", "package.xml"):
        assert (node_share / relative).is_file(), relative
    assert (install / "vl_anomaly_ros" / "share" / "ament_index" / "resource_index" / "packages" /
            "vl_anomaly_ros").is_file()
    assert os.access(install / "vl_anomaly_ros" / "lib" / "vl_anomaly_ros" / "anomaly_node", os.X_OK)  # ros2 run
    msgs = install / "vl_anomaly_msgs"
    assert list(msgs.glob("lib/python3*/site-packages/vl_anomaly_msgs/msg/_obstacle_array.py"))
    assert list(msgs.glob("lib/libvl_anomaly_msgs__rosidl_typesupport_fastrtps_c.so"))
    # What ros2 launch resolves against the workspace (as after sourcing install/setup.bash): the package prefix,
    # the executable <node pkg exec> runs and the launch file's share directory all come from the colcon install.
    launch_env = {**env, "AMENT_PREFIX_PATH": os.pathsep.join([str(install / "vl_anomaly_ros"), str(msgs),
                                                               str(prefix)])}
    ros2 = str(prefix / "bin" / "ros2")
    found = subprocess.run([ros2, "pkg", "prefix", "vl_anomaly_ros"], env=launch_env, capture_output=True, text=True)
    assert found.returncode == 0 and Path(found.stdout.strip()) == install / "vl_anomaly_ros", found.stderr
    listed = subprocess.run([ros2, "pkg", "executables", "--full-path", "vl_anomaly_ros"], env=launch_env,
                            capture_output=True, text=True)
    assert str(install / "vl_anomaly_ros" / "lib" / "vl_anomaly_ros" / "anomaly_node") in listed.stdout.split(), \
        listed.stdout + listed.stderr
    shown = subprocess.run([ros2, "launch", "vl_anomaly_ros", "vl_anomaly.launch.xml", "--show-args"],
                           env=launch_env, capture_output=True, text=True)
    assert shown.returncode == 0 and "'params_file':" in shown.stdout, shown.stderr
    share = subprocess.run([ros2, "pkg", "prefix", "--share", "vl_anomaly_ros"], env=launch_env, capture_output=True,
                           text=True)
    assert Path(share.stdout.strip()) == node_share, share.stderr           # $(find-pkg-share vl_anomaly_ros)
