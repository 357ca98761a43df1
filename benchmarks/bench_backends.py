"""PyTorch eager vs ONNX Runtime per model on this CPU, measured in one run (ratio), network forward only.

Models: the two real-weight segmenters and Mask2Former Swin-T (random weights; speed only) at their default
network input. Each model is exported once (checked against PyTorch) into a scratch folder, then torch and ONNX
Runtime alternate frame by frame on the same pre-processed RoadObstacle21 frame. Writes JSON (``-o``).

    .venv/bin/python benchmarks/bench_backends.py --threads 2 -o benchmarks/results/backends.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vl_anomaly import create_model, read_image
from vl_anomaly.io import write_json
from vl_anomaly.backends import OnnxRuntimeSegmenter
from vl_anomaly.export import _session, export_onnx
from vl_anomaly.factory import get_preprocess_cfg
from vl_anomaly.paths import shared_dir
from vl_anomaly.preprocess import preprocess

MODELS = {"espnetv2_s2.0_cityscapes": "default", "espnet_p2_q8_cityscapes": "default",
          "mask2former_swin_t_cityscapes": None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("-o", "--output", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = read_image(shared_dir() / "data" / "anomaly_val" / "RoadObstacle21" / "images" / "0.webp")
    rows = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
            "threads": args.threads, "models": {}}
    scratch = Path(tempfile.mkdtemp(prefix="bench_backends_"))
    for name in args.models:
        cfg = get_preprocess_cfg(name)
        model = create_model(name, weights=MODELS[name])
        x = preprocess(image, cfg, "cpu")
        start = time.perf_counter()
        record = export_onnx(model, scratch / f"{name}.onnx", cfg.input_size, name=name, check_inputs=1)
        export_s = time.perf_counter() - start
        onnx = OnnxRuntimeSegmenter(scratch / f"{name}.onnx")
        onnx.session = _session(onnx.path, args.threads)
        with torch.inference_mode():
            model(x), onnx(x)                                                  # warm-up both
            t_torch, t_ort = [], []
            for _ in range(args.repeats):
                s = time.perf_counter(); model(x); t_torch.append(time.perf_counter() - s)
                s = time.perf_counter(); onnx(x); t_ort.append(time.perf_counter() - s)
        torch_ms, ort_ms = 1e3 * statistics.median(t_torch), 1e3 * statistics.median(t_ort)
        rows["models"][name] = {"weights": "real" if MODELS[name] else "random (speed only)",
                                "input": list(cfg.input_size), "export_s": export_s,
                                "onnx_MiB": (scratch / f"{name}.onnx").stat().st_size / 2**20,
                                "torch_ms": torch_ms, "onnxruntime_ms": ort_ms, "ratio_torch_over_ort": torch_ms / ort_ms,
                                "max_abs_diff": record.max_abs_diff}
        print(f"{name}: torch {torch_ms:.0f} ms, ONNX Runtime {ort_ms:.0f} ms, ratio {torch_ms / ort_ms:.2f}",
              flush=True)
    if args.output:
        write_json(Path(args.output), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
