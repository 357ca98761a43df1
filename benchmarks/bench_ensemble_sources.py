"""Ensembles and anomaly sources on the shared validation sets (issue 13): which members, which source.

Runs every candidate member **once per frame** (one :class:`~vl_anomaly.networks.ensemble.EnsembleSegmenter` of all
candidates), then forms each variant (a subset of members) from the stored member logits exactly as the registered
ensemble does (log of the mean softmax) and computes each source through the registered score code
(:class:`~vl_anomaly.scores.ScoreContext`). Score maps go to ``OUT/score_maps/<dataset>/<variant>.<source>/`` in
the evaluator's format, metrics come from the same official-protocol code as ``vl-anomaly eval``.

    .venv/bin/python benchmarks/bench_ensemble_sources.py -o outputs/ensembles --threads 2

Writes ``OUT/ensemble_sources.json`` and prints a markdown table (AP / FPR95 per set, mean AP).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from vl_anomaly.cpu import cpu_model, set_threads
from vl_anomaly.datasets import load_dataset
from vl_anomaly.evaluation.metrics_of_maps import evaluate_dataset
from vl_anomaly.evaluation.score_maps import prefetch, score_map_dir
from vl_anomaly.factory import create_model, get_preprocess_cfg
from vl_anomaly.outputs import SegmenterOutput
from vl_anomaly.preprocess import preprocess
from vl_anomaly.registry import add_model_config
from vl_anomaly.scores import ScoreContext, ScoringCfg

# Candidate members: a registered model at a fraction of the ensemble's input resolution (1.0 = 512×1024).
CANDIDATES = {
    "v2s2": ("espnetv2_s2.0_cityscapes", 1.0), "v2s15": ("espnetv2_s1.5_cityscapes", 1.0),
    "v2s1": ("espnetv2_s1.0_cityscapes", 1.0), "dice": ("dicenet_s1.75_cityscapes", 1.0),
    "espnet": ("espnet_p2_q8_cityscapes", 1.0),
    "v2s2@75": ("espnetv2_s2.0_cityscapes", 0.75), "v2s15@75": ("espnetv2_s1.5_cityscapes", 0.75),
    "v2s1@75": ("espnetv2_s1.0_cityscapes", 0.75), "dice@75": ("dicenet_s1.75_cityscapes", 0.75),
    "v2s15@50": ("espnetv2_s1.5_cityscapes", 0.5), "v2s1@50": ("espnetv2_s1.0_cityscapes", 0.5),
    "dice@50": ("dicenet_s1.75_cityscapes", 0.5),
}
VARIANTS = {
    "v2s2": ["v2s2"], "dice": ["dice"], "v2_all": ["v2s2", "v2s15", "v2s1"],
    "v2_all+dice": ["v2s2", "v2s15", "v2s1", "dice"],
    "v2s2+(v2s15,v2s1,dice)@50": ["v2s2", "v2s15@50", "v2s1@50", "dice@50"],
    "v2s2+(v2s15,dice)@50": ["v2s2", "v2s15@50", "dice@50"],
    "v2s2+(v2s15,v2s1,dice)@75": ["v2s2", "v2s15@75", "v2s1@75", "dice@75"],
    "(v2_all+dice)@75": ["v2s2@75", "v2s15@75", "v2s1@75", "dice@75"],
    # round 1 (RoadAnomaly21 + RoadObstacle21 only): ESPNet and pairs
    "v2_all+espnet": ["v2s2", "v2s15", "v2s1", "espnet"], "all5": ["v2s2", "v2s15", "v2s1", "dice", "espnet"],
    "v2s2+dice": ["v2s2", "dice"],
    # fewer members for speed (issue 13 item 6: only two members stay within 2.5x single ESPNetv2)
    "v2s2+v2s15+dice": ["v2s2", "v2s15", "dice"], "v2s2+v2s1+dice": ["v2s2", "v2s1", "dice"],
    "v2s15+v2s1+dice": ["v2s15", "v2s1", "dice"],
}
DEFAULT_VARIANTS = [v for v in VARIANTS if "espnet" not in VARIANTS[v] and v != "v2s2+dice"]
SINGLE_SOURCES = ["msp", "max_logit"]
ENSEMBLE_SOURCES = ["msp", "max_logit", "entropy", "mutual_information", "msp_boundary"]
DATASETS = ["road_anomaly_21", "road_obstacle_21", "fs_static", "road_anomaly"]


def superset_model(tmp: Path, used: list[str]):
    """One ensemble of the candidates the variants use (registered on the fly from a temporary YAML)."""
    members = [{"model": CANDIDATES[c][0], **({"resolution": CANDIDATES[c][1]} if CANDIDATES[c][1] != 1.0 else {})}
               for c in used]
    cfg = {"family": "ensemble", "classes": "cityscapes", "members": members, "arch": {}}
    path = tmp / "candidates_ensemble.yaml"
    path.write_text(yaml.safe_dump(cfg))
    add_model_config(path)
    return create_model("candidates_ensemble"), get_preprocess_cfg("candidates_ensemble")


def variant_output(member_logits: torch.Tensor, features: torch.Tensor, members: list[int]) -> SegmenterOutput:
    """The registered ensemble's output contract for a subset of the members' logits ``(1, M, K, H, W)``."""
    subset = member_logits[:, members]
    mean_log_p = torch.logsumexp(subset.log_softmax(dim=2), dim=1) - math.log(len(members))
    return SegmenterOutput(logits=mean_log_p, pixel_features=features, feature_stride=8,
                           member_logits=subset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-o", "--out", type=Path, default=Path("outputs/ensembles"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--sources", nargs="+", default=None, help="only these sources (default: all)")
    parser.add_argument("--skip-inference", action="store_true", help="only evaluate maps already written")
    args = parser.parse_args()
    set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    scores = {v: [f"{v}.{s}" for s in (ENSEMBLE_SOURCES if len(VARIANTS[v]) > 1 else SINGLE_SOURCES)
                  if args.sources is None or s in args.sources]
              for v in args.variants}
    results = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "platform": platform.platform(),
               "torch": torch.__version__, "threads": args.threads, "candidates": {c: {"model": m, "resolution": r} for c, (m, r) in CANDIDATES.items()},
               "variants": {v: VARIANTS[v] for v in args.variants}, "datasets": {}}
    used = [c for c in CANDIDATES if any(c in VARIANTS[v] for v in args.variants)]   # candidates run, in order
    position = {c: k for k, c in enumerate(used)}
    model, pre = (None, None) if args.skip_inference else superset_model(args.out, used)
    scoring = ScoringCfg()
    for name in args.datasets:
        dataset = load_dataset(name)
        if not args.skip_inference:
            for v in scores.values():
                for s in v:
                    score_map_dir(args.out, dataset.name, s).mkdir(parents=True, exist_ok=True)
            for _, fid, image, _ in tqdm(prefetch(dataset, 2, True), total=len(dataset), desc=f"infer {name}"):
                t0 = time.perf_counter()
                with torch.no_grad():
                    out = model(preprocess(image, pre))
                t1 = time.perf_counter()
                for v, members in ((v, [position[i] for i in VARIANTS[v]]) for v in args.variants):
                    ctx = ScoreContext(output=variant_output(out.member_logits, out.pixel_features, members),
                                       image=image, model=None, cfg=scoring)
                    for full in scores[v]:
                        source = full.rsplit(".", 1)[1]
                        np.save(score_map_dir(args.out, dataset.name, full) / f"{fid}.npy",
                                ctx.map(source).astype(np.float16))
                tqdm.write(f"{fid}: members {t1 - t0:.1f} s, maps {time.perf_counter() - t1:.1f} s")
        all_scores = [s for v in scores.values() for s in v]
        per_score = evaluate_dataset(dataset, all_scores, args.out, "official", 2)
        results["datasets"][dataset.name] = {
            s: {"AP": r["pixel"]["AuPRC"], "FPR95": r["pixel"]["FPR95"],
                **({"sIoU": r["component"]["sIoU_gt"], "PPV": r["component"]["PPV"],
                    "mean_F1": r["component"]["mean_F1"]} if "component" in r else {})}
            for s, r in per_score.items()}
        (args.out / "ensemble_sources.json").write_text(json.dumps(results, indent=2) + "\n")
    names = list(results["datasets"])
    print("| variant.source | " + " | ".join(f"{n} AP / FPR95" for n in names) + " | mean AP |")
    print("|---|" + "---|" * (len(names) + 1))
    for s in [s for v in scores.values() for s in v]:
        aps = [results["datasets"][n][s]["AP"] for n in names]
        cells = [f"{results['datasets'][n][s]['AP']:.2f} / {results['datasets'][n][s]['FPR95']:.2f}" for n in names]
        print(f"| {s} | " + " | ".join(cells) + f" | {np.mean(aps):.2f} |")


if __name__ == "__main__":
    main()
