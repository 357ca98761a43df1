"""Bag → node (own process, real ROS 2 transport) → output bag → metrics, equal to the offline evaluation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import ros_harness  # noqa: F401  (environment)
from ros_harness import NODE_TEST_PARAMS, message_as_plain, read_with_official_mcap
from vl_anomaly import create_predictor
from vl_anomaly.datasets import load_dataset
from vl_anomaly.evaluation import run_evaluation
from vl_anomaly.metrics.obstacles import ObstacleCounts, mask_obstacle_counts
from vl_anomaly_ros.bags import BagError, BagFile, write_dataset_bag
from vl_anomaly_ros.conversions import image_msg_to_array
from vl_anomaly_ros.replay import replay
from vl_anomaly_ros.replay_eval import replay_eval

NODE_PARAMS = {k: v for k, v in NODE_TEST_PARAMS.items() if k != "diagnostics_period_s"}


@pytest.fixture(scope="module")
def dataset():
    return load_dataset("road_anomaly_21")


@pytest.fixture(scope="module")
def input_bag(dataset, tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "road_anomaly_21"
    write_dataset_bag(dataset, path, rate_hz=10.0, progress=False)
    return path


def _offline_planner_view(predictor, dataset) -> tuple[ObstacleCounts, list[float]]:
    """Obstacle counts over the set of what ``predictor.predict`` gives, and each frame's threshold."""
    total, thresholds = ObstacleCounts(), []
    for i in range(len(dataset)):
        _, image, label = dataset.load(i)
        prediction = predictor.predict(image)
        thresholds.append(prediction.threshold)
        total = total + mask_obstacle_counts(prediction.obstacle_mask, label)
    return total, thresholds


def test_replay_metrics_equal_offline_evaluation(dataset, input_bag, tmp_path):
    result = replay(input_bag, tmp_path / "out", node_name="vl_anomaly_replay_t1", node_params=NODE_PARAMS,
                    progress=False)
    assert result.frames_published == len(dataset) == 10
    c = result.node_counters
    assert (c["received_in_replay"], c["processed"], c["dropped"], c["rejected"], c["lost_before_node"]) == \
        (10, 10, 0, 0, 0)
    assert result.outputs["/vl_anomaly_replay_t1/anomaly_score"] == 10
    assert result.outputs["/vl_anomaly_replay_t1/overlay"] == 10
    assert result.latency_ms["n"] == 10 and result.latency_ms["p50"] > 0
    assert json.loads((tmp_path / "out.replay.json").read_text())["frames_published"] == 10
    # The recorded bag decodes with Foxglove's mcap + mcap-ros2-support, message by message equal to our reader's
    # (images, obstacle lists of our own message type from the schema stored in the bag, diagnostics).
    official = sorted(read_with_official_mcap(tmp_path / "out"), key=lambda m: (m[0], m[1]))
    with BagFile(tmp_path / "out") as bag:
        ours = sorted(bag.messages(sorted(bag.topics)), key=lambda m: (m[0], m[1]))
    assert len(official) == len(ours) and {m[0] for m in official} >= {"/vl_anomaly_replay_t1/obstacles"}
    for (topic, t_ns, theirs), (our_topic, our_t, mine) in zip(official, ours):
        assert (topic, t_ns) == (our_topic, our_t)
        assert message_as_plain(theirs) == message_as_plain(mine), topic

    replayed = replay_eval(input_bag, tmp_path / "out", tmp_path / "eval", node_name="vl_anomaly_replay_t1",
                           progress=False)
    predictor = create_predictor("espnetv2_s2.0_cityscapes", input_size=(256, 512))
    offline = run_evaluation([dataset], ["msp"], tmp_path / "offline", predictor, workers=1)
    ours = replayed["datasets"]["road_anomaly_21"]["scores"]["msp"]
    reference = offline["datasets"]["road_anomaly_21"]["scores"]["msp"]
    assert ours["pixel"] == reference["pixel"]                       # identical, not just close
    assert ours["pixel_exact"] == reference["pixel_exact"]
    assert ours["component"] == reference["component"]
    assert ours["frame_AP"] == reference["frame_AP"]
    info = replayed["replay"]
    assert (info["frames_in"], info["frames_out"], info["frames_without_output"]) == (10, 10, [])
    assert info["node_counters"]["processed"] == 10 and info["latency_ms"]["n"] == 10
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Replay" in report and "| 10 | 10 | 0 | 10 | 0 | 0 |" in report
    assert (tmp_path / "eval" / "plots" / "road_anomaly_21_curves.png").is_file()
    # What a planner received: the recorded obstacle masks give the counts of the same rules offline (the node's
    # defaults: drivable region with a 20 px margin, ≥ 100 px, the score's threshold 0.5), frame by frame.
    rules = create_predictor("espnetv2_s2.0_cityscapes", input_size=(256, 512), drivable_only=True,
                             drivable_margin_px=20)
    expected, _ = _offline_planner_view(rules, dataset)
    view = info["planner_view"]
    assert view["frames"] == 10 and expected.objects > 0 and expected.obstacles > 0
    assert ObstacleCounts(**{k: view[k] for k in ObstacleCounts.__dataclass_fields__}) == expected
    assert view["threshold"] == {"min": 0.5, "median": 0.5, "max": 0.5}
    assert "### What a planner received" in report and f"{view['false_per_frame']:.2f}" in report


def test_replay_compressed_bag_any_topic_recorded_pace_with_drops(dataset, tmp_path):
    """A compressed bag on another topic, played at 4× the node's speed: frames the node cannot take are dropped
    by its policy and counted; replay-eval evaluates the frames with output and lists the others."""
    bag = tmp_path / "fast"
    write_dataset_bag(dataset, bag, rate_hz=20.0, compressed="png", image_topic="/front/cam", max_frames=8,
                      progress=False)
    result = replay(bag, tmp_path / "out", node_name="vl_anomaly_replay_t2", pace="recorded",
                    node_params={**NODE_PARAMS, "queue_policy": "latest"}, record_overlay=False, progress=False)
    c = result.node_counters
    assert result.image_topic == "/front/cam/compressed" and result.frames_published == 8
    assert c["lost_before_node"] == 0 and c["rejected"] == 0
    assert c["processed"] + c["dropped"] == 8 and c["dropped"] > 0 and c.get("dropped.superseded") == c["dropped"]
    assert "/vl_anomaly_replay_t2/overlay" not in result.outputs
    evaluated = replay_eval(bag, tmp_path / "out", tmp_path / "eval", node_name="vl_anomaly_replay_t2",
                            progress=False)["replay"]
    assert evaluated["frames_out"] == c["processed"]
    assert len(evaluated["frames_without_output"]) == c["dropped"]
    with BagFile(tmp_path / "out") as out:                            # the output bag is a regular mcap bag
        scores = [m for _, _, m in out.messages(["/vl_anomaly_replay_t2/anomaly_score"])]
    assert len(scores) == c["processed"]
    assert all(image_msg_to_array(s).dtype == np.float32 and np.isfinite(image_msg_to_array(s)).all() for s in scores)


def test_truncated_bag_replays_only_with_recover(dataset, input_bag, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(input_bag, damaged)
    mcap = next(damaged.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: int(mcap.stat().st_size * 0.35)])
    with pytest.raises(BagError, match="pass --recover"):
        replay(damaged, tmp_path / "out", node_name="vl_anomaly_replay_t3", node_params=NODE_PARAMS, progress=False)
    assert not (tmp_path / "out").exists()
    result = replay(damaged, tmp_path / "out", node_name="vl_anomaly_replay_t3", node_params=NODE_PARAMS,
                    progress=False, recover=True, record_overlay=False)
    assert 0 < result.frames_published < 10
    assert result.node_counters["processed"] == result.frames_published
    evaluated = replay_eval(damaged, tmp_path / "out", tmp_path / "eval", node_name="vl_anomaly_replay_t3",
                            progress=False, recover=True)["replay"]
    # Frames whose image survived but whose ground truth was cut off are replayed but cannot be scored.
    assert evaluated["frames_out"] + evaluated["outputs_without_ground_truth"] == result.frames_published
    assert evaluated["frames_out"] > 0


def test_replay_sqlite3_bag(input_bag, tmp_path):
    """rosbag2's other storage: the same frames copied into a sqlite3 bag replay the same way."""
    from rosbags.rosbag2 import Writer

    sqlite_bag = tmp_path / "sqlite"
    with BagFile(input_bag) as source, Writer(sqlite_bag, version=9) as writer:
        connections = {}
        for topic, msgtype, t_ns, data in source.raw_messages(list(source.topics)):
            if t_ns >= 1767225600200000000:                                  # the first two frames
                break
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=source.store)
            writer.write(connections[topic], t_ns, data)
    assert next(sqlite_bag.glob("*.db3"))
    result = replay(sqlite_bag, tmp_path / "out", node_name="vl_anomaly_replay_t4", node_params=NODE_PARAMS,
                    progress=False, record_overlay=False)
    assert result.frames_published == 2 and result.node_counters["processed"] == 2
    evaluated = replay_eval(sqlite_bag, tmp_path / "out", tmp_path / "eval", node_name="vl_anomaly_replay_t4",
                            progress=False)
    assert evaluated["replay"]["frames_out"] == 2


def test_replay_on_the_onnxruntime_backend(dataset, input_bag, tmp_path):
    """The node's ``backend`` parameter in a replay: the same metrics as the offline evaluation on ONNX Runtime,
    and within 0.1 AP point of PyTorch."""
    params = {**NODE_PARAMS, "backend": "onnxruntime"}
    result = replay(input_bag, tmp_path / "out", node_name="vl_anomaly_replay_t5", node_params=params,
                    progress=False, record_overlay=False)
    assert result.node_counters["processed"] == 10
    replayed = replay_eval(input_bag, tmp_path / "out", tmp_path / "eval", node_name="vl_anomaly_replay_t5",
                           progress=False)
    ap = {}
    for backend in ("onnxruntime", "torch"):
        predictor = create_predictor("espnetv2_s2.0_cityscapes", input_size=(256, 512), backend=backend)
        offline = run_evaluation([dataset], ["msp"], tmp_path / backend, predictor, workers=1)
        ap[backend] = offline["datasets"]["road_anomaly_21"]["scores"]["msp"]["pixel"]["AuPRC"]
    ours = replayed["datasets"]["road_anomaly_21"]["scores"]["msp"]["pixel"]["AuPRC"]
    assert ours == pytest.approx(ap["onnxruntime"], abs=1e-6)
    assert abs(ours - ap["torch"]) < 0.1


def test_the_planner_receives_the_calibrated_obstacle_list(dataset, input_bag, tmp_path):
    """The README's model through the node with its default parameters publishes the obstacle list that
    ``predict`` and ``benchmarks/bench_obstacles.py`` measure — the shipped rules, scene-adaptive threshold
    included, not the node's own defaults on top of them (it once cut candidates to the drivable region, which
    the calibrated per-obstacle overlap rule replaces): the replay's planner view equals the offline counts, and
    the frames' thresholds are the offline ones."""
    params = {**NODE_PARAMS, "model": "lite_ensemble_cityscapes"}
    result = replay(input_bag, tmp_path / "out", node_name="vl_anomaly_replay_t6", node_params=params,
                    progress=False, record_overlay=False)
    assert result.node_counters["processed"] == 10
    replayed = replay_eval(input_bag, tmp_path / "out", tmp_path / "eval", node_name="vl_anomaly_replay_t6",
                           progress=False)
    predictor = create_predictor("lite_ensemble_cityscapes", input_size=(256, 512))
    assert predictor.postprocess_cfg.adaptive_quantile is not None and not predictor.postprocess_cfg.drivable_only
    expected, thresholds = _offline_planner_view(predictor, dataset)
    view = replayed["replay"]["planner_view"]
    assert expected.obstacles > 0 and ObstacleCounts(**{k: view[k] for k in ObstacleCounts.__dataclass_fields__}) \
        == expected
    assert view["threshold"]["min"] == pytest.approx(min(thresholds), rel=1e-6)
    assert view["threshold"]["max"] == pytest.approx(max(thresholds), rel=1e-6)
    assert min(thresholds) < max(thresholds)                 # the threshold follows the scene


def _vl_anomaly(*args, **popen):
    """``vl-anomaly`` as a user starts it from a terminal: SIGINT at its default even where the test run itself
    was started in the background (a non-interactive shell's ``&`` ignores SIGINT, and children inherit that)."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.Popen([str(Path(sys.executable).parent / "vl-anomaly"), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)


def _replay_args(input_bag, out, name):
    params = [arg for k, v in NODE_PARAMS.items() for arg in ("-p", f"{k}:={v}")]
    return ["replay", input_bag, "-o", out, "--node-name", name, "--no-overlay", *params]


def test_output_disk_filling_up_gives_a_clear_error_and_a_readable_bag(input_bag, tmp_path):
    """The output bag's disk fills up while recording (a 6 MiB tmpfs; a 720p score map is 3.7 MB): clear error,
    exit 2, the node stopped, and the messages written before the failure readable with --recover."""
    import subprocess

    disk = tmp_path / "small_disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        out = disk / "out"
        proc = _vl_anomaly(*_replay_args(input_bag, out, "vl_anomaly_replay_full"))
        text, _ = proc.communicate(timeout=600)
        assert proc.returncode == 2, text
        assert "writing the output bag" in text and "No space left on device" in text and "--recover" in text, text
        assert "Traceback" not in text, text
        with BagFile(out, recover=True) as bag:
            topics = [topic for topic, _, _, _ in bag.raw_messages(list(bag.topics))]
        assert any(t.endswith("/anomaly_score") for t in topics), topics
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_ctrl_c_closes_the_output_bag(input_bag, tmp_path, probe):
    """Ctrl-C in the middle of a replay: exit 130, the output bag closed (opens without --recover) with the outputs
    recorded so far. The interrupt waits for the node's own account of two processed frames (its /diagnostics), not
    for a fixed time: under load the first frame can take longer than any fixed sleep (a fresh-clone run beside
    other work recorded no output within 4 s)."""
    import signal

    out = tmp_path / "out"
    proc = _vl_anomaly(*_replay_args(input_bag, out, "vl_anomaly_replay_int"), "--pace", "recorded",
                       "--rate", "0.025")                # 10 frames at 10 Hz played over 40 s
    try:
        probe.wait_diagnostics("vl_anomaly_replay_int", lambda v: int(v["processed"]) >= 2, 240.0)
    except AssertionError:
        proc.kill()
        raise AssertionError("the replay's node never processed two frames:\n" + proc.communicate()[0])
    assert proc.poll() is None, "the replay ended before the interrupt: " + proc.communicate()[0]
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, text
    assert "interrupted: the output bag" in text and "Traceback" not in text, text
    with BagFile(out) as bag:                               # closed properly: opens without --recover
        topics = [topic for topic, _, _, _ in bag.raw_messages(list(bag.topics))]
    assert any(t.endswith("/anomaly_score") for t in topics)
