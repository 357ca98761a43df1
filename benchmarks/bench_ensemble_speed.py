"""Speed of the ensemble against single ESPNetv2 (issue 13 item 6), PyTorch and ONNX Runtime, measured in one run.

For each (model, backend), the whole pipeline (``AnomalyPredictor.predict`` on a real 1920×1080 RoadObstacle21
frame: validation, pre-processing, network, the model's default score, resize, post-processing) and the network
alone. Cases are **interleaved** (one repeat of every case per round) so that a machine that gets busier or
quieter during the run affects all of them alike; the ratios to single ESPNetv2 of the same backend are the
figures to quote.

    .venv/bin/python benchmarks/bench_ensemble_speed.py --threads 2 --rounds 5 -o benchmarks/results/ensemble_speed.json
    .venv/bin/python benchmarks/bench_ensemble_speed.py --backends torch --configs candidate_a.yaml candidate_b.yaml
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
from vl_anomaly.registry import add_model_config

BASELINE = "espnetv2_s2.0_cityscapes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=[BASELINE, "lite_ensemble_cityscapes"])
    parser.add_argument("--configs", nargs="*", default=[], type=Path,
                        help="extra model YAMLs (e.g. candidate ensembles) to register and measure too")
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    parser.add_argument("--input-size", type=int, nargs=2, default=[512, 1024])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-o", "--output", default="benchmarks/results/ensemble_speed.json")
    args = parser.parse_args()
    set_threads(args.threads)
    for config in args.configs:
        args.models += [m for m in add_model_config(config) if m not in args.models]
    image = read_image(anomaly_val_dir() / "RoadObstacle21" / "images" / "0.webp")
    size = tuple(args.input_size)
    cases = {}
    for model in args.models:
        for backend in args.backends:
            predictor = create_predictor(model, backend=backend, input_size=size)
            x = preprocess(image, predictor.preprocess_cfg)

            def network(p=predictor, x=x):
                with torch.no_grad():
                    p.model(x)

            cases[(model, backend)] = {"predict": lambda p=predictor: p.predict(image), "network": network,
                                       "score": predictor.score_name}
            cases[(model, backend)]["predict"]()                               # warm-up
            network()
    times = {key: {"predict": [], "network": []} for key in cases}
    for _ in range(args.rounds):
        for key, case in cases.items():
            for part in ("network", "predict"):
                t0 = time.perf_counter()
                case[part]()
                times[key][part].append(1e3 * (time.perf_counter() - t0))
    rows = []
    for (model, backend), t in times.items():
        base = times.get((BASELINE, backend))
        row = {"model": model, "backend": backend, "score": cases[(model, backend)]["score"],
               "network_ms_median": statistics.median(t["network"]), "predict_ms_median": statistics.median(t["predict"]),
               "network_ms_min": min(t["network"]), "predict_ms_min": min(t["predict"])}
        if base:
            row["network_ratio"] = row["network_ms_median"] / statistics.median(base["network"])
            row["predict_ratio"] = row["predict_ms_median"] / statistics.median(base["predict"])
        rows.append(row)
    result = {"date": dt.date.today().isoformat(), "cpu": cpu_model(), "platform": platform.platform(),
              "torch": torch.__version__, "threads": args.threads, "input_size": list(size), "rounds": args.rounds,
              "image": "RoadObstacle21/images/0.webp (1920x1080)", "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{cpu_model()}, {args.threads} threads, {size[0]}x{size[1]}, {result['date']}\n")
    print("| model | backend | score | network ms (median) | × single | predict ms (median) | × single |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['backend']} | {r['score']} | {r['network_ms_median']:.0f} | "
              f"{r.get('network_ratio', float('nan')):.2f} | {r['predict_ms_median']:.0f} | "
              f"{r.get('predict_ratio', float('nan')):.2f} |")


if __name__ == "__main__":
    main()
