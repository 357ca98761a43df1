"""Per-frame CPU cost of each anomaly source, and how the CLIP branch scales with the crop cap.

Sources on one RoadObstacle21 frame (1920×1080): detector confidence (ESPNetv2, real weights, the full
``AnomalyPredictor.predict``), text-guided similarity (PL-Aligner layer 1 on ESPNetv2's features + R11), CLIP
image–text similarity (batched crops). CLIP is built at real size (open_clip ``ViT-B-16``, 149.6 M parameters)
and at a tiny size, both with **random weights** (no pretrained weights reachable): timings are real, scores are
not. Writes JSON (``-o``) and prints a table; docs/benchmarks.md holds the measured figures.

    .venv/bin/python benchmarks/bench_vl_sources.py --threads 2 -o benchmarks/results/vl_sources.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vl_anomaly import create_predictor, read_image
from vl_anomaly.cpu import cpu_model, set_threads
from vl_anomaly.io import write_json
from vl_anomaly.networks.clip_towers import FrozenCLIP
from vl_anomaly.networks.vl_anomaly import VLAnomalyModel
from vl_anomaly.paths import shared_dir
from vl_anomaly.preprocess import preprocess
from vl_anomaly.networks.clip_towers import template_text_embeddings
from vl_anomaly.vl_scores import clip_crop_score, text_guided_score

TINY_CLIP = dict(embed_dim=64, vision_cfg=dict(image_size=64, layers=2, width=64, patch_size=16, head_width=32),
                 text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))


def timed(fn, repeats: int) -> tuple[float, object]:
    fn()                                                                        # warm-up
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), result


def synthetic_candidates(shape: tuple[int, int], count: int) -> np.ndarray:
    """A detector map with ``count`` separate square regions (so the crop cap, not the image, sets the work)."""
    score = np.zeros(shape, np.float32)
    rows, cols = 4, max(1, (count + 3) // 4)
    for i in range(count):
        r, c = divmod(i, cols)
        y, x = 60 + r * (shape[0] - 120) // rows, 60 + c * (shape[1] - 120) // cols
        score[y:y + 80, x:x + 80] = 0.9
    return score


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--caps", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("-o", "--output", default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    image = read_image(shared_dir() / "data" / "anomaly_val" / "RoadObstacle21" / "images" / "0.webp")
    predictor = create_predictor("espnetv2_s2.0_cityscapes")
    rows: dict = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.platform(),
                  "cpu_model": cpu_model(), "torch_threads": args.threads, "image": "1920x1080", "detector_model": predictor.name}
    rows["detector_ms"], pred = timed(lambda: predictor.predict(image), args.repeats)
    x = preprocess(image, predictor.preprocess_cfg, "cpu")
    for label, config, name in (("tiny", TINY_CLIP, None), ("ViT-B-16", None, "ViT-B-16")):
        torch.manual_seed(0)
        clip = FrozenCLIP.create(name or "ViT-B-16", pretrained=None, config=config)
        params = sum(p.numel() for p in clip.parameters()) / 1e6
        model = VLAnomalyModel(predictor.model, clip).eval()
        with torch.inference_mode():
            text_ms_once, _ = timed(lambda: model.refresh_text_cache(), 1)
            base_ms, _ = timed(lambda: predictor.model(x), args.repeats)
            vl_ms, out = timed(lambda: model(x), args.repeats)
            score_ms, _ = timed(lambda: text_guided_score(out, image.shape[:2]), args.repeats)
            hand = template_text_embeddings(clip, ["road", "car", "person"])
            crops = {}
            for cap in args.caps:
                detector = synthetic_candidates(image.shape[:2], cap)
                ms, (_, n) = timed(lambda: clip_crop_score(image, detector, clip, hand, 0.5, max_crops=cap,
                                                           min_area_frac=0.0), args.repeats)
                crops[cap] = {"ms": ms, "crops": n}
            real_ms, (_, real_n) = timed(lambda: clip_crop_score(image, pred.score_map, clip, hand,
                                                                 predictor.postprocess_cfg.threshold), args.repeats)
        rows[label] = {"clip_params_M": params, "class_text_once_ms": text_ms_once,
                       "segmenter_forward_ms": base_ms, "segmenter_plus_aligner_ms": vl_ms,
                       "aligner_ms": vl_ms - base_ms, "text_guided_score_ms": score_ms,
                       "clip_crops_by_cap": crops, "clip_on_detector_candidates": {"ms": real_ms, "crops": real_n}}
    print(json.dumps(rows, indent=1))
    if args.output:
        write_json(Path(args.output), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
