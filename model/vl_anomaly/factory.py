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
import math
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from . import networks  # noqa: F401  (registers the network families)
from .defaults import DEFAULT_MODEL, DEFAULT_SCORE
from .cpu import flush_subnormals_
from .errors import ConfigError, WeightsError
from .pipeline import AnomalyPredictor
from .postprocess import PostprocessCfg
from .preprocess import PreprocessCfg, preprocess

from .deploy import check_backend, load_deployed_model, parity_frame
from .fusion import FusionCfg, list_fusion_configs, load_fusion
from .networks.ensemble import input_divisor
from .pretrained import get_pretrained_cfg, load_registered_state_dict, resolve_clip_weights
from .registry import build_network, get_model_config
from .scores import ScoringCfg, get_score

_LOG = logging.getLogger(__name__)


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


def _checkpoint_holds_segmenter(weights) -> bool:
    """Whether ``weights`` is a ``.safetensors`` checkpoint with ``segmenter.*`` tensors (written by a training run
    with ``freeze_segmenter: false``); reads the header only."""
    if weights is None or str(weights) in ("default", "untrained"):
        return False
    path = Path(weights).expanduser()
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return any(key.startswith("segmenter.") for key in handle.keys())
    except Exception as exc:                                              # noqa: BLE001 — any unreadable file
        raise WeightsError(f"could not read safetensors file {path}: {exc}") from exc


def _create_components(cfg: dict, weights, device: str, clip_weights) -> dict:
    """The parts a composite config names, built first: ``segmenter`` (a registered model, with its registered
    weights unless everything is random or the checkpoint ``weights`` holds the segmenter's own — a training run
    that unfroze it: then it is built empty and filled from the checkpoint, with no download) and ``clip`` (a
    frozen CLIP with its weight record, plus the class names its prompts describe). Plain families have none."""
    components: dict = {}
    random = weights is None
    if "members" in cfg:
        names = member_names(cfg)
        components["members"] = [create_model(m, weights=None if random else "default", device=device)
                                 for m in names]
        components["member_inputs"] = [_member_input(m, spec.get("resolution", 1.0))
                                       for m, spec in zip(names, cfg["members"])]
        components["member_names"] = names
    if "segmenter" in cfg:
        if not random and _checkpoint_holds_segmenter(weights):
            components["segmenter"] = build_network(get_model_config(cfg["segmenter"])).to(device).eval()
        else:
            components["segmenter"] = create_model(cfg["segmenter"], weights=None if random else "default",
                                                   device=device)
    if "clip" in cfg:
        from .constants import CLASS_LISTS
        from .networks.clip_towers import FrozenCLIP

        clip_cfg = cfg["clip"]
        resolved = resolve_clip_weights(clip_cfg.get("weights"), None if random else clip_weights)
        if resolved.source is None:
            _LOG.warning("%s: CLIP has random weights: text and CLIP scores are meaningless", cfg["name"])
        components["clip"] = FrozenCLIP.create(resolved.open_clip_name or clip_cfg["name"], pretrained=resolved.source,
                                               config=clip_cfg.get("config"))
        components["class_names"] = CLASS_LISTS[cfg["classes"]]
    return components


def member_names(cfg: dict) -> list[str]:
    """The registered member names of an ensemble config (``members: [{model: NAME, resolution: F}, ...]``),
    checked: plain registered segmenters of the ensemble's class list."""
    members = cfg.get("members")
    if not isinstance(members, list) or not members:
        raise ConfigError(f"ensemble {cfg.get('name')!r}: 'members' must be a non-empty list of "
                          "{model: NAME, resolution: F}")
    names = []
    for spec in members:
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), str) or set(spec) - {"model", "resolution"}:
            raise ConfigError(f"ensemble {cfg.get('name')!r}: each member is {{model: NAME, resolution: F}} "
                              f"(resolution optional, in (0, 1]); got {spec!r}")
        member = get_model_config(spec["model"])
        if {"segmenter", "clip", "members"} & set(member) or member["family"] == "mask2former":
            raise ConfigError(f"ensemble {cfg.get('name')!r}: member {spec['model']!r} must be a pixel classifier "
                              f"(ESPNet, ESPNetv2, DiCENet), not a {member['family']} model")
        if member["classes"] != cfg["classes"]:
            raise ConfigError(f"ensemble {cfg.get('name')!r}: member {spec['model']!r} predicts "
                              f"{member['classes']} classes, the ensemble {cfg['classes']}")
        resolution = float(spec.get("resolution", 1.0))
        if not 0.0 < resolution <= 1.0:
            raise ConfigError(f"ensemble {cfg.get('name')!r}: member {spec['model']!r} resolution must be in "
                              f"(0, 1], got {resolution}")
        try:
            input_divisor(32, resolution)
        except ValueError as exc:
            raise ConfigError(f"ensemble {cfg.get('name')!r}: {exc}") from None
        names.append(spec["model"])
    return names


def _member_input(name: str, resolution: float):
    from .networks.ensemble import MemberInput

    pre = get_preprocess_cfg(name)
    return MemberInput(bgr=pre.channel_order == "bgr", mean=tuple(pre.mean), std=tuple(pre.std), scale=pre.scale,
                       resolution=float(resolution), antialias=True)


def _load_own_weights(model: nn.Module, name: str, path: Path, components: dict) -> None:
    """A composite model's checkpoint holds its own parameters (e.g. prompts + PL-Aligner), not its components'."""
    if path.suffix != ".safetensors":
        raise WeightsError(f"{name}: a checkpoint of its own parameters must be a .safetensors file, got {path}")
    state = _load_safetensors(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:                                    # wrong shapes
        raise WeightsError(f"checkpoint {path} does not fit {name}: {exc}") from exc
    # parts built with their own weights may be absent from the checkpoint; a segmenter it holds must be whole
    own = {"segmenter"} if any(k.startswith("segmenter.") for k in state) else set()
    prefixes = tuple(f"{c}." for c in components if c not in own)
    foreign = [k for k in missing if not k.startswith(prefixes)]
    if unexpected or foreign:
        raise WeightsError(f"checkpoint {path} does not fit {name}: missing {foreign[:5]}, "
                           f"unexpected {list(unexpected)[:5]}")


def create_model(name: str, weights: str | Path | None = "default", device: str = "cpu",
                 clip_weights: str | Path | None = "default") -> nn.Module:
    """Build registered model ``name`` with ``weights`` (see module docstring), in eval mode on ``device``.

    Segmenters map ``(B, 3, H, W)`` network inputs to a :class:`~vl_anomaly.outputs.SegmenterOutput`; composite
    models (family ``vl_anomaly``: a registered segmenter + a frozen CLIP + their own head) to a
    :class:`~vl_anomaly.outputs.VLOutput`. For those, ``weights`` is a ``.safetensors`` checkpoint of the head,
    ``"untrained"`` (components with their registered weights, a random head) or None (everything random), and
    ``clip_weights`` chooses CLIP's (:func:`vl_anomaly.pretrained.resolve_clip_weights`: ``"default"``, ``"none"``
    or a file).
    """
    cfg = get_model_config(name)
    record = get_pretrained_cfg(name)
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    if "members" in cfg:
        return _create_ensemble(name, cfg, weights, device)
    composite = "segmenter" in cfg or "clip" in cfg
    zero_shot = bool(cfg.get("arch", {}).get("zero_shot", False))
    if zero_shot and weights == "default":
        weights = "untrained"              # a zero-shot model uses its components' weights and no trained head
    elif composite and weights == "default" and (record is None or record.filename is None):
        raise WeightsError(f"{name}: no trained {cfg['family']} head is registered (none can be trained on our "
                           "machines: no pretrained CLIP / Cityscapes). Pass a head checkpoint (.safetensors), or "
                           "weights='untrained' to run an untrained head (scores meaningless)")
    if cfg["family"] == "mask2former" and weights is not None and (weights == "default" or Path(weights).is_dir()):
        from .networks.mask2former import Mask2FormerSegmenter

        if weights == "default":
            if record is None or record.hf_hub_id is None:
                raise WeightsError(f"model {name!r} has no registered checkpoint")
            return Mask2FormerSegmenter.from_pretrained(record.hf_hub_id, local_only=False).to(device).eval()
        return Mask2FormerSegmenter.from_pretrained(weights, local_only=True).to(device).eval()
    components = _create_components(cfg, weights, device, clip_weights) if composite else {}
    model = build_network(cfg, **components)
    if weights is None:
        _LOG.warning("model %s uses random weights: its scores are meaningless", name)
    elif weights == "untrained" and composite:
        if not zero_shot:
            _LOG.warning("%s: its own head is untrained: text and CLIP scores are meaningless", name)
    elif composite:
        _load_own_weights(model, name, Path(weights).expanduser(), components)
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


def _create_ensemble(name: str, cfg: dict, weights, device: str) -> nn.Module:
    """An ensemble (family ``ensemble``): its members with their registered weights (``"default"``), random
    (None), or a ``.safetensors`` state dict of the whole ensemble (loaded strictly)."""
    if weights not in (None, "default") and Path(weights).suffix != ".safetensors":
        raise WeightsError(f"{name}: an ensemble takes its members' registered weights ('default'), random weights "
                           f"(None) or a .safetensors state dict of the whole ensemble; got {weights}")
    model = build_network(cfg, **_create_components(cfg, weights, device, None))
    if weights is None:
        _LOG.warning("model %s uses random weights: its scores are meaningless", name)
    elif weights != "default":
        _load_state_dict_strict(model, _load_safetensors(Path(weights).expanduser()), str(weights))
    return model.to(device).eval()


def get_preprocess_cfg(name: str, input_size: tuple[int, int] | None = None) -> PreprocessCfg:
    """The pre-processing of a model's registered weights (a composite model's: its segmenter's), optionally at
    another network input size."""
    cfg = get_model_config(name)
    if "segmenter" in cfg:
        return get_preprocess_cfg(cfg["segmenter"], input_size)
    if "members" in cfg:                  # raw RGB, resized once; each member normalises inside the forward pass
        names = member_names(cfg)
        members = [get_preprocess_cfg(m) for m in names]
        divisor = math.lcm(*[input_divisor(p.size_divisor, float(spec.get("resolution", 1.0)))
                             for p, spec in zip(members, cfg["members"])])
        return PreprocessCfg(input_size=members[0].input_size, channel_order="rgb", mean=(0.0, 0.0, 0.0),
                             std=(1.0, 1.0, 1.0), scale=1.0, antialias=True,
                             size_divisor=divisor).with_input_size(input_size)
    record = get_pretrained_cfg(name)
    cfg = record.preprocess if record is not None else PreprocessCfg()
    return cfg.with_input_size(input_size)


def default_score(name: str) -> str:
    """The score a model runs when none is given: its config's ``score`` (e.g. the calibrated ``fused`` of
    ``lite_ensemble_cityscapes``), else :data:`vl_anomaly.defaults.DEFAULT_SCORE`."""
    score = str(get_model_config(name).get("score", DEFAULT_SCORE))
    get_score(score)                                            # a clear error for a misspelt config
    return score


def default_postprocess(name: str, score: str | None = None) -> PostprocessCfg:
    """The post-processing a model ships (its config's ``postprocess`` section: threshold and component rules,
    calibrated for its default score). For another score the threshold is that score's documented default and
    the score-valued rules (``min_mean_score``, ``min_peak_score``, ``min_peak_margin``, the scene-adaptive
    threshold) are off; the geometric rules stay."""
    score = score or default_score(name)
    values = dict(get_model_config(name).get("postprocess") or {})
    if score != default_score(name) or "threshold" not in values:
        values["threshold"] = get_score(score).default_threshold
        if score != default_score(name):
            for key in ("min_mean_score", "min_peak_score", "min_peak_margin", "adaptive_quantile",
                        "adaptive_offset", "adaptive_floor"):
                values.pop(key, None)
    return PostprocessCfg.from_dict(values)


def create_predictor(name: str = DEFAULT_MODEL, weights: str | Path | None = "default", score: str | None = None,
                     threshold: float | None = None, device: str = "cpu",
                     input_size: tuple[int, int] | None = None, min_area_px: int | None = None,
                     drivable_only: bool | None = None, drivable_margin_px: int | None = None,
                     backend: str = "torch",
                     onnx_path: str | Path | None = None, precision: str = "fp16",
                     fusion: str | Path | FusionCfg | None = None,
                     clip_weights: str | Path | None = "default",
                     force_engine_update: bool = False, provider_fallback: str = "warn",
                     channels_last: bool | None = None) -> AnomalyPredictor:
    """Model + pre-processing + score + post-processing in one :class:`AnomalyPredictor`.

    ``score`` defaults to the model's (:func:`default_score`); ``threshold``, ``min_area_px``, ``drivable_only`` and
    ``drivable_margin_px`` to the post-processing the model ships for that score (:func:`default_postprocess`:
    the config's calibrated threshold and component rules, else the score's documented default threshold); a
    ``threshold`` given is fixed (it turns a shipped scene-adaptive threshold off).
    ``backend``: ``torch``, ``onnxruntime`` or ``tensorrt`` (:mod:`vl_anomaly.deploy`); the ONNX graph is
    ``onnx_path`` or the cached export of this model, weights and input size (exported and checked on first use,
    :func:`vl_anomaly.deploy.load_deployed_model`); TensorRT builds and caches its ``precision`` engine from it
    (not run on our machines), on ``device`` (a CUDA device), checked on load against ONNX Runtime on a real frame
    prepared as this predictor prepares it; ``force_engine_update`` rebuilds that engine even when a cached one
    matches. ``provider_fallback`` (``warn`` / ``error``): ONNX Runtime, when a requested GPU provider did not load.
    ``fusion`` (score ``fused``): a :class:`~vl_anomaly.fusion.FusionCfg`, a YAML file or a shipped config name
    (:func:`vl_anomaly.fusion.list_fusion_configs`); default: the model config's ``fusion`` section, else the
    shipped config named after the model. ``clip_weights``: see :func:`create_model`. ``channels_last``: the
    PyTorch backend's memory format (:class:`AnomalyPredictor`; default: channels-last on the CPU for the networks that prefer it).
    """
    check_backend(backend)
    if force_engine_update and backend != "tensorrt":
        raise ConfigError(f"force_engine_update rebuilds a TensorRT engine; backend {backend!r} has none "
                          "(use backend 'tensorrt' or leave it false)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    scoring = default_scoring(name, fusion)
    score = score or default_score(name)
    overrides = {k: v for k, v in (("threshold", None if threshold is None else float(threshold)),
                                   ("min_area_px", min_area_px), ("drivable_only", drivable_only),
                                   ("drivable_margin_px", drivable_margin_px)) if v is not None}
    post = replace(default_postprocess(name, score), **overrides)
    if threshold is not None:                        # a threshold given is the threshold of every frame
        post = replace(post, adaptive_quantile=None)
    preprocess_cfg = get_preprocess_cfg(name, input_size)
    if backend == "torch":
        if onnx_path is not None:
            raise ConfigError(f"onnx_path ({onnx_path}) is run by backend 'onnxruntime' or 'tensorrt', not 'torch'")
        model = create_model(name, weights=weights, device=device, clip_weights=clip_weights)
    else:
        clip_cfg = get_model_config(name).get("clip")
        clip_tag = resolve_clip_weights(clip_cfg.get("weights"), clip_weights).tag if clip_cfg else None
        model = load_deployed_model(name, weights, preprocess_cfg.input_size, backend,
                                    build_model=lambda: create_model(name, weights=weights, clip_weights=clip_weights),
                                    onnx_path=onnx_path, precision=precision, clip_weights=clip_tag,
                                    force_engine_update=force_engine_update,
                                    device=device if device.startswith("cuda") else "cuda",
                                    provider_fallback=provider_fallback,
                                    parity_pixels=lambda: preprocess(parity_frame(), preprocess_cfg))
    return AnomalyPredictor(model, preprocess_cfg, score=score, postprocess_cfg=post, device=device, name=name,
                            scoring=scoring, channels_last=channels_last)


def default_scoring(name: str, fusion: str | Path | FusionCfg | None = None) -> ScoringCfg:
    """The :class:`ScoringCfg` of model ``name``: its config's ``sources`` and ``fusion``; ``fusion`` (a config,
    file or shipped name) replaces the latter; without either, the shipped fusion config named after the model."""
    scoring = ScoringCfg.from_model_config(get_model_config(name))
    if fusion is not None:
        return scoring.with_fusion(load_fusion(fusion))
    if scoring.fusion is None and name in list_fusion_configs():
        return scoring.with_fusion(load_fusion(name))
    return scoring
