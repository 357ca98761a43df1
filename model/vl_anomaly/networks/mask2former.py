"""Mask2Former semantic segmenter through Hugging Face transformers (``Mask2FormerForUniversalSegmentation``).

We do not re-implement Mask2Former: transformers' pure-PyTorch implementation (no compiled deformable-attention
extension) installs with pip and is our reference network. This module builds it from a config dict, loads a
local checkpoint directory (or a hub id where a model hub is reachable), and maps its outputs onto
:class:`~vl_anomaly.outputs.SegmenterOutput`:

* ``class_queries_logits`` ``(B, Q, K + 1)`` (last column = no object),
* ``masks_queries_logits`` ``(B, Q, H/4, W/4)``,
* ``logits`` ``(B, K, H, W)``: ``Σ_q softmax(class_q)[:K] · σ(upsample(mask_q))`` (Mask2Former's semantic
  inference), masks upsampled bilinearly (``align_corners=False``) to the input size,
* ``pixel_features`` ``(B, mask_feature_size, H/4, W/4)``: the pixel decoder's mask features,
* ``query_embeddings`` ``(B, Q, hidden_dim)``: final decoder queries after the decoder layer norm.

Eager attention is forced on the whole model (SDPA breaks ONNX export of the Swin backbone).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError
from ..outputs import SegmenterOutput


def build_mask2former_config(arch: dict, num_classes: int = 19):
    """A ``Mask2FormerConfig`` from a plain dict: ``backbone`` (``type: swin`` or ``resnet`` plus that config's
    keyword arguments) and Mask2Former keyword arguments (``hidden_dim``, ``num_queries``, …)."""
    from transformers import Mask2FormerConfig, ResNetConfig, SwinConfig

    arch = copy.deepcopy(arch)
    backbone = arch.pop("backbone", {"type": "swin"})
    kind = backbone.pop("type", "swin")
    backbone.setdefault("out_features", ["stage1", "stage2", "stage3", "stage4"])
    if kind == "swin":
        backbone_config = SwinConfig(**backbone)
    elif kind == "resnet":
        backbone_config = ResNetConfig(**backbone)
    else:
        raise ValueError(f"unknown Mask2Former backbone type {kind!r}; choose 'swin' or 'resnet'")
    id2label = {i: str(i) for i in range(num_classes)}
    config = Mask2FormerConfig(backbone_config=backbone_config, id2label=id2label, **arch)
    config._attn_implementation = "eager"
    return config


def _force_eager_attention(config) -> None:
    config._attn_implementation = "eager"
    backbone = getattr(config, "backbone_config", None)
    if backbone is not None:
        backbone._attn_implementation = "eager"


class Mask2FormerSegmenter(nn.Module):
    """Wraps ``Mask2FormerForUniversalSegmentation``; ``forward``: ``(B, 3, H, W) → SegmenterOutput``."""

    has_mask_queries = True
    feature_stride = 4
    size_divisor = 32
    void_index = None

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        _force_eager_attention(hf_model.config)
        self.model = hf_model
        self.num_classes = hf_model.config.num_labels
        self.feature_channels = hf_model.config.mask_feature_size
        self.query_dim = hf_model.config.hidden_dim

    @classmethod
    def from_config(cls, arch: dict, num_classes: int = 19) -> "Mask2FormerSegmenter":
        """Randomly initialised model from an architecture dict (see :func:`build_mask2former_config`)."""
        from transformers import Mask2FormerForUniversalSegmentation

        return cls(Mask2FormerForUniversalSegmentation(build_mask2former_config(arch, num_classes)))

    @classmethod
    def from_pretrained(cls, location: str | Path, local_only: bool = True) -> "Mask2FormerSegmenter":
        """Load a transformers checkpoint: a local directory (``config.json`` + weights) or a hub id.

        Hub ids are tried only with ``local_only=False`` and only work where a model hub is reachable.
        """
        from transformers import Mask2FormerForUniversalSegmentation

        location = str(location)
        if local_only and not Path(location).is_dir():
            raise WeightsError(f"Mask2Former checkpoint directory {location} does not exist (expected a "
                               "directory with config.json and model.safetensors, e.g. from save_pretrained)")
        try:
            model = Mask2FormerForUniversalSegmentation.from_pretrained(
                location, attn_implementation="eager", local_files_only=local_only)
        except (OSError, ValueError) as exc:
            raise WeightsError(f"could not load Mask2Former checkpoint {location!r}: {exc}") from exc
        return cls(model)

    def forward(self, pixel_values: torch.Tensor) -> SegmenterOutput:
        auxiliary = self.training and self.model.config.use_auxiliary_loss        # as transformers' forward
        inner = self.model.model(pixel_values=pixel_values, output_hidden_states=auxiliary)
        queries = self.model.model.transformer_module.decoder.layernorm(inner.transformer_decoder_last_hidden_state)
        class_logits = self.model.class_predictor(queries)                           # (B, Q, K+1)
        mask_embed = self.model.model.transformer_module.decoder.mask_predictor.mask_embedder(queries)
        mask_logits = torch.einsum("bqc,bchw->bqhw", mask_embed, inner.pixel_decoder_last_hidden_state)
        semantic = semantic_from_queries(class_logits, mask_logits, pixel_values.shape[-2:])
        layers = None
        if self.training:        # every decoder layer's predictions, for the auxiliary losses (segmentation_loss);
            earlier = zip(inner.transformer_decoder_intermediate_states[:-1], inner.masks_queries_logits[:-1]) \
                if auxiliary else ()                                 # the last layer's are the ones computed above
            layers = (*((self.model.class_predictor(states.transpose(0, 1)), masks) for states, masks in earlier),
                      (class_logits, mask_logits))
        return SegmenterOutput(logits=semantic, pixel_features=inner.pixel_decoder_last_hidden_state,
                               feature_stride=self.feature_stride, class_queries_logits=class_logits,
                               masks_queries_logits=mask_logits, query_embeddings=queries,
                               decoder_layer_predictions=layers)


    def segmentation_loss(self, output: SegmenterOutput, labels: torch.Tensor, ignore: tuple[int, ...] = (254, 255)
                          ) -> torch.Tensor:
        """Mask2Former's own training loss (transformers' implementation: Hungarian matching, class CE weight 2,
        mask BCE 5, dice 5, no-object 0.1, point sampling, an auxiliary loss on every decoder layer) of a
        training-mode ``output`` of this segmenter, for semantic labels ``(B, H, W)`` (train IDs; ``ignore``
        values are left out of every mask). It reuses that forward pass — the same loss as
        ``Mask2FormerForUniversalSegmentation(pixel_values, mask_labels, class_labels).loss``, without a second
        pass through the network (and under DistributedDataParallel, inside the wrapped forward)."""
        if output.decoder_layer_predictions is None:
            raise RuntimeError("Mask2Former's loss needs every decoder layer's predictions, which the segmenter "
                               "returns in training mode only: call .train() before the forward pass")
        mask_labels, class_labels = [], []
        for label in labels:
            classes = [c for c in label.unique().tolist() if c not in ignore]
            mask_labels.append(torch.stack([(label == c).float() for c in classes]) if classes
                               else label.new_zeros((0, *label.shape), dtype=torch.float32))
            class_labels.append(torch.tensor(classes, dtype=torch.long, device=label.device))
        layers = output.decoder_layer_predictions
        auxiliary = [{"class_queries_logits": c, "masks_queries_logits": m} for c, m in layers[:-1]]
        losses = self.model.get_loss_dict(masks_queries_logits=output.masks_queries_logits,
                                          class_queries_logits=output.class_queries_logits, mask_labels=mask_labels,
                                          class_labels=class_labels, auxiliary_predictions=auxiliary)
        return self.model.get_loss(losses)


def upsample_masks(mask_logits: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``(B, Q, h, w) → (B, Q, H, W)`` bilinear, ``align_corners=False``."""
    return F.interpolate(mask_logits, size=tuple(size), mode="bilinear", align_corners=False)


def semantic_from_queries(class_logits: torch.Tensor, mask_logits: torch.Tensor,
                          size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Mask2Former semantic map: ``(B, Q, K+1), (B, Q, h, w) → (B, K, H, W)``,
    ``P[k] = Σ_q softmax(class_q)[k] · σ(mask_q)`` with the no-object column dropped after the softmax."""
    probs = class_logits.softmax(dim=-1)[..., :-1]
    masks = upsample_masks(mask_logits, size).sigmoid()
    return torch.einsum("bqk,bqhw->bkhw", probs, masks)
