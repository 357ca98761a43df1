"""rosbag2 files through the ``rosbags`` library (pure Python; no rclpy, no ``ros2 bag`` needed).

* :func:`write_dataset_bag` turns a labelled dataset into an **mcap** bag (rosbag2 format version 9, what
  Jazzy's ``ros2 bag`` reads): camera images, ``camera_info``, the ground-truth mask on its own topic and the
  frame's dataset name, all with the same header stamp per frame.
* :class:`BagFile` opens any rosbag2 bag (mcap or sqlite3), finds topics by type and iterates messages; a
  truncated or corrupt bag raises :class:`BagError` naming the file and what could still be read.

Topic conventions of the bags we write (all overridable):

==============================  =================================  ==========================================
topic                           type                               content
==============================  =================================  ==========================================
``/camera/image_raw``           sensor_msgs/Image (rgb8)           the frame (or ``…/compressed``, JPEG/PNG)
``/camera/camera_info``         sensor_msgs/CameraInfo             size only: the datasets have no intrinsics
``/ground_truth/anomaly_mask``  sensor_msgs/Image (mono8)          0 in-distribution, 1 anomaly, 255 void
``/ground_truth/frame_name``    std_msgs/String                    ``<dataset>/<frame id>``
==============================  =================================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from vl_anomaly.errors import VLAnomalyError

DEFAULT_IMAGE_TOPIC = "/camera/image_raw"
DEFAULT_INFO_TOPIC = "/camera/camera_info"
DEFAULT_GT_TOPIC = "/ground_truth/anomaly_mask"
DEFAULT_NAME_TOPIC = "/ground_truth/frame_name"
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
#: first stamp of the bags we write (2026-01-01T00:00:00Z): reproducible bags, plausible wall-clock times.
DEFAULT_START_NS = 1_767_225_600 * 1_000_000_000


class BagError(VLAnomalyError):
    """A bag that cannot be read or written as asked; the message names the file and what was recoverable."""


def typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)


def _reliable_qos():
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, 10, QosReliability.RELIABLE, QosDurability.VOLATILE, zero, zero,
               QosLiveliness.AUTOMATIC, zero, False)


def _header(store, t_ns: int, frame_id: str):
    Time = store.types["builtin_interfaces/msg/Time"]
    Header = store.types["std_msgs/msg/Header"]
    return Header(stamp=Time(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000), frame_id=frame_id)


def _image(store, array: np.ndarray, encoding: str, header):
    array = np.ascontiguousarray(array)
    return store.types[IMAGE_TYPE](header=header, height=array.shape[0], width=array.shape[1], encoding=encoding,
                                   is_bigendian=0, step=array.strides[0], data=array.reshape(-1).view(np.uint8))


@dataclass
class BagSummary:
    """What :func:`write_dataset_bag` wrote."""

    path: Path
    frames: int
    topics: dict[str, str]
    duration_s: float

    def to_dict(self) -> dict:
        return {"path": str(self.path), "frames": self.frames, "topics": self.topics,
                "duration_s": round(self.duration_s, 3)}


def write_dataset_bag(dataset, out: Path, rate_hz: float = 10.0, image_topic: str = DEFAULT_IMAGE_TOPIC,
                      info_topic: str = DEFAULT_INFO_TOPIC, gt_topic: str = DEFAULT_GT_TOPIC,
                      name_topic: str = DEFAULT_NAME_TOPIC, frame_id: str = "camera_optical",
                      compressed: str | None = None, max_frames: int | None = None,
                      start_ns: int = DEFAULT_START_NS, progress: bool = True) -> BagSummary:
    """Write ``dataset`` (a :class:`vl_anomaly.datasets.AnomalyDataset`) to an mcap bag at ``out`` (a folder).

    Frame ``i`` gets stamp and bag time ``start_ns + i / rate_hz``. Images are rgb8 (lossless) unless
    ``compressed`` is ``"jpeg"`` or ``"png"`` (then ``<image_topic>/compressed``). Labels are written as mono8
    in {0, 1, 255}.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from tqdm import tqdm

    if rate_hz <= 0:
        raise BagError(f"rate must be > 0 Hz, got {rate_hz}")
    if compressed not in (None, "jpeg", "png"):
        raise BagError(f"compressed must be 'jpeg' or 'png', got {compressed!r}")
    out = Path(out)
    if out.exists():
        raise BagError(f"{out} already exists; rosbag2 bags are folders and are never overwritten")
    store = typestore()
    count = len(dataset) if max_frames is None else min(max_frames, len(dataset))
    qos = [_reliable_qos()]
    img_topic = f"{image_topic}/compressed" if compressed else image_topic
    img_type = COMPRESSED_TYPE if compressed else IMAGE_TYPE
    topics = {img_topic: img_type, info_topic: "sensor_msgs/msg/CameraInfo", gt_topic: IMAGE_TYPE,
              name_topic: "std_msgs/msg/String"}
    String = store.types["std_msgs/msg/String"]
    CameraInfo = store.types["sensor_msgs/msg/CameraInfo"]
    Roi = store.types["sensor_msgs/msg/RegionOfInterest"]
    with Writer(out, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {topic: writer.add_connection(topic, msgtype, typestore=store, offered_qos_profiles=qos)
                       for topic, msgtype in topics.items()}
        for i in tqdm(range(count), desc=f"bag {dataset.name}", unit="frame", disable=not progress):
            fid, rgb, label = dataset.load(i)
            t_ns = start_ns + round(i * 1e9 / rate_hz)
            header = _header(store, t_ns, frame_id)
            if compressed:
                ok, data = cv2.imencode(".jpg" if compressed == "jpeg" else ".png",
                                        cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                msg = store.types[COMPRESSED_TYPE](header=header, format=compressed,
                                                   data=np.frombuffer(data.tobytes(), np.uint8))
            else:
                msg = _image(store, rgb, "rgb8", header)
            info = CameraInfo(header=header, height=rgb.shape[0], width=rgb.shape[1], distortion_model="",
                              d=np.zeros(0), k=np.zeros(9), r=np.zeros(9), p=np.zeros(12), binning_x=0,
                              binning_y=0, roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
            writer.write(connections[img_topic], t_ns, store.serialize_cdr(msg, img_type))
            writer.write(connections[info_topic], t_ns, store.serialize_cdr(info, "sensor_msgs/msg/CameraInfo"))
            writer.write(connections[gt_topic], t_ns,
                         store.serialize_cdr(_image(store, label.astype(np.uint8), "mono8", header), IMAGE_TYPE))
            writer.write(connections[name_topic], t_ns,
                         store.serialize_cdr(String(data=f"{dataset.name}/{fid}"), "std_msgs/msg/String"))
    return BagSummary(out, count, topics, (count - 1) / rate_hz if count else 0.0)


_MCAP_MAGIC = b"\x89MCAP0\r\n"


def scan_mcap(path: Path) -> tuple[list[tuple[str, str, int, bytes]], int, str]:
    """Linear scan of a (possibly truncated) mcap file without its summary section.

    Returns ``(messages, bytes_used, stop_reason)``: every complete message record up to the first incomplete
    or unreadable record, as ``(topic, message type, log time ns, CDR bytes)``. Reads top-level records and the
    records inside uncompressed chunks (what rosbags and rosbag2 write by default); compressed chunks stop the
    scan. MCAP record layout: opcode u8, length u64, content (https://mcap.dev/spec).
    """
    import struct

    data = Path(path).read_bytes()
    if not data.startswith(_MCAP_MAGIC):
        return [], 0, "no MCAP magic at the start of the file"
    schemas: dict[int, str] = {}
    channels: dict[int, tuple[str, str]] = {}
    messages: list[tuple[str, str, int, bytes]] = []

    def string(buf: bytes, at: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<I", buf, at)
        return buf[at + 4: at + 4 + n].decode(), at + 4 + n

    def records(buf: bytes, start: int, end: int):
        at = start
        while at + 9 <= end:
            opcode = buf[at]
            (length,) = struct.unpack_from("<Q", buf, at + 1)
            if at + 9 + length > end:
                return at, f"record at byte {at} is cut off ({end - at - 9} of {length} bytes)"
            yield opcode, at + 9, at + 9 + length
            at += 9 + length
        return at, "end of data" if at == end else f"{end - at} trailing bytes at {at}"

    def handle(opcode: int, a: int, b: int) -> str | None:
        if opcode == 0x03:                                                   # Schema
            (sid,) = struct.unpack_from("<H", data, a)
            schemas[sid], _ = string(data, a + 2)
        elif opcode == 0x04:                                                 # Channel
            cid, sid = struct.unpack_from("<HH", data, a)
            topic, _ = string(data, a + 4)
            channels[cid] = (topic, schemas.get(sid, ""))
        elif opcode == 0x05:                                                 # Message
            cid, _, log_time, _ = struct.unpack_from("<HIQQ", data, a)
            if cid in channels:
                topic, msgtype = channels[cid]
                messages.append((topic, msgtype, log_time, data[a + 22: b]))
        elif opcode == 0x06:                                                 # Chunk
            at = a + 8 + 8 + 8 + 4
            compression, at = string(data, at)
            (size,) = struct.unpack_from("<Q", data, at)
            if compression:
                return f"compressed chunk ({compression}) at byte {a - 9}"
            inner = records(data, at + 8, at + 8 + size)
            try:
                while True:
                    reason = handle(*next(inner))
                    if reason:
                        return reason
            except StopIteration:
                pass
        elif opcode == 0x02:                                                 # Footer: the file is complete
            return "footer"
        return None

    walker = records(data, len(_MCAP_MAGIC), len(data))
    used, stop = len(_MCAP_MAGIC), "end of data"
    try:
        while True:
            opcode, a, b = next(walker)
            reason = handle(opcode, a, b)
            used = b
            if reason:
                stop = reason
                break
    except StopIteration as end:
        used, stop = end.value if end.value else (used, stop)
    except struct.error as exc:
        stop = f"unreadable record after byte {used} ({exc})"
    return messages, used, stop


def _topic_counts(messages) -> dict[str, int]:
    counts: dict[str, int] = {}
    for topic, _, _, _ in messages:
        counts[topic] = counts.get(topic, 0) + 1
    return counts


class BagFile:
    """A rosbag2 bag (mcap or sqlite3) opened for reading. Use as a context manager."""

    def __init__(self, path: str | Path, recover: bool = False) -> None:
        """Open ``path``. A truncated mcap bag is refused with a :class:`BagError` that says how many complete
        messages precede the damage; with ``recover=True`` those messages are read instead."""
        from rosbags.rosbag2 import Reader

        self.path = Path(path)
        self.recovered: list[tuple[str, str, int, bytes]] | None = None
        self.store = typestore()
        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        try:
            self.reader = Reader(self.path)
            self.reader.open()
        except Exception as exc:                                               # noqa: BLE001 — rosbags raises many
            found = self._recoverable()
            if found is None:
                raise BagError(f"cannot open bag {self.path}: {type(exc).__name__}: {exc} (nothing could be "
                               "read; a rosbag2 bag is a folder with metadata.yaml and .mcap or .db3 files)") from exc
            messages, used, stop, file = found
            if not recover:
                counts = ", ".join(f"{t} {n}" for t, n in _topic_counts(messages).items()) or "none"
                raise BagError(f"cannot open bag {self.path}: {type(exc).__name__}: {str(exc).rstrip('.')}. The mcap file {file} is "
                               f"truncated or corrupt ({stop}); {len(messages)} complete messages in its first "
                               f"{used} bytes are recoverable ({counts}); pass --recover to use them") from exc
            self.recovered = messages
            self.reader = None

    def _recoverable(self):
        files = sorted(self.path.glob("*.mcap")) if self.path.is_dir() else []
        if len(files) != 1:
            return None
        messages, used, stop = scan_mcap(files[0])
        return messages, used, stop, files[0]

    def __enter__(self) -> "BagFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()

    @property
    def topics(self) -> dict[str, str]:
        """``{topic: message type}``."""
        if self.recovered is not None:
            return {t: ty for t, ty, _, _ in self.recovered}
        return {c.topic: c.msgtype for c in self.reader.connections}

    def message_count(self, topic: str) -> int:
        if self.recovered is not None:
            return sum(1 for t, _, _, _ in self.recovered if t == topic)
        return sum(c.msgcount for c in self.reader.connections if c.topic == topic)

    def storage(self) -> str:
        """``mcap`` or ``sqlite3``, from the bag's data files."""
        return "mcap" if any(self.path.glob("*.mcap")) else "sqlite3"

    def find_image_topic(self, topic: str | None = None) -> tuple[str, str]:
        """``(topic, type)`` of the camera images: ``topic`` if given, else the only Image/CompressedImage topic
        that is not ground truth or an output of our node."""
        topics = self.topics
        if topic is not None:
            if topic not in topics:
                raise BagError(f"bag {self.path} has no topic {topic}; topics: {', '.join(sorted(topics))}")
            if topics[topic] not in (IMAGE_TYPE, COMPRESSED_TYPE):
                raise BagError(f"topic {topic} in {self.path} is {topics[topic]}, not an image")
            return topic, topics[topic]
        candidates = [t for t, ty in topics.items() if ty in (IMAGE_TYPE, COMPRESSED_TYPE)
                      and not t.startswith("/ground_truth") and not t.rsplit("/", 1)[-1] in
                      ("anomaly_score", "obstacle_mask", "overlay")]
        if len(candidates) != 1:
            raise BagError(f"bag {self.path} has {len(candidates)} camera image topics "
                           f"({', '.join(candidates) or 'none'}); choose one with --topic")
        return candidates[0], topics[candidates[0]]

    def raw_messages(self, topics: list[str]) -> Iterator[tuple[str, str, int, bytes]]:
        """``(topic, type, bag time ns, CDR bytes)`` in bag-time order. A read failure mid-way raises
        :class:`BagError` saying how many messages were read before it."""
        if self.recovered is not None:
            yield from sorted((m for m in self.recovered if m[0] in topics), key=lambda m: m[2])
            return
        connections = [c for c in self.reader.connections if c.topic in topics]
        count = 0
        try:
            for connection, t_ns, data in self.reader.messages(connections=connections):
                count += 1
                yield connection.topic, connection.msgtype, t_ns, bytes(data)
        except BagError:
            raise
        except Exception as exc:                                               # noqa: BLE001
            raise BagError(f"bag {self.path} is truncated or corrupt: {type(exc).__name__}: {exc}; "
                           f"{count} messages of {', '.join(topics)} were read before the error") from exc

    def messages(self, topics: list[str]) -> Iterator[tuple[str, int, object]]:
        """``(topic, bag time ns, deserialised message)``."""
        for topic, msgtype, t_ns, data in self.raw_messages(topics):
            try:
                yield topic, t_ns, self.store.deserialize_cdr(data, msgtype)
            except Exception as exc:                                           # noqa: BLE001
                raise BagError(f"bag {self.path}: a {msgtype} message on {topic} at {t_ns} ns cannot be "
                               f"deserialised ({exc})") from exc
