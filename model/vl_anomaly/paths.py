"""Where vl_anomaly finds the shared data and weights, and where it caches converted files.

Resolution order (first hit wins):

* shared directory (real data + weights, never part of the repository):
  ``$VL_ANOMALY_SHARED_DIR`` → ``../shared`` next to the repository checkout → ``../shared`` and ``./shared``
  relative to the current working directory.
* weights directory: ``$VL_ANOMALY_WEIGHTS_DIR`` → ``<shared>/weights``.
* cache directory: ``$VL_ANOMALY_CACHE_DIR`` → ``$XDG_CACHE_HOME/vl_anomaly`` → ``~/.cache/vl_anomaly``.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_SHARED_DIR = "VL_ANOMALY_SHARED_DIR"
ENV_WEIGHTS_DIR = "VL_ANOMALY_WEIGHTS_DIR"
ENV_CACHE_DIR = "VL_ANOMALY_CACHE_DIR"

# model/vl_anomaly/paths.py → the repository checkout is two levels above the package directory.
_REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_dir_candidates() -> list[Path]:
    """Every place :func:`shared_dir` looks, in order (for error messages)."""
    candidates: list[Path] = []
    env = os.environ.get(ENV_SHARED_DIR)
    if env:
        candidates.append(Path(env).expanduser())
    candidates += [_REPO_ROOT.parent / "shared", Path.cwd().parent / "shared", Path.cwd() / "shared"]
    unique: list[Path] = []
    for path in candidates:
        if path not in unique:
            unique.append(path)
    return unique


def shared_dir() -> Path | None:
    """The shared data/weights directory, or None when none of the candidates exists."""
    for path in shared_dir_candidates():
        if path.is_dir():
            return path.resolve()
    return None


def weights_dir_candidates() -> list[Path]:
    """Directories searched for registered weight files, in order."""
    env = os.environ.get(ENV_WEIGHTS_DIR)
    if env:
        return [Path(env).expanduser()]
    return [path / "weights" for path in shared_dir_candidates()]


def anomaly_val_dir() -> Path | None:
    """``<shared>/data/anomaly_val`` (the four road-anomaly validation sets), or None."""
    root = shared_dir()
    if root is None:
        return None
    path = root / "data" / "anomaly_val"
    return path if path.is_dir() else None


def cache_dir() -> Path:
    """Writable cache root (created on demand by the callers that write into it)."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "vl_anomaly"
