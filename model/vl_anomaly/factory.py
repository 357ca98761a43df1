"""One entry point to build models and predictors by name.

``weights`` semantics (``create_model`` and ``create_predictor``):

* ``"default"``: the registered weights of that name (local file found and verified as described in
  :mod:`vl_anomaly.pretrained`, or for transformers models the registered hub checkpoint);
* ``None`` or ``"none"``: random initialisation (for tests and training from scratch; scores are meaningless);
* a path: a ``.pth`` file (unpickled only if its SHA-256 matches the registered record), a ``.safetensors``
  state dict (loaded with ``strict=True``), or a transformers checkpoint directory (Mask2Former).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from . import networks  # noqa: F401  (registers the network families)
from .errors import ConfigError, WeightsError
from .pipeline import AnomalyPredictor
from .postprocess import PostprocessCfg
from .preprocess import PreprocessCfg
from .cpu import flush_subnormals_
from .deploy import check_backend, load_deployed_model
from .pretrained import get_pretrained_cfg, load_registered_state_dict
from .registry import build_network, get_model_config
from .scores import get_score

_LOG = logging.getLogger(__name__)
DEFAULT_MODEL = "espnetv2_s2.0_cityscapes"


def _load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` with ``strict=True``; subnormal parameters are zeroed first (:mod:`vl_anomaly.cpu`)."""
    flushed = flush_subnormals_(state)
    if flushed:
        _LOG.debug("zeroed %d subnormal parameters of %s", flushed, source)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"weights {source} do not fit the architecture: {exc}") from exc


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:
        raise WeightsError(f"could not read safetensors file {path}: {exc}") from exc


def create_model(name: str, weights: str | Path | None = "default", device: str = "cpu") -> nn.Module:
    """Build registered model ``name`` with ``weights`` (see module docstring), in eval mode on ``device``.

    The returned module maps ``(B, 3, H, W)`` network inputs to a :class:`~vl_anomaly.outputs.SegmenterOutput`.
    """
    cfg = get_model_config(name)
    family = cfg["family"]
    record = get_pretrained_cfg(name)
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    if family == "vl_anomaly":
        return _create_vl_model(name, cfg, weights, device)

    if family == "mask2former" and weights is not None:
        from .networks.mask2former import Mask2FormerSegmenter

        if weights == "default":
            if record is None or record.hf_hub_id is None:
                raise WeightsError(f"model {name!r} has no registered checkpoint")
            model = Mask2FormerSegmenter.from_pretrained(record.hf_hub_id, local_only=False)
        elif Path(weights).is_dir():
            model = Mask2FormerSegmenter.from_pretrained(weights, local_only=True)
        else:
            model = build_network(cfg)
            _load_state_dict_strict(model, _load_safetensors(Path(weights)), str(weights))
    else:
        model = build_network(cfg)
        if weights is None:
            _LOG.warning("model %s uses random weights: its scores are meaningless", name)
        elif weights == "default":
            _load_state_dict_strict(model, load_registered_state_dict(name), f"registered for {name}")
        else:
            path = Path(weights).expanduser()
            if path.suffix == ".safetensors":
                _load_state_dict_strict(model, _load_safetensors(path), str(path))
            elif path.suffix in (".pth", ".pt"):
                _load_state_dict_strict(model, load_registered_state_dict(name, path), str(path))
            else:
                raise WeightsError(f"unsupported weights file {path}: use the registered .pth (verified by its "
                                   "sha256) or a .safetensors state dict")
    return model.to(device).eval()


def _create_vl_model(name: str, cfg: dict, weights, device: str) -> nn.Module:
    """VL-Anomaly: registered segmenter + frozen CLIP + prompts + PL-Aligner (docs/method.md).

    ``weights``: None → everything random; ``"untrained"`` → the segmenter's registered weights, the configured
    CLIP, an untrained head (end to end, meaningless scores); a ``.safetensors`` head checkpoint (prompts,
    aligner, cached text); ``"default"`` → error, no trained head is registered. CLIP weights come from
    ``$VL_ANOMALY_CLIP_WEIGHTS`` (a local open_clip checkpoint, or ``none``) or else the config (``openai``).
    """
    from .constants import CLASS_LISTS
    from .networks.clip_towers import FrozenCLIP
    from .networks.vl_anomaly import VLAnomalyModel

    if weights == "default":
        raise WeightsError(f"{name}: no trained VL-Anomaly head (prompts + PL-Aligner) is registered — none can be "
                           "trained here (no pretrained CLIP / Cityscapes). Pass a head checkpoint "
                           "(.safetensors), or weights='untrained' to run an untrained head (scores meaningless)")
    random = weights is None
    segmenter = create_model(cfg["segmenter"], weights=None if random else "default", device=device)
    clip_weights = None if random else _clip_weights(cfg)
    if clip_weights is None:
        _LOG.warning("%s: CLIP has random weights: text and CLIP scores are meaningless", name)
    clip = FrozenCLIP.create(cfg["clip"]["name"], pretrained=clip_weights, config=cfg["clip"].get("config"))
    model = VLAnomalyModel(segmenter, clip, CLASS_LISTS[cfg["classes"]], **cfg["arch"])
    model.sources_cfg = dict(cfg.get("sources", {}))
    from .fusion import FusionCfg

    model.fusion_cfg = FusionCfg.from_dict(cfg["fusion"]) if "fusion" in cfg else None
    if weights not in (None, "untrained"):
        path = Path(weights).expanduser()
        if path.suffix != ".safetensors":
            raise WeightsError(f"{name}: a VL head checkpoint must be a .safetensors file, got {path}")
        state = _load_safetensors(path)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:                                # wrong shapes
            raise WeightsError(f"head checkpoint {path} does not fit {name}: {exc}") from exc
        foreign = [k for k in missing if not k.startswith(("clip.", "segmenter."))]
        if unexpected or foreign:
            raise WeightsError(f"head checkpoint {path} does not fit {name}: missing {foreign[:5]}, "
                               f"unexpected {list(unexpected)[:5]}")
    else:
        _LOG.warning("%s: the vision-language head is untrained: text and CLIP scores are meaningless", name)
    return model.to(device).eval()


def _clip_weights(cfg: dict) -> str | None:
    """The CLIP weights of a VL model config: ``$VL_ANOMALY_CLIP_WEIGHTS`` (a local open_clip checkpoint, or
    ``none``), else the config's ``pretrained`` tag; None means random weights."""
    import os

    value = os.environ.get("VL_ANOMALY_CLIP_WEIGHTS", cfg["clip"].get("pretrained"))
    return None if value is None or str(value).lower() == "none" else str(value)


def get_preprocess_cfg(name: str, input_size: tuple[int, int] | None = None) -> PreprocessCfg:
    """The pre-processing of a model's registered weights, optionally at another network input size."""
    cfg = get_model_config(name)
    if cfg["family"] == "vl_anomaly":
        return get_preprocess_cfg(cfg["segmenter"], input_size)
    record = get_pretrained_cfg(name)
    cfg = record.preprocess if record is not None else PreprocessCfg()
    return cfg.with_input_size(input_size)


def create_predictor(name: str = DEFAULT_MODEL, weights: str | Path | None = "default", score: str = "msp",
                     threshold: float | None = None, device: str = "cpu",
                     input_size: tuple[int, int] | None = None, min_area_px: int = 100,
                     drivable_only: bool = False, drivable_margin_px: int = 20, backend: str = "torch",
                     onnx_path: str | Path | None = None, precision: str = "fp16") -> AnomalyPredictor:
    """Model + pre-processing + score + post-processing in one :class:`AnomalyPredictor`.

    ``threshold`` defaults to the score's documented default (:data:`vl_anomaly.scores.SCORES`).
    ``backend``: ``torch``, ``onnxruntime`` or ``tensorrt`` (:mod:`vl_anomaly.deploy`); the ONNX graph is
    ``onnx_path`` or the cached export of this model, weights and input size (exported and checked on first use,
    :func:`vl_anomaly.deploy.load_deployed_model`); TensorRT builds and caches its ``precision`` engine from it
    (not run on our machines).
    """
    check_backend(backend)
    spec = get_score(score)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    post = PostprocessCfg(threshold=spec.default_threshold if threshold is None else float(threshold),
                          min_area_px=min_area_px, drivable_only=drivable_only,
                          drivable_margin_px=drivable_margin_px)
    preprocess_cfg = get_preprocess_cfg(name, input_size)
    if backend == "torch":
        if onnx_path is not None:
            raise ConfigError(f"onnx_path ({onnx_path}) is run by backend 'onnxruntime' or 'tensorrt', not 'torch'")
        model = create_model(name, weights=weights, device=device)
    else:
        clip = _clip_weights(get_model_config(name)) if get_model_config(name)["family"] == "vl_anomaly" else None
        model = load_deployed_model(name, weights, preprocess_cfg.input_size, backend,
                                    build_model=lambda: create_model(name, weights=weights), onnx_path=onnx_path,
                                    precision=precision, clip_weights=clip)
    return AnomalyPredictor(model, preprocess_cfg, score=score, postprocess_cfg=post, device=device, name=name)
