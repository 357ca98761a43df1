"""Pictures for people: score heat-map overlays with obstacle outlines and boxes."""

from __future__ import annotations

import cv2
import numpy as np

from .constants import CITYSCAPES_PALETTE
from .postprocess import Obstacle


def colorize_scores(score_map: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(H, W)`` float → ``(H, W, 3)`` RGB uint8 with the 'inferno' colour map over ``[lo, hi]``."""
    norm = np.clip((score_map - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    bgr = cv2.applyColorMap(np.rint(norm * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def colorize_semantic(semantic: np.ndarray) -> np.ndarray:
    """``(H, W)`` train IDs → ``(H, W, 3)`` RGB with the Cityscapes palette (unknown IDs black)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:len(CITYSCAPES_PALETTE)] = np.array(CITYSCAPES_PALETTE, dtype=np.uint8)
    return palette[semantic]


def overlay(image: np.ndarray, score_map: np.ndarray, obstacle_mask: np.ndarray, obstacles: list[Obstacle],
            lo: float, hi: float, alpha: float = 0.45, drivable: np.ndarray | None = None) -> np.ndarray:
    """Blend the score heat map over ``image`` ``(H, W, 3)`` RGB uint8; outline obstacles in cyan, draw their
    boxes and ids; shade outside the drivable region when given. Returns ``(H, W, 3)`` RGB uint8."""
    heat = colorize_scores(score_map, lo, hi)
    out = cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)
    if drivable is not None:
        out[~drivable] = (out[~drivable] * 0.5).astype(np.uint8)
    contours, _ = cv2.findContours(obstacle_mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(min(image.shape[:2]) / 360))
    cv2.drawContours(out, contours, -1, (0, 255, 255), thickness)
    for obstacle in obstacles:
        x, y, w, h = obstacle.bbox
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (0, 255, 0), thickness)
        label = f"#{obstacle.id} {obstacle.max_score:.2f}"
        cv2.putText(out, label, (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, (0, 255, 0),
                    thickness, cv2.LINE_AA)
    return out
