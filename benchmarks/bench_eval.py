"""Time to evaluate the four shared sets with one model, split into inference, metrics, loading and writing.

Runs ``vl_anomaly.evaluation.run_evaluation`` into a fresh temporary folder (no score-map reuse), then a second
time in the same folder (reuse: metrics only), and prints both splits plus peak RSS.

    .venv/bin/python benchmarks/bench_eval.py --model espnet_p2_q8_cityscapes --threads 2
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from vl_anomaly import create_predictor
from vl_anomaly.cpu import cpu_model, set_threads
from vl_anomaly.datasets import load_dataset
from vl_anomaly.evaluation import run_evaluation

SETS = ["road_anomaly_21", "road_obstacle_21", "fs_static", "road_anomaly"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="espnet_p2_q8_cityscapes")
    parser.add_argument("--scores", nargs="+", default=["msp", "max_logit", "entropy", "energy"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    predictor = create_predictor(args.model)
    datasets = [load_dataset(name) for name in SETS]
    frames = sum(len(d) for d in datasets)
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("fresh", "re-run (score maps reused)"):
            start = time.perf_counter()
            results = run_evaluation(datasets, args.scores, Path(tmp), predictor, workers=args.workers)
            t = results["timings_s"]
            print(f"{args.model}, {label}: {frames} frames, {len(args.scores)} scores, total "
                  f"{time.perf_counter() - start:.1f} s — inference {t['inference']:.1f} s "
                  f"({100 * t['inference'] / t['total']:.0f} %), metrics {t['metrics']:.1f} s "
                  f"({100 * t['metrics'] / t['total']:.0f} %), loading wait {t['loading']:.1f} s, "
                  f"writing {t['writing']:.1f} s", flush=True)
    print(f"CPU {cpu_model()}, {torch.get_num_threads()} threads; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          f"{args.threads} torch threads, {args.workers} loading workers")


if __name__ == "__main__":
    main()
