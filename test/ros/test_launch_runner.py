"""The launch file and the runner that executes it where ``ros2 launch`` is not installed (no processes here)."""

from __future__ import annotations

import pytest

import ros_harness  # noqa: F401  (environment)
from ros_harness import REPO_ROOT
from vl_anomaly_ros.launch_runner import LaunchError, LaunchFile, main

LAUNCH = REPO_ROOT / "launch" / "vl_anomaly.launch.xml"


def test_every_argument_is_described_and_defaulted():
    args = LaunchFile(LAUNCH).declared_args()
    assert {"image", "camera_info", "params_file", "model", "device", "score", "rviz", "use_shm_profile"} <= set(args)
    for name, (default, description) in args.items():
        assert default is not None and description, name


def test_resolved_command_matches_ros2_launch_semantics():
    processes, env = LaunchFile(LAUNCH).resolve({"image": "/cam/front/image_raw", "device": "cpu",
                                                 "namespace": "perception"})
    assert env["FASTRTPS_DEFAULT_PROFILES_FILE"].endswith("config/fastdds_shm.xml")
    (node,) = processes                                                     # rviz off by default
    cmd = node.cmd
    assert cmd[0].endswith("anomaly_node") and cmd[1] == "--ros-args"
    pairs = list(zip(cmd, cmd[1:]))
    assert ("-r", "__node:=vl_anomaly") in pairs and ("-r", "__ns:=/perception") in pairs
    assert ("-r", "image:=/cam/front/image_raw") in pairs
    assert ("-r", "image/compressed:=/cam/front/image_raw/compressed") in pairs
    assert ("-p", "device:=cpu") in pairs
    params_file = cmd[cmd.index("--params-file") + 1]
    assert params_file.endswith("config/vl_anomaly.yaml")
    assert cmd.index("--params-file") < cmd.index("device:=cpu")             # single values override the file
    assert cmd[-2:] == ["--log-level", "info"]


def test_conditions_and_errors(tmp_path):
    processes, env = LaunchFile(LAUNCH).resolve({"use_shm_profile": "false"})
    assert "FASTRTPS_DEFAULT_PROFILES_FILE" not in env
    with pytest.raises(LaunchError, match="unknown launch argument"):
        LaunchFile(LAUNCH).resolve({"imgae": "/x"})
    with pytest.raises(LaunchError, match="rviz2"):                          # RViz is not installed here
        LaunchFile(LAUNCH).resolve({"rviz": "true"})
    with pytest.raises(LaunchError, match="true/false"):
        LaunchFile(LAUNCH).resolve({"rviz": "maybe"})
    bad = tmp_path / "bad.launch.xml"
    bad.write_text('<launch><include file="x.launch.py"/></launch>')
    with pytest.raises(LaunchError, match="<include> is not supported"):
        LaunchFile(bad)
    with pytest.raises(LaunchError, match="does not exist"):
        LaunchFile(LAUNCH).resolve({"params_file": str(tmp_path / "missing.yaml")})


def test_cli_print_and_show_args(capsys):
    assert main([str(LAUNCH), "--print", "image:=/x"]) == 0
    out = capsys.readouterr().out
    assert "export FASTRTPS_DEFAULT_PROFILES_FILE=" in out and "image:=/x" in out
    assert main(["vl_anomaly_ros", "vl_anomaly.launch.xml", "-s"]) == 0
    assert "'image':" in capsys.readouterr().out
    assert main([str(LAUNCH), "nope:=1"]) == 2
