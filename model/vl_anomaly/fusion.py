"""Fusion of anomaly sources (R12 of docs/method.md): ``s = Σ_i w_i · ŝ_i`` with ``w_i ≥ 0``, ``Σ w_i = 1`` and
every source mapped to [0, 1] first.

The paper fuses detector confidence, text-guided similarity and CLIP image–text similarity with weights tuned by
hand per dataset. We fit one shared set instead (:mod:`vl_anomaly.calibration`) and ship it as YAML with its
calibration record. Any registered score can be a source, so the same code fuses the real segmenters' detector
scores today and the vision-language sources when they exist.

Normalisation (ours): each source gets the affine map ``ŝ = clip((s − lo) / (hi − lo), 0, 1)`` with ``lo``/``hi``
the 1st and 99th percentiles of that source on the calibration pixels, so sources with unbounded ranges (max
logit, energy, RbA) and bounded ones (MSP, entropy) are commensurable.
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
class FusionCfg:
    """Weights and normalisations of the fused score, with the record of how they were obtained.

    Attributes:
        weights: ``{source score name: weight}``, each ≥ 0, summing to 1.
        norms: ``{source: SourceNorm}`` for every weighted source.
        record: provenance (calibration sets, frames, pixels, objective, date); empty for hand-set weights.
    """

    weights: dict[str, float]
    norms: dict[str, SourceNorm]
    record: dict = field(default_factory=dict)

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

    @property
    def sources(self) -> list[str]:
        """Sources with a non-zero weight (the ones that must be computed)."""
        return [s for s, w in self.weights.items() if w > 0]

    def to_dict(self) -> dict:
        return {"weights": {s: float(w) for s, w in self.weights.items()},
                "normalization": {s: {"lo": float(n.lo), "hi": float(n.hi)} for s, n in self.norms.items()},
                "record": self.record}

    @classmethod
    def from_dict(cls, data: dict) -> "FusionCfg":
        try:
            weights = {str(k): float(v) for k, v in data["weights"].items()}
            norms = {str(k): SourceNorm(float(v["lo"]), float(v["hi"])) for k, v in data["normalization"].items()}
            return cls(weights, norms, dict(data.get("record") or {}))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ConfigError(f"fusion config needs 'weights' {{source: w}} and 'normalization' "
                              f"{{source: {{lo, hi}}}} for every source: {type(exc).__name__} {exc}") from exc

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = (f"# vl-anomaly fusion config (R12: s = sum_i w_i * clip((s_i - lo_i) / (hi_i - lo_i), 0, 1)).\n"
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
    """Fused score ``(H, W)`` float32 in [0, 1] from raw source maps ``{source: (H, W)}``."""
    missing = [s for s in cfg.sources if s not in maps]
    if missing:
        raise ConfigError(f"fusion needs source maps {missing}; got {sorted(maps)}")
    shape = maps[cfg.sources[0]].shape
    out = np.zeros(shape, dtype=np.float32)
    for source in cfg.sources:
        if maps[source].shape != shape:
            raise ConfigError(f"source {source} map is {maps[source].shape}, expected {shape}")
        out += np.float32(cfg.weights[source]) * cfg.norms[source].apply(maps[source])
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
