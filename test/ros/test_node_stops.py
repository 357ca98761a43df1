"""Clean stops: the node process exits 0 on SIGINT/SIGTERM in every lifecycle state, mid-inference, while it
is still starting, on a doubled signal (``ros2 launch`` + a terminal's Ctrl-C) and with its subscribers gone,
and the frame in work is still published or counted.

The failure these guard against (issue 14): rclpy's own signal handlers shut the ROS context down from a thread
of their own and raise ``KeyboardInterrupt`` wherever the main thread is; the frame in work then failed to
publish ("publisher's context is invalid", counted as an internal error — seen on every mid-inference stop),
and a second SIGINT during clean-up ended the process with a traceback (exit -2 or an abort).
"""

from __future__ import annotations

import re
import signal
import time

import pytest
from sensor_msgs.msg import Image

from ros_harness import NODE_TEST_PARAMS, NodeProcess, start_node
from vl_anomaly import read_image
from vl_anomaly_ros.conversions import array_to_image_msg

_FINAL = re.compile(r"frames: received (\d+), processed (\d+), dropped (\d+) .*rejected (\d+) .*in flight (\d+)")


def _assert_clean_exit(process: NodeProcess, code: int) -> dict[str, int]:
    """Exit 0, a shutdown logged with its waits, no traceback, and a final frame account that balances."""
    log = process.log()
    assert code == 0, log
    assert "Traceback" not in log and "context is invalid" not in log, log
    assert "shutting down" in log, log
    match = _FINAL.search(log)
    if "model thread stopped" not in log:                 # stopped before the node existed: nothing to account
        assert match is None, log
        return {}
    counts = dict(zip(("received", "processed", "dropped", "rejected", "in_flight"), map(int, match.groups())))
    assert counts["in_flight"] == 0, log
    assert counts["received"] == counts["processed"] + counts["dropped"] + counts["rejected"], log
    return counts


@pytest.fixture(scope="module")
def frame(anomaly_val) -> Image:
    return array_to_image_msg(read_image(anomaly_val / "RoadAnomaly21" / "images" / "1.png"), "rgb8")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("state", ["unconfigured", "active"])
def test_exit_0_in_each_state(probe, ros_log_dir, state, sig):
    name = f"vl_anomaly_stop_{state}_{signal.Signals(sig).name.lower()}"
    params = {**NODE_TEST_PARAMS, "autostart": state != "unconfigured"}
    ready = ("unconfigured",) if state == "unconfigured" else ("no input",)
    process = start_node(probe, name, params, ros_log_dir, remaps={"image": f"/{name}/in"}, ready=ready)
    _assert_clean_exit(process, process.stop(sig=sig))


def test_exit_0_when_inactive(probe, ros_log_dir):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    name = "vl_anomaly_stop_inactive"
    process = start_node(probe, name, {**NODE_TEST_PARAMS, "autostart": False}, ros_log_dir, ready=("unconfigured",))
    change = probe.node.create_client(ChangeState, f"/{name}/change_state")
    assert change.wait_for_service(10.0)
    future = change.call_async(ChangeState.Request(transition=Transition(id=Transition.TRANSITION_CONFIGURE)))
    assert probe.wait_for(lambda: future.done(), 60.0) and future.result().success, process.log()
    probe.wait_diagnostics(name, lambda v: v["message"].startswith("configured, inactive"), 30.0)
    _assert_clean_exit(process, process.stop())


def test_exit_0_while_starting(ros_log_dir):
    """Signals during the imports and during configure (weights, warm-up): the node starts no work, exits 0."""
    for delay in (0.3, 2.5):
        process = NodeProcess(f"vl_anomaly_stop_starting_{int(delay * 10)}", NODE_TEST_PARAMS, ros_log_dir)
        time.sleep(delay)
        code = process.stop()
        assert code == 0, process.log()
        assert "Traceback" not in process.log(), process.log()


@pytest.mark.parametrize("double", [False, True], ids=["single", "double"])
def test_mid_inference_the_frame_in_work_is_published(probe, ros_log_dir, frame, double):
    """SIGINT while a frame is in inference: the frame is still published (the context stays up until the model
    thread is done); a second SIGINT during the clean-up is logged and ignored."""
    name = f"vl_anomaly_stop_busy_{'double' if double else 'single'}"
    topic = f"/{name}/anomaly_score"
    probe.subscribe(Image, topic, 10)
    params = {**NODE_TEST_PARAMS, "input_height": 512, "input_width": 1024, "input_qos": "default"}
    process = start_node(probe, name, params, ros_log_dir, remaps={"image": f"/{name}/in"})
    pub = probe.publisher(Image, f"/{name}/in", 10)
    probe.wait_for(lambda: pub.get_subscription_count() > 0, 10.0)
    frame.header.stamp.sec = 4000
    pub.publish(frame)
    probe.wait_diagnostics(name, lambda v: int(v["received"]) == 1, 30.0)    # in the node: queued or in work
    process.proc.send_signal(signal.SIGINT)
    if double:                                        # the second one lands in the clean-up (or after the exit)
        deadline = time.monotonic() + 10.0
        while "shutting down" not in process.log() and time.monotonic() < deadline:
            time.sleep(0.01)
        process.proc.send_signal(signal.SIGINT)
    counts = _assert_clean_exit(process, process.stop())
    assert counts["received"] == 1
    if counts["processed"] == 1:                      # it was in work: published before the context went down
        assert probe.wait_for(lambda: probe.count(topic) == 1, 10.0)
    else:                                             # still waiting in the queue: counted, not lost
        assert counts["dropped"] == 1


def test_exit_0_with_subscribers_gone(probe, ros_log_dir, frame):
    name = "vl_anomaly_stop_orphaned"
    topic = f"/{name}/anomaly_score"
    params = {**NODE_TEST_PARAMS, "input_qos": "default"}
    process = start_node(probe, name, params, ros_log_dir, remaps={"image": f"/{name}/in"})
    received = []
    subscription = probe.node.create_subscription(Image, topic, received.append, 10)
    pub = probe.publisher(Image, f"/{name}/in", 10)
    probe.wait_for(lambda: pub.get_subscription_count() > 0, 10.0)
    pub.publish(frame)
    deadline = time.monotonic() + 60.0
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert received, process.log()
    probe.node.destroy_subscription(subscription)
    probe.node.destroy_publisher(pub)
    time.sleep(0.5)
    counts = _assert_clean_exit(process, process.stop())
    assert counts["processed"] == 1
