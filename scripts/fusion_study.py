"""Cost of one shared fusion config: per-dataset-tuned weights vs leave-one-dataset-out vs the best single score.

Uses the score maps of ``vl-anomaly eval`` runs (docs/results.md commands) in ``outputs/results/<model>``:

* **tuned on the set itself** (the paper's practice, an oracle: the weights saw the evaluation set);
* **leave-one-dataset-out** (ours, honest): calibrated on the other three shared sets, evaluated on this one;
* **shipped**: calibrated on all four sets, written to ``model/vl_anomaly/fusion_configs/<model>.yaml`` (its record says so; any
  number on these four sets with it has seen them);
* the best and the default (MSP) single scores, from the same evaluation;
* a matrix: calibrated on one set, evaluated on each set (the diagonal is per-set tuning).

All reported numbers are official-mode pixel metrics on full maps (vl_anomaly.evaluation). Writes
``<eval dir>/fusion_study.json`` and prints a markdown table.

    .venv/bin/python scripts/fusion_study.py outputs/results/espnetv2_s2.0_cityscapes outputs/results/espnet_p2_q8_cityscapes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vl_anomaly.calibration import fit_fusion, fit_logistic_fusion, sample_pixels, write_fused_maps
from vl_anomaly.datasets import load_dataset
from vl_anomaly.evaluation import evaluate_dataset

SOURCES = ["msp", "max_logit", "entropy", "energy"]
SETS = ["road_anomaly_21", "road_obstacle_21", "fs_static", "road_anomaly"]
REPO = Path(__file__).resolve().parents[1]


def study(eval_dir: Path, step: float, pixels: int, sources: list[str] = SOURCES, combiner: str = "weighted",
          model: str | None = None, matrix: bool = True, ship: bool = True) -> dict:
    model = model or eval_dir.name
    datasets = {name: load_dataset(name) for name in SETS}
    maps = eval_dir / "score_maps"
    samples = {name: sample_pixels(ds, maps, sources, pixels) for name, ds in datasets.items()}
    if (eval_dir / "results.json").is_file():
        single = json.loads((eval_dir / "results.json").read_text())["datasets"]
    else:                                   # maps without an eval report (e.g. benchmarks/bench_obstacles.py)
        single = {name: {"scores": evaluate_dataset(ds, sources, eval_dir, "official")} for name, ds in datasets.items()}

    def fit(subset: dict):
        if combiner == "logistic":
            return fit_logistic_fusion(subset, sources, pairwise=True, model=model)
        return fit_fusion(subset, sources, step, model=model)

    out = {"model": model, "sources": sources, "combiner": combiner, "step": step, "pixels_per_set": pixels,
           "sets": {}}
    shipped = fit(samples)
    shipped.record["note"] = ("calibrated on all four shared validation sets: numbers on these sets with this "
                              "config have seen them")
    shipped.save(REPO / "model" / "vl_anomaly" / "fusion_configs" / f"{model}.yaml" if ship
                 else eval_dir / f"fusion.{combiner}.yaml")
    out["shipped_weights"] = shipped.weights if shipped.combiner is None else shipped.combiner.to_dict()
    tuned_cfgs = {name: fit({name: samples[name]}) for name in datasets}
    # Calibrate on one set, evaluate on every set (the diagonal is per-set tuning).
    out["one_set_matrix"] = {}
    for calibrated_on, cfg_one in (tuned_cfgs.items() if matrix else ()):
        row = {}
        for name, dataset in datasets.items():
            write_fused_maps(dataset, maps, cfg_one, "fused_one")
            row[name] = _px(evaluate_dataset(dataset, ["fused_one"], eval_dir, "official")["fused_one"])
        out["one_set_matrix"][calibrated_on] = {"weights": _weights_of(cfg_one), "evaluated": row}
    for name, dataset in datasets.items():
        tuned = tuned_cfgs[name]
        lodo = fit({k: v for k, v in samples.items() if k != name})
        write_fused_maps(dataset, maps, tuned, "fused_tuned")
        write_fused_maps(dataset, maps, lodo, "fused_lodo")
        write_fused_maps(dataset, maps, shipped, "fused_shipped")
        metrics = evaluate_dataset(dataset, ["fused_tuned", "fused_lodo", "fused_shipped"], eval_dir, "official")
        scores = single[name]["scores"]
        best = max(sources, key=lambda s: scores[s]["pixel"]["AuPRC"])
        out["sets"][name] = {
            "msp": _px(scores["msp"]) if "msp" in scores else None, "best_single": {"score": best, **_px(scores[best])},
            "tuned": {"weights": _weights_of(tuned), **_px(metrics["fused_tuned"])},
            "lodo": {"weights": _weights_of(lodo), **_px(metrics["fused_lodo"])},
            "shipped": _px(metrics["fused_shipped"]),
        }
    (eval_dir / f"fusion_study.{combiner}.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def _weights_of(cfg) -> dict:
    return cfg.weights if cfg.combiner is None else cfg.combiner.to_dict()


def _px(entry: dict) -> dict:
    return {"AuPRC": entry["pixel"]["AuPRC"], "FPR95": entry["pixel"]["FPR95"]}


def _w(weights: dict) -> str:
    if "kind" in weights:                                       # a learned combiner
        return "logistic: " + ", ".join(f"{s} {w:+.1f}" for s, w in {**weights["linear"], **weights["pairwise"]}.items())
    return ", ".join(f"{s} {w:.1f}" for s, w in weights.items() if w > 0)


def table(results: list[dict]) -> str:
    lines = ["| model | set | MSP AP / FPR95 | best single (score) | fused, tuned on the set (oracle) | "
             "fused, leave-one-set-out | fused, shipped (saw all 4) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for name, s in r["sets"].items():
            lines.append(
                f"| {r['model']} | {name} | "
                + (f"{s['msp']['AuPRC']:.2f} / {s['msp']['FPR95']:.2f} | " if s["msp"] else "– | ")
                + f"{s['best_single']['AuPRC']:.2f} / {s['best_single']['FPR95']:.2f} ({s['best_single']['score']}) | "
                f"{s['tuned']['AuPRC']:.2f} / {s['tuned']['FPR95']:.2f} ({_w(s['tuned']['weights'])}) | "
                f"{s['lodo']['AuPRC']:.2f} / {s['lodo']['FPR95']:.2f} ({_w(s['lodo']['weights'])}) | "
                f"{s['shipped']['AuPRC']:.2f} / {s['shipped']['FPR95']:.2f} |")
    return "\n".join(lines)


def matrix_table(results: list[dict]) -> str:
    lines = ["| model | calibrated on ↓ / evaluated on → | " + " | ".join(SETS) + " | mean of the other three |",
             "|---|---|" + "---|" * (len(SETS) + 1)]
    for r in results:
        for cal, entry in r["one_set_matrix"].items():
            cells = [f"**{entry['evaluated'][s]['AuPRC']:.2f}**" if s == cal else f"{entry['evaluated'][s]['AuPRC']:.2f}"
                     for s in SETS]
            others = [entry["evaluated"][s]["AuPRC"] for s in SETS if s != cal]
            lines.append(f"| {r['model']} | {cal} ({_w(entry['weights'])}) | " + " | ".join(cells)
                         + f" | {sum(others) / len(others):.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_dirs", nargs="+")
    parser.add_argument("--step", type=float, default=0.1)
    parser.add_argument("--pixels", type=int, default=400_000)
    parser.add_argument("--sources", nargs="+", default=SOURCES)
    parser.add_argument("--combiner", choices=["weighted", "logistic"], default="weighted",
                        help="weighted sum (grid search) or a learned logistic combiner with pairwise terms")
    parser.add_argument("--model", default=None, help="model name (default: the eval folder's name)")
    parser.add_argument("--no-matrix", action="store_true", help="skip the calibrate-on-one-set matrix")
    parser.add_argument("--no-ship", action="store_true",
                        help="write the all-sets config beside the maps (fusion.<combiner>.yaml), not into "
                             "model/vl_anomaly/fusion_configs/")
    args = parser.parse_args()
    results = [study(Path(d), args.step, args.pixels, args.sources, args.combiner, args.model, not args.no_matrix,
                     not args.no_ship)
               for d in args.eval_dirs]
    print(table(results))
    print()
    print(matrix_table(results))
    for r in results:
        print(f"shipped {r['model']}: {_w(r['shipped_weights'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
