"""``vl-anomaly calibrate``: fit one shared set of fusion weights on calibration sets and write it as YAML."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..calibration import fit_fusion, sample_pixels
from ..datasets import list_datasets, load_dataset
from ..evaluation import produce_score_maps
from ..scores import list_scores
from . import predict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    predict.add_predictor_arguments(parser)
    parser.add_argument("--sources", nargs="+", choices=list_scores(), required=True,
                        help="scores to fuse (at least two)")
    parser.add_argument("--dataset", action="append", required=True, metavar="NAME[=PATH]",
                        help=f"calibration set (repeatable); NAME in {', '.join(list_datasets())}")
    parser.add_argument("--step", type=float, default=0.1, help="grid step on the weight simplex")
    parser.add_argument("--form", choices=["sum", "gated", "auto"], default="sum",
                        help="fusion form: 'sum' (weighted sum, the shipped configs), 'gated' (one source gates, "
                             "the others boost it: s = n_g * (w_g + sum_i w_i n_i); found better for the VL "
                             "sources on the synthetic world, docs/method.md) or 'auto' (search both, keep the "
                             "better on the calibration pixels)")
    parser.add_argument("--pixels", type=int, default=400_000, help="sampled pixels per calibration set")
    parser.add_argument("--eval-dir", default=None,
                        help="evaluation folder whose score_maps/ to reuse or fill (default outputs/eval/<model>)")
    parser.add_argument("-o", "--output", required=True, help="fusion config YAML to write")
    parser.add_argument("--model-config-out", default=None, metavar="YAML",
                        help="also write the model's config with this fusion (its fused score) to YAML; register "
                             "it with VL_ANOMALY_MODEL_CONFIGS or vl_anomaly.add_model_config (the file stem is "
                             "the model name)")


def main(args: argparse.Namespace) -> int:
    if len(args.sources) < 2:
        raise ValueError("calibrate needs at least two --sources")
    datasets = [load_dataset(spec) for spec in args.dataset]
    args.score = args.sources[0]
    predictor = predict.build_predictor(args)
    eval_dir = Path(args.eval_dir or f"outputs/eval/{predictor.name}")
    samples = {}
    for dataset in datasets:
        produce_score_maps(dataset, predictor, list(args.sources), eval_dir, args.weights)
        samples[dataset.name] = sample_pixels(dataset, eval_dir / "score_maps", list(args.sources), args.pixels)
    forms = {"sum": ("sum",), "gated": ("gated",), "auto": ("sum", "gated")}[args.form]
    cfg = fit_fusion(samples, list(args.sources), args.step, model=predictor.name, forms=forms)
    path = cfg.save(args.output)
    if args.model_config_out:
        import yaml

        from ..registry import get_model_config

        model_cfg = get_model_config(args.model)
        model_cfg.pop("name")
        model_cfg["fusion"] = cfg.to_dict()
        out = Path(args.model_config_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(f"# {args.model} with fusion weights calibrated by vl-anomaly calibrate (record inside).\n"
                       + yaml.safe_dump(model_cfg, sort_keys=False), encoding="utf-8")
        print(f"wrote model config {out.resolve()} (model name {out.stem})")
    rec = cfg.record
    print(f"form: {cfg.form}" + (f" (gate {cfg.gate})" if cfg.gate else "") + "; weights: "
          + ", ".join(f"{s} {w:.1f}" for s, w in cfg.weights.items()))
    print(f"calibration (sampled pixels of {', '.join(samples)}): AuPRC {rec['calibration_AuPRC']:.2f}, "
          f"FPR95 {rec['calibration_FPR95']:.2f}; best single source: "
          + max(rec["single_sources"].items(), key=lambda kv: kv[1]["AuPRC"])[0])
    print(f"wrote {Path(path).resolve()}")
    return 0
