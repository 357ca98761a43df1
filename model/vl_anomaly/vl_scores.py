"""The two vision-language anomaly sources of VL-Anomaly (our reconstruction; docs/method.md), each in [0, 1].

* :func:`text_guided_score` (R11): ``s_txt = ½[(1 − max_k P_text) + (1 − max_k softmax(S_pix))]`` with
  ``P_text(x)[k] = Σ_q softmax(S_mask_q)[k] · σ(m_q(x))``; pixel classifiers (no mask queries) use the
  pixel term alone.
* :func:`clip_crop_score`: anomaly candidates (connected regions of the detector score above a threshold, largest
  first, at most ``max_crops``) are cropped with 10 % padding, resized to CLIP's input (long side, padded
  square), encoded in **one batch**, compared with handcrafted, template-ensembled class prompts ``t_1 … t_K`` and
  the anomaly prompts ``u_1 … u_A`` (run-time vocabulary; none by default):
  ``a = 1 − max_k softmax_j(100 · cos(crop, [t; u]_j))_k`` over the known classes ``k ≤ K`` is painted on the
  region, 0 elsewhere (a crop that matches an anomaly prompt takes probability from every known class).

With random CLIP weights (all our machines can have) both scores are meaningless numbers: the code runs end to
end, but no result may be reported from it.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .networks.clip_towers import CLIP_MEAN, CLIP_STD, FrozenCLIP
from .outputs import VLOutput

def text_guided_score(output: VLOutput, size: tuple[int, int]) -> torch.Tensor:
    """R11 at image size ``(H, W)``: ``(B, H, W)`` float32 in [0, 1]."""
    pixel = 1.0 - output.s_pix.softmax(dim=1).amax(dim=1, keepdim=True)                 # (B, 1, h, w)
    pixel = F.interpolate(pixel, size=size, mode="bilinear", align_corners=False)[:, 0]
    base = output.base
    if output.s_mask is None or base.masks_queries_logits is None:
        return pixel.clamp(0.0, 1.0)
    masks = F.interpolate(base.masks_queries_logits, size=size, mode="bilinear", align_corners=False).sigmoid()
    p_text = torch.einsum("bqk,bqhw->bkhw", output.s_mask.softmax(dim=-1)[..., :-1], masks)
    mask_term = (1.0 - p_text.amax(dim=1)).clamp(0.0, 1.0)
    return (0.5 * (pixel + mask_term)).clamp(0.0, 1.0)


def _crop_square(image: np.ndarray, box: tuple[int, int, int, int], size: int, pad: float) -> np.ndarray:
    """Box with ``pad`` margin → long side ``size``, zero-padded square; ``(size, size, 3)`` uint8."""
    h, w = image.shape[:2]
    x, y, bw, bh = box
    mx, my = round(bw * pad), round(bh * pad)
    x0, y0, x1, y1 = max(0, x - mx), max(0, y - my), min(w, x + bw + mx), min(h, y + bh + my)
    crop = image[y0:y1, x0:x1]
    scale = size / max(crop.shape[:2])
    resized = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.zeros((size, size, 3), np.uint8)
    out[: resized.shape[0], : resized.shape[1]] = resized[:size, :size]
    return out


@torch.no_grad()
def clip_crop_score(image: np.ndarray, detector_score: np.ndarray, clip: FrozenCLIP, class_text: torch.Tensor,
                    threshold: float, max_crops: int = 20, min_area_frac: float = 0.001, pad: float = 0.1,
                    anomaly_text: torch.Tensor | None = None) -> tuple[np.ndarray, int]:
    """CLIP image–text anomaly of candidate regions.

    Args:
        image: ``(H, W, 3)`` RGB uint8. detector_score: ``(H, W)`` float (higher = more anomalous).
        clip: frozen CLIP; class_text: ``(K, D)`` handcrafted class embeddings; anomaly_text: ``(A, D)`` anomaly
            prompt embeddings or None.
        threshold: detector score at which a pixel is a candidate; max_crops: cap on regions (largest first);
        min_area_frac: smallest region, fraction of the image; pad: box margin.
    Returns: ``(H, W)`` float32 in [0, 1] and the number of crops encoded.
    """
    h, w = detector_score.shape
    out = np.zeros((h, w), np.float32)
    mask = (detector_score >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    regions = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_area_frac * h * w]
    regions = sorted(regions, key=lambda i: -stats[i, cv2.CC_STAT_AREA])[:max_crops]
    if not regions:
        return out, 0
    size = clip.image_size
    crops = np.stack([_crop_square(image, tuple(int(v) for v in stats[i, :4]), size, pad) for i in regions])
    device = class_text.device
    batch = torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    embeddings = clip.encode_images((batch - mean) / std)                                 # (R, D), one forward
    texts = class_text if anomaly_text is None else torch.cat([class_text, anomaly_text.to(device)])
    probs = (100.0 * embeddings @ F.normalize(texts, dim=-1).T).softmax(dim=-1)
    anomaly = (1.0 - probs[:, : class_text.shape[0]].amax(dim=-1)).cpu().numpy()
    for region, value in zip(regions, anomaly):
        out[labels == region] = value
    return out, len(regions)
