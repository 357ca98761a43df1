"""The inference pipeline shared by ``vl-anomaly predict``, evaluation and the ROS 2 node.

``image (H, W, 3) RGB uint8 → validate → preprocess → segmenter → score (h, w) → bilinear resize to (H, W)
→ post-process → Prediction``.

The score is computed at the network input resolution ``(h, w)`` and resized to the image resolution
``(H, W)`` with bilinear interpolation (``align_corners=False``): that float32 map is *the* score map of the
image, written by ``predict``, evaluated by ``eval`` and published by the node. The semantic map (train IDs)
is the argmax at ``(h, w)`` resized with nearest neighbour.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cpu import flush_to_zero
from .errors import ConfigError, VLAnomalyError
from .postprocess import Obstacle, PostprocessCfg, postprocess
from .preprocess import PreprocessCfg, preprocess, validate_image
from .scores import compute_score, get_score, pixel_scores


@dataclass
class Prediction:
    """Everything the pipeline produces for one image of ``H × W`` pixels.

    Attributes:
        score_map: ``(H, W)`` float32, higher = more anomalous, finite.
        semantic: ``(H, W)`` uint8 Cityscapes train IDs (argmax of the class logits).
        obstacle_mask: ``(H, W)`` bool, anomalous pixels in kept components.
        obstacles: connected components with statistics.
        drivable: ``(H, W)`` bool drivable region when the filter is on, else None.
        timings_ms: per-stage wall time in milliseconds (``preprocess``, ``network``, ``score``,
            ``postprocess``, ``total``).
    """

    score_map: np.ndarray
    semantic: np.ndarray
    obstacle_mask: np.ndarray
    obstacles: list[Obstacle]
    drivable: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


class AnomalyPredictor:
    """Runs one segmenter + one score + post-processing on single images.

    Args:
        model: a segmenter returning :class:`~vl_anomaly.outputs.SegmenterOutput` (eval mode is enforced).
        preprocess_cfg: input pipeline of the model's weights.
        score: score name (:data:`vl_anomaly.scores.SCORES`).
        postprocess_cfg: threshold, minimum area, drivable-region filter.
        device: torch device string (``cpu``, ``cuda``, ``cuda:1``).
        name: model name, for reports.
    """

    def __init__(self, model: nn.Module, preprocess_cfg: PreprocessCfg, score: str = "msp",
                 postprocess_cfg: PostprocessCfg | None = None, device: str = "cpu", name: str = "") -> None:
        self.spec = get_score(score)
        self.is_vl = bool(getattr(model, "is_vision_language", False))   # VLAnomalyModel or its export
        if self.spec.needs_vl and not self.is_vl:
            raise ConfigError(f"score {score!r} needs a vision-language model (family vl_anomaly); "
                              f"{name or 'this model'} is a plain segmenter")
        if self.spec.needs_mask_queries and not getattr(model, "has_mask_queries", False):
            raise ConfigError(f"score {score!r} needs a mask-query model (Mask2Former); {name or 'this model'} "
                              f"is a pixel classifier. Pixel-classifier scores: {', '.join(pixel_scores())}")
        self.score_name = score
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
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
            spec = get_score(name)
            if spec.needs_mask_queries and not getattr(self.model, "has_mask_queries", False):
                raise ConfigError(f"score {name!r} needs a mask-query model; {self.name or 'this model'} has none")
            if spec.needs_vl and not self.is_vl:
                raise ConfigError(f"score {name!r} needs a vision-language model; {self.name or 'this model'} "
                                  "is a plain segmenter")
        t0 = time.perf_counter()
        rgb = validate_image(image)
        height, width = rgb.shape[:2]
        x = preprocess(rgb, self.preprocess_cfg, self.device)
        t1 = time.perf_counter()
        with flush_to_zero():                    # subnormal intermediates as zeros: same speed on every x86 CPU
            output = self.model(x)
        base = output.base if self.is_vl else output
        t2 = time.perf_counter()
        maps = {}
        vl_names = [n for n in names if get_score(n).needs_vl]
        for name in [n for n in names if not get_score(n).needs_vl]:
            maps[name] = self._full_resolution(compute_score(name, base), (height, width), name)
        if vl_names:
            maps.update(self._vl_maps(output, rgb, vl_names, maps))
        semantic = base.logits.argmax(dim=1, keepdim=True).to(torch.uint8)        # (1, 1, h, w)
        semantic = F.interpolate(semantic, size=(height, width), mode="nearest")[0, 0].cpu().numpy()
        t3 = time.perf_counter()
        timings = {"preprocess": (t1 - t0) * 1e3, "network": (t2 - t1) * 1e3, "score": (t3 - t2) * 1e3}
        return maps, semantic, timings

    def _full_resolution(self, score: torch.Tensor, size: tuple[int, int], name: str) -> np.ndarray:
        """``(1, h, w)`` score → ``(H, W)`` float32 numpy (bilinear), checked finite."""
        score = F.interpolate(score[:, None], size=size, mode="bilinear", align_corners=False)
        score_np = score[0, 0].float().cpu().numpy()
        if not np.isfinite(score_np).all():
            raise VLAnomalyError(f"model {self.name!r} produced non-finite {name!r} scores "
                                 "(corrupt weights or numerical overflow)")
        return score_np

    def _vl_maps(self, output, rgb: np.ndarray, names: list[str], maps: dict[str, np.ndarray]
                 ) -> dict[str, np.ndarray]:
        """The vision-language sources (and their fusion) at image resolution (docs/method.md)."""
        from .fusion import fuse
        from .vl_scores import clip_crop_score, text_guided_score

        model = self.model
        sources = getattr(model, "sources_cfg", {}) or {}
        detector = sources.get("detector", "msp")
        out: dict[str, np.ndarray] = {}
        size = rgb.shape[:2]
        needed = set(names)
        fusion = getattr(model, "fusion_cfg", None)
        if "vl_fused" in needed:
            if fusion is None:
                raise ConfigError(f"model {self.name!r} has no fusion config for 'vl_fused'")
            needed |= set(fusion.sources)
        det = maps.get(detector)
        if det is None and needed & {detector, "clip_crops"}:
            det = self._full_resolution(compute_score(detector, output.base), size, detector)
        if detector in needed:
            out[detector] = det
        if "text_guided" in needed:
            # at the network input resolution, then resized like every score (the mask term upsamples Q masks)
            network_size = tuple(output.base.logits.shape[-2:])
            out["text_guided"] = self._full_resolution(text_guided_score(output, network_size), size, "text_guided")
        if "clip_crops" in needed:
            out["clip_crops"], _ = clip_crop_score(rgb, det, model.clip, model.crop_text_embeddings(),
                                                   get_score(detector).default_threshold,
                                                   max_crops=int(sources.get("max_crops", 20)))
        if "vl_fused" in needed:
            out["vl_fused"] = fuse(out, fusion)
        return {n: out[n] for n in names}

    def score_image(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        """Score map and semantic map of one image with this predictor's score.

        Args: image ``(H, W, 3)`` RGB uint8 (or float in [0, 1]).
        Returns: ``score_map (H, W) float32``, ``semantic (H, W) uint8``, stage timings in ms.
        """
        maps, semantic, timings = self.score_maps(image)
        return maps[self.score_name], semantic, timings

    def predict(self, image: np.ndarray) -> Prediction:
        """Full pipeline on one image ``(H, W, 3)`` RGB uint8 → :class:`Prediction`."""
        t0 = time.perf_counter()
        score_map, semantic, timings = self.score_image(image)
        t1 = time.perf_counter()
        mask, obstacles, drivable = postprocess(score_map, self.postprocess_cfg, semantic)
        t2 = time.perf_counter()
        timings["postprocess"] = (t2 - t1) * 1e3
        timings["total"] = (t2 - t0) * 1e3
        return Prediction(score_map=score_map, semantic=semantic, obstacle_mask=mask, obstacles=obstacles,
                          drivable=drivable, timings_ms=timings)

    def describe(self) -> dict:
        """Settings of this predictor, for reports and summaries."""
        return {"model": self.name, "score": self.score_name, "device": str(self.device),
                "preprocess": self.preprocess_cfg.to_dict(), "postprocess": self.postprocess_cfg.to_dict()}
