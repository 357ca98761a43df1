"""VL-Anomaly (our reconstruction): a closed-set segmenter + frozen CLIP + learned prompts + PL-Aligner.

``VLAnomalyModel(segmenter, clip)`` runs the segmenter (its :class:`~vl_anomaly.outputs.SegmenterOutput` gives
``pixel_features`` and, for Mask2Former, ``query_embeddings`` and mask logits), computes the class text
embeddings ``T`` with the prompt learner (training) or reads them from the cache (inference), and aligns:
layer 1 on the pixel features, layer 2 on the mask queries (mask-query segmenters only; on the ESPNet pixel
classifiers the aligner has layer 1 only). Trainable: prompt context, both aligner layers, and the segmenter only
when ``freeze_segmenter=False``; CLIP never.
"""

from __future__ import annotations

import torch
from torch import nn

from ..constants import CITYSCAPES_CLASSES
from ..errors import ConfigError
from ..outputs import SegmenterOutput, VLOutput
from .clip_towers import FrozenCLIP, template_text_embeddings
from .pl_aligner import MaskTextAligner, PixelTextAligner
from .prompt_learner import PromptLearner


def check_vocabulary(known_classes, anomaly_prompts, max_words: int = 20) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Validated ``(known_classes, anomaly_prompts)``: non-empty, stripped, unique strings of at most ``max_words``
    words; at least one known class. Raises :class:`ValueError` saying what was wrong."""
    def clean(values, what: str) -> tuple[str, ...]:
        if isinstance(values, str) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"{what} must be a list of strings; got {values!r}")
        out = tuple(v.strip() for v in values)
        bad = [v for v in out if not v or len(v.split()) > max_words]
        if bad:
            raise ValueError(f"{what}: empty entries or entries of more than {max_words} words are not accepted: "
                             f"{bad!r}")
        duplicates = sorted({v for v in out if out.count(v) > 1})
        if duplicates:
            raise ValueError(f"{what}: duplicate entries {duplicates!r}")
        return out

    known, anomaly = clean(known_classes, "known classes"), clean(anomaly_prompts, "anomaly prompts")
    if not known:
        raise ValueError("the vocabulary needs at least one known class")
    overlap = sorted(set(known) & set(anomaly))
    if overlap:
        raise ValueError(f"{overlap!r} are both known classes and anomaly prompts")
    return known, anomaly


class VLAnomalyModel(nn.Module):
    """Args: segmenter (with ``feature_channels`` and ``has_mask_queries``), frozen CLIP, class names,
    prompt context length, attention heads, temperature, whether the segmenter is frozen.

    The **vocabulary** (known class names and anomaly prompts) can change at run time (:meth:`set_vocabulary`):
    the text embeddings are recomputed once per change, never per frame. The segmenter's own classes (the
    detector) are fixed by its weights."""

    #: Marks the vision-language models (this one and its exported form, :class:`vl_anomaly.deploy.ExportedVLModel`)
    #: for :class:`~vl_anomaly.pipeline.AnomalyPredictor`.
    is_vision_language = True

    def __init__(self, segmenter: nn.Module, clip: FrozenCLIP, class_names: tuple[str, ...] = CITYSCAPES_CLASSES,
                 n_ctx: int = 16, heads: int = 8, tau: float = 0.07, freeze_segmenter: bool = True,
                 zero_shot: bool = False, anomaly_prompts: tuple[str, ...] | list[str] = ()) -> None:
        """``zero_shot``: no trained head is used — the sources are the segmenter's detector score and the CLIP crop
        score with hand-crafted prompts (the head exists but its text-guided score is refused);
        ``anomaly_prompts``: the initial anomaly prompts (:meth:`set_vocabulary`)."""
        super().__init__()
        self.zero_shot = bool(zero_shot)
        self.segmenter = segmenter
        self.clip = clip
        self.prompts = PromptLearner(clip, list(class_names), n_ctx=n_ctx)
        dim = clip.embed_dim
        heads = heads if dim % heads == 0 else 1
        self.pixel_aligner = PixelTextAligner(segmenter.feature_channels, dim, heads=heads, tau=tau)
        self.mask_aligner = None
        if getattr(segmenter, "has_mask_queries", False):
            self.mask_aligner = MaskTextAligner(segmenter.query_dim, dim, heads=heads, tau=tau)
        self.freeze_segmenter = freeze_segmenter
        self.frozen_segmenter_modules: tuple[str, ...] = ()     # frozen parts of a trained segmenter (training)
        if freeze_segmenter:
            for parameter in self.segmenter.parameters():
                parameter.requires_grad_(False)
        self.register_buffer("text_embeddings", torch.zeros(len(class_names), dim))
        self.register_buffer("text_cache_valid", torch.zeros((), dtype=torch.bool))
        self.has_mask_queries = getattr(segmenter, "has_mask_queries", False)
        self._crop_text: torch.Tensor | None = None
        self.anomaly_prompts: tuple[str, ...] = check_vocabulary(class_names, anomaly_prompts)[1]
        self._anomaly_text: torch.Tensor | None = None

    # ------------------------------------------------------------------ vocabulary
    @property
    def known_classes(self) -> tuple[str, ...]:
        return tuple(self.prompts.class_names)

    @torch.no_grad()
    def set_vocabulary(self, known_classes: list[str] | tuple[str, ...] | None = None,
                       anomaly_prompts: list[str] | tuple[str, ...] | None = None) -> dict:
        """Change the known classes (``K'`` names; the learned prompt context is shared, so no training is needed)
        and/or the anomaly prompts (phrases such as "an animal on the road" that compete with the known classes in
        the CLIP crop score). ``None`` keeps that part. Every text embedding of the new vocabulary is computed
        here, once. Returns ``{"known_classes", "anomaly_prompts", "seconds"}``."""
        import time

        start = time.perf_counter()
        known, anomaly = check_vocabulary(self.known_classes if known_classes is None else known_classes,
                                          self.anomaly_prompts if anomaly_prompts is None else anomaly_prompts)
        if known != self.known_classes:
            self.prompts.set_class_names(self.clip, known)
            self.text_embeddings = torch.zeros(len(known), self.clip.embed_dim, device=self.text_embeddings.device)
            self.text_cache_valid.fill_(False)
            self._crop_text = None
        if anomaly != self.anomaly_prompts:
            self.anomaly_prompts, self._anomaly_text = anomaly, None
        if not self.training:
            self.refresh_text_cache()
        self.crop_text_embeddings()
        self.anomaly_text_embeddings()
        return {"known_classes": list(known), "anomaly_prompts": list(anomaly),
                "seconds": time.perf_counter() - start}

    @torch.no_grad()
    def anomaly_text_embeddings(self) -> torch.Tensor | None:
        """``(A, D)`` CLIP embeddings of the anomaly prompts (each prompt as written), or None without any."""
        if not self.anomaly_prompts:
            return None
        if self._anomaly_text is None:
            self._anomaly_text = self.clip.encode_text(list(self.anomaly_prompts))
        return self._anomaly_text.to(self.text_embeddings.device)

    @property
    def prefers_channels_last(self) -> bool:
        """Its segmenter's preference (the CLIP tower runs either way; AnomalyPredictor)."""
        return getattr(self.segmenter, "prefers_channels_last", False)

    def set_segmenter_trainable(self, trainable: bool, frozen_modules: tuple[str, ...] | list[str] = ()) -> None:
        """Unfreeze (or freeze) the segmenter; CLIP stays frozen either way. ``frozen_modules`` names submodules of
        the segmenter (``named_modules`` names, e.g. ``base_net.level1``) that stay frozen — weights and BatchNorm
        statistics — while the rest trains: the stem and first stage, as detectron2's ``FREEZE_AT: 2``, whose
        backward pass is then skipped. Unknown names raise :class:`ConfigError` listing the segmenter's modules."""
        modules = dict(self.segmenter.named_modules())
        unknown = [name for name in frozen_modules if not name or name not in modules]
        if unknown:
            top = [name for name in modules if name and "." not in name]
            nested = [name for name in modules if name.count(".") == 1]
            raise ConfigError(f"segmenter_frozen_modules: {unknown} are not modules of the segmenter "
                              f"({type(self.segmenter).__name__}); its modules include {top} and, one level "
                              f"down, {nested[:12]}{' …' if len(nested) > 12 else ''}")
        self.freeze_segmenter = not trainable
        self.frozen_segmenter_modules = tuple(frozen_modules) if trainable else ()
        for parameter in self.segmenter.parameters():
            parameter.requires_grad_(trainable)
        for name in self.frozen_segmenter_modules:
            for parameter in modules[name].parameters():
                parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> "VLAnomalyModel":
        super().train(mode)
        if self.freeze_segmenter:
            self.segmenter.eval()                  # frozen BatchNorm statistics too
        for name in self.frozen_segmenter_modules:
            self.segmenter.get_submodule(name).eval()
        self.clip.train(False)
        if mode:
            self.text_cache_valid.fill_(False)     # prompts may change: recompute before the next inference
        return self

    @torch.no_grad()
    def refresh_text_cache(self) -> torch.Tensor:
        """Compute ``T`` once with the current prompts and keep it (saved with the checkpoint)."""
        self.text_embeddings.copy_(self.prompts(self.clip))
        self.text_cache_valid.fill_(True)
        return self.text_embeddings

    def class_text(self) -> torch.Tensor:
        """``(K, D)``: from the prompt learner while training, from the cache at inference (the text tower never
        runs per frame)."""
        if self.training:
            return self.prompts(self.clip)
        if not bool(self.text_cache_valid):
            self.refresh_text_cache()
        return self.text_embeddings

    @torch.no_grad()
    def crop_text_embeddings(self) -> torch.Tensor:
        """``(K, D)`` handcrafted, template-ensembled class embeddings of the CLIP crop score (computed once)."""
        if self._crop_text is None:
            self._crop_text = template_text_embeddings(self.clip, self.prompts.class_names)
        return self._crop_text.to(self.text_embeddings.device)

    def forward(self, pixel_values: torch.Tensor) -> VLOutput:
        """``pixel_values (B, 3, H, W)`` pre-processed → :class:`VLOutput`."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_segmenter):
            base = self.segmenter(pixel_values)
        return self.align(base, self.class_text())

    def align(self, base: SegmenterOutput, text: torch.Tensor) -> VLOutput:
        """PL-Aligner layers 1 (pixels) and 2 (mask queries) on a segmenter output with class text ``(K, D)``."""
        z, s_pix = self.pixel_aligner(base.pixel_features, text)
        s_mask = None
        if self.mask_aligner is not None and base.query_embeddings is not None:
            _, s_mask = self.mask_aligner(base.query_embeddings, z, text)
        return VLOutput(base=base, s_pix=s_pix, s_mask=s_mask, text=text)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}
