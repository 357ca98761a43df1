"""Benchmark metrics, as defined by the official SegmentMeIfYouCan evaluator
(SegmentMeIfYouCan/road-anomaly-benchmark @ 1c7804e): pixel-level AuPRC / FPR95 / AuROC and component-level
sIoU / PPV / mean F1. Pure numpy/scipy; no I/O."""

from .component import ComponentMetrics, ComponentResult, TRACKS, frame_components
from .pixel import PixelMetrics, PixelResult, curve_from_counts

__all__ = ["ComponentMetrics", "ComponentResult", "PixelMetrics", "PixelResult", "TRACKS", "curve_from_counts",
           "frame_components"]
