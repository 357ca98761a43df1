"""Per-pixel anomaly scores from a :class:`~vl_anomaly.outputs.SegmenterOutput`. Higher = more anomalous.

Every score is a small function ``(B, …) → (B, H, W)`` float32 at the network input resolution. ``ℓ`` are the
K class logits, ``p = softmax(ℓ)``. One name picks the score everywhere (``--score``, the node's ``score``
parameter, evaluation): see :data:`SCORES`.

| name           | formula                                       | range                     |
|----------------|-----------------------------------------------|---------------------------|
| ``msp``        | ``1 − max_k p_k``                             | [0, 1 − 1/K]              |
| ``max_logit``  | ``−max_k ℓ_k``                                | ℝ                         |
| ``entropy``    | ``−Σ_k p_k log p_k / log K``                  | [0, 1]                    |
| ``energy``     | ``−T · log Σ_k exp(ℓ_k / T)`` (T = 1)         | ℝ                         |
| ``rba``        | ``−Σ_k tanh(Σ_q c_q[k] · σ(m_q))``            | [−K, K] (mask-query only) |
| ``mask2anomaly`` | ``1 − max_k Σ_q softmax(c_q)[k] · σ(m_q)``  | (−∞, 1], [0, 1] when masks do not overlap (mask-query only) |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import ConfigError
from .networks.mask2former import upsample_masks
from .outputs import SegmenterOutput


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
class ScoreSpec:
    """A registered score: how to compute it from a segmenter output and what its values mean.

    Attributes:
        fn: ``SegmenterOutput → (B, H, W)``.
        range: documented (min, max) of the values (±inf for unbounded).
        needs_mask_queries: only defined for mask-query models.
        default_threshold: obstacle threshold used when none is given (a starting point, to be calibrated).
        description: one line for help texts.
        needs_vl: computed by the vision-language pipeline (:mod:`vl_anomaly.vl_scores`), not from a
            segmenter output alone; only with a ``vl_anomaly`` model.
    """

    fn: Callable[[SegmenterOutput], torch.Tensor]
    range: tuple[float, float]
    needs_mask_queries: bool
    default_threshold: float
    description: str
    needs_vl: bool = False


def _needs_queries(name: str) -> Callable[[SegmenterOutput], None]:
    def check(out: SegmenterOutput) -> None:
        if not out.has_mask_queries:
            raise ConfigError(f"score {name!r} needs a mask-query model (Mask2Former); this model has no mask "
                              f"queries. Pixel-classifier scores: {', '.join(pixel_scores())}")
    return check


def _needs_vl(name: str) -> Callable[[SegmenterOutput], torch.Tensor]:
    def fail(out: SegmenterOutput) -> torch.Tensor:
        raise ConfigError(f"score {name!r} comes from the vision-language pipeline: use a vl_anomaly model "
                          f"(vl-anomaly list-models); segmenter scores: {', '.join(pixel_scores())}")
    return fail


def _rba_from_output(out: SegmenterOutput) -> torch.Tensor:
    _needs_queries("rba")(out)
    return rba(out.class_queries_logits, out.masks_queries_logits, out.logits.shape[-2:])


def _mask2anomaly_from_output(out: SegmenterOutput) -> torch.Tensor:
    _needs_queries("mask2anomaly")(out)
    return mask2anomaly(out.logits)


SCORES: dict[str, ScoreSpec] = {
    "msp": ScoreSpec(lambda o: msp(o.logits), (0.0, 1.0), False, 0.5,
                     "1 − maximum softmax probability"),
    "max_logit": ScoreSpec(lambda o: max_logit(o.logits), (-math.inf, math.inf), False, -5.0,
                           "negative maximum class logit"),
    "entropy": ScoreSpec(lambda o: entropy(o.logits), (0.0, 1.0), False, 0.5,
                         "softmax entropy / log K"),
    "energy": ScoreSpec(lambda o: energy(o.logits), (-math.inf, math.inf), False, -5.0,
                        "negative log-sum-exp of the class logits"),
    "rba": ScoreSpec(_rba_from_output, (-19.0, 19.0), True, 0.0,
                     "−Σ_k tanh of class-mask logits (mask-query models)"),
    "mask2anomaly": ScoreSpec(_mask2anomaly_from_output, (-math.inf, 1.0), True, 0.5,
                              "1 − max_k of the query-mask semantic map (mask-query models)"),
    "text_guided": ScoreSpec(_needs_vl("text_guided"), (0.0, 1.0), False, 0.5,
                             "R11 text-guided similarity (vl_anomaly models)", needs_vl=True),
    "clip_crops": ScoreSpec(_needs_vl("clip_crops"), (0.0, 1.0), False, 0.5,
                            "CLIP image-text anomaly of candidate crops (vl_anomaly models)", needs_vl=True),
    "vl_fused": ScoreSpec(_needs_vl("vl_fused"), (0.0, 1.0), False, 0.5,
                          "R12 fusion of detector, text-guided and CLIP sources (vl_anomaly models)", needs_vl=True),
}


def list_scores() -> list[str]:
    """Every registered score name."""
    return list(SCORES)


def pixel_scores() -> list[str]:
    """Scores defined for every segmenter (not only mask-query models, not the vision-language ones)."""
    return [name for name, spec in SCORES.items() if not spec.needs_mask_queries and not spec.needs_vl]


def get_score(name: str) -> ScoreSpec:
    """The spec of a score name; unknown names raise :class:`ConfigError` listing the valid ones."""
    if name not in SCORES:
        raise ConfigError(f"unknown score {name!r}; choose one of: {', '.join(SCORES)}")
    return SCORES[name]


def compute_score(name: str, output: SegmenterOutput) -> torch.Tensor:
    """Score map ``(B, H, W)`` float32 of the named score for a segmenter output."""
    return get_score(name).fn(output).float()
