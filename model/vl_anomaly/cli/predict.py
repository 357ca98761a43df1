"""``vl-anomaly predict``: score maps, obstacle masks, overlays and obstacle lists for images, folders, videos."""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .. import __version__
from ..deploy import BACKENDS
from ..cpu import cpu_model, set_threads
from ..errors import InvalidImageError, VLAnomalyError
from ..defaults import DEFAULT_MODEL, DEFAULT_SCORE
from ..factory import create_predictor
from ..fusion import list_fusion_configs
from ..io import (encode_score_png, is_video, list_inputs, read_image, score_png_range, write_json, write_png)
from ..pipeline import AnomalyPredictor, Prediction
from ..registry import list_models
from ..scores import list_scores
from ..visualize import overlay

_LOG = logging.getLogger("vl_anomaly.predict")
OUTPUT_KINDS = ("npy", "png", "mask", "overlay", "json")


def add_predictor_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that builds a predictor."""
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=list_models(), help="registered model name")
    parser.add_argument("--weights", default="default",
                        help="'default' (registered weights), 'none' (random), a .pth/.safetensors file or a "
                             "transformers checkpoint directory")
    parser.add_argument("--score", default=None, choices=list_scores(),
                        help=f"anomaly score (default: the model's, e.g. {DEFAULT_SCORE} for single networks)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="obstacle threshold in score units, the same for every frame (default: the model's "
                             "calibrated threshold for its default score, per frame where it ships a scene-adaptive "
                             "one, else the score's documented default)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 …")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="network input size (default: the weights' training size)")
    parser.add_argument("--min-area", type=int, default=None,
                        help="smallest obstacle kept, pixels (default: the model's shipped rules, else 100)")
    parser.add_argument("--drivable-only", action=argparse.BooleanOptionalAction, default=None,
                        help="keep anomalies inside the predicted drivable region (road/sidewalk + margin; default: "
                             "the model's shipped rules, else off)")
    parser.add_argument("--drivable-margin", type=int, default=None,
                        help="drivable-region dilation, pixels (default: the model's shipped rules, else 20)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="inference backend (onnxruntime: the checked ONNX export, cached on first use; "
                             "tensorrt: an engine built from it, needs TensorRT and a GPU)")
    parser.add_argument("--onnx", default=None, metavar="FILE",
                        help="ONNX export to run (vl-anomaly export; default: the cached export of model + weights)")
    parser.add_argument("--precision", choices=["fp16", "fp32"], default="fp16", help="TensorRT engine precision")
    parser.add_argument("--fusion", default=None, metavar="YAML|NAME",
                        help="fusion config of the 'fused' score: a YAML (vl-anomaly calibrate) or a shipped name ("
                             + ", ".join(list_fusion_configs()) + "); default: the model's own")
    parser.add_argument("--clip-weights", default=os.environ.get("VL_ANOMALY_CLIP_WEIGHTS", "default"),
                        metavar="FILE|default|none",
                        help="VL models: CLIP weights ('default': the registered record, SHA-256 checked; a local "
                             "open_clip/OpenAI checkpoint; 'none': random). Default: $VL_ANOMALY_CLIP_WEIGHTS, "
                             "else 'default'")
    parser.add_argument("--known-classes", nargs="+", default=None, metavar="NAME",
                        help="VL models: the known classes the text prompts describe (default: the model's, the 19 "
                             "Cityscapes classes); e.g. --known-classes road sidewalk car person 'traffic cone'")
    parser.add_argument("--anomaly-prompts", nargs="+", default=None, metavar="PHRASE",
                        help="VL models: phrases that compete with the known classes in the CLIP crop score, e.g. "
                             "'an animal on the road' 'debris on the road' (default: none)")


def build_predictor(args: argparse.Namespace) -> AnomalyPredictor:
    set_threads(args.threads or 0)
    predictor = create_predictor(args.model, weights=args.weights, score=args.score, threshold=args.threshold,
                                 device=args.device, input_size=tuple(args.input_size) if args.input_size else None,
                                 min_area_px=args.min_area, drivable_only=args.drivable_only,
                                 drivable_margin_px=args.drivable_margin, backend=args.backend,
                                 onnx_path=args.onnx, precision=args.precision, fusion=args.fusion,
                                 clip_weights=args.clip_weights)
    known, anomaly = getattr(args, "known_classes", None), getattr(args, "anomaly_prompts", None)
    if known is not None or anomaly is not None:
        predictor.set_vocabulary(known, anomaly)
    return predictor


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or videos")
    parser.add_argument("-o", "--output", default="outputs/predict", help="output folder")
    add_predictor_arguments(parser)
    parser.add_argument("--save", nargs="+", choices=OUTPUT_KINDS, default=list(OUTPUT_KINDS),
                        help="which files to write per image")
    parser.add_argument("--max-frames", type=int, default=None, help="stop each video after this many frames")
    parser.add_argument("--video-stride", type=int, default=1, help="process every N-th video frame")


def write_outputs(out_dir: Path, stem: str, image: np.ndarray, pred: Prediction, predictor: AnomalyPredictor,
                  save: set[str], source: str) -> dict:
    """Write the files of one image/frame; returns its record for the summary."""
    lo, hi = score_png_range(pred.score_map, predictor.spec.range)
    base = out_dir / stem
    base.parent.mkdir(parents=True, exist_ok=True)
    if "npy" in save:
        np.save(f"{base}.score.npy", pred.score_map)
    if "png" in save:
        write_png(Path(f"{base}.score.png"), encode_score_png(pred.score_map, lo, hi))
    if "mask" in save:
        write_png(Path(f"{base}.mask.png"), pred.obstacle_mask.astype(np.uint8) * 255)
    if "overlay" in save:
        write_png(Path(f"{base}.overlay.png"),
                  overlay(image, pred.score_map, pred.obstacle_mask, pred.obstacles, lo, hi, drivable=pred.drivable))
    record = {
        "source": source, "stem": stem, "height": int(image.shape[0]), "width": int(image.shape[1]),
        "score": predictor.score_name, "threshold": pred.threshold,
        "score_png_range": [lo, hi], "score_min": float(pred.score_map.min()),
        "score_max": float(pred.score_map.max()), "score_mean": float(pred.score_map.mean()),
        "num_obstacles": len(pred.obstacles), "obstacles": [o.to_dict() for o in pred.obstacles],
        "timings_ms": {k: round(v, 2) for k, v in pred.timings_ms.items()},
    }
    if "json" in save:
        write_json(Path(f"{base}.json"), record)
    return record


def _predict_video(path: Path, stem: str, out_dir: Path, predictor: AnomalyPredictor, save: set[str],
                   max_frames: int | None, stride: int, records: list[dict], errors: list[dict]) -> None:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        errors.append({"source": str(path), "error": "could not open the video"})
        return
    fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = None
    index = processed = 0
    with tqdm(total=total, desc=path.name, unit="frame", leave=False) as bar:
        while max_frames is None or processed < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            bar.update(1)
            if index % stride == 0:
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                pred = predictor.predict(rgb)
                record = write_outputs(out_dir, f"{stem}/frame_{index:06d}", rgb, pred, predictor,
                                       save - {"overlay"}, f"{path}#{index}")
                record["frame_index"] = index
                records.append(record)
                if "overlay" in save:
                    lo, hi = record["score_png_range"]
                    vis = overlay(rgb, pred.score_map, pred.obstacle_mask, pred.obstacles, lo, hi,
                                  drivable=pred.drivable)
                    if writer is None:
                        writer = cv2.VideoWriter(str(out_dir / f"{stem}.overlay.mp4"),
                                                 cv2.VideoWriter_fourcc(*"mp4v"), fps / stride,
                                                 (vis.shape[1], vis.shape[0]))
                    writer.write(cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
                processed += 1
            index += 1
    capture.release()
    if writer is not None:
        writer.release()
    if processed == 0:
        errors.append({"source": str(path), "error": "no frame could be read"})


def run_predict(items: list[tuple[Path, str]], out_dir: Path, predictor: AnomalyPredictor, save: set[str],
                max_frames: int | None = None, video_stride: int = 1) -> dict:
    """Predict every ``(input path, output stem)`` (see :func:`vl_anomaly.io.list_inputs`), write per-image
    files plus ``summary.json`` / ``summary.md``; returns the summary.

    Unreadable or invalid images are reported (in the summary and on stderr) and skipped; the others go on.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    errors: list[dict] = []
    start = time.perf_counter()
    for path, stem in tqdm(items, desc="predict", unit="input"):
        if is_video(path):
            _predict_video(path, stem, out_dir, predictor, save, max_frames, max(1, video_stride), records, errors)
            continue
        try:
            image = read_image(path)
            pred = predictor.predict(image)
        except (InvalidImageError, VLAnomalyError) as exc:
            _LOG.error("skipping %s: %s", path, exc)
            errors.append({"source": str(path), "error": str(exc)})
            continue
        records.append(write_outputs(out_dir, stem, image, pred, predictor, save, str(path)))
    elapsed = time.perf_counter() - start
    network_ms = [r["timings_ms"]["network"] for r in records]
    summary = {
        "vl_anomaly_version": __version__, "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_model": cpu_model(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "predictor": predictor.describe(), "output_dir": str(out_dir), "num_frames": len(records),
        "num_errors": len(errors), "errors": errors, "elapsed_s": round(elapsed, 3),
        "mean_network_ms": round(float(np.mean(network_ms)), 2) if network_ms else None,
        "frames": [{k: v for k, v in r.items() if k != "obstacles"} for r in records],
    }
    write_json(out_dir / "summary.json", summary)
    (out_dir / "summary.md").write_text(_summary_markdown(summary), encoding="utf-8")
    return summary


def _threshold_text(post: dict) -> str:
    """The threshold of the post-processing rules: fixed, or the scene-adaptive rule's bounds."""
    if post.get("adaptive_quantile") is None:
        return f"{post['threshold']}"
    return (f"per frame ({post['adaptive_quantile']} quantile on the road + {post['adaptive_offset']}, within "
            f"[{post['adaptive_floor']}, {post['threshold']}])")


def _summary_markdown(summary: dict) -> str:
    p = summary["predictor"]
    lines = [f"# vl-anomaly predict — {summary['date']}", "",
             f"model `{p['model']}`, score `{p['score']}`, threshold {_threshold_text(p['postprocess'])}, "
             f"device {p['device']}, network input {p['preprocess']['input_size']}", "",
             f"{summary['num_frames']} frames in {summary['elapsed_s']} s "
             f"(mean network time {summary['mean_network_ms']} ms, {summary['machine']['torch_threads']} threads); "
             f"{summary['num_errors']} inputs rejected", "",
             "| frame | size | score min / mean / max | obstacles | total ms |", "|---|---|---|---|---|"]
    for r in summary["frames"]:
        lines.append(f"| {r['stem']} | {r['width']}×{r['height']} | {r['score_min']:.3f} / {r['score_mean']:.3f} / "
                     f"{r['score_max']:.3f} | {r['num_obstacles']} | {r['timings_ms']['total']:.0f} |")
    for e in summary["errors"]:
        lines.append(f"\nrejected `{e['source']}`: {e['error']}")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    predictor = build_predictor(args)
    summary = run_predict(list_inputs(args.inputs), Path(args.output), predictor, set(args.save), args.max_frames,
                          args.video_stride)
    print(f"wrote {summary['num_frames']} predictions to {Path(args.output).resolve()} "
          f"(summary.json, summary.md); {summary['num_errors']} inputs rejected")
    return 0 if summary["num_frames"] > 0 or not summary["errors"] else 1
