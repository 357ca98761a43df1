"""Soak: many frames through the real node (its own process, real ROS 2 transport) with its memory sampled.

Frames (real RoadAnomaly21 / RoadObstacle21 images, resized small) are published back to back with at most
``--in-flight`` waiting for their ``~/obstacles`` answer, so the node's ``latest`` queue policy also drops frames
by design now and then. The node's resident memory (``VmRSS``) is sampled every ``--sample-every`` frames.
At the end the node's own counters (``/diagnostics``) must balance — ``received = processed + dropped +
rejected`` with nothing in flight — and the node must exit 0 on SIGINT.

Writes JSON with ``frames``, ``rss_growth_pct`` (last sample vs the first after ``--warmup`` frames), the RSS
samples, the node's counters, frames/s, the CPU model and the date.

    .venv/bin/python benchmarks/soak_node.py --frames 10000 -o benchmarks/results/soak.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("ROS_DOMAIN_ID", str(20 + os.getpid() % 200))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(REPO / "config" / "fastdds_shm.xml")
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="soak_node_log_"))

import cv2  # noqa: E402
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from vl_anomaly import read_image  # noqa: E402
from vl_anomaly.cpu import cpu_model  # noqa: E402
from vl_anomaly.defaults import DEFAULT_MODEL  # noqa: E402
from vl_anomaly.io import write_json  # noqa: E402
from vl_anomaly.paths import anomaly_val_dir  # noqa: E402
from vl_anomaly_msgs.msg import ObstacleArray  # noqa: E402
from vl_anomaly_ros.conversions import array_to_image_msg  # noqa: E402
from vl_anomaly_ros.replay import start_node_process  # noqa: E402

from bench_node import rss_mib  # noqa: E402  (benchmarks/ is the script's folder)

NODE = "vl_anomaly_soak"
COUNTERS = ("received", "processed", "dropped", "rejected", "in_flight")


class SoakProbe:
    """Publisher of the frames, subscriber of the answers and of the node's diagnostics."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("vl_anomaly_soak_probe", context=self.context)
        self.cond = threading.Condition()
        self.answered = 0
        self.diag: dict[str, str] = {}
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(ObstacleArray, f"/{NODE}/obstacles", self._on_answer, reliable)
        self.node.create_subscription(Image, f"/{NODE}/anomaly_score", lambda m: None, reliable)   # published too
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.pub = self.node.create_publisher(Image, "/soak/image", reliable)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _on_answer(self, msg) -> None:
        with self.cond:
            self.answered += 1
            self.cond.notify_all()

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if status.name == f"/{NODE}: frames":
                with self.cond:
                    self.diag = {kv.key: kv.value for kv in status.values} | {"message": status.message}
                    self.cond.notify_all()

    def counters(self) -> dict[str, int]:
        with self.cond:
            return {k: int(self.diag[k]) for k in COUNTERS if k in self.diag}

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--image-size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    parser.add_argument("--input-size", type=int, nargs=2, default=(64, 128), metavar=("H", "W"),
                        help="network input of the node (small: the soak is about the node, not the network)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=2, help="frames published ahead of their answers")
    parser.add_argument("--warmup", type=int, default=1000, help="frames before the RSS reference sample")
    parser.add_argument("--sample-every", type=int, default=100)
    parser.add_argument("-o", "--output", default="benchmarks/results/soak.json")
    args = parser.parse_args()
    if args.warmup >= args.frames:
        parser.error("--warmup must be below --frames")

    root = anomaly_val_dir()
    paths = sorted((root / "RoadAnomaly21" / "images").glob("*.png"))[:4] + \
        sorted((root / "RoadObstacle21" / "images").glob("*.webp"))[:4]
    h, w = args.image_size
    msgs = [array_to_image_msg(cv2.resize(read_image(p), (w, h), interpolation=cv2.INTER_AREA), "rgb8")
            for p in paths]
    params = {"model": args.model, "threads": args.threads, "input_height": args.input_size[0],
              "input_width": args.input_size[1], "input_qos": "default", "diagnostics_period_s": 0.5,
              "publish_overlay": False}
    log_path = Path(os.environ["ROS_LOG_DIR"]) / "soak_node.log"
    with open(log_path, "w") as log:
        node = start_node_process(NODE, params, {"image": "/soak/image"}, log,
                                  params_file=REPO / "config" / "vl_anomaly.yaml")
    probe = SoakProbe()
    samples: list[tuple[int, float]] = []
    try:
        with probe.cond:
            if not probe.cond.wait_for(lambda: probe.diag.get("message", "").startswith("no input"), 180):
                raise RuntimeError(f"node did not come up:\n{log_path.read_text()}")
        deadline = time.monotonic() + 30.0                # the first frame must not go out before the match
        while probe.pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)                                   # and the node's reader has matched us (volatile QoS)
        start = time.monotonic()
        for i in tqdm(range(args.frames), desc="soak", unit="frame", mininterval=5.0):
            msg = msgs[i % len(msgs)]
            msg.header.stamp.sec, msg.header.stamp.nanosec = 1_000_000 + i, 0
            with probe.cond:                     # at most --in-flight frames unanswered (answered or dropped)
                def room():                      # answered now, or dropped/rejected (diagnostics, ≤ 0.5 s late)
                    c = probe.counters()
                    return i - (probe.answered + c.get("dropped", 0) + c.get("rejected", 0)) < args.in_flight
                if not probe.cond.wait_for(room, 60.0):
                    raise RuntimeError(f"node stalled at frame {i}: {probe.diag}\n{log_path.read_text()[-3000:]}")
            probe.pub.publish(msg)
            if i % args.sample_every == 0 or i == args.frames - 1:
                samples.append((i, round(rss_mib(node.pid), 1)))
        seconds = time.monotonic() - start
        with probe.cond:                          # the last frames settle, then a fresh diagnostics message
            probe.cond.wait_for(lambda: sum(probe.counters().get(k, 0) for k in COUNTERS[1:4]) >= args.frames, 60)
        time.sleep(1.2)
        counters = probe.counters()
    finally:
        node.send_signal(signal.SIGINT)
        exit_code = node.wait(60)
        probe.close()
    reference = next(r for i, r in samples if i >= args.warmup)
    balanced = (counters["received"] == counters["processed"] + counters["dropped"] + counters["rejected"]
                and counters["in_flight"] == 0)
    result = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "cpu_model": cpu_model(), "cpus": os.cpu_count(),
        "model": args.model, "torch_threads": args.threads, "image_hw": list(args.image_size),
        "input_hw": list(args.input_size), "frames": args.frames, "published": args.frames,
        "seconds": round(seconds, 1), "frames_per_s": round(args.frames / seconds, 1),
        "node_counters": counters, "accounting_balanced": balanced,
        "lost_in_transport": args.frames - counters["received"],
        "rss_reference_mib": reference, "rss_reference_after_frames": args.warmup,
        "rss_end_mib": samples[-1][1], "rss_max_mib": max(r for _, r in samples),
        "rss_growth_pct": round(100.0 * (samples[-1][1] - reference) / reference, 2),
        "rss_samples_mib": samples, "node_exit_code": exit_code,
    }
    write_json(Path(args.output), result)
    print({k: v for k, v in result.items() if k != "rss_samples_mib"})
    ok = balanced and exit_code == 0 and result["rss_growth_pct"] < 5.0
    print("soak", "passed" if ok else "FAILED", f"(node log: {log_path})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
