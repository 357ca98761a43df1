"""``vl-anomaly export --model M --format onnx``: export a registered model, checked against PyTorch.

Segmenters give one graph; VL-Anomaly models give their per-frame graph plus the CLIP image encoder (dynamic batch
of crops) and the text tables. ``--format tensorrt`` exports ONNX and then builds (and caches) the TensorRT engine
on this machine's GPU — it needs TensorRT and CUDA, which our development machines do not have.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from ..deploy import ExportRecord, export_model, vl_companion_paths
from ..factory import create_model, get_preprocess_cfg
from ..registry import list_models


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, choices=list_models())
    parser.add_argument("--weights", default="default",
                        help="'default', 'none' (random) or a weights file/directory; VL models: a head "
                             ".safetensors or 'untrained'")
    parser.add_argument("--format", choices=["onnx", "tensorrt"], default="onnx",
                        help="onnx; tensorrt = onnx, then build the engine into the cache (needs TensorRT + GPU)")
    parser.add_argument("--precision", choices=["fp16", "fp32"], default="fp16", help="TensorRT engine precision")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="network input size of the graph (default: the weights' training size)")
    parser.add_argument("-o", "--output", default=None, help="ONNX file (default outputs/export/<model>.<H>x<W>.onnx)")
    parser.add_argument("--known-classes", nargs="+", default=None, metavar="NAME",
                        help="VL models: export with these known classes (the class text is a constant of the graph)")


def _describe(path: Path, record: ExportRecord) -> None:
    inputs = ", ".join(f"{n} (1, 3, {record.input_size[0]}, {record.input_size[1]})" for n in record.inputs)
    if record.kind == "clip_image":
        inputs = f"images (B, 3, {record.input_size[0]}, {record.input_size[1]}), 1 ≤ B ≤ {record.extras['max_batch']}"
    print(f"wrote {path.resolve()} ({path.stat().st_size / 2**20:.1f} MiB, {record.kind}, opset {record.opset}); "
          f"input {inputs}; outputs " + ", ".join(f"{n} {tuple(record.output_shapes[n])}" for n in record.outputs))
    print("  check against PyTorch, max abs diff: "
          + ", ".join(f"{n} {d:.2e}" for n, d in record.max_abs_diff.items()))


def main(args: argparse.Namespace) -> int:
    size = get_preprocess_cfg(args.model, tuple(args.input_size) if args.input_size else None).input_size
    out = Path(args.output or f"outputs/export/{args.model}.{size[0]}x{size[1]}.onnx")
    if args.format == "tensorrt":
        from ..deploy.tensorrt_runner import import_tensorrt

        import_tensorrt()                                   # fail before minutes of export work
    model = create_model(args.model, weights=args.weights)
    if args.known_classes is not None:
        if not getattr(model, "is_vision_language", False):
            raise ConfigError(f"--known-classes: {args.model} is a plain segmenter; its classes are fixed by its weights")
        model.eval().set_vocabulary(args.known_classes)
    record = export_model(model, out, tuple(size), name=args.model, weights=str(args.weights))
    _describe(out, record)
    if record.kind == "vl_anomaly":
        clip_path, text_path = vl_companion_paths(out)
        _describe(clip_path, ExportRecord.load(clip_path))
        print(f"wrote {text_path.resolve()} (class_text, crop_text: {len(record.extras['class_names'])} classes)")
    if args.format == "tensorrt":
        from ..deploy import load_exported

        model = load_exported(out, "tensorrt", precision=args.precision)          # built, cached and checked
        print(f"TensorRT engine ({args.precision}): {model.runner.plan_path}")
        if record.kind == "vl_anomaly":
            print(f"TensorRT engine of the CLIP encoder ({args.precision}): {model.clip.runner.plan_path}")
    return 0
