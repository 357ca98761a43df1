"""Seconds per training iteration of a VL arrangement (``vl-anomaly train``'s real ``train()``), on the synthetic world.

Writes a small synthetic Cityscapes-layout set and COCO-layout outliers (:mod:`vl_anomaly.train.synthetic`), registers
the arrangement with a tiny random CLIP as ``benchmarks/vl_learnability.py`` does (ESPNetv2: the real Cityscapes
weights; Mask2Former: its small configuration from random weights), trains head and segmenter together for a few
warm-up iterations, then times ``--iterations`` more. To compare two versions of the code in one run, call it once per
checkout with ``PYTHONPATH=<checkout>/model`` (the first line printed says which ``vl_anomaly`` was imported).

    .venv/bin/python benchmarks/bench_train_step.py --arrangement mask2former --iterations 20 [--threads 2] [-o F]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import vl_anomaly  # noqa: E402
import vl_learnability  # noqa: E402
from vl_anomaly.cpu import cpu_model, set_threads  # noqa: E402
from vl_anomaly.train.synthetic import write_cityscapes, write_coco_outliers  # noqa: E402
from vl_anomaly.train.trainer import train  # noqa: E402


def time_training(arrangement: str, iterations: int, size: tuple[int, int], batch: int, scenes: int = 40,
                  warmup: int = 3) -> dict:
    """Train ``warmup`` iterations (not timed), then ``iterations`` timed ones from the same start; returns
    ``{"seconds_per_iteration", "first_loss", "last_loss"}``."""
    with tempfile.TemporaryDirectory(prefix="bench_train_step_") as folder:
        work = Path(folder)
        write_cityscapes(work / "cityscapes", "train", scenes, size, 0)
        write_coco_outliers(work / "coco", vl_learnability.OUTLIER_IMAGES, seed=0)
        vl_learnability.register_tiny(work, arrangement)
        train(vl_learnability.train_cfg(work, work / "warmup", arrangement, size, warmup, batch=batch),
              progress=False)
        start = time.perf_counter()
        result = train(vl_learnability.train_cfg(work, work / "timed", arrangement, size, iterations, batch=batch),
                       progress=False)
        seconds = time.perf_counter() - start
    return {"seconds_per_iteration": round(seconds / iterations, 4), "first_loss": round(result["losses"][0], 4),
            "last_loss": round(result["losses"][-1], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrangement", choices=sorted(vl_learnability.ARRANGEMENTS), default="espnetv2")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--size", type=int, nargs=2, default=list(vl_learnability.SIZE), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--output", default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    set_threads(args.threads)
    print(f"vl_anomaly from {Path(vl_anomaly.__file__).parent}")
    figures = time_training(args.arrangement, args.iterations, tuple(args.size), args.batch)
    report = {"date": dt.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_model(), "threads": args.threads,
              "platform": platform.platform(), "torch": torch.__version__, "vl_anomaly": str(Path(vl_anomaly.__file__)),
              "arrangement": args.arrangement, "size": args.size, "batch": args.batch, "iterations": args.iterations,
              **figures}
    print(json.dumps(report, indent=1))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
