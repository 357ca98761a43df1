"""Training losses of the vision-language head (R6, R9, R10 of docs/method.md; all ours or [REF]).

Labels: train IDs 0–18, 255 void, 254 pasted outlier (:mod:`vl_anomaly.train.data`).

* :func:`pixel_alignment_loss` (R6): cross-entropy of ``S_pix`` (on the feature grid) against the labels
  nearest-downsampled to it; void and outlier pixels excluded.
* :func:`mask_text_loss` (R9): per image, the ground-truth class masks are matched to the queries with the
  Hungarian algorithm (cost = −class probability + BCE + dice of the predicted masks, as Mask2Former), then
  cross-entropy of ``S_mask`` against matched classes, unmatched queries → no-object with weight 0.1.
* :func:`outlier_margin_loss` (R10, Mask2Anomaly): ``½[mean_ID s² + mean_OOD max(0, m − s)²]`` on a score
  ``s ∈ [0, 1]``-ish where higher = more anomalous (here the text-guided pixel score).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from .data import OUTLIER_LABEL, VOID_LABEL


def downsample_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, H, W)`` int labels → ``(B, h, w)`` by nearest neighbour."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def pixel_alignment_loss(s_pix: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """R6. ``s_pix (B, K, h, w)`` logits, ``labels (B, H, W)`` → scalar (0 when no valid pixel)."""
    target = downsample_labels(labels, s_pix.shape[-2:])
    target = torch.where(target == OUTLIER_LABEL, torch.full_like(target, VOID_LABEL), target)
    if not (target != VOID_LABEL).any():
        return s_pix.sum() * 0.0
    return F.cross_entropy(s_pix, target, ignore_index=VOID_LABEL)


def outlier_margin_loss(score: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """R10. ``score (B, h, w)`` (higher = more anomalous), ``labels (B, H, W)`` → scalar."""
    target = downsample_labels(labels, score.shape[-2:])
    inlier = (target != VOID_LABEL) & (target != OUTLIER_LABEL)
    outlier = target == OUTLIER_LABEL
    loss = score.sum() * 0.0
    if inlier.any():
        loss = loss + 0.5 * (score[inlier] ** 2).mean()
    if outlier.any():
        loss = loss + 0.5 * (F.relu(margin - score[outlier]) ** 2).mean()
    return loss


def _dice_cost(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``pred (N, P)`` probabilities, ``gt (G, P)`` {0, 1} → ``(N, G)`` 1 − dice."""
    numerator = 2 * pred @ gt.T
    denominator = pred.sum(-1, keepdim=True) + gt.sum(-1)[None]
    return 1 - (numerator + 1) / (denominator + 1)


@torch.no_grad()
def hungarian_match(mask_logits: torch.Tensor, class_logits: torch.Tensor, gt_masks: torch.Tensor,
                    gt_classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One image: ``mask_logits (N, h, w)``, ``class_logits (N, K + 1)``, ``gt_masks (G, h, w)``,
    ``gt_classes (G,)`` → matched ``(query indices, gt indices)``."""
    prob = class_logits.softmax(-1)[:, gt_classes]                               # (N, G)
    pred = mask_logits.flatten(1)
    gt = gt_masks.flatten(1).float()
    bce = (F.binary_cross_entropy_with_logits(pred[:, None].expand(-1, gt.shape[0], -1),
                                              gt[None].expand(pred.shape[0], -1, -1), reduction="none").mean(-1))
    cost = 2.0 * (-prob) + 5.0 * bce + 5.0 * _dice_cost(pred.sigmoid(), gt)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


def mask_text_loss(s_mask: torch.Tensor, mask_logits: torch.Tensor, labels: torch.Tensor,
                   no_object_weight: float = 0.1) -> torch.Tensor:
    """R9. ``s_mask (B, N, K + 1)``, ``mask_logits (B, N, h, w)``, ``labels (B, H, W)`` → scalar."""
    b, n, k1 = s_mask.shape
    target = downsample_labels(labels, mask_logits.shape[-2:])
    classes = torch.full((b, n), k1 - 1, dtype=torch.long, device=s_mask.device)          # no-object
    for i in range(b):
        present = [c for c in target[i].unique().tolist() if c not in (VOID_LABEL, OUTLIER_LABEL)]
        if not present:
            continue
        gt_classes = torch.tensor(present, device=s_mask.device)
        gt_masks = torch.stack([target[i] == c for c in present])
        rows, cols = hungarian_match(mask_logits[i], s_mask[i].detach(), gt_masks, gt_classes)
        classes[i, rows] = gt_classes[cols]
    weight = torch.ones(k1, device=s_mask.device)
    weight[-1] = no_object_weight
    return F.cross_entropy(s_mask.reshape(b * n, k1), classes.reshape(-1), weight=weight)
