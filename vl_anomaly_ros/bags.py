"""rosbag2 files through the ``rosbags`` library (pure Python; no rclpy, no ``ros2 bag`` needed).

* :func:`write_dataset_bag` turns a labelled dataset into an **mcap** bag (rosbag2 format version 9, what
  Jazzy's ``ros2 bag`` reads): camera images, ``camera_info``, the ground-truth mask on its own topic and the
  frame's dataset name, all with the same header stamp per frame.
* :class:`BagFile` opens any rosbag2 bag (mcap or sqlite3), finds topics by type and iterates messages (types the
  bag defines and our type store lacks are learnt from the bag); a truncated or corrupt bag raises
  :class:`BagError` naming the file and what could still be read, and :func:`scan_mcap` recovers the intact part
  of a truncated mcap file with the official ``mcap`` library's stream reader.

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
from typing import Iterator, NamedTuple

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


class _ExactReads:
    """A binary file whose ``read(n)`` returns exactly ``n`` bytes or raises ``mcap.exceptions.EndOfFile``.

    The official reader's stream raises only when a read returns nothing: a record cut off in the middle would be
    returned short and parsed as complete (a truncated image accepted as a frame). With this wrapper a cut-off
    record ends the scan instead.
    """

    def __init__(self, file) -> None:
        self._file = file

    def read(self, n: int = -1) -> bytes:
        from mcap.exceptions import EndOfFile

        data = self._file.read(n)
        if n is not None and n >= 0 and len(data) < n:
            raise EndOfFile(f"record cut off: {len(data)} of {n} bytes left in the file")
        return data

    def tell(self) -> int:
        return self._file.tell()


class McapScan(NamedTuple):
    """What :func:`scan_mcap` could read."""

    messages: list[tuple[str, str, int, bytes]]      #: (topic, message type, log time ns, CDR bytes)
    bytes_used: int                                   #: end of the last complete top-level record
    stop_reason: str                                  #: "footer" for a complete file
    definitions: dict[str, str]                       #: message type → its ros2msg schema text, as stored


def scan_mcap(path: Path) -> McapScan:
    """Sequential read of a (possibly truncated) mcap file with the official ``mcap`` library's stream reader,
    which needs no summary section (a truncated file has none).

    Returns every complete message record up to the first incomplete or unreadable record, as ``(topic, message
    type, log time ns, CDR bytes)``, and the message definitions stored in the file (:class:`McapScan`). Chunks are
    read whole (compressed ones too: zstd and lz4) and their CRCs checked, so a cut-off or damaged chunk
    contributes nothing.
    ``bytes_used`` is the end of the last complete top-level record.
    """
    from mcap.records import Channel, Footer, Message, Schema
    from mcap.stream_reader import StreamReader

    schemas: dict[int, str] = {}
    definitions: dict[str, str] = {}
    channels: dict[int, tuple[str, str]] = {}
    messages: list[tuple[str, str, int, bytes]] = []
    with open(path, "rb") as file:
        stream = _ExactReads(file)
        used, stop = 0, "end of data"
        try:
            for record in StreamReader(stream, validate_crcs=True).records:
                if isinstance(record, Schema):
                    schemas[record.id] = record.name
                    if record.encoding == "ros2msg":
                        definitions[record.name] = bytes(record.data).decode(errors="replace")
                elif isinstance(record, Channel):
                    channels[record.id] = (record.topic, schemas.get(record.schema_id, ""))
                elif isinstance(record, Message) and record.channel_id in channels:
                    topic, msgtype = channels[record.channel_id]
                    messages.append((topic, msgtype, record.log_time, bytes(record.data)))
                elif isinstance(record, Footer):
                    stop = "footer"
                used = stream.tell()
        except Exception as exc:                                   # noqa: BLE001 — EndOfFile, CRC, struct errors
            reason = str(exc) or type(exc).__name__
            stop = f"{reason} after byte {used}" if used else f"not an mcap file ({reason})"
    return McapScan(messages, used, stop, definitions)


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
            (messages, used, stop, definitions), file = found
            if not recover:
                counts = ", ".join(f"{t} {n}" for t, n in _topic_counts(messages).items()) or "none"
                raise BagError(f"cannot open bag {self.path}: {type(exc).__name__}: {str(exc).rstrip('.')}. The mcap file {file} is "
                               f"truncated or corrupt ({stop}); {len(messages)} complete messages in its first "
                               f"{used} bytes are recoverable ({counts}); pass --recover to use them") from exc
            self.recovered = messages
            self.reader = None
            self._register_types(definitions)
            return
        self._register_types({c.msgtype: c.msgdef.data for c in self.reader.connections
                              if getattr(c.msgdef, "data", None)})

    def _register_types(self, definitions: dict[str, str]) -> None:
        """Teach the type store the message types the bag defines and it lacks (our vl_anomaly_msgs, a vehicle's
        own types), from the definitions stored in the bag, as ``ros2 bag`` and Foxglove do. A definition that
        does not parse leaves that type undecodable (a clear error when one of its messages is read)."""
        from rosbags.typesys import get_types_from_msg

        for msgtype, text in definitions.items():
            if msgtype in self.store.types or not text:
                continue
            try:
                types = get_types_from_msg(text, msgtype)
                self.store.register({k: v for k, v in types.items() if k not in self.store.types})
            except Exception:                                                 # noqa: BLE001 — reported on read
                pass

    def _recoverable(self):
        files = sorted(self.path.glob("*.mcap")) if self.path.is_dir() else []
        if len(files) != 1:
            return None
        return scan_mcap(files[0]), files[0]

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
