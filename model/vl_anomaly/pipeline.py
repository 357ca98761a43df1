"""The inference pipeline shared by ``vl-anomaly predict``, evaluation and the ROS 2 node.

``image (H, W, 3) RGB uint8 → validate → preprocess → segmenter → score (h, w) → bilinear resize to (H, W)
→ post-process → Prediction``.

The score is computed at the network input resolution ``(h, w)`` and resized to the image resolution
``(H, W)`` with bilinear interpolation (``align_corners=False``): that float32 map is *the* score map of the
image, written by ``predict``, evaluated by ``eval`` and published by the node. The semantic map (train IDs)
is the argmax at ``(h, w)`` resized with nearest neighbour.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cpu import flush_to_zero
from .defaults import DEFAULT_SCORE
from .deploy.runners import providers_in_use
from .errors import ConfigError, VLAnomalyError
from .postprocess import Obstacle, PostprocessCfg, postprocess
from .preprocess import PreprocessCfg, preprocess, validate_image
from .scores import ScoreContext, ScoringCfg, check_score_fits


@dataclass
class Prediction:
    """Everything the pipeline produces for one image of ``H × W`` pixels.

    Attributes:
        score_map: ``(H, W)`` float32, higher = more anomalous, finite.
        semantic: ``(H, W)`` uint8 Cityscapes train IDs (argmax of the class logits).
        obstacle_mask: ``(H, W)`` bool, anomalous pixels in kept components.
        obstacles: connected components with statistics.
        drivable: ``(H, W)`` bool drivable region when the rules read it, else None.
        threshold: the score threshold of this frame's obstacle mask (the scene-adaptive one where the
            post-processing has it, :func:`~vl_anomaly.postprocess.frame_threshold`), NaN before post-processing.
        timings_ms: per-stage wall time in milliseconds (``preprocess``, ``network``, ``score``,
            ``postprocess``, ``total``).
    """

    score_map: np.ndarray
    semantic: np.ndarray
    obstacle_mask: np.ndarray
    obstacles: list[Obstacle]
    drivable: np.ndarray | None = None
    threshold: float = float("nan")
    timings_ms: dict[str, float] = field(default_factory=dict)


def _contiguous(output):
    """``output`` (a :class:`SegmenterOutput`, or a :class:`VLOutput` and its ``base``) with every tensor in the
    contiguous memory format."""
    changes = {}
    for item in dataclasses.fields(output):
        value = getattr(output, item.name)
        if isinstance(value, torch.Tensor):
            changes[item.name] = value.contiguous()
        elif dataclasses.is_dataclass(value):
            changes[item.name] = _contiguous(value)
    return dataclasses.replace(output, **changes)


class AnomalyPredictor:
    """Runs one model + one score + post-processing on single images.

    Args:
        model: a segmenter returning :class:`~vl_anomaly.outputs.SegmenterOutput`, or a vision-language model
            returning :class:`~vl_anomaly.outputs.VLOutput` (eval mode is enforced).
        preprocess_cfg: input pipeline of the model's weights.
        score: score name (:data:`vl_anomaly.scores.SCORES`).
        postprocess_cfg: threshold, minimum area, drivable-region filter.
        device: torch device string (``cpu``, ``cuda``, ``cuda:1``).
        name: model name, for reports.
        scoring: detector of the CLIP crops, crop cap and fusion (:class:`~vl_anomaly.scores.ScoringCfg`).
        channels_last: run a PyTorch network in the channels-last memory format (its convolution weights are
            converted in place, the input follows). Default (None): on the CPU for the networks that declare
            ``prefers_channels_last`` (ESPNet, ESPNetv2 and the VL model on ESPNetv2: network 1.3–2× faster on
            the CPU; DiCENet, the lite ensemble and Mask2Former were slower, docs/benchmarks.md); never by default
            on CUDA, where it has not been measured. Exported backends are unaffected.
    """

    def __init__(self, model: nn.Module, preprocess_cfg: PreprocessCfg, score: str = DEFAULT_SCORE,
                 postprocess_cfg: PostprocessCfg | None = None, device: str = "cpu", name: str = "",
                 scoring: ScoringCfg | None = None, channels_last: bool | None = None) -> None:
        self.scoring = scoring or ScoringCfg()
        self.spec = check_score_fits(score, model, self.scoring, name)
        self.score_name = score
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        if channels_last is None:
            channels_last = self.device.type == "cpu" and getattr(model, "prefers_channels_last", False)
        #: the input's memory format: channels-last only for a PyTorch network with convolutions (an exported
        #: model's adapter holds no parameters and takes its input as it is)
        self.memory_format = torch.contiguous_format
        if channels_last and any(p.dim() == 4 for p in self.model.parameters()):
            self.model = self.model.to(memory_format=torch.channels_last)
            self.memory_format = torch.channels_last
        self.preprocess_cfg = preprocess_cfg
        self.postprocess_cfg = postprocess_cfg or PostprocessCfg(threshold=self.spec.default_threshold)
        self.name = name

    @torch.inference_mode()
    def score_maps(self, image: np.ndarray, scores: list[str] | None = None
                   ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, float]]:
        """Score maps of several scores from one forward pass.

        Args: image ``(H, W, 3)`` RGB uint8 (or float in [0, 1]); score names (default: this predictor's).
        Returns: ``{score: (H, W) float32}``, ``semantic (H, W) uint8``, stage timings in ms.
        """
        names = scores or [self.score_name]
        for name in names:
            check_score_fits(name, self.model, self.scoring, self.name)
        t0 = time.perf_counter()
        rgb = validate_image(image)
        height, width = rgb.shape[:2]
        x = preprocess(rgb, self.preprocess_cfg, self.device).contiguous(memory_format=self.memory_format)
        t1 = time.perf_counter()
        with flush_to_zero():                    # subnormal intermediates as zeros: same speed on every x86 CPU
            output = self.model(x)
        if self.memory_format == torch.channels_last:     # the scores are 2-3x slower on channels-last maps
            output = _contiguous(output)
        t2 = time.perf_counter()
        context = ScoreContext(output=output, image=rgb, model=self.model, cfg=self.scoring)
        try:
            maps = {name: context.map(name) for name in names}
        except VLAnomalyError as exc:
            raise VLAnomalyError(f"model {self.name!r}: {exc}") from exc
        semantic = context.semantic()[:, None].to(torch.uint8)                           # (1, 1, h, w)
        semantic = F.interpolate(semantic, size=(height, width), mode="nearest")[0, 0].cpu().numpy()
        t3 = time.perf_counter()
        timings = {"preprocess": (t1 - t0) * 1e3, "network": (t2 - t1) * 1e3, "score": (t3 - t2) * 1e3}
        return maps, semantic, timings

    def score_image(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """Score map and semantic map of one image with this predictor's score.

        Args: image ``(H, W, 3)`` RGB uint8 (or float in [0, 1]).
        Returns: ``score_map (H, W) float32``, ``semantic (H, W) uint8``, stage timings in ms.
        """
        maps, semantic, timings = self.score_maps(image)
        return maps[self.score_name], semantic, timings

    def predict(self, image: np.ndarray, postprocess_cfg: PostprocessCfg | None = None) -> Prediction:
        """Full pipeline on one image ``(H, W, 3)`` RGB uint8 → :class:`Prediction`. ``postprocess_cfg``: this
        frame's rules instead of :attr:`postprocess_cfg` (the node passes the horizon its ``camera_info`` gives)."""
        t0 = time.perf_counter()
        score_map, semantic, timings = self.score_image(image)
        t1 = time.perf_counter()
        mask, obstacles, drivable, threshold = postprocess(score_map, postprocess_cfg or self.postprocess_cfg,
                                                           semantic)
        t2 = time.perf_counter()
        timings["postprocess"] = (t2 - t1) * 1e3
        timings["total"] = (t2 - t0) * 1e3
        return Prediction(score_map=score_map, semantic=semantic, obstacle_mask=mask, obstacles=obstacles,
                          drivable=drivable, threshold=threshold, timings_ms=timings)

    @property
    def vocabulary(self) -> dict | None:
        """``{"known_classes": [...], "anomaly_prompts": [...]}`` of a VL model, None for a plain segmenter."""
        if not getattr(self.model, "is_vision_language", False):
            return None
        return {"known_classes": list(self.model.known_classes),
                "anomaly_prompts": list(getattr(self.model, "anomaly_prompts", ()))}

    def set_vocabulary(self, known_classes: list[str] | None = None,
                       anomaly_prompts: list[str] | None = None) -> dict:
        """Change a VL model's known classes and/or anomaly prompts (``None`` keeps that part); the text
        embeddings are recomputed here, once. Plain segmenters and exported VL models refuse with the reason.
        Returns the new vocabulary and the seconds it took."""
        if not getattr(self.model, "is_vision_language", False):
            raise ConfigError(f"model {self.name} is a plain segmenter: its classes are fixed by its weights and it "
                              "has no vocabulary to change; vocabularies belong to the VL models "
                              "(vl-anomaly list-models: family vl_anomaly)")
        try:
            return self.model.set_vocabulary(known_classes, anomaly_prompts)
        except ValueError as exc:
            raise ConfigError(f"vocabulary not changed: {exc}") from exc

    def describe(self) -> dict:
        """Settings of this predictor, for reports and summaries."""
        return {"model": self.name, "score": self.score_name, "device": str(self.device),
                "runs_on": providers_in_use(self.model),
                "preprocess": self.preprocess_cfg.to_dict(), "postprocess": self.postprocess_cfg.to_dict(),
                "scoring": self.scoring.to_dict()}
