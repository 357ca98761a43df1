"""``vl-anomaly export --model M --format onnx``: export a registered segmenter, checked against PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..export import export_onnx
from ..factory import create_model, get_preprocess_cfg
from ..registry import list_models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, choices=list_models())
    parser.add_argument("--weights", default="default", help="'default', 'none' or a weights file/directory")
    parser.add_argument("--format", choices=["onnx"], default="onnx",
                        help="onnx (TensorRT engines are built from it on the target GPU; docs/deployment.md)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="network input size of the graph (default: the weights' training size)")
    parser.add_argument("-o", "--output", default=None, help="ONNX file (default outputs/export/<model>.<H>x<W>.onnx)")


def main(args: argparse.Namespace) -> int:
    size = get_preprocess_cfg(args.model, tuple(args.input_size) if args.input_size else None).input_size
    out = Path(args.output or f"outputs/export/{args.model}.{size[0]}x{size[1]}.onnx")
    record = export_onnx(create_model(args.model, weights=args.weights), out, tuple(size), name=args.model,
                         weights=args.weights)
    print(f"wrote {out.resolve()} ({out.stat().st_size / 2**20:.1f} MiB, opset {record.opset}); input pixel_values "
          f"(1, 3, {size[0]}, {size[1]}); outputs "
          + ", ".join(f"{n} {tuple(record.output_shapes[n])}" for n in record.outputs))
    print("check against PyTorch, max abs diff: " + ", ".join(f"{n} {d:.2e}" for n, d in record.max_abs_diff.items()))
    return 0
