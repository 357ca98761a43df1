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




@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test (set-up, call or teardown) shows the log of every node process that lived during it."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        from ros_harness import STARTED

        for process in STARTED:
            if process.started_at <= call.stop and (process.stopped_at is None or process.stopped_at >= call.start):
                report.sections.append((f"node {process.name} log", process.log()[-20000:]))


@pytest.fixture(scope="session", autouse=True)
def _no_node_left_running():
    """No node process outlives the session, whatever failed."""
    yield
    from ros_harness import STARTED

    for process in STARTED:
        if process.alive():
            process.stop()
        if hasattr(process, "kill_leftovers"):
            process.kill_leftovers()
