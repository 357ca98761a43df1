"""An ensemble of registered segmenters behind one forward pass (issue 13).

The ensemble takes **raw RGB** (0–255 units, resized once to the ensemble input size by the ensemble's own
:class:`~vl_anomaly.preprocess.PreprocessCfg`: mean 0, std 1) and gives every member its own pre-processing
inside ``forward`` — channel order, mean/std, extra scale (ESPNet's second division by 255) and, optionally, a
lower input resolution — so one RGB input serves members trained with different pipelines, and an ONNX export of
the ensemble is one graph.

Output contract (:class:`~vl_anomaly.outputs.SegmenterOutput`), M members, K classes, H × W the ensemble input:

* ``member_logits (B, M, K, H, W)``: each member's K class logits, bilinearly resampled to H × W;
* ``logits (B, K, H, W) = log(max((1/M) Σ_m softmax(ℓ_m), tiny))``: log of the mean class probabilities
  (floored at the smallest normal float, ``tiny`` ≈ 1.2e-38), so that ``softmax(logits)`` is the ensemble's mean
  distribution and every softmax score (MSP, entropy) is the ensemble's;
* ``pixel_features``: the first member's features (the VL head is not trained on ensembles).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from ..outputs import SegmenterOutput


def input_divisor(member_divisor: int, resolution: float) -> int:
    """The smallest D such that every ensemble input side that is a multiple of D gives a member of divisor
    ``member_divisor`` an integer side that is a multiple of its divisor at ``resolution``: with
    ``resolution = p/q`` (reduced), ``H·p/q ≡ 0 (mod d)`` ⇔ ``H ≡ 0 (mod d·q / gcd(p, d·q))``.
    E.g. ``d = 32``: resolution 1 → 32, 0.5 → 64, 0.75 → 128."""
    frac = Fraction(resolution).limit_denominator(64)
    if abs(float(frac) - resolution) > 1e-9:
        raise ValueError(f"member resolution {resolution} must be a simple fraction (denominator ≤ 64), e.g. 0.5, 0.75")
    dq = member_divisor * frac.denominator
    return dq // math.gcd(frac.numerator, dq)


@dataclass(frozen=True)
class MemberInput:
    """How one member expects its input, derived from its weights' pre-processing (0–255 units).

    Attributes:
        bgr: the member reads BGR (channel flip of the RGB input).
        mean, std: per channel, in the member's channel order, 0–255 units.
        scale: factor after normalisation.
        resolution: the member's input size as a fraction of the ensemble's (1.0 = same grid).
        antialias: antialiased down-sampling when ``resolution < 1``.
    """

    bgr: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1.0
    resolution: float = 1.0
    antialias: bool = True


class EnsembleSegmenter(nn.Module):
    """Mean class probabilities of M segmenters. ``forward``: RGB ``(B, 3, H, W)`` in 0–255 → SegmenterOutput.

    Args:
        members: the member networks (each ``(B, 3, h, w) → SegmenterOutput`` with the same K classes).
        inputs: one :class:`MemberInput` per member.
        names: the members' registered names (for records and error messages).
    """

    has_mask_queries = False
    is_ensemble = True

    def __init__(self, members: list[nn.Module], inputs: list[MemberInput], names: list[str]) -> None:
        super().__init__()
        if not members or len(members) != len(inputs) or len(names) != len(members):
            raise ValueError(f"an ensemble needs ≥ 1 member and one input spec and name per member; got "
                             f"{len(members)} members, {len(inputs)} input specs, {len(names)} names")
        if any(getattr(m, "has_mask_queries", False) for m in members):
            raise ValueError("ensemble members must be pixel classifiers (mask-query models are not supported)")
        self.members = nn.ModuleList(members)
        self.inputs = list(inputs)
        self.names = list(names)
        for i, spec in enumerate(inputs):
            if not 0.0 < spec.resolution <= 1.0:
                raise ValueError(f"member {names[i]}: resolution must be in (0, 1], got {spec.resolution}")
            self.register_buffer(f"mean_{i}", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1),
                                 persistent=False)
            self.register_buffer(f"inv_std_{i}", spec.scale / torch.tensor(spec.std, dtype=torch.float32)
                                 .view(1, 3, 1, 1), persistent=False)
        first = members[0]
        self.feature_stride = int(round(first.feature_stride / inputs[0].resolution))
        self.feature_channels = int(getattr(first, "feature_channels", 0))
        # every member must see a valid input size at its resolution
        self.size_divisor = math.lcm(*[input_divisor(int(getattr(m, "size_divisor", 8)), s.resolution)
                                       for m, s in zip(members, inputs)])

    def member_input(self, index: int, rgb: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB 0–255 → member ``index``'s pre-processed input ``(B, 3, h, w)``."""
        spec = self.inputs[index]
        x = rgb
        if spec.resolution != 1.0:
            size = (int(round(rgb.shape[-2] * spec.resolution)), int(round(rgb.shape[-1] * spec.resolution)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=spec.antialias)
        if spec.bgr:
            x = x.flip(1)
        return (x - getattr(self, f"mean_{index}")) * getattr(self, f"inv_std_{index}")

    def forward(self, rgb: torch.Tensor) -> SegmenterOutput:
        size = rgb.shape[-2:]
        member_logits = []
        features = None
        for i, member in enumerate(self.members):
            out = member(self.member_input(i, rgb))
            logits = out.logits
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            member_logits.append(logits)
            if features is None:
                features = out.pixel_features
        stacked = torch.stack(member_logits, dim=1)                                  # (B, M, K, H, W)
        # log of the mean probabilities; a probability below the smallest normal float32 (a class every member
        # rules out by > 87 nats) is floored there, which changes no probability by more than 1.2e-38 and is
        # half the cost of log-sum-exp over the members' log-softmax (0.2 s per frame on 2 CPU cores)
        mean_p = stacked.softmax(dim=2).mean(dim=1)                                # (B, K, H, W)
        mean_log_p = mean_p.clamp_min(torch.finfo(mean_p.dtype).tiny).log()
        return SegmenterOutput(logits=mean_log_p, pixel_features=features, feature_stride=self.feature_stride,
                               member_logits=stacked)


__all__ = ["EnsembleSegmenter", "MemberInput", "input_divisor"]
