"""bf16 autocast on the CPU as a speed lever for the lite ensemble (issue 13 item 6): speed and AP in one run.

CPUs with AMX (Intel Sapphire Rapids and later) run bf16 matrix and convolution kernels natively; elsewhere bf16
is emulated and slower. This script measures, on the machine it runs on:

* **speed** — whole ``AnomalyPredictor.predict`` on a real 1920×1080 RoadObstacle21 frame at 512×1024 for single
  ESPNetv2 (fp32, the reference) and the lite ensemble in fp32 and under ``torch.autocast("cpu", bfloat16)``,
  interleaved round by round; ratios to single ESPNetv2 fp32;
* **quality** — the ensemble's default score (official evaluator, pixel AP / FPR95) on the shared sets in fp32 and
  in bf16, through the same ``run_evaluation`` that ``vl-anomaly eval`` uses.

    .venv/bin/python benchmarks/bench_autocast.py --threads 2 -o benchmarks/results/autocast_bf16.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vl_anomaly import create_predictor, read_image
from vl_anomaly.cpu import cpu_model, set_threads
from vl_anomaly.datasets import load_dataset
from vl_anomaly.evaluation import run_evaluation
from vl_anomaly.paths import anomaly_val_dir

BASELINE, ENSEMBLE = "espnetv2_s2.0_cityscapes", "lite_ensemble_cityscapes"


def precision(name: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if name == "bf16" else contextlib.nullcontext()


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("amx", "avx512_bf16")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--datasets", nargs="*", default=["road_anomaly_21", "road_obstacle_21", "fs_static",
                                                          "road_anomaly"])
    parser.add_argument("-o", "--output", default="benchmarks/results/autocast_bf16.json")
    args = parser.parse_args()
    set_threads(args.threads)
    image = read_image(anomaly_val_dir() / "RoadObstacle21" / "images" / "0.webp")
    predictors = {BASELINE: create_predictor(BASELINE), ENSEMBLE: create_predictor(ENSEMBLE)}
    cases = [(BASELINE, "fp32"), (ENSEMBLE, "fp32"), (ENSEMBLE, "bf16"), (BASELINE, "bf16")]
    for model, prec in cases:                                             # warm-up
        with precision(prec):
            predictors[model].predict(image)
    times: dict = {case: [] for case in cases}
    for _ in range(args.rounds):
        for model, prec in cases:
            with precision(prec):
                start = time.perf_counter()
                predictors[model].predict(image)
                times[(model, prec)].append(1e3 * (time.perf_counter() - start))
    reference = statistics.median(times[(BASELINE, "fp32")])
    speed = [{"model": m, "precision": p, "predict_ms_median": statistics.median(t), "predict_ms_min": min(t),
              "ratio_to_espnetv2_fp32": statistics.median(t) / reference} for (m, p), t in times.items()]
    quality = {}
    datasets = [load_dataset(name) for name in args.datasets]
    predictor = predictors[ENSEMBLE]
    for prec in ("fp32", "bf16"):
        with tempfile.TemporaryDirectory() as out, precision(prec):
            results = run_evaluation(datasets, [predictor.score_name], Path(out), predictor, workers=2)
        quality[prec] = {name: {k: entry["scores"][predictor.score_name]["pixel"][m] for k, m in (("AP", "AuPRC"),
                                                                                            ("FPR95", "FPR95"))}
                         for name, entry in results["datasets"].items()}
        quality[prec]["mean_AP"] = statistics.mean(v["AP"] for k, v in quality[prec].items() if k != "mean_AP")
    report = {"date": dt.date.today().isoformat(), "cpu": cpu_model(), "cpu_bf16_flags": cpu_flags(),
              "platform": platform.platform(), "torch": torch.__version__, "threads": args.threads,
              "rounds": args.rounds, "input_size": list(predictor.preprocess_cfg.input_size),
              "score": predictor.score_name, "speed": speed, "quality": quality}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['cpu']} ({', '.join(report['cpu_bf16_flags']) or 'no AMX / AVX512-BF16'}), {args.threads} threads")
    for row in speed:
        print(f"  {row['model']} {row['precision']}: {row['predict_ms_median']:.0f} ms, "
              f"{row['ratio_to_espnetv2_fp32']:.2f}× ESPNetv2 fp32")
    for prec, sets in quality.items():
        print(f"  {ENSEMBLE} {predictor.score_name} {prec}: " + ", ".join(
            f"{k} {v['AP']:.2f}" if isinstance(v, dict) else f"{k} {v:.2f}" for k, v in sets.items()))


if __name__ == "__main__":
    main()
