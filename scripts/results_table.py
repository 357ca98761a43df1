"""Print the markdown tables of docs/results.md from one or more ``vl-anomaly eval`` result folders.

    .venv/bin/python scripts/results_table.py outputs/results/espnetv2_s2.0_cityscapes outputs/results/espnet_p2_q8_cityscapes
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["road_anomaly_21", "road_obstacle_21", "fs_static", "road_anomaly"]
TITLES = {"road_anomaly_21": "RoadAnomaly21 (10)", "road_obstacle_21": "RoadObstacle21 (30)",
          "fs_static": "FS Static (30)", "road_anomaly": "RoadAnomaly (60)"}


def main(folders: list[str]) -> None:
    runs = [json.loads((Path(f) / "results.json").read_text()) for f in folders]
    print("| model | score | " + " | ".join(TITLES[d] + " AP / FPR95" for d in ORDER) + " |")
    print("|---|---|" + "---|" * len(ORDER))
    for run in runs:
        scores = next(iter(run["datasets"].values()))["scores"]
        for score in scores:
            cells = []
            for d in ORDER:
                px = run["datasets"][d]["scores"][score]["pixel"]
                cells.append(f"{px['AuPRC']:.2f} / {px['FPR95']:.2f}")
            print(f"| {run['model']} | {score} | " + " | ".join(cells) + " |")
    print()
    print("| model | score | RA21 sIoU / PPV / mean F1 | RO21 sIoU / PPV / mean F1 |")
    print("|---|---|---|---|")
    for run in runs:
        scores = next(iter(run["datasets"].values()))["scores"]
        for score in scores:
            cells = []
            for d in ("road_anomaly_21", "road_obstacle_21"):
                c = run["datasets"][d]["scores"][score]["component"]
                cells.append(f"{c['sIoU_gt']:.2f} / {c['PPV']:.2f} / {c['mean_F1']:.2f}")
            print(f"| {run['model']} | {score} | " + " | ".join(cells) + " |")
    print()
    for run in runs:
        t = run["timings_s"]
        frames = sum(d["num_frames"] for d in run["datasets"].values())
        print(f"- {run['model']}: {frames} frames, total {t['total']:.0f} s — inference {t['inference']:.0f} s "
              f"({100 * t['inference'] / t['total']:.0f} %), metrics {t['metrics']:.0f} s "
              f"({100 * t['metrics'] / t['total']:.0f} %), loading wait {t['loading']:.0f} s, writing/plots "
              f"{t['writing']:.0f} s; {run['machine']['torch_threads']} torch threads, {run['workers']} workers")


if __name__ == "__main__":
    main(sys.argv[1:])
