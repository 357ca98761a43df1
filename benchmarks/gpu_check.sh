#!/usr/bin/env bash
# The first GPU run in one command (≤ 8 minutes on one NVIDIA GPU): installs the vl_anomaly core from this
# checkout into a virtual environment that sees the machine's CUDA torch, then runs benchmarks/gpu_check.py
# (frames per second fp32 / fp16 for five models at 512×1024, the CLIP branch's share at 3 and 20 crops, CUDA-vs-CPU
# parity on three real frames, ONNX Runtime providers and a TensorRT engine where they exist) and writes one JSON.
#
# For a bare machine with Python 3.12 and a CUDA torch, nothing downloadable: the core's other dependencies come
# from a folder of wheels made beforehand on a machine with PyPI (same Python version and platform):
#     benchmarks/gpu_check.sh --prepare WHEELS_DIR            # downloads them (here)
#     benchmarks/gpu_check.sh --wheels WHEELS_DIR [-o gpu_check.json]      # on the GPU machine
# Real weights and frames come from ../shared (or $VL_ANOMALY_SHARED_DIR) when present; otherwise random weights
# and drawn frames (the JSON says which).
#   --no-install   use $PYTHON as it is (the core already installed)
#   --dry-run      CPU, tiny sizes: checks the script (test/model/test_gpu_check.py runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${GPU_CHECK_VENV:-${TMPDIR:-/tmp}/vl_anomaly_gpu_check_venv}"
WHEELS="" OUT="gpu_check.json" INSTALL=1 EXTRA=() PREPARE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --prepare) PREPARE="$2"; shift 2 ;;
    -o|--output) OUT="$2"; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --dry-run) EXTRA+=(--dry-run); shift ;;
    *) echo "gpu_check: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
REQUIREMENTS=benchmarks/gpu_check_requirements.txt

if [ -n "$PREPARE" ]; then
  PYVER="${GPU_CHECK_PYTHON_VERSION:-3.12}"
  echo "[gpu_check] downloading the core's dependencies for Python $PYVER, manylinux x86_64, into $PREPARE"
  "$PYTHON" -m pip download --only-binary=:all: --python-version "$PYVER" --platform manylinux2014_x86_64 \
    --platform manylinux_2_28_x86_64 --no-deps -d "$PREPARE" -r "$REQUIREMENTS"
  exit 0
fi

if [ "$INSTALL" = 1 ]; then
  [ -n "$WHEELS" ] && [ -d "$WHEELS" ] || { echo "gpu_check: --wheels DIR (made with --prepare) is needed to" \
    "install without network; or --no-install if the core is already installed in \$PYTHON" >&2; exit 2; }
  "$PYTHON" -c 'import torch, sys; assert torch.cuda.is_available(), "no CUDA"; print("[gpu_check]", sys.version.split()[0], "torch", torch.__version__, torch.cuda.get_device_name())' \
    || { echo "gpu_check: $PYTHON needs a CUDA build of torch and a visible GPU" >&2; exit 2; }
  "$PYTHON" -m venv --system-site-packages "$VENV"             # sees the machine's CUDA torch
  "$VENV/bin/python" -m pip install -q --no-index --find-links "$WHEELS" --no-deps -r "$REQUIREMENTS"
  "$VENV/bin/python" -m pip install -q --no-index --no-deps --no-build-isolation ./model
  PYTHON="$VENV/bin/python"
fi
echo "[gpu_check] running benchmarks/gpu_check.py with $PYTHON"
exec timeout 480 "$PYTHON" benchmarks/gpu_check.py -o "$OUT" "${EXTRA[@]}"
