"""Inference speed per model and network input size on this machine's CPU.

Measures, for each model, the wall time of the network forward pass alone and of the whole pipeline
(``AnomalyPredictor.predict``: validation, pre-processing, network, score, resize to the image, post-processing)
on a real 1920×1080 RoadObstacle21 frame. Models with real weights use them; Mask2Former Swin-T uses random
weights (speed does not depend on the values), the VL model an untrained head and a random CLIP. Prints a markdown
table and writes JSON. ``--memory-formats contiguous channels_last`` runs every case in both of PyTorch's memory
formats, one after the other (``AnomalyPredictor(channels_last=...)``; the predictor's default is channels-last on
the CPU for the networks that declare ``prefers_channels_last``), so their ratio comes from one run; without it each
case runs in the predictor's default format.

    .venv/bin/python benchmarks/bench_inference.py --threads 2 --repeats 5 -o benchmarks/results/inference.json
        [--memory-formats contiguous channels_last] [--models NAME ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from vl_anomaly import create_predictor, read_image
from vl_anomaly.cpu import cpu_model, set_threads
from vl_anomaly.paths import anomaly_val_dir
from vl_anomaly.preprocess import preprocess

CASES = [
    ("espnetv2_s2.0_cityscapes", "default", [(256, 512), (512, 1024), (1024, 2048)]),
    ("espnet_p2_q8_cityscapes", "default", [(256, 512), (512, 1024)]),
    ("dicenet_s1.75_cityscapes", "default", [(512, 1024)]),
    ("lite_ensemble_cityscapes", "default", [(512, 1024)]),
    ("mask2former_swin_t_cityscapes", None, [(256, 512), (512, 1024)]),
    ("vl_anomaly_espnetv2_vitb16", "untrained", [(512, 1024)]),
]


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-o", "--output", default="benchmarks/results/inference.json")
    parser.add_argument("--memory-formats", nargs="+", choices=["default", "channels_last", "contiguous"],
                        default=["default"], help="PyTorch memory formats to time each case in (default: the predictor's)")
    parser.add_argument("--models", nargs="+", default=None, help="only these of the cases' models")
    args = parser.parse_args()
    set_threads(args.threads)
    image = read_image(anomaly_val_dir() / "RoadObstacle21" / "images" / "0.webp")
    rows = []
    for name, weights, sizes in CASES:
        if args.models and name not in args.models:
            continue
        for size, memory_format in ((s, f) for s in sizes for f in args.memory_formats):
            predictor = create_predictor(name, weights=weights, input_size=size, clip_weights="none",
                                         channels_last=None if memory_format == "default"
                                         else memory_format == "channels_last")
            x = preprocess(image, predictor.preprocess_cfg).contiguous(memory_format=predictor.memory_format)
            with torch.inference_mode():
                net = _time(lambda: predictor.model(x), args.repeats)
            full = _time(lambda: predictor.predict(image), args.repeats)
            params = sum(p.numel() for p in predictor.model.parameters()) / 1e6
            rows.append({"model": name, "weights": weights or "random", "input_hw": list(size),
                         "memory_format": "channels_last" if predictor.memory_format == torch.channels_last
                         else "contiguous",
                         "params_m": round(params, 2), "network_ms_min": round(min(net), 1),
                         "network_ms_median": round(statistics.median(net), 1),
                         "pipeline_ms_min": round(min(full), 1),
                         "pipeline_ms_median": round(statistics.median(full), 1)})
            print(rows[-1], flush=True)
    result = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": {
        "platform": platform.platform(), "cpu_model": cpu_model(),
        "cpu_count": __import__("os").cpu_count(), "torch": torch.__version__, "torch_threads": args.threads},
        "image": "RoadObstacle21/images/0.webp (1920x1080)", "repeats": args.repeats, "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print("\n| model | weights | input H×W | memory format | params (M) | network ms (min / median) | "
          "pipeline ms (min / median) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['weights']} | {r['input_hw'][0]}×{r['input_hw'][1]} | {r['memory_format']} | "
              f"{r['params_m']} | {r['network_ms_min']} / {r['network_ms_median']} | "
              f"{r['pipeline_ms_min']} / {r['pipeline_ms_median']} |")


if __name__ == "__main__":
    main()
