"""Process environment for ROS 2 from PyPI wheels, where no setup script is sourced."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def ensure_venv_ament_prefix() -> None:
    """Append this Python's prefix to ``AMENT_PREFIX_PATH`` when it holds an ament index (a PyPI venv with our
    packages installed), so package-share lookups work as in a sourced workspace. No-op on a sourced install."""
    prefix = sys.prefix
    if not (Path(prefix) / "share" / "ament_index").is_dir():
        return
    paths = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    if prefix not in paths:
        os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(paths + [prefix])


def use_shipped_fastdds_profile() -> Path | None:
    """Point ``FASTRTPS_DEFAULT_PROFILES_FILE`` at config/fastdds_shm.xml unless it is already set (without a
    large shared-memory segment, best-effort HD images are silently dropped; docs/ros.md). Returns the profile
    in use, if any. Must run before ``rclpy.init``."""
    if os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE"):
        return Path(os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"])
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("vl_anomaly_ros")) / "config" / "fastdds_shm.xml")
    except Exception:                                             # noqa: BLE001 — not installed as a ROS package
        pass
    candidates.append(Path(__file__).resolve().parents[1] / "config" / "fastdds_shm.xml")
    for candidate in candidates:
        if candidate.is_file():
            os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(candidate)
            return candidate
    return None
