"""``vl-anomaly train --config FILE``: train the vision-language head (see vl_anomaly.train.trainer)."""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training YAML (model/train_configs/*.yaml)")
    parser.add_argument("--output", default=None, help="override the output folder")
    parser.add_argument("--iterations", type=int, default=None, help="override the number of iterations")
    parser.add_argument("--clip-weights", default=os.environ.get("VL_ANOMALY_CLIP_WEIGHTS"), metavar="FILE|default|none",
                        help="override the config's clip_weights (default: $VL_ANOMALY_CLIP_WEIGHTS if set)")
    parser.add_argument("--no-resume", action="store_true", help="start from scratch even if a checkpoint exists")


def main(args: argparse.Namespace) -> int:
    from ..train.trainer import TrainCfg, train

    cfg = TrainCfg.load(args.config, output=args.output, iterations=args.iterations, clip_weights=args.clip_weights,
                        resume=False if args.no_resume else None)
    result = train(cfg)
    print(f"trained to iteration {result['iteration']}; head checkpoint: {result['output']}/checkpoint/head.safetensors")
    return 0
