"""PyTorch eager vs exported backends per model, measured in one run (ratios), and the CLIP branch's share.

Every model is exported once (checked against PyTorch) into a scratch folder; then the backends alternate frame by
frame on the same real frame through the full pipeline (``AnomalyPredictor.predict``: pre-processing, network,
scores, post-processing). Per backend: the network's ms/frame, the whole frame's ms, and for VL-Anomaly models the
CLIP crop encoder's ms and share of the frame (with the number of crops the frame produced).

Models and weights (timing does not depend on weight values; the crop count does, through the detector score):
the two real-weight segmenters; Mask2Former Swin-T (random); VL-Anomaly on the real ESPNetv2 with an untrained
head and random CLIP ViT-B/16 weights; VL-Anomaly on Mask2Former Swin-T (all random).

On this CPU:   .venv/bin/python benchmarks/bench_backends.py --threads 2 -o benchmarks/results/backends.json
On a vehicle:  .venv/bin/python benchmarks/bench_backends.py --device cuda --backends torch onnxruntime tensorrt \\
                   --precision fp16 -o backends_gpu.json          (needs CUDA and TensorRT; never run here)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


from vl_anomaly import create_model, read_image                 # noqa: E402
from vl_anomaly.deploy import BACKENDS, load_exported         # noqa: E402
from vl_anomaly.cpu import cpu_model, set_threads               # noqa: E402
from vl_anomaly.defaults import DEFAULT_SCORE                    # noqa: E402
from vl_anomaly.deploy import export_onnx, export_vl_onnx       # noqa: E402
from vl_anomaly.factory import default_scoring, get_preprocess_cfg                # noqa: E402
from vl_anomaly.io import write_json                             # noqa: E402
from vl_anomaly.deploy import providers_in_use                   # noqa: E402
from vl_anomaly.paths import shared_dir                          # noqa: E402
from vl_anomaly.pipeline import AnomalyPredictor                 # noqa: E402
from vl_anomaly.registry import get_model_config                 # noqa: E402

MODELS = {"espnetv2_s2.0_cityscapes": "default", "espnet_p2_q8_cityscapes": "default",
          "mask2former_swin_t_cityscapes": None, "vl_anomaly_espnetv2_vitb16": "untrained",
          "vl_anomaly_mask2former_swin_t_vitb16": None}
WEIGHT_NOTES = {"default": "real", None: "random (speed only)",
                "untrained": "real segmenter, untrained head, random CLIP (speed only)"}


class _ClipTimer:
    """Replaces a CLIP image encoder's ``encode_images`` by a timed call; accumulates wall time and crop count."""

    def __init__(self, clip, device: str) -> None:
        self.encode, self.device = clip.encode_images, device
        self.seconds, self.crops = 0.0, 0
        clip.encode_images = self.encode_images

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.encode(images)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start
        self.crops += int(images.shape[0])
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"],
                        choices=BACKENDS)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (torch backend and pipeline tensors)")
    parser.add_argument("--precision", choices=["fp16", "fp32"], default="fp16", help="TensorRT precision")
    parser.add_argument("-o", "--output", default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    image = read_image(shared_dir() / "data" / "anomaly_val" / "RoadObstacle21" / "images" / "0.webp")
    rows = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
            "cpu_model": cpu_model(), "cpus": os.cpu_count(),
            "threads": args.threads, "device": args.device,
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "frame": "RoadObstacle21 val 0.webp (1920x1080)", "models": {}}
    scratch = Path(tempfile.mkdtemp(prefix="bench_backends_"))
    for name in args.models:
        weights = MODELS.get(name, "default")
        is_vl = get_model_config(name)["family"] == "vl_anomaly"
        score = "fused" if is_vl else DEFAULT_SCORE
        cfg = get_preprocess_cfg(name)
        torch.manual_seed(0)
        model = create_model(name, weights=weights, clip_weights="none")   # no CLIP weights here (speed only)
        path = scratch / f"{name}.onnx"
        start = time.perf_counter()
        export = export_vl_onnx if is_vl else export_onnx
        record = export(model, path, cfg.input_size, name=name, check_inputs=1)
        export_s = time.perf_counter() - start
        predictors, load_s = {}, {}
        for backend in args.backends:
            start = time.perf_counter()                                        # TensorRT: engine build + check
            network = model if backend == "torch" else load_exported(path, backend, args.threads, args.precision)
            predictors[backend] = AnomalyPredictor(network, cfg, score=score, device=args.device, name=name,
                                                 scoring=default_scoring(name))
            load_s[backend] = time.perf_counter() - start
        timers = {}
        if is_vl:
            for backend, predictor in predictors.items():
                timers[backend] = _ClipTimer(predictor.model.clip, args.device)
        samples = {b: {"network": [], "frame": []} for b in predictors}
        for predictor in predictors.values():
            predictor.predict(image)                                           # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        for timer in timers.values():
            timer.seconds, timer.crops = 0.0, 0
        for _ in range(args.repeats):                                          # alternate backends frame by frame
            for backend, predictor in predictors.items():
                timings = predictor.predict(image).timings_ms
                samples[backend]["network"].append(timings["network"])
                samples[backend]["frame"].append(timings["total"])
        row = {"weights": WEIGHT_NOTES[weights], "score": score, "input": list(cfg.input_size),
               "export_s": export_s, "onnx_MiB": path.stat().st_size / 2**20, "max_abs_diff": record.max_abs_diff}
        if args.device.startswith("cuda"):
            row["cuda_peak_torch_MiB"] = torch.cuda.max_memory_allocated() / 2**20   # TensorRT's own memory excluded
        for backend, predictor in predictors.items():
            row[f"{backend}_providers"] = providers_in_use(predictor.model)     # what really ran (GPU fallbacks)
            if hasattr(getattr(predictor.model, "runner", None), "parity"):
                row[f"{backend}_parity"] = predictor.model.runner.parity       # TensorRT's check on load
        for backend in predictors:
            row[f"{backend}_load_s"] = load_s[backend]
            row[f"{backend}_network_ms"] = statistics.median(samples[backend]["network"])
            row[f"{backend}_frame_ms"] = statistics.median(samples[backend]["frame"])
            if backend in timers:
                clip_ms = 1e3 * timers[backend].seconds / args.repeats
                row[f"{backend}_clip_ms"] = clip_ms
                row[f"{backend}_clip_share"] = clip_ms / statistics.mean(samples[backend]["frame"])
                row["crops_per_frame"] = timers[backend].crops / args.repeats
        if is_vl:
            row["clip_onnx_MiB"] = (scratch / f"{name}.clip_image.onnx").stat().st_size / 2**20
        for backend in predictors:
            if backend != "torch" and "torch" in predictors:
                row[f"ratio_torch_over_{backend}_network"] = row["torch_network_ms"] / row[f"{backend}_network_ms"]
                row[f"ratio_torch_over_{backend}_frame"] = row["torch_frame_ms"] / row[f"{backend}_frame_ms"]
        rows["models"][name] = row
        summary = ", ".join(f"{b} {row[f'{b}_frame_ms']:.0f} ms/frame (network {row[f'{b}_network_ms']:.0f})"
                            + (f", CLIP {100 * row[f'{b}_clip_share']:.0f} %" if is_vl else "") for b in predictors)
        print(f"{name}: {summary}" + (f"; {row['crops_per_frame']:.0f} crops" if is_vl else ""), flush=True)
        del model, predictors, timers
    if args.output:
        write_json(Path(args.output), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
