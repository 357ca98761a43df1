"""Benchmark evaluation: score maps for a dataset (inference, or saved maps), official-parity metrics, a JSON
result, a markdown report and plots.

Layout of an evaluation folder ``OUT``::

    OUT/score_maps/<dataset>/<score>/<frame id>.npy   float16 score maps at label resolution (reused on re-run)
    OUT/score_maps/<dataset>/run.json                 what produced them (model, weights, preprocessing)
    OUT/results.json                                  every metric, per dataset and score, plus timings
    OUT/report.md                                     tables and links to the plots
    OUT/plots/<dataset>_curves.png                    PR and ROC curves (one line per score)
    OUT/plots/<dataset>_<score>_histogram.png         inlier vs anomaly score histograms
    OUT/plots/<dataset>_<score>_frames.png            worst and best frames (per-frame AP) with overlays

Score maps are stored as float16, exactly what the official pipeline stores and what every metric reads.
"""

from .run import run_evaluation
from .score_maps import EvalTimings, produce_score_maps, score_map_dir
from .metrics_of_maps import evaluate_dataset
from .report import write_report

__all__ = ["EvalTimings", "evaluate_dataset", "produce_score_maps", "run_evaluation", "score_map_dir", "write_report"]
