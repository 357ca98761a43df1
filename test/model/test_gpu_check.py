"""benchmarks/gpu_check.sh, the one-command first GPU run, in its CPU dry run: the same measurement path (five
models, fp32, the CLIP branch at 3 and 20 crops, CUDA-vs-CPU parity code, ONNX Runtime providers, the TensorRT
step reporting why it did not run) on a 64×128 input with a tiny CLIP. The install step needs a CUDA torch and
a wheel folder (``--prepare``): not run here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_gpu_check_dry_run_writes_every_figure(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run([str(SCRIPT), "--no-install", "--dry-run", "-o", str(out)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=480)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["device"] == "cpu" and report["input"] == [64, 128]
    assert report["errors"] == {}
    assert set(report["models"]) == {"espnetv2_s2.0_cityscapes", "lite_ensemble_cityscapes",
                                     "mask2former_swin_t_cityscapes", "vl_anomaly_espnetv2_vitb16",
                                     "vl_anomaly_mask2former_swin_t_vitb16"}
    assert all(row["fp32_fps"] > 0 and row["fp16_fps"] is None for row in report["models"].values())
    assert {k: v["crops"] for k, v in report["clip_share"].items()} == {"3": 3, "20": 20}
    assert all(0 < v["share_of_frame_plus_crops"] < 1 for v in report["clip_share"].values())
    assert len(report["parity"]["frames"]) == 3 and report["parity"]["min_argmax_agreement"] == 1.0
    assert report["deployment"]["onnxruntime_runs_on"] == ["CPUExecutionProvider"]
    assert "not run" in report["deployment"]["tensorrt"]
    assert report["cpu_model"] and report["seconds"] > 0


def test_gpu_check_needs_its_wheels_or_no_install(tmp_path):
    run = subprocess.run([str(SCRIPT), "-o", str(tmp_path / "x.json")], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "--wheels DIR" in run.stderr
    run = subprocess.run([str(SCRIPT), "--bogus"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "unknown argument --bogus" in run.stderr
