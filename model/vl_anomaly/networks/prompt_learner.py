"""CoOp-style learnable prompts for the known classes (R3): ``t_k = CLIP_text([v_1 … v_M, e(CLASS_k), "."])``.

One context ``v_1 … v_M`` (M = 16 by default, each a W-dim vector in CLIP's token-embedding space, initialised
N(0, 0.02²)) is shared by the K classes and is the only trainable text parameter; CLIP stays frozen. The prompt
of class k is tokenised as ``"X X … X <class name>."`` and the M placeholder embeddings are replaced by the
context. Output ``T (K, D)``, L2-normalised. At inference T is computed once and cached (``text_embeddings``).
"""

from __future__ import annotations

import torch
from torch import nn

from .clip_towers import FrozenCLIP


class PromptLearner(nn.Module):
    """Learnable context + fixed class-name tokens.

    Args:
        clip: the frozen CLIP whose text tower encodes the prompts (not stored as a sub-module).
        class_names: K class names, in train-ID order.
        n_ctx: number M of learnable context vectors.
        init_std: standard deviation of the context initialisation.
    """

    def __init__(self, clip: FrozenCLIP, class_names: list[str], n_ctx: int = 16, init_std: float = 0.02) -> None:
        super().__init__()
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be ≥ 1, got {n_ctx}")
        self.n_ctx = n_ctx
        self.set_class_names(clip, class_names)
        self.ctx = nn.Parameter(torch.randn(n_ctx, clip.text_width, device=self.tokens.device) * init_std)

    @torch.no_grad()
    def set_class_names(self, clip: FrozenCLIP, class_names: list[str] | tuple[str, ...]) -> None:
        """Tokenise the prompts of ``class_names`` (K' names) around the same learned context: CoOp's context is
        shared by all classes, so a changed vocabulary needs no training (how well it transfers to names never seen
        in training is an empirical question; docs/method.md)."""
        self.class_names = list(class_names)
        prompts = [" ".join(["X"] * self.n_ctx) + f" {name.replace('_', ' ')}." for name in self.class_names]
        tokens = clip.tokenize(prompts)                                          # (K, L)
        embedded = clip.token_embeddings(tokens)                                 # (K, L, W)
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("prefix", embedded[:, :1].clone(), persistent=False)        # SOT
        self.register_buffer("suffix", embedded[:, 1 + self.n_ctx:].clone(), persistent=False)  # class, ".", EOT

    def forward(self, clip: FrozenCLIP) -> torch.Tensor:
        """``(K, D)`` L2-normalised class text embeddings; differentiable w.r.t. ``ctx``."""
        k = self.prefix.shape[0]
        embeddings = torch.cat([self.prefix, self.ctx.unsqueeze(0).expand(k, -1, -1), self.suffix], dim=1)
        return clip.encode_prompt_embeddings(embeddings, self.tokens)
