"""The first GPU run, in one command (``benchmarks/gpu_check.sh`` installs the core and calls this): frames per
second, fp16 autocast, the CLIP branch's share, CUDA-vs-CPU parity, and the deployment checks where they can run.

Measured (one JSON, ``-o``):

* ``models.<name>.fp32_fps`` / ``fp16_fps``: whole ``AnomalyPredictor.predict`` (pre-processing, network, the
  model's default score, post-processing) at 512×1024 on a real road frame, median of ``--repeats`` after warm-up;
  fp16 is ``torch.autocast(float16)`` around the call (the score maps stay float32). Models: ESPNetv2 s2.0, the
  lite ensemble, Mask2Former Swin-T (random weights), VL-Anomaly on ESPNetv2 (registered segmenter, untrained head,
  random CLIP ViT-B/16) and on Mask2Former Swin-T (all random) — timing does not depend on weight values.
* ``clip_share``: the CLIP crop score's time and share of a VL frame with 3 and 20 candidate regions.
* ``parity``: ESPNetv2's score map on CUDA vs CPU on three real frames (max abs difference, arg-max agreement).
* ``deployment``: ONNX Runtime's providers in use for an ESPNetv2 export (``runs_on``; CUDA / TensorRT providers
  when the ``onnxruntime-gpu`` wheel is there) and, when ``tensorrt`` imports, a TensorRT engine's build time and
  its parity figures on load (fp16); otherwise the reason.

``--dry-run``: the same path on the CPU with a 64×128 input, 1 repeat and a tiny CLIP, to check the script
(test/model/test_gpu_check.py). Real weights and frames come from ``../shared`` (or ``$VL_ANOMALY_SHARED_DIR``)
when present; otherwise random weights and drawn frames, and the JSON says so.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from vl_anomaly import create_model
from vl_anomaly.cpu import cpu_model, set_threads
from vl_anomaly.networks.clip_towers import TINY_CLIP_CONFIG
from vl_anomaly.deploy import export_onnx, load_exported, parity_frame, providers_in_use
from vl_anomaly.factory import default_score, default_scoring, get_preprocess_cfg
from vl_anomaly.paths import anomaly_val_dir
from vl_anomaly.pipeline import AnomalyPredictor

#: name → weights for create_model ("default": registered, needs ../shared; None: random).
MODELS = {"espnetv2_s2.0_cityscapes": "default", "lite_ensemble_cityscapes": "default",
          "mask2former_swin_t_cityscapes": None, "vl_anomaly_espnetv2_vitb16": "untrained",
          "vl_anomaly_mask2former_swin_t_vitb16": None}


def real_frames(count: int) -> tuple[list[np.ndarray], str]:
    """``count`` RGB road frames: RoadObstacle21 validation images when the shared data is there, else drawn."""
    import cv2

    root = anomaly_val_dir()
    if root is not None:
        paths = sorted((root / "RoadObstacle21" / "images").glob("*"))[:count]
        frames = [cv2.imread(str(p), cv2.IMREAD_COLOR)[..., ::-1].copy() for p in paths]
        if len(frames) == count:
            return frames, "RoadObstacle21 validation frames " + ", ".join(p.name for p in paths)
    frame = parity_frame()
    return [np.roll(frame, 37 * i, axis=1).copy() for i in range(count)], "drawn road scenes (no shared data)"


def build_model(name: str, weights, dry_run: bool) -> tuple[torch.nn.Module, str]:
    """The model and a note on its weights (falls back to random weights where registered ones are missing)."""
    clip = {"clip_weights": "none"}
    if dry_run and "vl_anomaly" in name:
        from vl_anomaly.constants import CLASS_LISTS
        from vl_anomaly.networks import VLAnomalyModel
        from vl_anomaly.networks.clip_towers import FrozenCLIP
        from vl_anomaly.registry import get_model_config

        cfg = get_model_config(name)
        segmenter = create_model(cfg["segmenter"], weights=None)
        return VLAnomalyModel(segmenter, FrozenCLIP.create(config=TINY_CLIP_CONFIG, pretrained=None),
                              CLASS_LISTS[cfg["classes"]], n_ctx=4), "random (dry run: tiny CLIP)"
    try:
        return create_model(name, weights=weights, **clip), "random" if weights is None else str(weights)
    except Exception as exc:                                        # noqa: BLE001 — no shared weights here
        return create_model(name, weights=None, **clip), f"random ({type(exc).__name__}: registered weights missing)"


def time_predict(predictor: AnomalyPredictor, frame: np.ndarray, repeats: int, fp16: bool) -> float:
    """Median seconds of one ``predict`` (synchronised), after one warm-up."""
    cuda = predictor.device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.float16) if fp16 and cuda else contextlib.nullcontext()
    times = []
    with autocast:
        for i in range(repeats + 1):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            predictor.predict(frame)
            if cuda:
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def clip_share(predictor: AnomalyPredictor, frame: np.ndarray, regions: int, repeats: int) -> dict:
    """Time of the CLIP crop score with ``regions`` candidate regions, and its share of a whole frame."""
    from vl_anomaly.vl_scores import clip_crop_score

    h, w = frame.shape[:2]
    detector = np.zeros((h, w), np.float32)
    side = max(4, min(h, w) // 12)
    for i in range(regions):                                   # separate squares on a grid
        y, x = (i // 5) * 2 * side + side // 2, (i % 5) * 2 * side + side // 2
        detector[y: y + side, x: x + side] = 0.9
    model = predictor.model
    times = []
    for i in range(repeats + 1):
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        _, crops = clip_crop_score(frame, detector, model.clip, model.crop_text_embeddings(), 0.5,
                                   max_crops=regions, min_area_frac=0.0)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    crop_s = statistics.median(times)
    frame_s = time_predict(predictor, frame, repeats, fp16=False)
    return {"crops": int(crops), "clip_ms": 1e3 * crop_s, "frame_ms": 1e3 * frame_s,
            "share_of_frame_plus_crops": crop_s / (frame_s + crop_s)}


def parity(frames: list[np.ndarray], size: tuple[int, int], device: str) -> dict:
    """ESPNetv2 MSP score maps on ``device`` vs the CPU (the same weights: registered when present, else random)."""
    import copy

    weights = "default" if anomaly_val_dir() is not None else None
    torch.manual_seed(0)
    model = create_model("espnetv2_s2.0_cityscapes", weights=weights)
    cfg = get_preprocess_cfg("espnetv2_s2.0_cityscapes", size)
    other = AnomalyPredictor(copy.deepcopy(model), cfg, score="msp", device=device, name="espnetv2_s2.0_cityscapes")
    cpu = AnomalyPredictor(model, cfg, score="msp", device="cpu", name="espnetv2_s2.0_cityscapes")
    rows = []
    for frame in frames:
        ref_map, ref_semantic, _ = cpu.score_image(frame)
        got_map, got_semantic, _ = other.score_image(frame)
        rows.append({"max_abs_diff": float(np.abs(got_map - ref_map).max()),
                     "argmax_agreement": float((got_semantic == ref_semantic).mean())})
    return {"device": device, "weights": "registered" if weights else "random", "frames": rows,
            "max_abs_diff": max(r["max_abs_diff"] for r in rows),
            "min_argmax_agreement": min(r["argmax_agreement"] for r in rows)}


def deployment(size: tuple[int, int], device: str, scratch: Path) -> dict:
    """ONNX Runtime's providers in use and, where TensorRT imports, an engine with its parity figures."""
    out: dict = {}
    path = scratch / "espnetv2.onnx"
    torch.manual_seed(0)
    export_onnx(create_model("espnetv2_s2.0_cityscapes", weights=None), path, size, name="espnetv2_s2.0_cityscapes",
                check_inputs=1)
    try:
        out["onnxruntime_runs_on"] = providers_in_use(load_exported(path, "onnxruntime"))
    except Exception as exc:                                        # noqa: BLE001 — reported
        out["onnxruntime_error"] = f"{type(exc).__name__}: {exc}"
    try:
        import tensorrt

        out["tensorrt_version"] = tensorrt.__version__
    except ImportError:
        out["tensorrt"] = "not installed: engine build and parity not run"
        return out
    if not device.startswith("cuda"):
        out["tensorrt"] = "no CUDA device: engine build and parity not run"
        return out
    try:
        start = time.perf_counter()
        engine = load_exported(path, "tensorrt", precision="fp16", device=device)
        out["tensorrt_load_s"] = time.perf_counter() - start
        out["tensorrt_parity_fp16"] = engine.runner.parity
    except Exception as exc:                                        # noqa: BLE001 — the finding to report
        out["tensorrt_error"] = f"{type(exc).__name__}: {exc}"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default="gpu_check.json")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dry-run", action="store_true", help="CPU, 64×128, 1 repeat, tiny CLIP: checks the script")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.dry_run
    device = "cuda" if cuda else "cpu"
    size = (64, 128) if args.dry_run else (512, 1024)
    repeats = 1 if args.dry_run else args.repeats
    if not cuda:
        set_threads(0)
    frames, frames_note = real_frames(3)
    report = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
              "python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
              "device": device, "gpu": torch.cuda.get_device_name() if cuda else None, "cpu_model": cpu_model(),
              "dry_run": args.dry_run, "input": list(size), "repeats": repeats, "frames": frames_note,
              "models": {}, "clip_share": {}, "errors": {}}
    for name in args.models:
        try:
            model, weights_note = build_model(name, MODELS[name], args.dry_run)
            cfg = get_preprocess_cfg(name, size)
            score = default_score(name)
            predictor = AnomalyPredictor(model, cfg, score=score, device=device, name=name,
                                         scoring=default_scoring(name))
            row = {"weights": weights_note, "score": score,
                   "fp32_fps": 1.0 / time_predict(predictor, frames[0], repeats, fp16=False)}
            if cuda:
                row["fp16_fps"] = 1.0 / time_predict(predictor, frames[0], repeats, fp16=True)
                row["cuda_peak_MiB"] = torch.cuda.max_memory_allocated() / 2**20
            else:
                row["fp16_fps"] = None                       # autocast float16 is a CUDA measurement
            report["models"][name] = row
            if name == "vl_anomaly_espnetv2_vitb16":
                report["clip_share"] = {str(n): clip_share(predictor, frames[0], n, repeats) for n in (3, 20)}
            print(f"{name}: {row['fp32_fps']:.1f} fps fp32" + (f", {row['fp16_fps']:.1f} fps fp16" if cuda else ""),
                  flush=True)
            del model, predictor
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
        except Exception as exc:                                    # noqa: BLE001 — one model's failure is a finding
            report["errors"][name] = traceback.format_exc(limit=3)
            print(f"{name}: FAILED {type(exc).__name__}: {exc}", flush=True)
    try:
        report["parity"] = parity(frames, size, device)
    except Exception:                                               # noqa: BLE001
        report["errors"]["parity"] = traceback.format_exc(limit=3)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        try:
            report["deployment"] = deployment(size, device, Path(scratch))
        except Exception:                                           # noqa: BLE001
            report["errors"]["deployment"] = traceback.format_exc(limit=3)
    report["seconds"] = time.perf_counter() - start
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {Path(args.output).resolve()} in {report['seconds']:.0f} s; {len(report['errors'])} errors")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
