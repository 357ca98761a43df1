"""Benchmark metrics of a replay: node outputs (output bag) matched to ground truth (input bag) by header stamp.

The metrics, report and plots are those of ``vl-anomaly eval`` (the same :func:`vl_anomaly.evaluation.run_evaluation`
on the node's score maps, cast to float16 like every evaluated map), plus the replay's frames in / out / dropped
and latency distribution, and what a planner received: the node's recorded obstacle masks judged by
:func:`vl_anomaly.metrics.obstacles.obstacle_counts` (false obstacles per frame, false area, objects found,
obstacles real; the figures of ``benchmarks/bench_obstacles.py``) with the frames' thresholds from the obstacle
lists. A replay of a shared set with the node's settings gives exactly the offline numbers (tested).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from vl_anomaly.datasets import DATASETS, SMIYC_LABELS, AnomalyDataset, Frame
from vl_anomaly.evaluation import run_evaluation
from vl_anomaly.metrics.obstacles import ObstacleCounts, mask_obstacle_counts

from .bags import DEFAULT_GT_TOPIC, DEFAULT_NAME_TOPIC, BagError, BagFile
from .conversions import image_msg_to_array, stamp_ns
from .replay import register_our_types


def _ground_truth(input_bag: Path, frames_dir: Path, gt_topic: str, name_topic: str, image_topic: str | None,
                  progress: bool, recover: bool) -> tuple[str, dict[int, str], list[Frame]]:
    """Write images and labels of the input bag to ``frames_dir`` (shared layout); return the dataset name,
    ``{stamp: frame id}`` and the frames."""
    images_dir, labels_dir = frames_dir / "images", frames_dir / "labels_masks"
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    with BagFile(input_bag, recover=recover) as bag:
        for needed in (gt_topic, name_topic):
            if needed not in bag.topics:
                raise BagError(f"input bag {input_bag} has no {needed} topic (ground truth); bags made with "
                               f"`vl-anomaly make-bag` carry it. Topics: {', '.join(sorted(bag.topics))}")
        topic, _ = bag.find_image_topic(image_topic)
        names: dict[int, str] = {}
        labels: dict[int, np.ndarray] = {}
        images: dict[int, np.ndarray] = {}
        for t, t_ns, msg in tqdm(bag.messages([topic, gt_topic, name_topic]), desc="ground truth", unit="msg",
                                 disable=not progress):
            if t == name_topic:
                names[t_ns] = msg.data               # String has no header: bag time, which equals the stamp
            elif t == gt_topic:
                labels[stamp_ns(msg)] = image_msg_to_array(msg)
            elif msg.__msgtype__.endswith("CompressedImage"):
                images[stamp_ns(msg)] = cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
            else:
                array = image_msg_to_array(msg)
                images[stamp_ns(msg)] = array[..., ::-1] if msg.encoding == "bgr8" else array
    dataset_names = {n.split("/", 1)[0] for n in names.values()}
    if len(dataset_names) != 1:
        raise BagError(f"input bag {input_bag} mixes datasets {sorted(dataset_names)}; evaluate one at a time")
    stamps = sorted(labels)
    by_stamp, frames = {}, []
    for stamp in stamps:
        if stamp not in names or stamp not in images:
            if recover:                                  # the damaged tail of a recovered bag
                continue
            raise BagError(f"input bag {input_bag}: ground truth at stamp {stamp} has no image or frame name")
        fid = names[stamp].split("/", 1)[1]
        by_stamp[stamp] = fid
        image_path, label_path = images_dir / f"{fid}.png", labels_dir / f"{fid}.png"
        cv2.imwrite(str(image_path), np.ascontiguousarray(images[stamp][..., ::-1]))
        cv2.imwrite(str(label_path), labels[stamp])
        frames.append(Frame(fid, image_path, label_path))
    return dataset_names.pop(), by_stamp, frames


def replay_eval(input_bag: Path, output_bag: Path, out_dir: Path, node_name: str = "vl_anomaly",
                gt_topic: str = DEFAULT_GT_TOPIC, name_topic: str = DEFAULT_NAME_TOPIC, image_topic: str | None = None,
                mode: str = "official", progress: bool = True, recover: bool = False) -> dict:
    """Metrics of the node's recorded score maps against the input bag's ground truth; writes ``results.json``,
    ``report.md`` and plots to ``out_dir`` (as ``vl-anomaly eval``) with a ``replay`` section."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name, fid_by_stamp, frames = _ground_truth(Path(input_bag), out_dir / "frames", gt_topic, name_topic,
                                               image_topic, progress, recover)
    score_topic, obstacles_topic = f"/{node_name}/anomaly_score", f"/{node_name}/obstacles"
    mask_topic = f"/{node_name}/obstacle_mask"
    label_by_stamp = {stamp: f.label for stamp, f in zip(sorted(fid_by_stamp), frames)}
    planner, planner_frames, thresholds = ObstacleCounts(), 0, []
    maps_dir = out_dir / "replayed_score_maps"
    for stale in (maps_dir / name, out_dir / "score_maps" / name):     # never mix maps of an earlier replay
        shutil.rmtree(stale, ignore_errors=True)
    (maps_dir / name).mkdir(parents=True, exist_ok=True)
    received: dict[int, int] = {}
    unmatched: list[int] = []
    score_names = set()
    with BagFile(output_bag, recover=recover) as bag:
        register_our_types(bag.store)
        if score_topic not in bag.topics:
            raise BagError(f"output bag {output_bag} has no {score_topic}; topics: {', '.join(sorted(bag.topics))}"
                           " (was the node named differently? use --node-name)")
        for topic, t_ns, msg in tqdm(bag.messages([score_topic, obstacles_topic, mask_topic]), desc="node outputs",
                                     unit="msg", disable=not progress):
            stamp = stamp_ns(msg)
            if topic == obstacles_topic:
                score_names.add(msg.score)
                if stamp in fid_by_stamp:
                    thresholds.append(float(msg.threshold))
                continue
            if topic == mask_topic:                  # what a planner received, judged against the ground truth
                if stamp in label_by_stamp:
                    planner = planner + _planner_counts(image_msg_to_array(msg), label_by_stamp[stamp])
                    planner_frames += 1
                continue
            fid = fid_by_stamp.get(stamp)
            if fid is None:
                if recover:                  # its ground truth was in the damaged part of the input bag
                    unmatched.append(stamp)
                    continue
                raise BagError(f"output bag {output_bag}: a score map with stamp {stamp} matches no input frame")
            np.save(maps_dir / name / f"{fid}.npy", image_msg_to_array(msg))
            received[stamp] = t_ns
        played = _played(bag)
        diagnostics = _last_counters(bag, node_name)
    if len(score_names) != 1:
        raise BagError(f"output bag {output_bag} holds obstacles of scores {sorted(score_names)}; expected one")
    score = score_names.pop()
    evaluated = [f for stamp, f in zip(sorted(fid_by_stamp), frames) if stamp in received]
    missing = [f.frame_id for stamp, f in zip(sorted(fid_by_stamp), frames) if stamp not in received]
    if not evaluated:
        raise BagError(f"output bag {output_bag} has no score map for any frame of {input_bag}")
    info = DATASETS.get(name)
    dataset = AnomalyDataset(name, out_dir / "frames", "bag", evaluated, SMIYC_LABELS,
                             info.track if info else None, None)
    results = run_evaluation([dataset], [score], out_dir, predictor=None, weights="replay", mode=mode,
                             saved_maps=maps_dir)
    latencies = np.array([(received[s] - played[s]) / 1e6 for s in received if s in played])
    replay_info = {
        "input_bag": str(input_bag), "output_bag": str(output_bag), "score": score,
        "frames_in": len(fid_by_stamp), "frames_out": len(received), "frames_without_output": missing,
        "outputs_without_ground_truth": len(unmatched),
        "node_counters": diagnostics,
        "latency_ms": {"n": int(latencies.size), **({"p50": float(np.percentile(latencies, 50)),
                                                     "p95": float(np.percentile(latencies, 95)),
                                                     "max": float(latencies.max())} if latencies.size else {})},
        "latency_definition": "score map recorded (bag time) − frame published, wall clock, ms",
        "planner_view": None if not planner_frames else {
            **planner.to_dict(),
            "threshold": {"min": min(thresholds), "median": float(np.median(thresholds)), "max": max(thresholds)}
            if thresholds else None},
    }
    results["replay"] = replay_info
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    with open(out_dir / "report.md", "a", encoding="utf-8") as report:
        lat = replay_info["latency_ms"]
        report.write("\n## Replay\n\n"
                     f"Input bag `{input_bag}`, output bag `{output_bag}`, score `{score}`.\n\n"
                     f"| frames in | frames out | without output | node processed | dropped | rejected | "
                     f"latency p50 / p95 / max ms |\n|---|---|---|---|---|---|---|\n"
                     f"| {len(fid_by_stamp)} | {len(received)} | {len(missing)} | {diagnostics.get('processed', '-')} "
                     f"| {diagnostics.get('dropped', '-')} | {diagnostics.get('rejected', '-')} | "
                     + (f"{lat['p50']:.0f} / {lat['p95']:.0f} / {lat['max']:.0f}" if lat["n"] else "-") + " |\n")
        view = replay_info["planner_view"]
        if view:
            thr = view["threshold"]
            report.write("\n### What a planner received\n\n"
                         f"The node's obstacle masks on {view['frames']} frames, judged as in "
                         "`benchmarks/bench_obstacles.py` (components ≥ 50 px; false: < 25 % of its non-void pixels "
                         "anomalous; found: ≥ 25 % of a labelled object covered by obstacles that are not false)"
                         + (f"; the frames' thresholds {thr['min']:.3g} – {thr['max']:.3g} (median "
                            f"{thr['median']:.3g})" if thr else "") + ".\n\n"
                         "| false obstacles per frame | false area | objects found | obstacles real |\n"
                         "|---|---|---|---|\n"
                         f"| {view['false_per_frame']:.2f} | {100 * view['false_area_share']:.1f} % | "
                         f"{view['found']} / {view['objects']} ({100 * view['found_share']:.0f} %) | "
                         f"{view['real']} / {view['real'] + view['false']} ({100 * view['real_share']:.0f} %) |\n")
        if missing:
            report.write(f"\nFrames without a score map (dropped or rejected by the node, see its counters): "
                         f"{', '.join(missing)}. Metrics cover the {len(evaluated)} frames with one.\n")
    return results


def _planner_counts(mask: np.ndarray, label_path: Path) -> ObstacleCounts:
    """Counts of one recorded obstacle mask ``(H, W)`` mono8 (0 / 255) against its label file."""
    label = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
    if mask.shape[:2] != label.shape:
        raise BagError(f"recorded obstacle mask {mask.shape[1]}x{mask.shape[0]} does not match its ground truth "
                       f"{label.shape[1]}x{label.shape[0]}")
    return mask_obstacle_counts(mask.reshape(label.shape), label)


def _played(bag: BagFile) -> dict[int, int]:
    """``{stamp: publish wall time ns}`` from the replay's own record (empty for bags recorded otherwise)."""
    from .replay import PLAYED_TOPIC

    if PLAYED_TOPIC not in bag.topics:
        return {}
    played = {}
    for _, t_ns, msg in bag.messages([PLAYED_TOPIC]):
        played[json.loads(msg.data)["stamp_ns"]] = t_ns
    return played


def _last_counters(bag: BagFile, node_name: str) -> dict:
    last = {}
    if "/diagnostics" not in bag.topics:
        return last
    for _, _, msg in bag.messages(["/diagnostics"]):
        for status in msg.status:
            if status.name == f"/{node_name}: frames":
                last = {kv.key: kv.value for kv in status.values}
    return {k: int(float(v)) for k, v in last.items()
            if k.split(".")[0] in ("received", "processed", "dropped", "rejected", "in_flight")}
