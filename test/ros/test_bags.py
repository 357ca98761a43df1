"""Dataset → bag and bag reading (rosbags; no transport): content, formats, and clear errors on broken bags."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import ros_harness  # noqa: F401  (environment)
from ros_harness import message_as_plain, read_with_official_mcap
from vl_anomaly.datasets import load_dataset
from vl_anomaly_ros.bags import (DEFAULT_START_NS, BagError, BagFile, scan_mcap, typestore,
                                 write_dataset_bag)
from vl_anomaly_ros.conversions import image_msg_to_array, stamp_ns


@pytest.fixture(scope="module")
def dataset():
    return load_dataset("road_anomaly_21")


def test_dataset_bag_content(dataset, tmp_path):
    summary = write_dataset_bag(dataset, tmp_path / "bag", rate_hz=4.0, max_frames=3, progress=False)
    assert summary.frames == 3 and summary.duration_s == pytest.approx(0.5)
    meta = yaml.safe_load((tmp_path / "bag" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 9 and meta["storage_identifier"] == "mcap" and meta["message_count"] == 12
    with BagFile(tmp_path / "bag") as bag:
        assert bag.storage() == "mcap"
        assert bag.find_image_topic() == ("/camera/image_raw", "sensor_msgs/msg/Image")
        seen = {"/camera/image_raw": [], "/camera/camera_info": [], "/ground_truth/anomaly_mask": [],
                "/ground_truth/frame_name": []}
        for topic, t_ns, msg in bag.messages(list(seen)):
            seen[topic].append((t_ns, msg))
    assert all(len(v) == 3 for v in seen.values())
    for i in range(3):
        fid, rgb, label = dataset.load(i)
        t_ns, image = seen["/camera/image_raw"][i]
        assert t_ns == stamp_ns(image) == DEFAULT_START_NS + i * 250_000_000
        assert image.encoding == "rgb8" and image.header.frame_id == "camera_optical"
        np.testing.assert_array_equal(image_msg_to_array(image), rgb)
        gt = seen["/ground_truth/anomaly_mask"][i][1]
        assert stamp_ns(gt) == t_ns and gt.encoding == "mono8"
        np.testing.assert_array_equal(image_msg_to_array(gt), label)
        info = seen["/camera/camera_info"][i][1]
        assert (info.width, info.height) == (rgb.shape[1], rgb.shape[0]) and not info.k.any()
        assert seen["/ground_truth/frame_name"][i] == (t_ns, seen["/ground_truth/frame_name"][i][1])
        assert seen["/ground_truth/frame_name"][i][1].data == f"road_anomaly_21/{fid}"


def test_compressed_bag_and_custom_topics(dataset, tmp_path):
    write_dataset_bag(dataset, tmp_path / "bag", max_frames=2, compressed="png", image_topic="/front/image",
                      progress=False)
    with BagFile(tmp_path / "bag") as bag:
        topic, msgtype = bag.find_image_topic()
        assert (topic, msgtype) == ("/front/image/compressed", "sensor_msgs/msg/CompressedImage")
        first = next(m for _, _, m in bag.messages([topic]))
    decoded = cv2.imdecode(np.asarray(first.data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(decoded, dataset.load(0)[1])          # PNG: lossless


@pytest.mark.parametrize("compressed", [None, "png"])
def test_our_bags_decode_with_the_official_mcap_libraries(dataset, tmp_path, compressed):
    """Foxglove's mcap + mcap-ros2-support (no code of ours) decode every message, equal to the source frames and
    to what our reader (rosbags) returns."""
    frames = 3
    write_dataset_bag(dataset, tmp_path / "bag", max_frames=frames, compressed=compressed, progress=False)
    official = read_with_official_mcap(tmp_path / "bag")
    assert len(official) == 4 * frames
    image_topic = "/camera/image_raw/compressed" if compressed else "/camera/image_raw"
    by_topic: dict[str, list] = {}
    for topic, t_ns, msg in official:
        assert t_ns == msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec if hasattr(msg, "header") \
            else True
        by_topic.setdefault(topic, []).append((t_ns, msg))
    assert sorted(by_topic) == sorted([image_topic, "/camera/camera_info", "/ground_truth/anomaly_mask",
                                       "/ground_truth/frame_name"])
    for i in range(frames):
        fid, rgb, label = dataset.load(i)
        t_ns, image = by_topic[image_topic][i]
        assert t_ns == DEFAULT_START_NS + i * 100_000_000
        if compressed:
            assert image.format == "png"
            decoded = cv2.imdecode(np.frombuffer(image.data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        else:
            assert (image.encoding, image.height, image.width, image.step) == ("rgb8", *rgb.shape[:2], rgb.shape[1] * 3)
            decoded = np.frombuffer(image.data, np.uint8).reshape(rgb.shape)
        np.testing.assert_array_equal(decoded, rgb)
        gt = by_topic["/ground_truth/anomaly_mask"][i][1]
        np.testing.assert_array_equal(np.frombuffer(gt.data, np.uint8).reshape(label.shape), label)
        assert by_topic["/ground_truth/frame_name"][i][1].data == f"road_anomaly_21/{fid}"
        info = by_topic["/camera/camera_info"][i][1]
        assert (info.width, info.height) == (rgb.shape[1], rgb.shape[0])
    with BagFile(tmp_path / "bag") as bag:
        ours = list(bag.messages(list(by_topic)))
    assert [(t, ns, message_as_plain(m)) for t, ns, m in ours] == \
        [(t, ns, message_as_plain(m)) for t, ns, m in official]


def test_truncated_mcap_is_recovered_with_the_official_reader(tmp_path):
    """scan_mcap (recovery of a bag cut off mid-write) reads with mcap's stream reader: complete chunks, compressed
    ones included, come back equal to what was written; a chunk or record cut off contributes nothing."""
    from mcap_ros2.writer import Writer

    store = typestore()
    path = tmp_path / "zstd.mcap"
    with open(path, "wb") as f:
        writer = Writer(f, chunk_size=4096)                        # mcap's default compression: zstd
        schema = writer.register_msgdef("std_msgs/msg/String", "string data")
        for i in range(200):
            writer.write_message("/chatter", schema, {"data": f"message {i} " + "x" * 100}, log_time=i, publish_time=i)
        writer.finish()
    complete, used, stop, definitions = scan_mcap(path)
    assert stop == "footer" and len(complete) == 200 and definitions == {"std_msgs/msg/String": "string data"}
    assert [store.deserialize_cdr(data, "std_msgs/msg/String").data for _, _, _, data in complete] == \
        [f"message {i} " + "x" * 100 for i in range(200)]
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    partial, used, stop, _ = scan_mcap(cut)
    assert 0 < len(partial) < 200 and "cut off" in stop, stop
    assert [m[3] for m in partial] == [m[3] for m in complete[: len(partial)]]
    assert used <= cut.stat().st_size
    (tmp_path / "junk.mcap").write_bytes(b"not an mcap file at all")
    assert scan_mcap(tmp_path / "junk.mcap")[:2] == ([], 0)


def test_sqlite3_bags_are_read_too(tmp_path):
    from rosbags.rosbag2 import Writer

    store = typestore()
    Image = store.types["sensor_msgs/msg/Image"]
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    with Writer(tmp_path / "sq", version=9) as writer:                 # rosbags' default: sqlite3
        conn = writer.add_connection("/cam/img", "sensor_msgs/msg/Image", typestore=store)
        msg = Image(header=Header(stamp=Time(sec=5, nanosec=7), frame_id="c"), height=2, width=3, encoding="bgr8",
                    is_bigendian=0, step=9, data=pixels.reshape(-1))
        writer.write(conn, 5_000_000_007, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    with BagFile(tmp_path / "sq") as bag:
        assert bag.storage() == "sqlite3" and bag.find_image_topic()[0] == "/cam/img"
        (_, t_ns, read), = list(bag.messages(["/cam/img"]))
    assert t_ns == stamp_ns(read) == 5_000_000_007
    np.testing.assert_array_equal(image_msg_to_array(read), pixels)


def test_broken_bags_name_the_file_and_what_was_read(dataset, tmp_path):
    write_dataset_bag(dataset, tmp_path / "bag", max_frames=6, progress=False)
    mcap = next((tmp_path / "bag").glob("*.mcap"))
    truncated = tmp_path / "truncated"
    shutil.copytree(tmp_path / "bag", truncated)
    (truncated / mcap.name).write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    with pytest.raises(BagError) as err:
        with BagFile(truncated) as bag:
            list(bag.messages(["/camera/image_raw"]))
    text = str(err.value)
    assert str(truncated) in text and "truncated or corrupt" in text and "--recover" in text
    recoverable = int(text.split(" complete messages")[0].rsplit(" ", 1)[1])
    assert 0 < recoverable < 24
    with BagFile(truncated, recover=True) as bag:                       # the intact prefix, byte for byte
        images = [m for _, _, m in bag.messages(["/camera/image_raw"])]
    assert 0 < len(images) < 6
    for i, image in enumerate(images):
        np.testing.assert_array_equal(image_msg_to_array(image), dataset.load(i)[1])
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tmp_path / "bag", corrupt)
    (corrupt / "metadata.yaml").write_text("rosbag2_bagfile_information: [not, a, bag")
    with pytest.raises(BagError, match="cannot open bag .*corrupt"):
        BagFile(corrupt)
    with pytest.raises(BagError, match="does not exist"):
        BagFile(tmp_path / "missing")
    with pytest.raises(BagError, match="already exists"):
        write_dataset_bag(dataset, tmp_path / "bag", max_frames=1, progress=False)
    with pytest.raises(BagError, match="no topic /nope"):
        with BagFile(tmp_path / "bag") as bag:
            bag.find_image_topic("/nope")


def test_make_bag_command(tmp_path):
    """Through the installed ``vl-anomaly`` command: the ROS package's commands are discovered as plugins."""
    exe = str(Path(sys.executable).parent / "vl-anomaly")
    done = subprocess.run([exe, "make-bag", "--dataset", "road_anomaly_21", "-o", str(tmp_path / "b"),
                           "--max-frames", "2", "--rate", "5"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote 2 frames of road_anomaly_21" in done.stdout
    again = subprocess.run([exe, "make-bag", "--dataset", "road_anomaly_21", "-o", str(tmp_path / "b")],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr
