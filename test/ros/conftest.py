"""Fixtures for tests over real ROS 2 transport (the harness is in ros_harness.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ros_harness import RosProbe


@pytest.fixture(scope="session")
def probe():
    p = RosProbe()
    from diagnostic_msgs.msg import DiagnosticArray

    p.subscribe(DiagnosticArray, "/diagnostics", 100)
    yield p
    p.close()


@pytest.fixture(scope="session")
def ros_log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("node_logs")


