"""Frozen CLIP through open_clip: text tower (on words or on learned prompt embeddings) and image tower.

The method uses OpenAI's CLIP ViT-B/16 (open_clip name ``ViT-B-16``, pretrained tag ``openai``; D = 512, 224²
input). Our machines cannot download it: :meth:`FrozenCLIP.create` takes ``pretrained="openai"`` (needs the model
hub or open_clip's cache), a local checkpoint file, or ``None`` (random weights), and tests build tiny configs in
code with the real BPE tokenizer. Every CLIP parameter is frozen (``requires_grad=False``) and the module stays in
eval mode; gradients still flow *through* the text tower to learned prompt contexts.

Shapes: P prompts, L = context length (77), W = text width, D = joint embedding dim, B images of S × S.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, WeightsError

#: A tiny CLIP architecture (64-d, 2 layers per tower, 64 px images; the real BPE tokenizer) for dry runs and the
#: learnability check on machines without CLIP weights: ``FrozenCLIP.create(config=TINY_CLIP_CONFIG,
#: pretrained=None)`` (random weights).
TINY_CLIP_CONFIG = dict(embed_dim=64, vision_cfg=dict(image_size=64, layers=2, width=64, patch_size=16,
                                                      head_width=32),
                        text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))

#: OpenAI CLIP image normalisation (open_clip's OPENAI_DATASET_MEAN / STD), RGB in [0, 1].
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def hub_unreachable(name: str, tag: str, timeout_s: float = 2.0) -> str | None:
    """Why open_clip's ``pretrained=tag`` for model ``name`` cannot be had right now, or None when it can (the
    weights are in the local hub cache, the host answers, or open_clip knows no such tag and will say so itself).

    One TCP connection attempt (``timeout_s``) to the download host (the Hugging Face endpoint, or the tag's URL):
    on machines without a model hub the hub client would otherwise spend about 50 s in retries before failing."""
    import socket
    from urllib.parse import urlparse

    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg or cfg.get("file"):
        return None
    if cfg.get("hf_hub"):
        from huggingface_hub import constants, try_to_load_from_cache

        model_id, filename = os.path.split(cfg["hf_hub"])
        for candidate in dict.fromkeys(filter(None, (filename, "open_clip_model.safetensors",
                                                     "open_clip_pytorch_model.bin"))):
            if isinstance(try_to_load_from_cache(model_id, candidate), str):
                return None
        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    else:
        url = cfg.get("url", "")
        if not url:
            return None
        if (Path.home() / ".cache" / "clip" / os.path.basename(urlparse(url).path)).is_file():
            return None                                             # open_clip's URL download cache
        host = urlparse(url).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError as exc:
        return f"the model hub ({host}) is not reachable ({exc})"
    return None


class FrozenCLIP(nn.Module):
    """A frozen open_clip ``CLIP`` plus its tokenizer.

    Args:
        model: an ``open_clip.CLIP`` (standard text tower: token embedding, transformer, ``ln_final``,
            ``text_projection``, argmax (EOT) pooling).
        tokenizer: open_clip tokenizer returning ``(P, L)`` int64 token ids.
    """

    def __init__(self, model: nn.Module, tokenizer) -> None:
        super().__init__()
        for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection",
                     "visual"):
            if not hasattr(model, attr):
                raise ConfigError(f"open_clip model {type(model).__name__} has no {attr}: only CLIP models with the "
                                  "standard text tower are supported (not CustomTextCLIP / CoCa)")
        self.model = model
        self.tokenizer = tokenizer
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.model.eval()

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, name: str = "ViT-B-16", pretrained: str | Path | None = "openai",
               config: dict | None = None) -> "FrozenCLIP":
        """Build from open_clip's registry (``name``, ``pretrained`` tag or local file) or from a model ``config``
        dict (``embed_dim``, ``vision_cfg``, ``text_cfg``: random weights unless ``pretrained`` is a file)."""
        import open_clip

        tokenizer = open_clip.get_tokenizer("ViT-B-16")       # the OpenAI BPE vocabulary ships in the wheel
        if config is not None:
            model = open_clip.CLIP(**config)
            if pretrained is not None:
                model.load_state_dict(_read_state_dict(Path(pretrained)), strict=True)
            return cls(model, tokenizer)
        if pretrained is not None and Path(str(pretrained)).suffix in (".pt", ".pth", ".bin", ".safetensors") \
                and not Path(str(pretrained)).is_file():
            raise WeightsError(f"CLIP checkpoint {pretrained} does not exist")
        advice = "Without a model hub, pass a local checkpoint file (pretrained=/path/to/open_clip_model.bin)"
        if pretrained is not None and not Path(str(pretrained)).is_file():
            offline = hub_unreachable(name, str(pretrained))
            if offline is not None:                  # fail now, not after the hub client's retries (~50 s)
                raise WeightsError(f"cannot create CLIP {name!r} with pretrained={pretrained!r}: {offline}, and the "
                                   f"weights are not in the local cache. {advice}")
        try:
            model = open_clip.create_model(name, pretrained=None if pretrained is None else str(pretrained))
        except Exception as exc:                                          # noqa: BLE001 — hub, cache or file errors
            raise WeightsError(f"cannot create CLIP {name!r} with pretrained={pretrained!r}: {exc}. {advice}")
        return cls(model, open_clip.get_tokenizer(name))

    def train(self, mode: bool = True) -> "FrozenCLIP":
        """CLIP is frozen: it stays in eval mode whatever the parent does."""
        super().train(False)
        return self

    # ------------------------------------------------------------------ properties
    @property
    def embed_dim(self) -> int:
        """Joint embedding size D."""
        projection = self.model.text_projection
        return projection.out_features if isinstance(projection, nn.Linear) else projection.shape[1]

    @property
    def text_width(self) -> int:
        """Width W of the text transformer (size of one token embedding)."""
        return self.model.token_embedding.weight.shape[1]

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def context_length(self) -> int:
        return int(self.model.positional_embedding.shape[0])

    # ------------------------------------------------------------------ text
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """``(P, L)`` int64 token ids (SOT … EOT, zero-padded)."""
        tokens = self.tokenizer(texts)
        if tokens.shape[1] != self.context_length:
            tokens = self.tokenizer(texts, context_length=self.context_length)
        return tokens.to(self.model.positional_embedding.device)

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(P, L)`` ids → ``(P, L, W)`` token embeddings (no positional embedding)."""
        return self.model.token_embedding(tokens)

    def encode_prompt_embeddings(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Text tower on given token embeddings ``(P, L, W)``; ``tokens (P, L)`` locate the EOT token.
        Returns ``(P, D)`` L2-normalised. Differentiable w.r.t. ``embeddings`` (CoOp prompt learning)."""
        m = self.model
        x = embeddings + m.positional_embedding.to(embeddings.dtype)
        x = m.transformer(x, attn_mask=m.attn_mask)
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]          # EOT (highest id)
        x = m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection
        return F.normalize(x, dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """``P`` strings → ``(P, D)`` L2-normalised text embeddings."""
        return F.normalize(self.model.encode_text(self.tokenize(texts)), dim=-1)

    # ------------------------------------------------------------------ images
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` CLIP-normalised images → ``(B, D)`` L2-normalised embeddings."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ConfigError(f"CLIP expects {self.image_size}×{self.image_size} crops, got {tuple(images.shape[-2:])}")
        return F.normalize(self.model.encode_image(images), dim=-1)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"CLIP checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:                                              # noqa: BLE001
        raise WeightsError(f"CLIP checkpoint {path} cannot be read (truncated or not a state dict): {exc}") from exc
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"CLIP checkpoint {path} is not a state dict (name → tensor); got {type(state).__name__}")
    return state


#: Handcrafted templates for the CLIP crop score (a subset of CLIP's ImageNet ensemble, plus road context).
PROMPT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a photo of the {}.", "a cropped photo of a {}.",
                                     "a blurry photo of a {}.", "a photo of a {} on the road.",
                                     "a photo of a {} in a street scene.")


@torch.no_grad()
def template_text_embeddings(clip: FrozenCLIP, class_names: list[str] | tuple[str, ...],
                             templates: tuple[str, ...] = PROMPT_TEMPLATES) -> torch.Tensor:
    """``(K, D)``: per class, the normalised mean of its template embeddings (computed once, then cached)."""
    out = []
    for name in class_names:
        embeddings = clip.encode_text([t.format(name) for t in templates])
        out.append(F.normalize(embeddings.mean(0), dim=-1))
    return torch.stack(out)
