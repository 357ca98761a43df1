"""``run_evaluation``: score maps → metrics → ``results.json``, ``report.md`` and plots (``vl-anomaly eval``, replay
evaluation and benchmarks all call it)."""

from __future__ import annotations

import datetime as dt
import platform
import time
from pathlib import Path

import torch

from ..datasets import AnomalyDataset
from ..pipeline import AnomalyPredictor
from .metrics_of_maps import evaluate_dataset
from .report import write_report
from .score_maps import EvalTimings, produce_score_maps


def run_evaluation(datasets: list[AnomalyDataset], scores: list[str], out_dir: Path,
                   predictor: AnomalyPredictor | None, weights: str = "default", mode: str = "official",
                   workers: int = 2, saved_maps: Path | None = None) -> dict:
    """Infer (or reuse/copy score maps), compute metrics, write ``results.json``, ``report.md`` and plots.

    The score ``fused`` is computed by the predictor like every score (its fusion config is recorded under
    ``predictor.scoring``), so ``eval`` scores exactly the maps ``predict`` writes.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = EvalTimings()
    start = time.perf_counter()
    results = {"date": dt.datetime.now().isoformat(timespec="seconds"),
               "model": predictor.name if predictor else "saved score maps", "weights": str(weights),
               "mode": mode, "workers": workers,
               "evaluator": "SegmentMeIfYouCan/road-anomaly-benchmark@1c7804e0749686452eb02bbcfb81234e38795f8a",
               "machine": {"platform": platform.platform(), "torch": torch.__version__,
                           "torch_threads": torch.get_num_threads()},
               "predictor": predictor.describe() if predictor else None, "datasets": {}}
    for dataset in datasets:
        t0 = time.perf_counter()
        inferred = produce_score_maps(dataset, predictor, scores, out_dir, weights, workers, timings, saved_maps)
        per_score = evaluate_dataset(dataset, scores, out_dir, mode, workers, timings)
        results["datasets"][dataset.name] = {
            "root": str(dataset.root), "layout": dataset.layout, "num_frames": len(dataset),
            "count_note": dataset.count_note(), "track": dataset.track, "frames_inferred": inferred,
            "scores": per_score, "seconds": round(time.perf_counter() - t0, 2)}
    results["timings_s"] = {"total": time.perf_counter() - start, "inference": timings.inference,
                            "metrics": timings.metrics, "loading": timings.loading, "writing": timings.writing}
    write_report(results, out_dir)
    return results
