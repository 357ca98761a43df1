"""Node end-to-end latency vs the bare core on the same frames, and the node's memory over a long run.

One run measures both, interleaved frame by frame so machine noise hits both alike:

* **core**: ``AnomalyPredictor.predict(rgb)`` in this process (what ``vl-anomaly predict`` runs per frame);
* **node**: the real node in its own process; this process publishes the frame (``sensor_msgs/Image`` bgr8)
  and waits for all the outputs a planner uses (``~/anomaly_score`` 32FC1, ``~/obstacle_mask``, ``~/obstacles``).
  End-to-end = publish → last of them received, so it includes both transports, (de)serialisation, conversion
  and all publishing;
* **node internal**: receive → last publish, from the node's diagnostics (``latency_ms``).

Then ``--long-frames`` frames are streamed through the node at its own pace (one in flight) while its resident
memory (``VmRSS``) is sampled; growth after warm-up is reported. Writes JSON (``-o``) and prints a summary.

    .venv/bin/python benchmarks/bench_node.py --frames 10 --long-frames 600 -o benchmarks/results/node.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
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
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="bench_node_log_"))

import numpy as np  # noqa: E402
import rclpy  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(REPO))
from vl_anomaly import create_predictor, read_image  # noqa: E402
from vl_anomaly.deploy import BACKENDS  # noqa: E402
from vl_anomaly.cpu import cpu_model, set_threads  # noqa: E402
from vl_anomaly.defaults import DEFAULT_MODEL  # noqa: E402
from vl_anomaly.io import write_json  # noqa: E402
from vl_anomaly.paths import shared_dir  # noqa: E402
from vl_anomaly_msgs.msg import ObstacleArray  # noqa: E402
from vl_anomaly_ros.conversions import array_to_image_msg  # noqa: E402
from vl_anomaly_ros.replay import start_node_process  # noqa: E402

NODE = "vl_anomaly_bench"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Probe:
    def __init__(self, overlay: bool) -> None:
        rclpy.init()
        self.node = rclpy.create_node("vl_anomaly_bench_probe")
        self.cond = threading.Condition()
        self.done: dict[str, dict[int, float]] = {"obstacles": {}, "anomaly_score": {}, "obstacle_mask": {}}
        self.diag: dict[str, str] = {}
        self.node.create_subscription(ObstacleArray, f"/{NODE}/obstacles", lambda m: self._on_output("obstacles", m), 10)
        for topic in ("anomaly_score", "obstacle_mask"):          # what a planner subscribes
            self.node.create_subscription(Image, f"/{NODE}/{topic}", lambda m, t=topic: self._on_output(t, m), 10)
        if overlay:
            self.node.create_subscription(Image, f"/{NODE}/overlay", lambda m: None, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.pub = self.node.create_publisher(Image, "/image", 10)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _on_output(self, topic: str, msg) -> None:
        now = time.perf_counter()
        with self.cond:
            self.done[topic][msg.header.stamp.sec] = now
            self.cond.notify_all()

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            if status.name == f"/{NODE}: frames":
                with self.cond:
                    self.diag = {kv.key: kv.value for kv in status.values} | {"message": status.message}
                    self.cond.notify_all()

    def send_and_wait(self, msg, sec: int, timeout: float = 120.0) -> float:
        msg.header.stamp.sec = sec
        start = time.perf_counter()
        self.pub.publish(msg)
        with self.cond:
            if not self.cond.wait_for(lambda: all(sec in d for d in self.done.values()), timeout):
                raise RuntimeError(f"no output for frame {sec}")
            return max(d[sec] for d in self.done.values()) - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="node parameter backend, also used by the core predictor")
    parser.add_argument("--device", default="cpu", help="node parameter device (cuda on a vehicle; never run here)")
    parser.add_argument("--frames", type=int, default=10, help="RoadObstacle21 frames for the latency comparison")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the frames")
    parser.add_argument("--long-frames", type=int, default=600, help="frames of the memory run (0 = skip)")
    parser.add_argument("--overlay", action="store_true", help="also subscribe ~/overlay (the node then draws it)")
    parser.add_argument("-o", "--output", default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    folder = shared_dir() / "data" / "anomaly_val" / "RoadObstacle21" / "images"
    paths = sorted(folder.glob("*.webp"), key=lambda p: int(p.stem))[: args.frames]
    images = [read_image(p) for p in paths]

    params = {"model": args.model, "threads": args.threads, "diagnostics_period_s": 0.5, "input_qos": "default",
              "input_qos_depth": 5, "backend": args.backend, "device": args.device}
    if args.input_size:
        params.update(input_height=args.input_size[0], input_width=args.input_size[1])
    log = open(Path(os.environ["ROS_LOG_DIR"]) / "node.log", "w")
    node = start_node_process(NODE, params, {}, log, params_file=REPO / "config" / "vl_anomaly.yaml")
    probe = Probe(args.overlay)
    predictor = create_predictor(args.model, input_size=tuple(args.input_size) if args.input_size else None,
                                 drivable_only=True, backend=args.backend, device=args.device)
    try:
        with probe.cond:
            assert probe.cond.wait_for(lambda: probe.diag.get("message", "").startswith("no input"), 180), \
                "node did not come up"
        msgs = [array_to_image_msg(np.ascontiguousarray(im[..., ::-1]), "bgr8") for im in images]
        probe.send_and_wait(msgs[0], 1)                                 # warm-up of both
        predictor.predict(images[0])
        core, e2e = [], []
        sec = 10
        for _ in range(args.repeats):
            for rgb, msg in tqdm(list(zip(images, msgs)), desc="latency", unit="frame"):
                start = time.perf_counter()
                predictor.predict(rgb)
                core.append(time.perf_counter() - start)
                e2e.append(probe.send_and_wait(msg, sec))
                sec += 1
        time.sleep(1.2)
        with probe.cond:
            diag = dict(probe.diag)
        result = {
            "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
            "cpu_model": cpu_model(), "cpus": os.cpu_count(), "torch_threads": args.threads,
            "model": args.model, "backend": args.backend, "device": args.device,
            "input_size": args.input_size or "weights' default", "image": "1920x1080 bgr8",
            "overlay_subscribed": args.overlay, "frames": len(core),
            "core_ms_median": 1e3 * float(np.median(core)), "node_end_to_end_ms_median": 1e3 * float(np.median(e2e)),
            "node_internal_latency_ms_p50": float(diag["latency_ms.p50"]),
            "node_inference_ms_p50": float(diag["inference_ms.p50"]),
        }
        result["ratio_end_to_end_over_core"] = result["node_end_to_end_ms_median"] / result["core_ms_median"]
        result["ratio_internal_over_core"] = result["node_internal_latency_ms_p50"] / result["core_ms_median"]
        if args.long_frames:
            samples = []
            for i in tqdm(range(args.long_frames), desc="memory", unit="frame"):
                probe.send_and_wait(msgs[i % len(msgs)], 100_000 + i)
                if i % 25 == 0 or i == args.long_frames - 1:
                    samples.append((i, rss_mib(node.pid)))
            warm = [r for i, r in samples if i >= 50] or [samples[-1][1]]
            result.update(long_frames=args.long_frames, rss_samples_mib=samples, rss_after_50_frames_mib=warm[0],
                          rss_end_mib=samples[-1][1], rss_growth_after_warmup_mib=samples[-1][1] - warm[0],
                          rss_max_mib=max(r for _, r in samples))
        time.sleep(1.0)
        with probe.cond:
            result["node_counters"] = {k: v for k, v in probe.diag.items()
                                       if k.split(".")[0] in ("received", "processed", "dropped", "rejected")}
    finally:
        node.send_signal(signal.SIGINT)
        node.wait(30)
        log.close()
        probe.executor.shutdown()
        rclpy.try_shutdown()
    print(json.dumps({k: v for k, v in result.items() if k != "rss_samples_mib"}, indent=1))
    if args.output:
        write_json(Path(args.output), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
