"""The output contracts: :class:`SegmenterOutput`, which every segmenter backend fulfils, and :class:`VLOutput`, which
the vision-language models add on top of it.

Shapes use B = batch, K = number of known classes (19 Cityscapes train IDs), Q = number of mask queries,
H × W = the *network input* resolution (after pre-processing, e.g. 512 × 1024), s = feature stride.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SegmenterOutput:
    """What a segmenter returns for a batch of pre-processed images.

    Attributes:
        logits: ``(B, K, H, W)`` float32 per-class scores at the network input resolution; higher = more of
            that class. For pixel classifiers (ESPNet, ESPNetv2) these are the network's logits with the void /
            background channel removed. For mask-query models (Mask2Former) they are the standard semantic
            map ``P[k] = Σ_q softmax(class_q)[k] · σ(mask_q)`` (values in [0, Q]; the no-object column is
            dropped), with the mask logits bilinearly upsampled from H/4 × W/4 to H × W.
        pixel_features: ``(B, C, H/s, W/s)`` dense features for the vision-language head
            (``feature_stride`` = s).
        feature_stride: the stride s of ``pixel_features`` with respect to the network input.
        void_logits: ``(B, 1, H, W)`` the extra background/void channel of models that have one (ESPNet,
            ESPNetv2: channel 19), kept apart so that it never enters the softmax over known classes.
        class_queries_logits: ``(B, Q, K + 1)`` per-query class logits of mask-query models; the last column
            is "no object".
        masks_queries_logits: ``(B, Q, H/4, W/4)`` per-query mask logits of mask-query models.
        query_embeddings: ``(B, Q, D)`` final decoder query states (after the decoder's last layer norm), the
            input of the mask embedder; for the mask-level aligner.
        member_logits: ``(B, M, K, H, W)`` the class logits of each of the M members of an ensemble
            (:class:`~vl_anomaly.networks.ensemble.EnsembleSegmenter`), resampled to H × W; ``logits`` is then the
            log of their mean softmax.
        decoder_layer_predictions: training mode of mask-query models only: ``(class_queries_logits (B, Q, K + 1),
            masks_queries_logits (B, Q, H/4, W/4))`` of every decoder layer, the first before any layer and the last
            equal to the two fields above; Mask2Former's own loss puts an auxiliary term on each (None otherwise).
    """

    logits: torch.Tensor
    pixel_features: torch.Tensor
    feature_stride: int
    void_logits: torch.Tensor | None = None
    class_queries_logits: torch.Tensor | None = None
    masks_queries_logits: torch.Tensor | None = None
    query_embeddings: torch.Tensor | None = None
    member_logits: torch.Tensor | None = None
    decoder_layer_predictions: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None

    @property
    def has_mask_queries(self) -> bool:
        """True for mask-query models (Mask2Former), whose outputs support the RbA and Mask2Anomaly scores."""
        return self.class_queries_logits is not None and self.masks_queries_logits is not None


@dataclass
class VLOutput:
    """What a vision-language model (:class:`~vl_anomaly.networks.vl_anomaly.VLAnomalyModel` or its export) returns.

    Attributes:
        base: the segmenter's output (logits at input resolution, features, queries).
        s_pix: ``(B, K, h, w)`` pixel–text logits (R5) on the feature grid (stride ``base.feature_stride``).
        s_mask: ``(B, N, K + 1)`` query–text logits (R8, last column no-object), or None without mask queries.
        text: ``(K, D)`` the class text embeddings used.
    """

    base: SegmenterOutput
    s_pix: torch.Tensor
    s_mask: torch.Tensor | None
    text: torch.Tensor
