"""Fusion of anomaly sources (R12 of docs/method.md): ``s = Σ_i w_i · ŝ_i`` with ``w_i ≥ 0``, ``Σ w_i = 1`` and
every source mapped to [0, 1] first.

The paper fuses detector confidence, text-guided similarity and CLIP image–text similarity with weights tuned by
hand per dataset. We fit one shared set instead (:mod:`vl_anomaly.calibration`) and ship it as YAML with its
calibration record. Any registered score can be a source, so the same code fuses the real segmenters' detector
scores today and the vision-language sources when they exist.

Normalisation (ours): each source gets the affine map ``ŝ = clip((s − lo) / (hi − lo), 0, 1)`` with ``lo``/``hi``
the 1st and 99th percentiles of that source on the calibration pixels, so sources with unbounded ranges (max
logit, energy, RbA) and bounded ones (MSP, entropy) are commensurable.

The gated form (ours, issue 17): ``s = ŝ_g · (w_g + Σ_{i≠g} w_i ŝ_i)`` with the same simplex weights and one
source ``g`` as the gate. The other sources raise what the gate already finds (by up to a factor ``1/w_g``) but
cannot make an anomaly on their own where the gate is silent. On the synthetic road world the detector's MSP
fires on class boundaries as well as on objects; in a weighted sum its share is capped by those boundaries, while
gated by the text-guided score it can take a large share (0.6–0.8) that only lifts regions the text-guided score
already marks (docs/method.md). It does not help an object the gate finds and the other sources miss (there the
gated score is ``w_g ŝ_g``). :func:`vl_anomaly.calibration.fit_fusion` searches both forms (``forms``) and keeps
the better on the calibration pixels.

A learned combiner (issue 13, ours) may replace the weighted sum: :class:`LogisticCombiner`,
``s = σ(b + Σ_i a_i ŝ_i + Σ_{i<j} c_ij ŝ_i ŝ_j)`` — logistic regression on the normalised sources and their
pairwise products, so that one source can gate another (e.g. members' disagreement counting only where the
ensemble is also unsure), fitted by :func:`vl_anomaly.calibration.fit_logistic_fusion`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .errors import ConfigError


@dataclass(frozen=True)
class SourceNorm:
    """Affine map of one source to [0, 1]: ``clip((s − lo) / (hi − lo), 0, 1)``; ``lo < hi`` in score units."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.lo) and np.isfinite(self.hi) and self.hi > self.lo):
            raise ConfigError(f"a source normalisation needs finite lo < hi, got lo={self.lo}, hi={self.hi}")

    def apply(self, score: np.ndarray) -> np.ndarray:
        """``(H, W)`` (or any shape) raw scores → float32 in [0, 1]."""
        out = (np.asarray(score, dtype=np.float32) - np.float32(self.lo)) / np.float32(self.hi - self.lo)
        return np.clip(out, 0.0, 1.0, out=out)


@dataclass(frozen=True)
class LogisticCombiner:
    """``s = σ(bias + Σ_i linear[i] · ŝ_i + Σ_{i<j} pairwise["i*j"] · ŝ_i · ŝ_j)`` on normalised sources ŝ.

    Attributes:
        bias: intercept (logit units).
        linear: ``{source: coefficient}``.
        pairwise: ``{"a*b": coefficient}`` for source pairs (may be empty: plain logistic regression).
    """

    bias: float
    linear: dict[str, float]
    pairwise: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values = [self.bias, *self.linear.values(), *self.pairwise.values()]
        if not all(np.isfinite(v) for v in values):
            raise ConfigError(f"logistic combiner coefficients must be finite, got {values}")
        for key in self.pairwise:
            parts = key.split("*")
            if len(parts) != 2 or not set(parts) <= set(self.linear):
                raise ConfigError(f"pairwise term {key!r} must be 'a*b' of two linear sources {sorted(self.linear)}")

    def apply(self, normed: dict[str, np.ndarray]) -> np.ndarray:
        """``{source: ŝ (H, W) in [0, 1]}`` → fused ``(H, W)`` float32 in (0, 1)."""
        z = np.full(next(iter(normed.values())).shape, np.float32(self.bias), dtype=np.float32)
        for source, a in self.linear.items():
            z += np.float32(a) * normed[source]
        for key, c in self.pairwise.items():
            left, right = key.split("*")
            z += np.float32(c) * normed[left] * normed[right]
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def to_dict(self) -> dict:
        return {"kind": "logistic", "bias": float(self.bias), "linear": {k: float(v) for k, v in self.linear.items()},
                "pairwise": {k: float(v) for k, v in self.pairwise.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "LogisticCombiner":
        if data.get("kind", "logistic") != "logistic":
            raise ConfigError(f"unknown combiner kind {data.get('kind')!r}; known: logistic")
        return cls(float(data["bias"]), {str(k): float(v) for k, v in data["linear"].items()},
                   {str(k): float(v) for k, v in (data.get("pairwise") or {}).items()})


@dataclass(frozen=True)
class FusionCfg:
    """Weights and normalisations of the fused score, with the record of how they were obtained.

    Attributes:
        weights: ``{source score name: weight}``, each ≥ 0, summing to 1 (with a combiner: equal shares, they
            only name the sources).
        norms: ``{source: SourceNorm}`` for every weighted source.
        record: provenance (calibration sets, frames, pixels, objective, date); empty for hand-set weights.
        combiner: a learned :class:`LogisticCombiner` replacing the weighted sum, or None.
        gate: the gating source of the gated form ``ŝ_g · (w_g + Σ_{i≠g} w_i ŝ_i)``, or None (weighted sum).
    """

    weights: dict[str, float]
    norms: dict[str, SourceNorm]
    record: dict = field(default_factory=dict)
    combiner: LogisticCombiner | None = None
    gate: str | None = None

    def __post_init__(self) -> None:
        if not self.weights:
            raise ConfigError("a fusion needs at least one source")
        if any((not np.isfinite(w)) or w < 0 for w in self.weights.values()):
            raise ConfigError(f"fusion weights must be finite and ≥ 0, got {self.weights}")
        total = sum(self.weights.values())
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"fusion weights must sum to 1, got {total} ({self.weights})")
        missing = [s for s in self.weights if s not in self.norms]
        if missing:
            raise ConfigError(f"fusion sources {missing} have no normalisation (lo, hi)")
        if self.combiner is not None and set(self.combiner.linear) != set(self.sources):
            raise ConfigError(f"the combiner's sources {sorted(self.combiner.linear)} must be the fusion's "
                              f"{sorted(self.sources)}")
        if self.gate is not None:
            if self.combiner is not None:
                raise ConfigError("a fusion has either a gate or a combiner, not both")
            if self.weights.get(self.gate, 0.0) <= 0:
                raise ConfigError(f"the gate {self.gate!r} must be a fusion source with a weight > 0; "
                                  f"weights: {self.weights}")

    @property
    def form(self) -> str:
        """``"sum"``, ``"gated"`` or ``"logistic"``."""
        return "logistic" if self.combiner is not None else "gated" if self.gate is not None else "sum"

    @property
    def sources(self) -> list[str]:
        """Sources with a non-zero weight (the ones that must be computed)."""
        return [s for s, w in self.weights.items() if w > 0]

    def to_dict(self) -> dict:
        out = {"weights": {s: float(w) for s, w in self.weights.items()},
               "normalization": {s: {"lo": float(n.lo), "hi": float(n.hi)} for s, n in self.norms.items()}}
        if self.combiner is not None:
            out["combiner"] = self.combiner.to_dict()
        if self.gate is not None:
            out["gate"] = self.gate
        out["record"] = self.record
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "FusionCfg":
        try:
            weights = {str(k): float(v) for k, v in data["weights"].items()}
            norms = {str(k): SourceNorm(float(v["lo"]), float(v["hi"])) for k, v in data["normalization"].items()}
            combiner = LogisticCombiner.from_dict(data["combiner"]) if data.get("combiner") else None
            gate = str(data["gate"]) if data.get("gate") is not None else None
            return cls(weights, norms, dict(data.get("record") or {}), combiner, gate)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ConfigError(f"fusion config needs 'weights' {{source: w}} and 'normalization' "
                              f"{{source: {{lo, hi}}}} for every source: {type(exc).__name__} {exc}") from exc

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        form = {"sum": "s = sum_i w_i * n_i", "gated": f"s = n_g * (w_g + sum_(i != g) w_i * n_i), g = {self.gate}",
                "logistic": "s = sigmoid(combiner on n_i)"}[self.form]
        header = (f"# vl-anomaly fusion config (R12, {form}; n_i = clip((s_i - lo_i) / (hi_i - lo_i), 0, 1)).\n"
                  f"# Written {dt.datetime.now().isoformat(timespec='seconds')}; see docs/method.md.\n")
        path.write_text(header + yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FusionCfg":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"fusion config {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"fusion config {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"fusion config {path} must be a mapping with weights and normalization")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"fusion config {path}: {exc}") from exc


FUSION_CONFIG_DIR = Path(__file__).parent / "fusion_configs"


def list_fusion_configs() -> list[str]:
    """Names of the shipped fusion configs (``vl_anomaly/fusion_configs/<name>.yaml``, named after their model)."""
    return sorted(p.stem for p in FUSION_CONFIG_DIR.glob("*.yaml"))


def load_fusion(spec: "str | Path | FusionCfg") -> FusionCfg:
    """A fusion config from a :class:`FusionCfg`, a YAML path, or the name of a shipped config."""
    if isinstance(spec, FusionCfg):
        return spec
    shipped = FUSION_CONFIG_DIR / f"{spec}.yaml"
    if not str(spec).endswith((".yaml", ".yml")) and shipped.is_file():
        return FusionCfg.load(shipped)
    if not Path(spec).is_file():
        raise ConfigError(f"fusion config {spec!r} is neither a file nor a shipped config "
                          f"({', '.join(list_fusion_configs())})")
    return FusionCfg.load(spec)


def fuse(maps: dict[str, np.ndarray], cfg: FusionCfg) -> np.ndarray:
    """Fused score ``(H, W)`` float32 in [0, 1] from raw source maps ``{source: (H, W)}`` (weighted sum, the gated
    form when the config has a gate, or the learned combiner when it has one)."""
    missing = [s for s in cfg.sources if s not in maps]
    if missing:
        raise ConfigError(f"fusion needs source maps {missing}; got {sorted(maps)}")
    shape = maps[cfg.sources[0]].shape
    for source in cfg.sources:
        if maps[source].shape != shape:
            raise ConfigError(f"source {source} map is {maps[source].shape}, expected {shape}")
    if cfg.combiner is not None:
        return cfg.combiner.apply({s: cfg.norms[s].apply(maps[s]) for s in cfg.sources})
    normed = {s: cfg.norms[s].apply(maps[s]) for s in cfg.sources}
    return combine(normed, cfg.weights, cfg.gate)


def combine(normed: dict[str, np.ndarray], weights: dict[str, float], gate: str | None = None) -> np.ndarray:
    """Weighted sum ``Σ_i w_i ŝ_i`` of normalised sources ``{source: array in [0, 1]}`` (any common shape), or with
    ``gate`` the gated form ``ŝ_g · (w_g + Σ_{i≠g} w_i ŝ_i)``; float32 in [0, 1]. Sources of weight 0 are skipped."""
    shape = next(iter(normed.values())).shape
    out = np.full(shape, np.float32(weights[gate]) if gate is not None else 0.0, dtype=np.float32)
    for source, w in weights.items():
        if w > 0 and source != gate:
            out += np.float32(w) * normed[source]
    if gate is not None:
        out *= normed[gate]
    return out


def simplex_grid(num_sources: int, step: float) -> np.ndarray:
    """All weight vectors with entries in ``{0, step, 2·step, …}`` summing to 1: ``(G, num_sources)``."""
    if num_sources < 1:
        raise ConfigError("need at least one source")
    units = round(1.0 / step)
    if abs(units * step - 1.0) > 1e-9:
        raise ConfigError(f"grid step must divide 1, got {step}")

    def compositions(n: int, k: int):
        if k == 1:
            yield (n,)
            return
        for first in range(n, -1, -1):
            for rest in compositions(n - first, k - 1):
                yield (first, *rest)

    return np.array(list(compositions(units, num_sources)), dtype=np.float64) / units
