#!/usr/bin/env bash
# Installs everything vl-anomaly needs into ./.venv (idempotent; re-running only installs what changed).
#   - the pinned ML stack (requirements/core.txt) and test tools (requirements/test.txt), with pip:
#     torch 2.14.1 / torchvision 0.29.1 come from this machine's local wheel store (uv/poetry would download GBs);
#   - the ROS-free core package in model/ (editable, import name vl_anomaly, command vl-anomaly);
#   - the ROS 2 node package at the top level (pip install . — an editable install would skip data_files).
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
echo "[setup] installing the pinned stack (requirements/core.txt, requirements/test.txt)"
"${PIP[@]}" install -q -r requirements/core.txt -r requirements/test.txt
echo "[setup] installing the vl_anomaly core (model/) and the vl_anomaly_ros package"
"${PIP[@]}" install -q --no-deps -e ./model
"${PIP[@]}" install -q --no-deps .
"$VENV/bin/python" -c "import vl_anomaly, torch; print(f'[setup] ok: vl_anomaly {vl_anomaly.__version__}, torch {torch.__version__}, {len(vl_anomaly.list_models())} registered models')"
