"""PL-Aligner (our reconstruction, R4–R9 of docs/method.md): align segmenter features with class text embeddings.

* **Layer 1 — pixels ↔ text** (:class:`PixelTextAligner`, R4/R5): ``X = W_p F_pix`` (1×1 conv C → D), pre-LN
  cross-attention of every pixel to the K text embeddings, then an FFN; residual branches scaled by learnable
  factors initialised to 1e-4 (DenseCLIP) so training starts from the projected features.
  ``S_pix(x)[k] = ⟨ẑ(x), t̂_k⟩ / τ``.
* **Layer 2 — mask queries ↔ layer-1 features** (:class:`MaskTextAligner`, R7/R8): queries projected to D attend
  to Z, FFN → mask embeddings E; ``S_mask_q[k] = ⟨ê_q, t̂_k⟩ / τ`` plus a learnable no-object embedding column.

Shapes: B batch, C feature channels, h × w feature grid, K classes, N queries, D joint dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _CrossBlock(nn.Module):
    """Pre-LN cross-attention + FFN with layer-scaled residuals: ``x ← x + γ₁·MHA(LN x, mem, mem)``,
    ``x ← x + γ₂·FFN(LN x)``."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, layer_scale_init: float) -> None:
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_ffn = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, dim * ffn_mult), nn.GELU(), nn.Linear(dim * ffn_mult, dim))
        self.gamma_attn = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.gamma_ffn = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """``x (B, n, D)`` attends to ``memory (B, m, D)``; returns ``(B, n, D)``."""
        kv = self.norm_kv(memory)
        x = x + self.gamma_attn * self.attn(self.norm_q(x), kv, kv, need_weights=False)[0]
        return x + self.gamma_ffn * self.ffn(self.norm_ffn(x))


class PixelTextAligner(nn.Module):
    """Layer 1. Args: in_channels C, joint dim D, heads, FFN multiplier, temperature τ, layer-scale init."""

    def __init__(self, in_channels: int, dim: int, heads: int = 8, ffn_mult: int = 4, tau: float = 0.07,
                 layer_scale_init: float = 1e-4) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=1)
        self.block = _CrossBlock(dim, heads, ffn_mult, layer_scale_init)
        self.tau = tau

    def forward(self, features: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features (B, C, h, w)``, ``text (K, D)`` → ``Z (B, h·w, D)``, ``S_pix (B, K, h, w)`` (logits / τ)."""
        b, _, h, w = features.shape
        x = self.proj(features).flatten(2).transpose(1, 2)                       # (B, hw, D)
        z = self.block(x, text.unsqueeze(0).expand(b, -1, -1))
        s_pix = torch.einsum("bnd,kd->bkn", F.normalize(z, dim=-1), F.normalize(text, dim=-1)) / self.tau
        return z, s_pix.reshape(b, -1, h, w)


class MaskTextAligner(nn.Module):
    """Layer 2. Args: query dim Cq, joint dim D, heads, FFN multiplier, τ, layer-scale init."""

    def __init__(self, query_dim: int, dim: int, heads: int = 8, ffn_mult: int = 4, tau: float = 0.07,
                 layer_scale_init: float = 1e-4) -> None:
        super().__init__()
        self.proj = nn.Linear(query_dim, dim)
        self.block = _CrossBlock(dim, heads, ffn_mult, layer_scale_init)
        self.no_object = nn.Parameter(torch.randn(dim) * 0.02)
        self.tau = tau

    def forward(self, queries: torch.Tensor, z: torch.Tensor, text: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``queries (B, N, Cq)``, ``Z (B, hw, D)``, ``text (K, D)`` → ``E (B, N, D)``, ``S_mask (B, N, K + 1)``."""
        e = self.block(self.proj(queries), z)
        classes = F.normalize(torch.cat([text, self.no_object.unsqueeze(0)], dim=0), dim=-1)
        return e, torch.einsum("bnd,kd->bnk", F.normalize(e, dim=-1), classes) / self.tau
