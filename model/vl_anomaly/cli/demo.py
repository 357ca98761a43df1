"""``vl-anomaly demo``: the main job on an embedded default, real validation images from ``../shared``.

Runs ``predict`` with the default model and the drivable-region filter (``--no-drivable-only`` turns it off) on
two images of each shared road-anomaly set, writes score maps,
masks, overlays, obstacle lists, a summary and a contact sheet of the overlays, and prints where they are.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from ..errors import VLAnomalyError
from ..paths import ENV_SHARED_DIR, anomaly_val_dir
from . import predict

#: (set, image file) pairs used by the demo: frames with clearly visible anomalies.
DEMO_IMAGES = (("RoadAnomaly21", "images/0.png"), ("RoadAnomaly21", "images/3.png"),
               ("RoadObstacle21", "images/0.webp"), ("RoadObstacle21", "images/12.webp"),
               ("RoadAnomaly", "images/1.jpg"), ("RoadAnomaly", "images/25.jpg"),
               ("FS_Static", "images/0.jpg"), ("FS_Static", "images/5.jpg"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", default="outputs/demo", help="output folder")
    predict.add_predictor_arguments(parser)
    # A planner cares about anomalies on the drivable surface: the demo shows that product setting.
    parser.set_defaults(drivable_only=True)


def demo_inputs() -> list[Path]:
    root = anomaly_val_dir()
    if root is None:
        raise VLAnomalyError(f"the shared validation data was not found; set ${ENV_SHARED_DIR} to the folder "
                             "that holds data/anomaly_val and weights/")
    return [root / name / rel for name, rel in DEMO_IMAGES]


def contact_sheet(out_dir: Path, stems: list[str], width: int = 640) -> Path | None:
    """Tile the overlays (two per row) into ``contact_sheet.png``."""
    tiles = []
    for stem in stems:
        img = cv2.imread(str(out_dir / f"{stem}.overlay.png"))
        if img is not None:
            tiles.append(cv2.resize(img, (width, round(img.shape[0] * width / img.shape[1]))))
    if not tiles:
        return None
    height = max(t.shape[0] for t in tiles)
    tiles = [cv2.copyMakeBorder(t, 0, height - t.shape[0], 0, 0, cv2.BORDER_CONSTANT) for t in tiles]
    if len(tiles) % 2:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i:i + 2]) for i in range(0, len(tiles), 2)]
    path = out_dir / "contact_sheet.png"
    cv2.imwrite(str(path), np.vstack(rows))
    return path


def main(args: argparse.Namespace) -> int:
    inputs = demo_inputs()
    out_dir = Path(args.output)
    predictor = predict.build_predictor(args)
    # Stems carry the set name so that equal file names of different sets do not collide.
    items = [(path, f"{path.parent.parent.name}_{path.stem}") for path in inputs]
    summary = predict.run_predict(items, out_dir, predictor, set(predict.OUTPUT_KINDS))
    sheet = contact_sheet(out_dir, [f["stem"] for f in summary["frames"]])
    where = out_dir.resolve()
    print(f"vl-anomaly demo: model {predictor.name}, score {predictor.score_name}, "
          f"{summary['num_frames']} real validation images, mean network time {summary['mean_network_ms']} ms")
    print(f"  score maps (.score.npy float32, .score.png 16-bit), masks, overlays, obstacle JSON: {where}")
    print(f"  summary: {where / 'summary.md'}")
    if sheet is not None:
        print(f"  contact sheet of the overlays: {sheet.resolve()}")
    return 0 if summary["num_frames"] == len(inputs) else 1
