"""Model registry in the style of open_clip: a folder of YAML architecture configs (file stem = model name)
plus one builder per network family.

A config holds architecture numbers only::

    family: espnetv2        # which builder
    classes: cityscapes     # class list name (vl_anomaly.constants.CLASS_LISTS)
    arch: {...}             # keyword arguments of the family's builder, one-to-one

Composite families (``vl_anomaly``) also name their parts: ``segmenter`` (a registered model) and ``clip``
(open_clip ``name``, a CLIP weight record ``weights`` from :mod:`vl_anomaly.pretrained`, or a ``config`` dict),
plus the scoring settings ``sources`` and ``fusion`` (:class:`vl_anomaly.scores.ScoringCfg`).

Weights live in a separate table (:mod:`vl_anomaly.pretrained`).
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Callable

import yaml
from torch import nn

from .constants import CLASS_LISTS
from .errors import ConfigError

_CONFIG_DIR = Path(__file__).parent / "model_configs"
_MODEL_CONFIGS: dict[str, dict] = {}
_FAMILY_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_family(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder(**arch) -> nn.Module`` for a network family; duplicates are an error."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _FAMILY_BUILDERS:
            raise ConfigError(f"network family {name!r} is already registered")
        _FAMILY_BUILDERS[name] = builder
        return builder

    return decorator


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def _check_config(name: str, cfg: object, source: Path) -> dict:
    if not isinstance(cfg, dict) or not {"family", "arch"} <= set(cfg):
        raise ConfigError(f"model config {source} must be a mapping with keys 'family' and 'arch'")
    if not isinstance(cfg["family"], str) or not isinstance(cfg["arch"], dict):
        raise ConfigError(f"model config {source}: 'family' must be a name and 'arch' a mapping of constructor "
                          f"arguments; got {type(cfg['family']).__name__} and {type(cfg['arch']).__name__}")
    if cfg.get("classes", "cityscapes") not in CLASS_LISTS:
        raise ConfigError(f"model config {source}: unknown class list {cfg.get('classes')!r}; "
                          f"known: {sorted(CLASS_LISTS)}")
    cfg.setdefault("classes", "cityscapes")
    cfg["name"] = name
    return cfg


def add_model_config(path: str | Path) -> list[str]:
    """Register every ``*.yaml`` in a folder (or one file). Returns the names added; a name already present is
    replaced (user folders may override the built-in configs)."""
    path = Path(path)
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise ConfigError(f"no model config found at {path}")
    added = []
    for file in files:
        try:
            with open(file, encoding="utf-8") as handle:
                cfg = yaml.safe_load(handle)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:       # incl. python/* tags: safe_load refuses them
            raise ConfigError(f"model config {file} is not valid YAML: {exc}") from exc
        _MODEL_CONFIGS[file.stem] = _check_config(file.stem, cfg, file)
        added.append(file.stem)
    return added


def list_models() -> list[str]:
    """Registered model names, naturally sorted."""
    return sorted(_MODEL_CONFIGS, key=_natural_key)


def get_model_config(name: str) -> dict:
    """A deep copy of a registered config; unknown names raise :class:`ConfigError` listing the valid ones."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model name must be a non-empty string, got {name!r}")
    if name not in _MODEL_CONFIGS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return copy.deepcopy(_MODEL_CONFIGS[name])


def build_network(cfg: dict, **components) -> nn.Module:
    """Instantiate the network of a config with random weights: ``builder(**cfg["arch"], **components)``.

    ``components`` are the already-built parts a composite config names (``segmenter``, ``clip`` and the
    ``class_names`` its prompts describe; :func:`vl_anomaly.factory.create_model` builds them)."""
    family = cfg["family"]
    if family not in _FAMILY_BUILDERS:
        raise ConfigError(f"model {cfg.get('name')!r}: unknown family {family!r}; "
                          f"known: {sorted(_FAMILY_BUILDERS)}")
    return _FAMILY_BUILDERS[family](**copy.deepcopy(cfg["arch"]), **components)


add_model_config(_CONFIG_DIR)
#: extra config folders or files, separated by os.pathsep (user models, also in child processes like torchrun's)
for _extra in filter(None, os.environ.get("VL_ANOMALY_MODEL_CONFIGS", "").split(os.pathsep)):
    add_model_config(_extra)
