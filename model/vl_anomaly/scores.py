"""Per-pixel anomaly scores. Higher = more anomalous. One name picks a score everywhere (``--score``, the node's
``score`` parameter, evaluation, fusion sources): see :data:`SCORES`.

Every registered score is a :class:`ScoreSpec` whose ``fn`` maps one :class:`ScoreContext` (the model output, the
image, the model and the :class:`ScoringCfg`) to a ``(B, h, w)`` tensor; :meth:`ScoreContext.map` brings it to
the image resolution (bilinear, ``align_corners=False``) — that is the score map. The segmenter scores below are
small functions of the logits at the network input resolution (``ℓ`` the K class logits, ``p = softmax(ℓ)``);
the vision-language sources are in :mod:`vl_anomaly.vl_scores`; ``fused`` is R12 (:mod:`vl_anomaly.fusion`) of
any registered scores.

| name           | formula                                       | range                     |
|----------------|-----------------------------------------------|---------------------------|
| ``msp``        | ``1 − max_k p_k``                             | [0, 1 − 1/K]              |
| ``max_logit``  | ``−max_k ℓ_k``                                | ℝ                         |
| ``entropy``    | ``−Σ_k p_k log p_k / log K``                  | [0, 1]                    |
| ``energy``     | ``−T · log Σ_k exp(ℓ_k / T)`` (T = 1)         | ℝ                         |
| ``rba``        | ``−Σ_k tanh(Σ_q c_q[k] · σ(m_q))``            | [−K, K] (mask-query only) |
| ``mask2anomaly`` | ``1 − max_k Σ_q softmax(c_q)[k] · σ(m_q)``  | (−∞, 1], [0, 1] when masks do not overlap (mask-query only) |
| ``text_guided`` | R11 (docs/method.md)                         | [0, 1] (vl_anomaly models)  |
| ``clip_crops`` | CLIP image–text anomaly of detector candidates | [0, 1] (vl_anomaly models)  |
| ``fused``      | R12: ``Σ_i w_i · clip((s_i − lo_i)/(hi_i − lo_i), 0, 1)`` | [0, 1] (needs a fusion config) |
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .defaults import DEFAULT_SCORE
from .errors import ConfigError, VLAnomalyError
from .fusion import FusionCfg, fuse
from .networks.mask2former import upsample_masks
from .outputs import SegmenterOutput, VLOutput
from .vl_scores import clip_crop_score, text_guided_score


def msp(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability, negated: ``s = 1 − max_k softmax(ℓ)_k``.

    Args: logits ``(B, K, H, W)``. Returns ``(B, H, W)`` in ``[0, 1 − 1/K]``.
    """
    return 1.0 - logits.softmax(dim=1).amax(dim=1)


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """MaxLogit (Hendrycks et al. 2022), negated: ``s = −max_k ℓ_k``. ``(B, K, H, W) → (B, H, W)``, unbounded."""
    return -logits.amax(dim=1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Normalised softmax entropy ("max entropy" score): ``s = −Σ_k p_k log p_k / log K``.

    ``(B, K, H, W) → (B, H, W)`` in ``[0, 1]`` (1 = uniform prediction).
    """
    log_p = logits.log_softmax(dim=1)
    ent = -(log_p.exp() * log_p).sum(dim=1)
    return (ent / math.log(logits.shape[1])).clamp(0.0, 1.0)


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Free energy (Liu et al. 2020): ``s = −T · log Σ_k exp(ℓ_k / T)``. ``(B, K, H, W) → (B, H, W)``, unbounded."""
    return -temperature * torch.logsumexp(logits / temperature, dim=1)


def mutual_information(member_logits: torch.Tensor) -> torch.Tensor:
    """Mutual information between the class and the ensemble member (BALD; Gal et al. 2017), normalised:
    ``s = (H(p̄) − (1/M) Σ_m H(p_m)) / log K`` with ``p_m = softmax(ℓ_m)``, ``p̄ = (1/M) Σ_m p_m``, ``H`` the
    entropy. High where the members disagree, whatever each one's own confidence.

    Args: member_logits ``(B, M, K, H, W)``. Returns ``(B, H, W)`` in ``[0, log M / log K]``.
    """
    log_p = member_logits.log_softmax(dim=2)
    member_entropy = -(log_p.exp() * log_p).sum(dim=2).mean(dim=1)                  # (B, H, W)
    log_mean = torch.logsumexp(log_p, dim=1) - math.log(member_logits.shape[1])     # (B, K, H, W)
    mean_entropy = -(log_mean.exp() * log_mean).sum(dim=1)
    return ((mean_entropy - member_entropy) / math.log(member_logits.shape[2])).clamp_min(0.0)


def boundary_suppressed(score: torch.Tensor, logits: torch.Tensor, radius: int = 2, small_area: int = 2000,
                        factor: float = 0.5) -> torch.Tensor:
    """Class-boundary suppression that keeps small objects: ``s' = s · (1 − (1 − factor) · b)``, where ``b`` = 1
    on pixels within ``radius`` px of an edge of the predicted class map (argmax of ``logits``) **between two
    large regions**, and 0 elsewhere. A region is large when its connected component of one predicted class has
    ≥ ``small_area`` px (at the network resolution); edges that touch a small region — a small obstacle called
    "pole", "person" or "car" — keep their score, so boundary handling cannot erase small objects.

    Args: score ``(B, H, W)``, logits ``(B, K, H, W)`` at the same resolution — or the predicted class map
        ``(B, H, W)`` (integer) itself, when the caller already has it. Returns ``(B, H, W)``.
    """
    import cv2

    classes = logits if logits.dim() == 3 else logits.argmax(dim=1)
    labels = classes.to(torch.uint8).cpu().numpy()                                        # (B, H, W)
    out = score.clone()
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    for b, label in enumerate(labels):
        edge = cv2.dilate(label, kernel) != cv2.erode(label, kernel)                  # near a class change
        small = np.zeros(label.shape, np.uint8)
        for k in np.unique(label):
            count, comp, stats, _ = cv2.connectedComponentsWithStats((label == k).astype(np.uint8), connectivity=8)
            areas = stats[:, cv2.CC_STAT_AREA]
            tiny = np.flatnonzero(areas < small_area)
            tiny = tiny[tiny > 0]
            if tiny.size:
                small |= np.isin(comp, tiny).astype(np.uint8)
        near_small = cv2.dilate(small, kernel).astype(bool)
        suppress = torch.from_numpy(edge & ~near_small).to(score.device)
        out[b] = torch.where(suppress, score[b] * factor, score[b])
    return out


def rba(class_queries_logits: torch.Tensor, masks_queries_logits: torch.Tensor,
        size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Rejected by All (Nayal et al., ICCV 2023): ``s = −Σ_k tanh(ℓ_k)``, ``ℓ_k = Σ_q c_q[k] · σ(m_q)``.

    Args:
        class_queries_logits: ``(B, Q, K + 1)``; the no-object column is dropped (no softmax).
        masks_queries_logits: ``(B, Q, h, w)``, upsampled bilinearly to ``size``.
    Returns ``(B, H, W)`` in ``[−K, K]``.
    """
    masks = upsample_masks(masks_queries_logits, size).sigmoid()
    per_class = torch.einsum("bqk,bqhw->bkhw", class_queries_logits[..., :-1], masks)
    return -torch.tanh(per_class).sum(dim=1)


def mask2anomaly(semantic: torch.Tensor) -> torch.Tensor:
    """Mask2Anomaly (Rai et al., ICCV 2023): ``s = 1 − max_k P_k``, ``P = Σ_q softmax(c_q)[:K] · σ(m_q)``.

    Args: semantic ``(B, K, H, W)``: the mask-query semantic map (``SegmenterOutput.logits`` of Mask2Former).
    Returns ``(B, H, W)`` ≤ 1 (negative only where overlapping masks sum above 1).
    """
    return 1.0 - semantic.amax(dim=1)


@dataclass(frozen=True)
class ScoringCfg:
    """How the composite scores are formed (one object, passed to :class:`~vl_anomaly.pipeline.AnomalyPredictor`).

    Attributes:
        detector: the score whose candidate regions (above its default threshold) the CLIP crop source encodes: a
            segmenter score, or ``text_guided`` (a trained head's, which may find what the segmenter misses).
        max_crops: cap on CLIP crops per frame (largest regions first).
        fusion: the weights and normalisations of the ``fused`` score, or None (then ``fused`` is unavailable).
        boundary: ``radius`` (px), ``small_area`` (px) and ``factor`` of ``msp_boundary``
            (:func:`boundary_suppressed`), at the network resolution.
    """

    detector: str = DEFAULT_SCORE
    max_crops: int = 20
    fusion: FusionCfg | None = None
    boundary: dict = field(default_factory=lambda: {"radius": 2, "small_area": 2000, "factor": 0.5})

    def __post_init__(self) -> None:
        if self.detector not in SCORES or self.detector == "clip_crops" or SCORES[self.detector].needs_fusion:
            raise ConfigError(f"the CLIP crop detector must be a segmenter score (e.g. {', '.join(pixel_scores())}) "
                              f"or 'text_guided' (a trained VL head), got {self.detector!r}")
        if int(self.max_crops) < 1:
            raise ConfigError(f"max_crops must be ≥ 1, got {self.max_crops}")
        if self.fusion is not None:
            for source in self.fusion.sources:
                get_score(source)
                if SCORES[source].needs_fusion:
                    raise ConfigError("a fusion source cannot itself be the fused score")

    @classmethod
    def from_model_config(cls, cfg: dict) -> "ScoringCfg":
        """The ``sources`` (``detector``, ``max_crops``) and ``fusion`` sections of a registered model config."""
        sources = dict(cfg.get("sources") or {})
        unknown = set(sources) - {"detector", "max_crops", "boundary"}
        if unknown:
            raise ConfigError(f"model {cfg.get('name')!r}: unknown sources settings {sorted(unknown)}")
        fusion = FusionCfg.from_dict(cfg["fusion"]) if cfg.get("fusion") else None
        boundary = {**cls().boundary, **dict(sources.get("boundary") or {})}
        return cls(detector=str(sources.get("detector", DEFAULT_SCORE)), max_crops=int(sources.get("max_crops", 20)),
                   fusion=fusion, boundary=boundary)

    def with_fusion(self, fusion: FusionCfg | None) -> "ScoringCfg":
        """A copy with another fusion config (None keeps this one)."""
        return self if fusion is None else replace(self, fusion=fusion)

    def to_dict(self) -> dict:
        return {"detector": self.detector, "max_crops": int(self.max_crops), "boundary": dict(self.boundary),
                "fusion": self.fusion.to_dict() if self.fusion is not None else None}


@dataclass
class ScoreContext:
    """Everything a score may read for one image, and the maps already computed for it.

    Attributes:
        output: the model's :class:`SegmenterOutput` or :class:`VLOutput` (batch 1 with an image; any batch for
            the output-only scores).
        image: ``(H, W, 3)`` RGB uint8 of the frame, or None (then maps stay at the network resolution and the
            image-dependent scores raise).
        model: the model that produced ``output`` (CLIP and text tables of the VL sources), or None.
        cfg: the :class:`ScoringCfg`.
    """

    output: SegmenterOutput | VLOutput
    image: np.ndarray | None = None
    model: Any = None
    cfg: ScoringCfg = field(default_factory=ScoringCfg)
    _maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _shared: dict[str, Any] = field(default_factory=dict, repr=False)

    # Intermediate tensors several scores (and the semantic map) read, computed once per context: the fused
    # score of an ensemble reads MSP, the class map, the entropy of the mean and the members' entropies, and
    # computing each from the logits again cost ~0.5 s per frame on 2 CPU cores (4 members, 19 × 512 × 1024).

    def _once(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]

    def log_probs(self) -> torch.Tensor:
        """``(B, K, h, w)`` log class probabilities ``log p``: the logits of an ensemble as they are (they are
        log mean probabilities already), ``log_softmax`` of any other model's."""
        base = self.base
        return self._once("log_probs", lambda: base.logits if base.member_logits is not None
                          else base.logits.log_softmax(dim=1))

    def top_class(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(max_k log p_k, argmax_k)``, each ``(B, h, w)``: MSP and the predicted class map from one pass."""
        return self._once("top_class", lambda: self.log_probs().max(dim=1))

    def semantic(self) -> torch.Tensor:
        """``(B, h, w)`` int64 predicted train IDs (argmax of the class logits) at the network resolution."""
        return self.top_class()[1]

    def entropy_nats(self) -> torch.Tensor:
        """``(B, h, w)`` entropy ``H(p) = −Σ_k p_k log p_k`` of the (ensemble's mean) prediction, in nats."""
        def compute() -> torch.Tensor:
            log_p = self.log_probs()
            return -(log_p.exp() * log_p).sum(dim=1)
        return self._once("entropy_nats", compute)

    def mean_member_entropy_nats(self) -> torch.Tensor:
        """``(B, h, w)`` ``(1/M) Σ_m H(p_m)`` of an ensemble's members, in nats."""
        def compute() -> torch.Tensor:
            log_p = self.base.member_logits.log_softmax(dim=2)                            # (B, M, K, h, w)
            return -(log_p.exp() * log_p).sum(dim=2).mean(dim=1)
        return self._once("member_entropy_nats", compute)

    @property
    def base(self) -> SegmenterOutput:
        """The segmenter output (inside a :class:`VLOutput` for vision-language models)."""
        return self.output.base if isinstance(self.output, VLOutput) else self.output

    @property
    def network_size(self) -> tuple[int, int]:
        """``(h, w)`` the network input resolution."""
        return tuple(self.base.logits.shape[-2:])

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the score maps: the image's, or the network input's without an image."""
        return tuple(self.image.shape[:2]) if self.image is not None else self.network_size

    def require(self, what: str, name: str) -> None:
        if what == "image" and (self.image is None or self.model is None):
            raise ConfigError(f"score {name!r} needs the image and the model: run it through AnomalyPredictor")
        if what == "vl" and not isinstance(self.output, VLOutput):
            raise ConfigError(f"score {name!r} comes from the vision-language pipeline: use a vl_anomaly model "
                              f"(vl-anomaly list-models); segmenter scores: {', '.join(pixel_scores())}")
        if what == "queries" and not self.base.has_mask_queries:
            raise ConfigError(f"score {name!r} needs a mask-query model (Mask2Former); this model has no mask "
                              f"queries. Pixel-classifier scores: {', '.join(pixel_scores())}")

    def map(self, name: str) -> np.ndarray:
        """The ``(H, W)`` float32 map of score ``name`` (computed once per context), checked finite."""
        if name not in self._maps:
            score = get_score(name).fn(self).float()                     # (1, h', w')
            if tuple(score.shape[-2:]) != self.size:
                score = F.interpolate(score[:, None], size=self.size, mode="bilinear", align_corners=False)[:, 0]
            value = score[0].cpu().numpy()
            if not np.isfinite(value).all():
                raise VLAnomalyError(f"non-finite {name!r} scores (corrupt weights or numerical overflow)")
            self._maps[name] = value
        return self._maps[name]


@dataclass(frozen=True)
class ScoreSpec:
    """A registered score: how to compute it and what its values mean.

    Attributes:
        fn: ``ScoreContext → (B, h, w)`` float tensor at the network or the image resolution.
        range: documented (min, max) of the values (±inf for unbounded).
        needs_mask_queries: only defined for mask-query models.
        default_threshold: obstacle threshold used when none is given (a starting point, to be calibrated).
        description: one line for help texts.
        needs_vl: needs a vision-language model (family ``vl_anomaly``).
        needs_fusion: needs a fusion config (:attr:`ScoringCfg.fusion`).
        needs_members: needs an ensemble (``SegmenterOutput.member_logits``).
    """

    fn: Callable[[ScoreContext], torch.Tensor]
    range: tuple[float, float]
    needs_mask_queries: bool
    default_threshold: float
    description: str
    needs_vl: bool = False
    needs_fusion: bool = False
    needs_members: bool = False


def _class_logits(ctx: ScoreContext) -> torch.Tensor:
    """``(B, K, H, W)`` the logits of logit-scale scores (MaxLogit, energy): an ensemble's mean member logits
    (its ``logits`` are log mean probabilities), any other model's logits."""
    members = ctx.base.member_logits
    return members.mean(dim=1) if members is not None else ctx.base.logits


def _mutual_information_score(ctx: ScoreContext) -> torch.Tensor:
    if ctx.base.member_logits is None:
        raise ConfigError("score 'mutual_information' needs an ensemble (family ensemble, e.g. "
                          "lite_ensemble_cityscapes): it measures how much the members disagree")
    # = mutual_information(member_logits): H(p̄) is the entropy of the ensemble's own log mean probabilities
    num_classes = ctx.base.logits.shape[1]
    return ((ctx.entropy_nats() - ctx.mean_member_entropy_nats()) / math.log(num_classes)).clamp_min(0.0)


def _msp_shared(ctx: ScoreContext) -> torch.Tensor:
    """= :func:`msp` of the logits, from the context's shared maximum log probability."""
    return 1.0 - ctx.top_class()[0].exp()


def _entropy_shared(ctx: ScoreContext) -> torch.Tensor:
    """= :func:`entropy` of the logits, from the context's shared entropy."""
    return (ctx.entropy_nats() / math.log(ctx.base.logits.shape[1])).clamp(0.0, 1.0)


def _msp_boundary_score(ctx: ScoreContext) -> torch.Tensor:
    cfg = ctx.cfg.boundary
    return boundary_suppressed(_msp_shared(ctx), ctx.semantic(), int(cfg.get("radius", 2)),
                               int(cfg.get("small_area", 2000)), float(cfg.get("factor", 0.5)))


def _rba_score(ctx: ScoreContext) -> torch.Tensor:
    ctx.require("queries", "rba")
    out = ctx.base
    return rba(out.class_queries_logits, out.masks_queries_logits, out.logits.shape[-2:])


def _mask2anomaly_score(ctx: ScoreContext) -> torch.Tensor:
    ctx.require("queries", "mask2anomaly")
    return mask2anomaly(ctx.base.logits)


def _text_guided_score(ctx: ScoreContext) -> torch.Tensor:
    ctx.require("vl", "text_guided")
    return text_guided_score(ctx.output, ctx.network_size)     # resized to the image like every score


def _clip_crops_score(ctx: ScoreContext) -> torch.Tensor:
    ctx.require("vl", "clip_crops")
    ctx.require("image", "clip_crops")
    detector = ctx.map(ctx.cfg.detector)
    anomaly_text = ctx.model.anomaly_text_embeddings() if hasattr(ctx.model, "anomaly_text_embeddings") else None
    score, _ = clip_crop_score(ctx.image, detector, ctx.model.clip, ctx.model.crop_text_embeddings(),
                               get_score(ctx.cfg.detector).default_threshold, max_crops=int(ctx.cfg.max_crops),
                               anomaly_text=anomaly_text)
    return torch.from_numpy(score)[None]


_NO_FUSION = ("score 'fused' needs a fusion config (create_predictor(fusion=...), --fusion, the node's "
              "fusion_config, or a model config with a fusion section; shipped: vl_anomaly/fusion_configs/)")


def _fused_score(ctx: ScoreContext) -> torch.Tensor:
    if ctx.cfg.fusion is None:
        raise ConfigError(_NO_FUSION)
    return torch.from_numpy(fuse({s: ctx.map(s) for s in ctx.cfg.fusion.sources}, ctx.cfg.fusion))[None]


SCORES: dict[str, ScoreSpec] = {
    "msp": ScoreSpec(_msp_shared, (0.0, 1.0), False, 0.5,
                     "1 − maximum softmax probability"),
    "max_logit": ScoreSpec(lambda c: max_logit(_class_logits(c)), (-math.inf, math.inf), False, -5.0,
                           "negative maximum class logit (ensembles: of the members' mean logits)"),
    "entropy": ScoreSpec(_entropy_shared, (0.0, 1.0), False, 0.5,
                         "softmax entropy / log K"),
    "energy": ScoreSpec(lambda c: energy(_class_logits(c)), (-math.inf, math.inf), False, -5.0,
                        "negative log-sum-exp of the class logits (ensembles: of the members' mean logits)"),
    "mutual_information": ScoreSpec(_mutual_information_score, (0.0, 1.0), False, 0.1,
                                    "members' disagreement: entropy of the mean − mean entropy, / log K "
                                    "(ensembles)", needs_members=True),
    "msp_boundary": ScoreSpec(_msp_boundary_score, (0.0, 1.0), False, 0.5,
                              "MSP damped on edges between large predicted regions (small objects kept)"),
    "rba": ScoreSpec(_rba_score, (-19.0, 19.0), True, 0.0,
                     "−Σ_k tanh of class-mask logits (mask-query models)"),
    "mask2anomaly": ScoreSpec(_mask2anomaly_score, (-math.inf, 1.0), True, 0.5,
                              "1 − max_k of the query-mask semantic map (mask-query models)"),
    "text_guided": ScoreSpec(_text_guided_score, (0.0, 1.0), False, 0.5,
                             "R11 text-guided similarity (vl_anomaly models)", needs_vl=True),
    "clip_crops": ScoreSpec(_clip_crops_score, (0.0, 1.0), False, 0.5,
                            "CLIP image-text anomaly of candidate crops (vl_anomaly models)", needs_vl=True),
    "fused": ScoreSpec(_fused_score, (0.0, 1.0), False, 0.5,
                       "R12 fusion of the sources of a fusion config (any model)", needs_fusion=True),
}


def list_scores() -> list[str]:
    """Every registered score name."""
    return list(SCORES)


def pixel_scores() -> list[str]:
    """Scores defined for every segmenter (not only mask-query models, not the vision-language ones)."""
    return [name for name, spec in SCORES.items()
            if not spec.needs_mask_queries and not spec.needs_vl and not spec.needs_fusion and not spec.needs_members]


def get_score(name: str) -> ScoreSpec:
    """The spec of a score name; unknown names raise :class:`ConfigError` listing the valid ones."""
    if name not in SCORES:
        raise ConfigError(f"unknown score {name!r}; choose one of: {', '.join(SCORES)}")
    return SCORES[name]


def check_score_fits(name: str, model: Any, cfg: ScoringCfg, model_name: str = "") -> ScoreSpec:
    """The spec of ``name`` if ``model`` (and ``cfg``) can compute it, else a :class:`ConfigError` saying why."""
    spec = get_score(name)
    what = model_name or "this model"
    if spec.needs_fusion and cfg.fusion is None:
        raise ConfigError(_NO_FUSION)
    needed = [name, *(cfg.fusion.sources if spec.needs_fusion else [])]
    if "clip_crops" in needed:
        needed.append(cfg.detector)
    for source in needed:
        source_spec = get_score(source)
        if source_spec.needs_vl and not getattr(model, "is_vision_language", False):
            raise ConfigError(f"score {source!r} needs a vision-language model (family vl_anomaly); {what} is a "
                              "plain segmenter")
        if source == "text_guided" and getattr(model, "zero_shot", False):
            raise ConfigError(f"score 'text_guided' needs a trained head; {what} is zero-shot (no trained head): its "
                              "sources are the detector and clip_crops")
        if source_spec.needs_members and not getattr(model, "is_ensemble", False):
            raise ConfigError(f"score {source!r} needs an ensemble (family ensemble, e.g. lite_ensemble_cityscapes); "
                              f"{what} is a single network. Its scores: {', '.join(pixel_scores())}")
        if source_spec.needs_mask_queries and not getattr(model, "has_mask_queries", False):
            raise ConfigError(f"score {source!r} needs a mask-query model (Mask2Former); {what} is a pixel "
                              f"classifier. Pixel-classifier scores: {', '.join(pixel_scores())}")
    return spec


def compute_score(name: str, output: SegmenterOutput | VLOutput) -> torch.Tensor:
    """Score ``(B, h, w)`` float32 of the named score from a model output alone, at the network resolution
    (scores that need the image or a fusion config: :meth:`vl_anomaly.pipeline.AnomalyPredictor.score_maps`)."""
    return get_score(name).fn(ScoreContext(output=output)).float()
