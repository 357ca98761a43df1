"""The ``vl-anomaly`` command line: ``predict``, ``demo``, ``eval``, ``list-models`` (+ commands of installed
plugins such as the ROS 2 package: ``make-bag``, ``replay``, ``replay-eval``, ``ros-demo``)."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import VLAnomalyError
from . import calibrate, demo, evaluate, export, predict, train


def _list_models(args: argparse.Namespace) -> int:
    from ..pretrained import get_pretrained_cfg
    from ..registry import get_model_config, list_models

    for name in list_models():
        cfg = get_model_config(name)
        record = get_pretrained_cfg(name)
        source = "-" if record is None else (record.filename or record.hf_hub_id or "-")
        print(f"{name:34s} family={cfg['family']:12s} weights={source}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vl-anomaly", description="Road anomaly segmentation (vl-anomaly)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = (
        ("predict", predict, "score maps, obstacle masks, overlays and obstacles for images/videos"),
        ("demo", demo, "the ROS-free demo on real validation images from ../shared"),
        ("eval", evaluate, "benchmark metrics (official parity), report and plots on datasets"),
        ("calibrate", calibrate, "fit one shared set of fusion weights on calibration sets"),
        ("train", train, "train the vision-language head (Cityscapes + COCO outliers)"),
        ("export", export, "export a segmenter to ONNX, checked against PyTorch"),
    )
    for name, module, help_text in commands:
        command = sub.add_parser(name, help=help_text)
        module.add_arguments(command)
        command.set_defaults(func=module.main)
    m = sub.add_parser("list-models", help="registered models and their weights")
    m.set_defaults(func=_list_models)
    _add_plugin_commands(sub)
    return parser


def _add_plugin_commands(sub) -> None:
    """Commands of other installed packages (entry-point group ``vl_anomaly.commands``: a callable that adds
    its sub-parser). The ROS 2 package adds ``make-bag``, ``replay``, ``replay-eval`` and ``ros-demo`` this way,
    so this core never imports ROS."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="vl_anomaly.commands"):
        try:
            entry.load()(sub)
        except Exception as exc:                                       # noqa: BLE001 — a broken plugin is reported
            logging.getLogger("vl_anomaly").warning("command %s from %s is unavailable: %s", entry.name,
                                                    entry.value, exc)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (VLAnomalyError, FileNotFoundError, ValueError) as exc:
        print(f"vl-anomaly {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
