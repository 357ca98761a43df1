"""``vl-anomaly`` sub-commands that need ROS 2: ``make-bag``, ``replay``, ``replay-eval`` and ``ros-demo``.

The core's command line (``model/``, ROS-free) discovers them through the ``vl_anomaly.commands`` entry-point
group, so they appear in ``vl-anomaly --help`` exactly when this package is installed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import cv2

from .bags import (DEFAULT_GT_TOPIC, DEFAULT_IMAGE_TOPIC, DEFAULT_INFO_TOPIC, DEFAULT_NAME_TOPIC, BagFile,
                   write_dataset_bag)
from .conversions import image_msg_to_array


# ---------------------------------------------------------------------------------------------------- make-bag
def _make_bag(args: argparse.Namespace) -> int:
    from vl_anomaly.datasets import load_dataset

    dataset = load_dataset(args.dataset)
    summary = write_dataset_bag(dataset, Path(args.output), rate_hz=args.rate, image_topic=args.image_topic,
                                info_topic=args.info_topic, gt_topic=args.gt_topic, name_topic=args.name_topic,
                                frame_id=args.frame_id, compressed=args.compressed, max_frames=args.max_frames)
    print(f"wrote {summary.frames} frames of {dataset.name} to {Path(args.output).resolve()} (mcap, "
          f"{summary.duration_s:.1f} s at {args.rate:g} Hz); topics: "
          + ", ".join(f"{t} [{ty}]" for t, ty in summary.topics.items()))
    return 0


def register_make_bag(sub) -> None:
    p = sub.add_parser("make-bag", help="labelled dataset → rosbag2 mcap bag (images, camera_info, ground truth)")
    p.add_argument("--dataset", required=True, metavar="NAME[=PATH]", help="dataset (shared copy or a path)")
    p.add_argument("-o", "--output", required=True, help="bag folder to create")
    p.add_argument("--rate", type=float, default=10.0, help="frames per second of bag time")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--compressed", choices=["jpeg", "png"], default=None,
                   help="write sensor_msgs/CompressedImage on <image-topic>/compressed instead of raw rgb8")
    p.add_argument("--image-topic", default=DEFAULT_IMAGE_TOPIC)
    p.add_argument("--info-topic", default=DEFAULT_INFO_TOPIC)
    p.add_argument("--gt-topic", default=DEFAULT_GT_TOPIC)
    p.add_argument("--name-topic", default=DEFAULT_NAME_TOPIC)
    p.add_argument("--frame-id", default="camera_optical", help="header frame_id of the camera messages")
    p.set_defaults(func=_make_bag)


# ------------------------------------------------------------------------------------------------------ replay
def _node_params(args: argparse.Namespace) -> dict:
    params = {"model": args.model, "score": args.score}
    if args.input_size:
        params.update(input_height=args.input_size[0], input_width=args.input_size[1])
    if args.threads:
        params["threads"] = args.threads
    if args.queue_policy:
        params["queue_policy"] = args.queue_policy
    if args.backend:
        params["backend"] = args.backend
    if args.onnx:
        params["onnx_path"] = str(Path(args.onnx).resolve())
    if args.fusion:
        params["fusion_config"] = args.fusion if not Path(args.fusion).is_file() else str(Path(args.fusion).resolve())
    if args.clip_weights not in (None, "default"):
        params["clip_weights"] = args.clip_weights if args.clip_weights == "none" else str(Path(args.clip_weights).resolve())
    for item in args.param or []:
        key, _, value = item.partition(":=")
        params[key] = value
    return params


def _add_node_arguments(p: argparse.ArgumentParser, model: str | None = None) -> None:
    import os

    from vl_anomaly.defaults import DEFAULT_MODEL
    from vl_anomaly.deploy import BACKENDS

    p.add_argument("--model", default=model or DEFAULT_MODEL, help="node parameter model")
    p.add_argument("--score", default="default", help="node parameter score ('default' = the model's default score)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="network input size (node parameters input_height, input_width)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of the node")
    p.add_argument("--queue-policy", choices=["latest", "queue"], default=None)
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="node parameter backend")
    p.add_argument("--onnx", default=None, metavar="FILE", help="node parameter onnx_path (an ONNX export)")
    p.add_argument("--fusion", default=None, metavar="YAML|NAME",
                   help="node parameter fusion_config (the 'fused' score's weights: a YAML or a shipped name)")
    p.add_argument("--clip-weights", default=os.environ.get("VL_ANOMALY_CLIP_WEIGHTS", "default"),
                   metavar="FILE|default|none", help="node parameter clip_weights (VL models; default: "
                                                     "$VL_ANOMALY_CLIP_WEIGHTS, else 'default')")
    p.add_argument("-p", "--param", action="append", metavar="NAME:=VALUE", help="any other node parameter")
    p.add_argument("--node-name", default="vl_anomaly")


def _replay(args: argparse.Namespace) -> int:
    from .replay import replay

    try:
        result = replay(Path(args.bag), Path(args.output), node_name=args.node_name, image_topic=args.topic,
                        pace=args.pace, rate=args.rate, node_params=_node_params(args),
                        start_node=not args.node_running, record_overlay=not args.no_overlay, recover=args.recover)
    except KeyboardInterrupt:                       # Ctrl-C: replay() closed the output bag and stopped the node
        print(f"interrupted: the output bag {Path(args.output).resolve()} was closed with what was recorded so far",
              file=sys.stderr)
        return 130
    c = result.node_counters
    print(f"replayed {result.frames_published} frames ({result.pace}) in {result.seconds:.1f} s: node processed "
          f"{c.get('processed', 0)}, dropped {c.get('dropped', 0)}, rejected {c.get('rejected', 0)}, lost before "
          f"the node {c.get('lost_before_node', 0)}; outputs recorded to {Path(args.output).resolve()}")
    for note in result.notes:
        print(f"note: {note}")
    return 0 if result.frames_published else 1


def register_replay(sub) -> None:
    p = sub.add_parser("replay", help="play a bag through the node over ROS 2 and record its outputs to a bag")
    p.add_argument("bag", help="input bag folder (mcap or sqlite3)")
    p.add_argument("-o", "--output", required=True, help="output bag folder to create (mcap)")
    p.add_argument("--topic", default=None, help="camera topic in the bag (default: the only image topic)")
    p.add_argument("--pace", choices=["flow", "recorded"], default="flow",
                   help="flow: as fast as the node allows, no frame lost; recorded: the bag's rate (× --rate)")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor with --pace recorded")
    p.add_argument("--node-running", action="store_true",
                   help="do not start a node; play into the one already running under --node-name")
    p.add_argument("--no-overlay", action="store_true", help="do not record ~/overlay")
    p.add_argument("--recover", action="store_true", help="play the intact part of a truncated mcap bag")
    _add_node_arguments(p)
    p.set_defaults(func=_replay)


# ------------------------------------------------------------------------------------------------- replay-eval
def _replay_eval(args: argparse.Namespace) -> int:
    from .replay_eval import replay_eval

    results = replay_eval(Path(args.input_bag), Path(args.output_bag), Path(args.output), node_name=args.node_name,
                          mode=args.mode, recover=args.recover)
    rep = results["replay"]
    for name, entry in results["datasets"].items():
        px = entry["scores"][rep["score"]]["pixel"]
        print(f"{name} ({rep['score']}, {rep['frames_out']}/{rep['frames_in']} frames with output): "
              f"AP {px['AuPRC']:.2f}  FPR95 {px['FPR95']:.2f}  AuROC {px['AuROC']:.2f}")
    if rep.get("planner_view"):
        print(f"obstacles a planner received: {_planner_line(rep['planner_view'])}")
    print(f"report: {Path(args.output).resolve() / 'report.md'}")
    return 0


def register_replay_eval(sub) -> None:
    p = sub.add_parser("replay-eval", help="benchmark metrics of a replay (output bag vs the input bag's ground truth)")
    p.add_argument("input_bag", help="the bag that was replayed (with ground truth, from make-bag)")
    p.add_argument("output_bag", help="the bag recorded by vl-anomaly replay")
    p.add_argument("-o", "--output", required=True, help="report folder")
    p.add_argument("--node-name", default="vl_anomaly")
    p.add_argument("--mode", choices=["official", "exact"], default="official")
    p.add_argument("--recover", action="store_true", help="use the intact part of truncated mcap bags")
    p.set_defaults(func=_replay_eval)


# ---------------------------------------------------------------------------------------------------- ros-demo
def export_overlays(output_bag: Path, out_dir: Path, node_name: str = "vl_anomaly", fps: float = 2.0) -> int:
    """Recorded ``~/overlay`` frames → PNGs and an mp4 video in ``out_dir``; returns the number of frames.
    Frames of other sizes are resized to the first frame's size in the video (PNGs keep theirs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    writer, size, count = None, None, 0
    with BagFile(output_bag) as bag:
        topic = f"/{node_name}/overlay"
        if topic not in bag.topics:
            return 0
        for _, _, msg in bag.messages([topic]):
            bgr = image_msg_to_array(msg)
            cv2.imwrite(str(out_dir / f"overlay_{count:04d}.png"), bgr)
            if writer is None:
                size = (bgr.shape[1], bgr.shape[0])
                writer = cv2.VideoWriter(str(out_dir / "overlay.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
            writer.write(bgr if (bgr.shape[1], bgr.shape[0]) == size else cv2.resize(bgr, size))
            count += 1
    if writer is not None:
        writer.release()
    return count


def _ros_demo(args: argparse.Namespace) -> int:
    from .replay import replay
    from .replay_eval import replay_eval

    out = Path(args.output)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = time.perf_counter()
    from vl_anomaly.datasets import load_dataset

    dataset = load_dataset(args.dataset)
    print(f"[1/4] {dataset.name}: {len(dataset)} labelled frames → bag {out / 'input_bag'}")
    write_dataset_bag(dataset, out / "input_bag", rate_hz=args.rate, max_frames=args.max_frames)
    print(f"[2/4] replaying it through the vl_anomaly node (own process, real ROS 2 transport) → {out / 'output_bag'}")
    result = replay(out / "input_bag", out / "output_bag", node_name=args.node_name, pace=args.pace,
                    node_params=_node_params(args))
    print(f"[3/4] benchmark metrics of the replay → {out / 'report'}")
    results = replay_eval(out / "input_bag", out / "output_bag", out / "report", node_name=args.node_name,
                          progress=False)
    print(f"[4/4] overlays → {out / 'overlays'}")
    frames = export_overlays(out / "output_bag", out / "overlays", node_name=args.node_name)
    rep = results["replay"]
    px = results["datasets"][dataset.name]["scores"][rep["score"]]["pixel"]
    c = result.node_counters
    lat = rep["latency_ms"]
    summary = {"dataset": dataset.name, "frames": result.frames_published, "node_processed": c.get("processed"),
               "node_dropped": c.get("dropped"), "node_rejected": c.get("rejected"),
               "AP": px["AuPRC"], "FPR95": px["FPR95"], "latency_ms": lat, "planner_view": rep.get("planner_view"),
               "seconds": round(time.perf_counter() - start, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\n{dataset.name} through the node: {result.frames_published} frames in, {c.get('processed')} processed, "
          f"{c.get('dropped')} dropped, {c.get('rejected')} rejected; AP {px['AuPRC']:.2f}, FPR95 {px['FPR95']:.2f}"
          + (f"; latency p50 {lat['p50']:.0f} ms" if lat.get("n") else ""))
    if rep.get("planner_view"):
        print(f"obstacles a planner received: {_planner_line(rep['planner_view'])}")
    print(f"report:   {(out / 'report' / 'report.md').resolve()}")
    print(f"overlays: {(out / 'overlays').resolve()} ({frames} PNGs, overlay.mp4)")
    print(f"bags:     {(out / 'input_bag').resolve()}  {(out / 'output_bag').resolve()}")
    return 0 if c.get("processed") else 1


def register_ros_demo(sub) -> None:
    from vl_anomaly.defaults import DEMO_MODEL

    p = sub.add_parser("ros-demo", help="the product end to end: dataset → bag → node → bag → metrics, overlays")
    p.add_argument("--dataset", default="road_anomaly_21", metavar="NAME[=PATH]")
    p.add_argument("-o", "--output", default="outputs/ros_demo", help="output folder (replaced)")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--rate", type=float, default=2.0, help="bag frame rate, Hz")
    p.add_argument("--pace", choices=["flow", "recorded"], default="flow")
    _add_node_arguments(p, model=DEMO_MODEL)
    p.set_defaults(func=_ros_demo)


def _planner_line(view: dict) -> str:
    """One line of the replay's planner view (vl_anomaly_ros.replay_eval)."""
    return (f"{view['false_per_frame']:.2f} false per frame ({100 * view['false_area_share']:.1f} % of the image), "
            f"{view['found']}/{view['objects']} labelled objects found ({100 * view['found_share']:.0f} %)")
