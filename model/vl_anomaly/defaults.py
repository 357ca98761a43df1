"""The defaults a user gets without choosing, defined once (the CLI, the node's parameters, benchmarks and docs
import them from here)."""

#: The model of ``vl-anomaly predict``, ``create_predictor()`` and the node: the strongest real-weight segmenter.
DEFAULT_MODEL = "espnetv2_s2.0_cityscapes"
#: The model of the README's main job (``vl-anomaly ros-demo``): the best obstacle list the real weights give
#: (docs/results.md, "Ensembles"), at about 4.7x the CPU time of :data:`DEFAULT_MODEL` (docs/benchmarks.md).
DEMO_MODEL = "lite_ensemble_cityscapes"
#: The anomaly score used when none is chosen (:data:`vl_anomaly.scores.SCORES`).
DEFAULT_SCORE = "msp"
