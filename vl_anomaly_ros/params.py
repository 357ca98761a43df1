"""The node's parameters: names, defaults, descriptions, ranges and validation (one table, used everywhere).

Runtime-changeable parameters are validated in the node's on-set callback and rejected with a reason;
read-only ones (model, weights, device, input size, QoS) take effect on the next ``configure``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Callable

from vl_anomaly.defaults import DEFAULT_MODEL, DEFAULT_SCORE
from vl_anomaly.deploy import BACKENDS
from vl_anomaly.postprocess import PostprocessCfg
from vl_anomaly.registry import list_models
from vl_anomaly.scores import list_scores

QOS_CHOICES = ("sensor_data", "default", "system_default")
POLICY_CHOICES = ("latest", "queue")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: default (its type is the parameter's type), description, limits, mutability."""

    default: Any
    description: str
    read_only: bool = False
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None
    allow_nan: bool = False


def _model_check(value: str) -> str | None:
    return None if value in list_models() else f"unknown model {value!r}; registered: {', '.join(list_models())}"


def _score_check(value: str) -> str | None:
    return None if value == "default" or value in list_scores() else \
        f"unknown score {value!r}; choose one of {', '.join(list_scores())}, or 'default' for the model's own"


def _device_check(value: str) -> str | None:
    if re.fullmatch(r"cpu|cuda(:\d+)?", value):
        return None
    return f"device must be 'cpu', 'cuda' or 'cuda:N'; got {value!r}"


def _size_check(value: int) -> str | None:
    if value == 0 or value % 32 == 0:
        return None
    return f"network input sizes must be 0 (the weights' training size) or a multiple of 32; got {value}"


#: The node's parameters. ``read_only`` ones are read by ``configure``; the others may change at run time.
PARAMS: dict[str, ParamSpec] = {
    "model": ParamSpec(DEFAULT_MODEL, "registered model name (vl-anomaly list-models)",
                       read_only=True, check=_model_check),
    "weights": ParamSpec("default", "'default' (the registered weights, sha256-verified) or a .pth / .safetensors "
                                    "file or transformers checkpoint directory", read_only=True),
    "clip_weights": ParamSpec("default", "VL models: CLIP weights — 'default' (the registered record, SHA-256 "
                                         "checked), 'none' (random) or a local open_clip / OpenAI checkpoint",
                              read_only=True),
    "fusion_config": ParamSpec("", "weights of the 'fused' score: a fusion YAML (vl-anomaly calibrate) or a shipped "
                                   "config name; '' = the model's own (its config, else the shipped one of its name)",
                               read_only=True),
    "device": ParamSpec("cpu", "torch device: cpu, cuda, cuda:N", read_only=True, check=_device_check),
    "backend": ParamSpec("torch", "inference backend: torch, onnxruntime (the checked ONNX export of the model, "
                                  "cached on first use) or tensorrt (engine built from it; needs TensorRT and a GPU)",
                         read_only=True, choices=BACKENDS),
    "onnx_path": ParamSpec("", "ONNX export to run with backend onnxruntime/tensorrt (vl-anomaly export); "
                               "'' = the cached export of model + weights", read_only=True),
    "force_engine_update": ParamSpec(False, "backend tensorrt: rebuild the engine on configure even when a cached "
                                            "one matches (after a TensorRT or driver update, or to replace a suspect "
                                            "engine); the build is announced in the log and diagnostics",
                                     read_only=True),
    "provider_fallback": ParamSpec("warn", "backend onnxruntime: when a requested GPU provider (CUDA, TensorRT) did "
                                           "not load and the session would run on the CPU: 'warn' (log it and go "
                                           "on) or 'error' (configure fails); diagnostics show what runs (runs_on)",
                                   read_only=True, choices=("warn", "error")),
    "tensorrt_precision": ParamSpec("fp16", "TensorRT engine precision (backend tensorrt)", read_only=True,
                                    choices=("fp16", "fp32")),
    "threads": ParamSpec(0, "torch CPU threads; 0 = torch's default", read_only=True, min=0, max=256),
    "input_height": ParamSpec(0, "network input height in px (multiple of 32); 0 = the weights' training size",
                              read_only=True, min=0, max=4096, check=_size_check),
    "input_width": ParamSpec(0, "network input width in px (multiple of 32); 0 = the weights' training size",
                             read_only=True, min=0, max=8192, check=_size_check),
    "score": ParamSpec("default", f"anomaly score; 'default' = the model's default score (its config's, else "
                                  f"{DEFAULT_SCORE})",
                       read_only=True,
                       check=_score_check),
    "threshold": ParamSpec(float("nan"), "obstacle threshold in score units (score ≥ threshold is anomalous); "
                                         "NaN = the model's calibrated threshold for its default score (the "
                                         "scene-adaptive one where its config ships it), else the score's "
                                         "documented default; a number = that fixed threshold", allow_nan=True),
    "min_obstacle_area_px": ParamSpec(0, "smallest obstacle kept, pixels of the input image; 0 = the model's "
                                         "shipped value (100 for single networks)", min=0, max=10**8),
    "drivable_only": ParamSpec(True, "obstacles only on the predicted drivable region (road/sidewalk + margin): "
                                     "the model's shipped drivable rule (lite_ensemble_cityscapes: at least half "
                                     "of each obstacle on it), else anomalous pixels cut to the region; false = "
                                     "anywhere in the image"),
    "drivable_margin_px": ParamSpec(20, "dilation of the drivable region, pixels", min=0, max=1000),
    "publish_overlay": ParamSpec(True, "compute and publish ~/overlay (bgr8), only while it has subscribers"),
    "queue_policy": ParamSpec("latest", "frames arriving faster than inference: 'latest' keeps only the newest "
                                        "waiting frame, 'queue' keeps up to queue_depth (oldest dropped); every "
                                        "drop is counted", choices=POLICY_CHOICES),
    "queue_depth": ParamSpec(4, "frames waiting for inference with queue_policy=queue", min=1, max=100),
    "max_input_age_ms": ParamSpec(0.0, "drop frames whose header stamp is older than this when inference starts "
                                       "(node clock); 0 = off", min=0.0, max=1e6),
    "max_input_pixels": ParamSpec(7680 * 4320, "larger input images are rejected (reason too_large)",
                                  min=1, max=10**9),
    "input_qos": ParamSpec("sensor_data", "input QoS: sensor_data (best effort, keep last), default (reliable), "
                                          "system_default", read_only=True, choices=QOS_CHOICES),
    "input_qos_depth": ParamSpec(1, "input subscription history depth", read_only=True, min=1, max=100),
    "output_qos_depth": ParamSpec(1, "output publishers' history depth (reliable, volatile)", read_only=True,
                                  min=1, max=100),
    "subscribe_compressed": ParamSpec(False, "also subscribe image/compressed (sensor_msgs/CompressedImage, "
                                             "JPEG/PNG)", read_only=True),
    "camera_height_m": ParamSpec(0.0, "camera height above a flat ground, metres; > 0 with camera_info gives "
                                      "obstacles a ground position and distance", min=0.0, max=100.0),
    "camera_pitch_deg": ParamSpec(0.0, "downward pitch of the camera's optical axis, degrees (flat-ground model; with "
                                  "camera_info it also places the horizon of the obstacle size rule)",
                                  min=-45.0, max=89.0),
    "diagnostics_period_s": ParamSpec(1.0, "period of /diagnostics, seconds", read_only=True, min=0.05, max=60.0),
    "no_input_warn_s": ParamSpec(5.0, "diagnostics warn when no frame arrived for this long, seconds",
                                 min=0.1, max=3600.0),
    "autostart": ParamSpec(True, "configure and activate on start (false: wait for lifecycle transitions)",
                           read_only=True),
    "shutdown_timeout_s": ParamSpec(10.0, "longest wait for the frame in work (deactivate, shutdown) and for the "
                                          "model thread to end on SIGINT/SIGTERM, seconds; past it the node logs "
                                          "what it waited for and goes on", min=0.1, max=600.0),
}


def postprocess_from_params(shipped: PostprocessCfg, threshold: float, min_area_px: int, drivable_only: bool,
                            drivable_margin_px: int) -> PostprocessCfg:
    """The obstacle rules the node runs: the model's ``shipped`` rules for its score, changed only where a
    parameter says so. Its defaults (threshold NaN, area 0, ``drivable_only`` true) give the shipped rules
    exactly, so the node publishes what ``predict`` and the calibration measure.

    * ``threshold`` NaN: the shipped threshold (scene-adaptive where shipped); a number: that fixed threshold.
    * ``min_area_px`` 0: the shipped smallest area.
    * ``drivable_only`` true: the shipped drivable rule — cut to the region and/or ``min_drivable_overlap`` per
      component — or, for a model that ships none, anomalous pixels cut to the region; false: neither.
    """
    adaptive = shipped.adaptive_quantile
    if threshold is None or threshold != threshold:                 # NaN: the model's
        threshold = shipped.threshold
    else:
        adaptive = None                                             # a threshold the user sets is the threshold
    if drivable_only:
        has_rule = shipped.drivable_only or shipped.min_drivable_overlap > 0
        cut, overlap = (shipped.drivable_only if has_rule else True), shipped.min_drivable_overlap
    else:
        cut, overlap = False, 0.0
    return replace(shipped, threshold=float(threshold), adaptive_quantile=adaptive,
                   min_area_px=int(min_area_px) or shipped.min_area_px, drivable_only=cut,
                   min_drivable_overlap=overlap, drivable_margin_px=int(drivable_margin_px))


def validate(name: str, value: Any) -> str | None:
    """None when ``value`` is acceptable for parameter ``name``, else the reason."""
    spec = PARAMS.get(name)
    if spec is None:
        return f"unknown parameter {name!r}"
    expected = type(spec.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        return f"{name} must be of type {expected.__name__}; got {type(value).__name__} {value!r}"
    if spec.choices is not None and value not in spec.choices:
        return f"{name} must be one of {', '.join(map(str, spec.choices))}; got {value!r}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value:
            return None if spec.allow_nan else f"{name} must be a number, got NaN"
        if spec.min is not None and value < spec.min:
            return f"{name} must be ≥ {spec.min}; got {value}"
        if spec.max is not None and value > spec.max:
            return f"{name} must be ≤ {spec.max}; got {value}"
    if spec.check is not None:
        return spec.check(value)
    return None


def descriptor(name: str):
    """The rcl ``ParameterDescriptor`` of a parameter (description, read-only flag, numeric range)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    spec = PARAMS[name]
    extra = []
    if spec.choices:
        extra.append(f"choices: {', '.join(map(str, spec.choices))}")
    desc = ParameterDescriptor(description=spec.description + (f" ({'; '.join(extra)})" if extra else ""),
                               read_only=spec.read_only)
    if spec.min is not None and spec.max is not None and not isinstance(spec.default, bool):
        if isinstance(spec.default, int):
            desc.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=0)]
        elif isinstance(spec.default, float):
            desc.floating_point_range = [FloatingPointRange(from_value=float(spec.min), to_value=float(spec.max),
                                                            step=0.0)]
    return desc
