"""Subnormal floats in the real-weight models, and what they cost on this CPU (issue 14).

For each model with real weights, on a real 1920×1080 RoadObstacle21 frame at the network's default input:

* subnormal parameters in the published checkpoint, and subnormal values among the outputs of every leaf
  module (activations) with the checkpoint as published vs with its subnormal parameters zeroed (what the core
  loads since issue 14: ``vl_anomaly.cpu.flush_subnormals_``);
* network time in three settings measured in one run, each in a fresh thread so its OpenMP workers are new:
  ``published`` (checkpoint as published, no flush-to-zero), ``weights_flushed`` (subnormal parameters zeroed),
  ``weights_flushed+ftz`` (and FTZ/DAZ on in the thread and its workers) — the last is what the core runs
  (``vl_anomaly.cpu``: zeroed parameters, workers created with the flags, the forward inside ``flush_to_zero``).
  Scores of the three are compared too (they must agree: subnormals are below 1.2e-38).

On CPUs that take a microcode assist per subnormal operand (many Intel cores) ``published`` is far slower; on
AMD Zen cores the three take the same time. The CPU model is recorded with the figures.

    .venv/bin/python benchmarks/bench_denormals.py --threads 2 -o benchmarks/results/denormals.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import threading
import time
from pathlib import Path

import torch

from vl_anomaly import create_model, read_image
from vl_anomaly.cpu import count_subnormal, cpu_model
from vl_anomaly.factory import get_preprocess_cfg
from vl_anomaly.io import write_json
from vl_anomaly.paths import anomaly_val_dir
from vl_anomaly.preprocess import preprocess
from vl_anomaly.pretrained import load_registered_state_dict

MODELS = ["espnet_p2_q8_cityscapes", "espnetv2_s2.0_cityscapes"]


def _activation_counts(model: torch.nn.Module, x: torch.Tensor, threads: int) -> tuple[int, int]:
    """(subnormal, total) values over the outputs of every leaf module for one forward pass, computed on a fresh
    thread without flush-to-zero (as a CPU runs the network when nobody sets it)."""
    totals = [0, 0]

    def hook(module, inputs, output):
        if torch.is_tensor(output):
            totals[0] += count_subnormal(output)
            totals[1] += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    _timed_in_new_thread(model, x, threads, ftz=False, repeats=0)
    for handle in handles:
        handle.remove()
    return totals[0], totals[1]


def _timed_in_new_thread(model: torch.nn.Module, x: torch.Tensor, threads: int, ftz: bool,
                         repeats: int) -> tuple[list[float], torch.Tensor]:
    """Forward times (ms) measured on a fresh thread (fresh OpenMP workers) with or without FTZ/DAZ."""
    box: dict = {}

    def run():
        torch.set_flush_denormal(ftz)
        torch.set_num_threads(threads)
        with torch.inference_mode():
            out = model(x).logits
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - start) * 1e3)
        box["times"], box["out"] = times, out

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return box["times"], box["out"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-o", "--output", default="benchmarks/results/denormals.json")
    args = parser.parse_args()
    image = read_image(anomaly_val_dir() / "RoadObstacle21" / "images" / "0.webp")
    result = {"date": dt.datetime.now().isoformat(timespec="seconds"), "cpu_model": cpu_model(),
              "torch": torch.__version__, "torch_threads": args.threads, "repeats": args.repeats,
              "image": "RoadObstacle21/images/0.webp (1920x1080)", "models": {}}
    for name in MODELS:
        published = load_registered_state_dict(name)
        floats = [v for v in published.values() if v.is_floating_point()]
        x = preprocess(image, get_preprocess_cfg(name))
        model = create_model(name)                                   # loads with subnormal parameters zeroed
        flushed_state = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(published)                             # as published, subnormals included
        act_published = _activation_counts(model, x, args.threads)
        t_published, out_published = _timed_in_new_thread(model, x, args.threads, False, args.repeats)
        model.load_state_dict(flushed_state)
        act_flushed = _activation_counts(model, x, args.threads)
        t_flushed, out_flushed = _timed_in_new_thread(model, x, args.threads, False, args.repeats)
        t_ftz, out_ftz = _timed_in_new_thread(model, x, args.threads, True, args.repeats)
        row = {
            "input_hw": list(x.shape[-2:]),
            "parameters": sum(v.numel() for v in floats),
            "subnormal_parameters": sum(count_subnormal(v) for v in floats),
            "activations": act_published[1],
            "subnormal_activations_published": act_published[0],
            "subnormal_activations_weights_flushed": act_flushed[0],
            "network_ms_median": {"published": round(statistics.median(t_published), 1),
                                  "weights_flushed": round(statistics.median(t_flushed), 1),
                                  "weights_flushed+ftz": round(statistics.median(t_ftz), 1)},
            "max_abs_logit_diff_vs_published": {
                "weights_flushed": float((out_flushed - out_published).abs().max()),
                "weights_flushed+ftz": float((out_ftz - out_published).abs().max())},
        }
        result["models"][name] = row
        print(name, row, flush=True)
    write_json(Path(args.output), result)
    print(f"CPU {result['cpu_model']}; wrote {args.output}")


if __name__ == "__main__":
    main()
