"""Weight records (where a model's trained weights come from) and their safe loading.

A record says where the file is found, its SHA-256, the pre-processing those weights expect, their licence and
origin. Loading a registered file:

1. find it: explicit path → ``$VL_ANOMALY_WEIGHTS_DIR`` → ``<shared>/weights`` (see :mod:`vl_anomaly.paths`);
2. verify its SHA-256 (a legacy pickle is only ever unpickled after its hash matched the record);
3. convert it once to ``<cache>/weights/<name>-<sha[:16]>.safetensors`` and load that on later runs.

Missing, truncated or wrong-hash files raise :class:`~vl_anomaly.errors.WeightsError` naming the file, the
expected hash and where else was looked.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import paths
from .errors import WeightsError
from .preprocess import PreprocessCfg

_LOG = logging.getLogger(__name__)
CACHE_FORMAT_VERSION = "1"


@dataclass(frozen=True)
class PretrainedCfg:
    """Where a model's weights come from and what input they expect.

    Attributes:
        filename: file name searched in the weights directories (local checkpoints), or None.
        sha256: full SHA-256 of that file.
        hf_hub_id: Hugging Face checkpoint id (transformers models), used only when a model hub is reachable.
        preprocess: the input pipeline these weights were trained with.
        dataset, license, origin, notes: provenance.
    """

    preprocess: PreprocessCfg
    filename: str | None = None
    sha256: str | None = None
    hf_hub_id: str | None = None
    dataset: str = ""
    license: str = ""
    origin: str = ""
    notes: str = ""
    published: dict = field(default_factory=dict)


# ESPNet's published pipeline (sacmehta/ESPNet test/VisualizeResults.py): OpenCV BGR, per-channel mean/std in
# BGR order, resize to 1024×512, divide by 255 once more.
_ESPNET_PREPROCESS = PreprocessCfg(input_size=(512, 1024), channel_order="bgr",
                                   mean=(72.3923111, 82.90893555, 73.15840149),
                                   std=(45.3192215, 46.15289307, 44.91483307), scale=1.0 / 255.0,
                                   antialias=False, size_divisor=8)
# ESPNetv2 (sacmehta/EdgeNets): RGB in [0, 1] with ImageNet mean/std, PIL bilinear resize, 1024×512.
_IMAGENET_MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD_255 = (0.229 * 255, 0.224 * 255, 0.225 * 255)
_ESPNETV2_PREPROCESS = PreprocessCfg(input_size=(512, 1024), channel_order="rgb", mean=_IMAGENET_MEAN_255,
                                     std=_IMAGENET_STD_255, scale=1.0, antialias=True, size_divisor=32)
# Mask2Former (transformers / detectron2 Cityscapes recipe): RGB, ImageNet mean/std in 0–255 units. The
# reference test resolution is 1024×2048; 512×1024 is our CPU-friendly default (override with input_size).
_MASK2FORMER_PREPROCESS = PreprocessCfg(input_size=(512, 1024), channel_order="rgb", mean=(123.675, 116.28, 103.53),
                                        std=(58.395, 57.12, 57.375), scale=1.0, antialias=True, size_divisor=32)

_PRETRAINED: dict[str, PretrainedCfg] = {
    "espnet_p2_q8_cityscapes": PretrainedCfg(
        preprocess=_ESPNET_PREPROCESS,
        filename="espnet_p2_q8_cityscapes.pth",
        sha256="343b0e77e8545d36113c4f3efbf1ee349256f25c97c9f9d5ddefe45f2f49763e",
        dataset="Cityscapes (19 train IDs + background)", license="MIT", origin="sacmehta/ESPNet",
        published={"cityscapes_test_miou": 60.3}),
    "espnetv2_s2.0_cityscapes": PretrainedCfg(
        preprocess=_ESPNETV2_PREPROCESS,
        filename="espnetv2_s2.0_cityscapes_1024x512.pth",
        sha256="a72d59699801c7ce8e8b89a53af9097eaaa60dc12180ecde86fd700ba1222fe8",
        dataset="Cityscapes (19 train IDs + background)", license="MIT", origin="sacmehta/EdgeNets",
        published={"cityscapes_val_miou": 66.4}),
    "espnetv2_s1.5_cityscapes": PretrainedCfg(
        preprocess=_ESPNETV2_PREPROCESS,
        filename="espnetv2_s1.5_cityscapes_1024x512.pth",
        sha256="0dbbda9126583d62f73dfdc28a59a30ab4564094ee6d28428b897a4e36c466b4",
        dataset="Cityscapes (19 train IDs + background)", license="MIT", origin="sacmehta/EdgeNets",
        published={"cityscapes_val_miou": 63.8}),
    "espnetv2_s1.0_cityscapes": PretrainedCfg(
        preprocess=_ESPNETV2_PREPROCESS,
        filename="espnetv2_s1.0_cityscapes_1024x512.pth",
        sha256="0918c833fed889e32901ce739b1784fdd2b79f95a9aea199a469ca3394dd7a14",
        dataset="Cityscapes (19 train IDs + background)", license="MIT", origin="sacmehta/EdgeNets",
        published={"cityscapes_val_miou": 60.1}),
    "dicenet_s1.75_cityscapes": PretrainedCfg(
        preprocess=_ESPNETV2_PREPROCESS,
        filename="dicenet_s1.75_cityscapes_1024x512.pth",
        sha256="3b00bf5392030be1646111d95e98ab27cb379c407bbb85ca94e2ce057ee401cf",
        dataset="Cityscapes (19 train IDs + background)", license="MIT", origin="sacmehta/EdgeNets",
        published={"cityscapes_val_miou": 63.4}),
    "mask2former_swin_t_cityscapes": PretrainedCfg(
        preprocess=_MASK2FORMER_PREPROCESS,
        hf_hub_id="facebook/mask2former-swin-tiny-cityscapes-semantic",
        dataset="Cityscapes (19 train IDs)", license="see the model card", origin="facebook/Mask2Former",
        notes="Not reachable from the project's machines (no model hub); pass a local directory instead."),
}


@dataclass(frozen=True)
class ClipWeightsCfg:
    """Where a frozen CLIP's weights come from (the CLIP counterpart of :class:`PretrainedCfg`).

    Attributes:
        open_clip_name: the architecture open_clip must build for this file. OpenAI's CLIP uses QuickGELU:
            open_clip's ``openai`` tag switches it on by itself, a local file needs the ``-quickgelu`` name.
        hub_tag: open_clip's pretrained tag, used when the file is not found locally (needs a model hub).
        filename, sha256: the local file searched in the weight directories and its SHA-256.
        license, origin: provenance.
    """

    open_clip_name: str
    hub_tag: str
    filename: str
    sha256: str
    license: str = ""
    origin: str = ""


_CLIP_WEIGHTS: dict[str, ClipWeightsCfg] = {
    "openai_vit_b16": ClipWeightsCfg(
        open_clip_name="ViT-B-16-quickgelu", hub_tag="openai", filename="ViT-B-16.pt",
        sha256="5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", license="MIT",
        origin="openai/CLIP: openaipublic.azureedge.net/clip/models/<sha256>/ViT-B-16.pt (openai/CLIP and "
               "open_clip verify the file against the SHA-256 in that path)"),
}


@dataclass(frozen=True)
class ResolvedClipWeights:
    """CLIP weights chosen for one model: ``source`` (a verified file, an open_clip hub tag, or None = random),
    ``open_clip_name`` (None: the config's name) and ``tag`` (identity for caches: file SHA-256 prefix, hub tag,
    or ``random``)."""

    source: str | None
    open_clip_name: str | None
    tag: str


def resolve_clip_weights(record: str | None, choice: str | Path | None = "default") -> ResolvedClipWeights:
    """The CLIP weights of a VL model config whose ``clip.weights`` names ``record`` (or None).

    ``choice``: ``"default"`` → the record's file from the weight directories (SHA-256 verified), else its hub
    tag (open_clip downloads it; needs a model hub); no record → random. ``"none"``/None → random. A path → that
    file (it must exist; the record's SHA-256 selects the record's architecture name)."""
    if choice is None or str(choice).lower() == "none":
        return ResolvedClipWeights(None, None, "random")
    cfg = None
    if record is not None:
        if record not in _CLIP_WEIGHTS:
            raise WeightsError(f"unknown CLIP weights {record!r}; registered: {', '.join(sorted(_CLIP_WEIGHTS))}")
        cfg = _CLIP_WEIGHTS[record]
    if str(choice) == "default":
        if cfg is None:
            return ResolvedClipWeights(None, None, "random")
        for directory in paths.weights_dir_candidates():
            candidate = directory / cfg.filename
            if candidate.is_file():
                verify_sha256(candidate, cfg.sha256)
                return ResolvedClipWeights(str(candidate), cfg.open_clip_name, cfg.sha256[:12])
        return ResolvedClipWeights(cfg.hub_tag, None, cfg.hub_tag)
    path = Path(choice).expanduser()
    if not path.is_file():
        raise WeightsError(f"CLIP checkpoint {path} does not exist")
    digest = sha256_file(path)
    name = cfg.open_clip_name if cfg is not None and digest == cfg.sha256 else None
    return ResolvedClipWeights(str(path), name, digest[:12])


def list_clip_weights() -> list[str]:
    """Names of the registered CLIP weight records."""
    return sorted(_CLIP_WEIGHTS)


def list_pretrained() -> list[str]:
    """Names of models that have a weight record."""
    return sorted(_PRETRAINED)


def get_pretrained_cfg(name: str) -> PretrainedCfg | None:
    """The weight record of a registered model name, or None."""
    return _PRETRAINED.get(name)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def find_weight_file(cfg: PretrainedCfg) -> tuple[Path | None, list[Path]]:
    """Search the weight directories for ``cfg.filename``. Returns (path or None, directories searched)."""
    searched = paths.weights_dir_candidates()
    for directory in searched:
        candidate = directory / cfg.filename
        if candidate.is_file():
            return candidate, searched
    return None, searched


def verify_sha256(path: Path, expected: str) -> None:
    """Raise :class:`WeightsError` unless ``path`` exists, is non-empty and has the expected SHA-256."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist (expected sha256 {expected})")
    size = path.stat().st_size
    if size == 0:
        raise WeightsError(f"weights file {path} is empty (expected sha256 {expected})")
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsError(f"weights file {path} ({size} bytes) has sha256 {actual}, expected {expected}: "
                           "the file is truncated, corrupt or not the registered weights")


def cache_path(name: str, sha256: str) -> Path:
    """Where the safetensors copy of a registered weight file lives."""
    return paths.cache_dir() / "weights" / f"{name}-{sha256[:16]}.safetensors"


def _read_cache(path: Path, sha256: str) -> dict[str, torch.Tensor] | None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        if meta.get("source_sha256") != sha256 or meta.get("format_version") != CACHE_FORMAT_VERSION:
            _LOG.warning("ignoring stale weights cache %s", path)
            return None
        return load_file(str(path))
    except Exception as exc:  # corrupt cache: rebuild it from the verified source
        _LOG.warning("ignoring unreadable weights cache %s (%s)", path, exc)
        return None


def _write_cache(path: Path, state_dict: dict[str, torch.Tensor], name: str, sha256: str) -> None:
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        save_file(tensors, tmp, metadata={"source_sha256": sha256, "name": name,
                                          "format_version": CACHE_FORMAT_VERSION})
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache must not stop inference
        _LOG.warning("could not write weights cache %s (%s)", path, exc)


def _unpickle_verified(path: Path) -> dict[str, torch.Tensor]:
    """Load a legacy ``torch.save`` state dict whose hash was verified just before."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # Pre-1.6 archives may need the full unpickler; the file's SHA-256 matched a trusted record.
        state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return dict(state)


def load_registered_state_dict(name: str, path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The verified state dict of registered model ``name``.

    Args:
        name: registered model name with a weight record that names a file.
        path: explicit location of the registered file (still verified against the record's SHA-256).
    """
    cfg = get_pretrained_cfg(name)
    if cfg is None or cfg.filename is None or cfg.sha256 is None:
        raise WeightsError(f"model {name!r} has no registered weight file")
    if path is not None:
        source: Path | None = Path(path).expanduser()
        searched = [source]
    else:
        source, searched = find_weight_file(cfg)
    cached = cache_path(name, cfg.sha256)
    if source is None or not source.exists():
        if cached.is_file():
            state = _read_cache(cached, cfg.sha256)
            if state is not None:
                _LOG.info("using cached weights %s (source file not found)", cached)
                return state
        where = ", ".join(str(p) for p in searched) or "(no directory)"
        raise WeightsError(
            f"weights for {name!r} not found: expected file {cfg.filename} with sha256 {cfg.sha256}; looked in "
            f"{where}. Set ${paths.ENV_WEIGHTS_DIR} or ${paths.ENV_SHARED_DIR}, or pass an explicit path.")
    verify_sha256(source, cfg.sha256)
    if cached.is_file():
        state = _read_cache(cached, cfg.sha256)
        if state is not None:
            return state
    state = _unpickle_verified(source)
    _write_cache(cached, state, name, cfg.sha256)
    return state
