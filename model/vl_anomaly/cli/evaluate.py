"""``vl-anomaly eval``: benchmark metrics at official parity on one or more datasets, with report and plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..factory import default_score
from ..datasets import list_datasets, load_dataset
from ..evaluation import run_evaluation
from ..errors import ConfigError
from ..scores import list_scores
from . import predict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    predict.add_predictor_arguments(parser)
    parser.set_defaults(score=None)
    parser.add_argument("--scores", nargs="+", choices=list_scores(), default=None,
                        help="several scores from one forward pass (default: --score, else the model's default score)")
    parser.add_argument("--dataset", action="append", required=True, metavar="NAME[=PATH]",
                        help=f"dataset to evaluate (repeatable); NAME in {', '.join(list_datasets())}; "
                             "without PATH the shared copy is used")
    parser.add_argument("--mode", choices=["official", "exact"], default="official",
                        help="pixel metrics: official evaluator's binning (default) or unbinned")
    parser.add_argument("--workers", type=int, default=2, help="data-loading threads")
    parser.add_argument("--score-maps", default=None,
                        help="evaluate saved score maps <DIR>/<dataset>/<frame id>.npy instead of running a model")
    parser.add_argument("-o", "--output", default=None, help="output folder (default outputs/eval/<model>)")


def main(args: argparse.Namespace) -> int:
    scores = args.scores or [args.score or default_score(args.model)]
    if args.fusion and "fused" not in scores:
        scores.append("fused")                              # --fusion: also evaluate the fused score
    datasets = [load_dataset(spec) for spec in args.dataset]
    saved = Path(args.score_maps) if args.score_maps else None
    if saved is not None and args.fusion:
        raise ConfigError("--fusion fuses a model's source maps as it infers them; it cannot use --score-maps "
                          "(scripts/fusion_study.py fuses saved maps)")
    predictor = None
    if saved is None:
        args.score = scores[0]
        predictor = predict.build_predictor(args)
    out = Path(args.output or f"outputs/eval/{predictor.name if predictor else 'saved_maps'}")
    results = run_evaluation(datasets, scores, out, predictor, weights=args.weights, mode=args.mode,
                             workers=args.workers, saved_maps=saved)
    for name, ds in results["datasets"].items():
        for score, r in ds["scores"].items():
            px = r["pixel"]
            comp = r.get("component")
            extra = f", sIoU {comp['sIoU_gt']:.2f}, PPV {comp['PPV']:.2f}, mF1 {comp['mean_F1']:.2f}" if comp else ""
            print(f"{name:18s} {score:10s} AuPRC {px['AuPRC']:6.2f}  FPR95 {px['FPR95']:6.2f}{extra}")
        if ds["count_note"]:
            print(f"  note: {name}: {ds['count_note']}")
    print(f"results: {(out / 'results.json').resolve()}\nreport:  {(out / 'report.md').resolve()}")
    return 0
