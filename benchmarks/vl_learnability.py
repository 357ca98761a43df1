"""Does VL-Anomaly training learn? End to end on a synthetic road world (issue 17 item 1), no downloads.

1. :mod:`vl_anomaly.train.synthetic` writes training scenes (Cityscapes layout), outlier objects (COCO layout) and
   held-out test scenes whose objects have shapes and colours never pasted in training.
2. The registered ``vl_anomaly_espnetv2_vitb16`` arrangement (real ESPNetv2 Cityscapes weights, frozen) with a
   tiny random CLIP (the real tokenizer) is evaluated untrained, trained with the real ``train()`` of
   ``vl-anomaly train`` (outlier pasting on), its head checkpoint loaded back through ``create_predictor``, and
   evaluated again with the same ``run_evaluation`` as ``vl-anomaly eval``.
3. Pixel AP (official protocol) per source — detector (msp), text_guided, clip_crops, fused — untrained vs trained.

    .venv/bin/python benchmarks/vl_learnability.py [--quick] [-o benchmarks/results/vl_learnability.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
import yaml

from vl_anomaly import add_model_config, create_predictor, get_model_config
from vl_anomaly.cpu import cpu_model, set_threads
from vl_anomaly.networks.clip_towers import TINY_CLIP_CONFIG
from vl_anomaly.datasets import load_dataset
from vl_anomaly.evaluation import run_evaluation
from vl_anomaly.train.synthetic import write_anomaly_set, write_cityscapes, write_coco_outliers
from vl_anomaly.train.trainer import TrainCfg, train

SOURCES = ["msp", "text_guided", "clip_crops", "fused"]
NAME = "vl_learnability_tiny"
SIZE = (128, 256)


def register_tiny(folder: Path) -> str:
    """``vl_anomaly_espnetv2_vitb16`` with a tiny random CLIP config (weights None) and 4 context vectors."""
    cfg = get_model_config("vl_anomaly_espnetv2_vitb16")
    cfg.pop("name")
    cfg["clip"] = {"name": "tiny", "weights": None, "config": TINY_CLIP_CONFIG}
    cfg["arch"] = {"n_ctx": 4, "heads": 8, "tau": 0.07}
    path = folder / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    add_model_config(path)
    return NAME


def evaluate(weights: str, dataset_root: Path, out: Path, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)                    # the same random CLIP as in training (same construction order)
    predictor = create_predictor(NAME, weights=weights, score="fused", input_size=SIZE)
    results = run_evaluation([load_dataset(f"road_anomaly_21={dataset_root}")], SOURCES, out, predictor, workers=1)
    scores = results["datasets"]["road_anomaly_21"]["scores"]
    return {s: round(scores[s]["pixel"]["AuPRC"], 2) for s in SOURCES}


def run(quick: bool, workdir: Path, seed: int = 0, progress: bool = True,
        sizes: tuple[int, int, int] | None = None) -> dict:
    """The whole path in ``workdir``; ``sizes`` = (train scenes, test scenes, iterations) overrides the presets
    (quick: 96, 24, 150; full: 400, 60, 600)."""
    start = time.perf_counter()
    n_train, n_test, iterations = sizes or ((96, 24, 150) if quick else (400, 60, 600))
    data = workdir / "data"
    write_cityscapes(data / "cityscapes", "train", n_train, SIZE, seed)
    write_coco_outliers(data / "coco", 48, seed=seed)
    write_anomaly_set(data / "novel", n_test, SIZE, seed + 1)
    register_tiny(workdir)
    untrained = evaluate("untrained", data / "novel", workdir / "eval_untrained", seed)
    cfg = TrainCfg(model=NAME, cityscapes=str(data / "cityscapes"), coco=str(data / "coco"),
                   output=str(workdir / "train"), weights="untrained", clip_weights="default", paste_prob=0.8,
                   crop=SIZE, min_scale=1.0, max_scale=1.0, iterations=iterations, batch_size=4, lr=1e-3,
                   workers=0, checkpoint_every=iterations, log_every=50, seed=seed, resume=False)
    t0 = time.perf_counter()
    history = train(cfg, progress=progress)
    train_s = time.perf_counter() - t0
    trained = evaluate(str(workdir / "train" / "checkpoint" / "head.safetensors"), data / "novel",
                       workdir / "eval_trained", seed)
    losses = history["losses"]
    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_model(),
            "platform": platform.platform(), "torch": torch.__version__, "quick": quick,
            "setup": {"train_scenes": n_train, "test_scenes": n_test, "size": list(SIZE), "iterations": iterations,
                      "batch": 4, "outliers": "discs/triangles/squares, warm colours (pasted, p=0.8)",
                      "novel_test_objects": "crosses/rings/stars, cold colours, some striped",
                      "model": "vl_anomaly_espnetv2_vitb16 arrangement, ESPNetv2 frozen, tiny random CLIP"},
            "untrained_ap": untrained, "trained_ap": trained,
            "loss_first_last": [round(sum(losses[:10]) / max(1, len(losses[:10])), 4),
                                round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4)],
            "train_seconds": round(train_s, 1), "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer scenes and iterations (≤ 4 min on 2 cores)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--output", default="benchmarks/results/vl_learnability.json")
    args = parser.parse_args()
    set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vl_learnability_") as workdir:
        report = run(args.quick, Path(workdir))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("untrained_ap", "trained_ap", "train_seconds", "seconds")}, indent=1))


if __name__ == "__main__":
    main()
