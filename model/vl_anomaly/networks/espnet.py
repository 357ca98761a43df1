"""ESPNet: Efficient Spatial Pyramid of dilated convolutions (Mehta et al., ECCV 2018), with its decoder.

Our implementation, written from the paper. Parameter names follow the published Cityscapes checkpoint so it
loads with ``strict=True``. Shapes for an input ``(B, 3, H, W)`` with H, W multiples of 8:

* ``encoder`` (ESPNet-C): level 1 at H/2 (16 ch + the image at H/2 → 19), level 2 at H/4
  (a strided ESP module + ``p`` ESP modules, 64 ch; concatenated with the image at H/4 → 131), level 3 at H/8
  (strided ESP + ``q`` ESP modules, 128 ch; concatenated → 256) and a 1×1 classifier → ``num_outputs`` ch.
* decoder: the level-3 logits are upsampled ×2 (transposed conv), fused with level-2 features projected to
  ``num_outputs`` channels, passed through an ESP module, upsampled ×2, fused with level-1 features, and
  upsampled ×2 to ``(B, num_outputs, H, W)``.

The published model has ``num_outputs = 20``: the 19 Cityscapes train IDs followed by one background/void
channel. All batch norms use eps = 1e-3 (the checkpoint predates ``num_batches_tracked``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..outputs import SegmenterOutput
from .layers import BNPReLU, Conv, ConvBNPReLU, avg_pool_half, batch_norm

_EPS = 1e-3
_DILATIONS = (1, 2, 4, 8, 16)


class _ESPBranches(nn.Module):
    """Reduce → split → transform → hierarchical feature fusion → merge (the ESP module's body).

    ``c1`` reduces ``in_ch`` to ``n = out_ch // 5`` channels (1×1, or 3×3 with stride 2 when down-sampling);
    five 3×3 convolutions with dilations 1, 2, 4, 8, 16 follow (``d1`` gives the remainder
    ``out_ch − 4n`` channels); the dilated outputs are summed cumulatively (d2, d2+d4, …) to remove gridding
    artefacts and concatenated to ``out_ch`` channels.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        n = out_ch // 5
        n1 = out_ch - 4 * n
        self.c1 = Conv(in_ch, n, 3 if stride == 2 else 1, stride=stride)
        self.d1 = Conv(n, n1, 3, dilation=1)
        self.d2 = Conv(n, n, 3, dilation=2)
        self.d4 = Conv(n, n, 3, dilation=4)
        self.d8 = Conv(n, n, 3, dilation=8)
        self.d16 = Conv(n, n, 3, dilation=16)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.c1(x)
        fused = [self.d1(reduced)]
        running = None
        for branch in (self.d2, self.d4, self.d8, self.d16):
            out = branch(reduced)
            running = out if running is None else running + out
            fused.append(running)
        return torch.cat(fused, dim=1)


class ESPModule(_ESPBranches):
    """ESP module at constant resolution: ``(B, in_ch, H, W) → (B, out_ch, H, W)``, residual when asked."""

    def __init__(self, in_ch: int, out_ch: int, residual: bool = True) -> None:
        super().__init__(in_ch, out_ch, stride=1)
        self.bn = BNPReLU(out_ch, eps=_EPS)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.merge(x)
        if self.residual:
            out = out + x
        return self.bn(out)


class ESPDownsample(_ESPBranches):
    """Strided ESP module: ``(B, in_ch, H, W) → (B, out_ch, ⌈H/2⌉, ⌈W/2⌉)``, no residual."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(in_ch, out_ch, stride=2)
        self.bn = batch_norm(out_ch, _EPS)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.merge(x)))


class ESPNetEncoder(nn.Module):
    """ESPNet-C: ``(B, 3, H, W) → (logits (B, num_outputs, H/8, W/8), features (B, 256, H/8, W/8),
    level-2 features (B, 131, H/4, W/4), level-1 features (B, 16, H/2, W/2))``."""

    def __init__(self, num_outputs: int = 20, p: int = 2, q: int = 8) -> None:
        super().__init__()
        self.level1 = ConvBNPReLU(3, 16, 3, stride=2, eps=_EPS)
        self.b1 = BNPReLU(16 + 3, eps=_EPS)
        self.level2_0 = ESPDownsample(16 + 3, 64)
        self.level2 = nn.ModuleList([ESPModule(64, 64) for _ in range(p)])
        self.b2 = BNPReLU(128 + 3, eps=_EPS)
        self.level3_0 = ESPDownsample(128 + 3, 128)
        self.level3 = nn.ModuleList([ESPModule(128, 128) for _ in range(q)])
        self.b3 = BNPReLU(256, eps=_EPS)
        self.classifier = Conv(256, num_outputs, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        image_half = avg_pool_half(image)
        image_quarter = avg_pool_half(image_half)

        level1 = self.level1(image)
        level1_cat = self.b1(torch.cat([level1, image_half], dim=1))

        level2_first = self.level2_0(level1_cat)
        level2 = level2_first
        for module in self.level2:
            level2 = module(level2)
        level2_cat = self.b2(torch.cat([level2, level2_first, image_quarter], dim=1))

        level3_first = self.level3_0(level2_cat)
        level3 = level3_first
        for module in self.level3:
            level3 = module(level3)
        level3_cat = self.b3(torch.cat([level3_first, level3], dim=1))
        return self.classifier(level3_cat), level3_cat, level2_cat, level1


class ESPNet(nn.Module):
    """ESPNet with its light-weight decoder. ``forward``: ``(B, 3, H, W) → SegmenterOutput``.

    Args:
        num_outputs: network output channels (20 for the published Cityscapes model).
        p, q: number of ESP modules at levels 2 and 3 (the paper's depth multipliers).
        num_classes: how many leading output channels are known classes (19); the channel at
            ``void_index`` (if any) goes to ``SegmenterOutput.void_logits``.
        void_index: index of the background/void channel, or None.
    """

    feature_channels = 256
    has_mask_queries = False
    #: its convolutions run faster in the channels-last memory format on the CPU (AnomalyPredictor; measured,
    #: docs/benchmarks.md)
    prefers_channels_last = True
    feature_stride = 8
    size_divisor = 8

    def __init__(self, num_outputs: int = 20, p: int = 2, q: int = 8, num_classes: int = 19,
                 void_index: int | None = 19) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.void_index = void_index
        self.encoder = ESPNetEncoder(num_outputs, p, q)
        c = num_outputs
        self.level3_C = Conv(128 + 3, c, 1)
        self.br = batch_norm(c, _EPS)
        self.up_l3 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False))
        self.combine_l2_l3 = nn.Sequential(BNPReLU(2 * c, eps=_EPS),
                                           ESPModule(2 * c, c, residual=False))
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False),
                                   BNPReLU(c, eps=_EPS))
        self.conv = ConvBNPReLU(16 + c, c, 3, eps=_EPS)
        self.classifier = nn.ConvTranspose2d(c, c, 2, stride=2, bias=False)

    def forward_raw(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W) → (all output channels (B, num_outputs, H, W), features (B, 256, H/8, W/8))``."""
        logits_l3, features, level2_cat, level1 = self.encoder(pixel_values)
        up3 = self.up_l3(self.br(logits_l3))
        fused = self.combine_l2_l3(torch.cat([self.level3_C(level2_cat), up3], dim=1))
        up2 = self.up_l2(fused)
        out = self.classifier(self.conv(torch.cat([up2, level1], dim=1)))
        return out, features

    def forward(self, pixel_values: torch.Tensor) -> SegmenterOutput:
        raw, features = self.forward_raw(pixel_values)
        return split_void_channel(raw, features, self.feature_stride, self.num_classes, self.void_index)


def split_void_channel(raw: torch.Tensor, features: torch.Tensor, feature_stride: int, num_classes: int,
                       void_index: int | None) -> SegmenterOutput:
    """Wrap a pixel classifier's raw output ``(B, N, H, W)`` into a :class:`SegmenterOutput`: the first
    ``num_classes`` channels become ``logits``; the void channel (if any) becomes ``void_logits``."""
    logits = raw[:, :num_classes]
    void = raw[:, void_index:void_index + 1] if void_index is not None else None
    return SegmenterOutput(logits=logits, pixel_features=features, feature_stride=feature_stride,
                           void_logits=void)


__all__ = ["ESPNet", "ESPNetEncoder", "ESPModule", "ESPDownsample", "split_void_channel"]
