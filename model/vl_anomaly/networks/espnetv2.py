"""ESPNetv2 (Mehta et al., CVPR 2019) for semantic segmentation.

Our implementation, written from the paper. Parameter names follow the published Cityscapes checkpoint
(``espnetv2_s_2.0_city_1024x512``) so it loads with ``strict=True``.

Encoder (``base_net``) for an input ``(B, 3, H, W)``, H and W multiples of 32, width scale s = 2.0 →
channels (32, 128, 256, 512):

* ``level1``: 3×3 conv, stride 2 → ``(B, 32, H/2, W/2)``.
* ``level2_0``, ``level3_0``, ``level4_0``: strided EESP units → H/4 (128), H/8 (256), H/16 (512). Each
  concatenates an average-pooled copy of its input with a strided EESP branch, adds a projection of the
  average-pooled *input image* ("input reinforcement") and applies PReLU.
* ``level3`` (3 units) and ``level4`` (7 units): EESP units at constant resolution.

EESP unit: grouped 1×1 reduction (K = 4 groups) → K depth-wise 3×3 dilated convolutions whose effective kernel
sizes grow (3, 5, 7, 9, capped by the level's receptive-field limit) → hierarchical fusion (each branch adds the
previous one) → concat → BN-PReLU → grouped 1×1 expansion → residual add → PReLU.

Decoder (bottom-up): an efficient pyramid pooling module (EPP) on level 4; three times: ×2 bilinear upsampling,
add an efficient point-wise projection of the matching encoder level (channel attention × grouped 3×3 conv),
BN-PReLU and another EPP; the last EPP outputs ``num_outputs`` channels at H/2, bilinearly upsampled to H × W
(``align_corners=True``). The published model has 20 outputs (19 classes + background/void, channel 19).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..outputs import SegmenterOutput
from .espnet import split_void_channel
from .layers import BNPReLU, Conv, ConvBN, ConvBNPReLU, SeqBNPReLU, SeqConvBNPReLU, avg_pool_half

# Channels per level for each width scale s (levels 1..4; level 5 is the classification head, unused here).
_CHANNELS = {0.5: (16, 32, 64, 128), 1.0: (32, 64, 128, 256), 1.25: (32, 80, 160, 320),
             1.5: (32, 96, 192, 384), 2.0: (32, 128, 256, 512)}
_REPEATS = (3, 7)                 # EESP units at levels 3 and 4
_RECEPTIVE_LIMITS = (13, 11, 9, 7)  # effective kernel-size limit at levels 2, 3, 4 (down-sampling) and 4 (units)
_BRANCHES = 4
_PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class EESP(nn.Module):
    """Extremely Efficient Spatial Pyramid unit: ``(B, in_ch, H, W) → (B, out_ch, H/stride, W/stride)``.

    With ``stride=2`` it returns the expanded branch output *before* the residual and activation: the
    :class:`StridedEESP` around it concatenates, reinforces and activates.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, branches: int = _BRANCHES,
                 receptive_limit: int = 7) -> None:
        super().__init__()
        n = out_ch // branches
        if n * branches != out_ch:
            raise ValueError(f"EESP out_ch={out_ch} must be divisible by branches={branches}")
        self.stride = stride
        self.proj_1x1 = ConvBNPReLU(in_ch, n, 1, groups=branches)
        kernel_sizes = sorted(k if k <= receptive_limit else 3 for k in (3 + 2 * i for i in range(branches)))
        self.spp_dw = nn.ModuleList(
            Conv(n, n, 3, stride=stride, dilation=(k - 1) // 2, groups=n) for k in kernel_sizes)
        self.conv_1x1_exp = ConvBN(out_ch, out_ch, 1, groups=branches)
        self.br_after_cat = BNPReLU(out_ch)
        self.module_act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.proj_1x1(x)
        outputs = [self.spp_dw[0](reduced)]
        for branch in self.spp_dw[1:]:
            outputs.append(branch(reduced) + outputs[-1])
        expanded = self.conv_1x1_exp(self.br_after_cat(torch.cat(outputs, dim=1)))
        if self.stride == 2:
            return expanded
        if expanded.shape == x.shape:
            expanded = expanded + x
        return self.module_act(expanded)


class StridedEESP(nn.Module):
    """Down-sampling unit: ``(B, in_ch, H, W), image (B, 3, H0, W0) → (B, out_ch, ⌈H/2⌉, ⌈W/2⌉)``.

    ``concat(avgpool(x), EESP_stride2(x))`` (in_ch + (out_ch − in_ch) channels) plus a 3×3 → 1×1 projection
    of the input image average-pooled to the same size, then PReLU.
    """

    def __init__(self, in_ch: int, out_ch: int, receptive_limit: int, image_channels: int = 3) -> None:
        super().__init__()
        self.eesp = EESP(in_ch, out_ch - in_ch, stride=2, receptive_limit=receptive_limit)
        self.inp_reinf = nn.Sequential(ConvBNPReLU(image_channels, image_channels, 3),
                                       ConvBN(image_channels, out_ch, 1))
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        pooled = avg_pool_half(x)
        out = torch.cat([pooled, self.eesp(x)], dim=1)
        target_height = pooled.shape[-2]
        while image.shape[-2] > target_height:
            image = avg_pool_half(image)
        if image.shape[-2:] != pooled.shape[-2:]:
            raise ValueError(f"input reinforcement: image pooled to {tuple(image.shape[-2:])} does not match "
                             f"features {tuple(pooled.shape[-2:])}; use an input size divisible by 32")
        return self.act(out + self.inp_reinf(image))


class ESPNetv2Encoder(nn.Module):
    """ESPNetv2 levels 1–4 (the ImageNet backbone without its level-5 classification head)."""

    def __init__(self, scale: float = 2.0) -> None:
        super().__init__()
        if scale not in _CHANNELS:
            raise ValueError(f"ESPNetv2 width scale {scale} not supported; choose one of {sorted(_CHANNELS)}")
        c1, c2, c3, c4 = _CHANNELS[scale]
        self.channels = (c1, c2, c3, c4)
        self.level1 = ConvBNPReLU(3, c1, 3, stride=2)
        self.level2_0 = StridedEESP(c1, c2, receptive_limit=_RECEPTIVE_LIMITS[0])
        self.level3_0 = StridedEESP(c2, c3, receptive_limit=_RECEPTIVE_LIMITS[1])
        self.level3 = nn.ModuleList(EESP(c3, c3, receptive_limit=_RECEPTIVE_LIMITS[2])
                                    for _ in range(_REPEATS[0]))
        self.level4_0 = StridedEESP(c3, c4, receptive_limit=_RECEPTIVE_LIMITS[2])
        self.level4 = nn.ModuleList(EESP(c4, c4, receptive_limit=_RECEPTIVE_LIMITS[3])
                                    for _ in range(_REPEATS[1]))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns the four levels: H/2, H/4, H/8, H/16."""
        l1 = self.level1(image)
        l2 = self.level2_0(l1, image)
        l3 = self.level3_0(l2, image)
        for unit in self.level3:
            l3 = unit(l3)
        l4 = self.level4_0(l3, image)
        for unit in self.level4:
            l4 = unit(l4)
        return l1, l2, l3, l4


class EfficientPyramidPooling(nn.Module):
    """EPP: project to ``proj_ch``, depth-wise 3×3 at 5 scales (×2, ×1.5, ×1, ×0.5, ×0.1 of the map, at least
    5 px), back to the map size, BN-PReLU, channel shuffle, grouped 3×3, 1×1 to ``out_ch`` (+ BN-PReLU).
    ``(B, in_ch, H, W) → (B, out_ch, H, W)``."""

    def __init__(self, in_ch: int, proj_ch: int, out_ch: int, last_bn_act: bool = True) -> None:
        super().__init__()
        n_scales = len(_PYRAMID_SCALES)
        self.projection_layer = SeqConvBNPReLU(in_ch, proj_ch, 1)
        self.stages = nn.ModuleList(nn.Conv2d(proj_ch, proj_ch, 3, padding=1, groups=proj_ch, bias=False)
                                    for _ in _PYRAMID_SCALES)
        self.merge_layer = nn.Sequential(
            SeqBNPReLU(proj_ch * n_scales),
            nn.ChannelShuffle(n_scales),
            SeqConvBNPReLU(proj_ch * n_scales, proj_ch, 3, groups=proj_ch),
            nn.Conv2d(proj_ch, out_ch, 1, bias=not last_bn_act),
        )
        self.br = SeqBNPReLU(out_ch) if last_bn_act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection_layer(x)
        height, width = x.shape[-2:]
        branches = []
        for scale, stage in zip(_PYRAMID_SCALES, self.stages):
            size = (max(math.ceil(height * scale), 5), max(math.ceil(width * scale), 5))
            if scale < 1.0:
                y = stage(F.adaptive_avg_pool2d(x, size))
                y = F.interpolate(y, (height, width), mode="bilinear", align_corners=True)
            elif scale > 1.0:
                y = stage(F.interpolate(x, size, mode="bilinear", align_corners=True))
                y = F.adaptive_avg_pool2d(y, (height, width))
            else:
                y = stage(x)
            branches.append(y)
        out = self.merge_layer(torch.cat(branches, dim=1))
        return self.br(out) if self.br is not None else out


class EfficientPointwiseProjection(nn.Module):
    """Encoder-to-decoder projection: grouped 3×3 conv-BN-PReLU gated by channel attention
    (global average pool → 1×1 → sigmoid). ``(B, in_ch, H, W) → (B, out_ch, H, W)``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.wt_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, out_ch, 1, bias=False),
                                      nn.Sigmoid())
        self.expansion_layer = SeqConvBNPReLU(in_ch, out_ch, 3, groups=math.gcd(in_ch, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)


def edgenets_decode(levels: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                    pools: tuple[nn.Module, nn.Module, nn.Module, nn.Module],
                    projections: tuple[nn.Module, nn.Module, nn.Module], bridges: tuple[nn.Module, nn.Module, nn.Module],
                    size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """The EdgeNets segmentation decoder, shared by ESPNetv2 and DiCENet (their state dicts name its parts
    differently, so each network keeps its own modules and passes them here).

    ``x = pools[0](l4)``; then for the skips ``(l3, l2, l1)``: ``x = pools[i](bridges[i−1](up2(x) + projections[i−1](
    skip)))``; finally bilinear (``align_corners=True``) to ``size``.

    Args:
        levels: encoder outputs ``(l1, l2, l3, l4)`` at strides 2, 4, 8, 16.
        pools: four :class:`EfficientPyramidPooling`, deepest first (the last one outputs the classes).
        projections: three :class:`EfficientPointwiseProjection` of ``l3``, ``l2``, ``l1``.
        bridges: three BN + PReLU after each merge.
    Returns ``(B, num_outputs, *size)``.
    """
    l1, l2, l3, l4 = levels
    x = pools[0](l4)
    for pool, projection, bridge, skip in zip(pools[1:], projections, bridges, (l3, l2, l1)):
        x = pool(bridge(_upsample2(x) + projection(skip)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ESPNetv2(nn.Module):
    """ESPNetv2 segmentation network. ``forward``: ``(B, 3, H, W) → SegmenterOutput``.

    Args:
        num_outputs: network output channels (20 for the published Cityscapes model).
        scale: encoder width scale s.
        decoder_base: base decoder width (16 for Cityscapes); decoder widths are 4×, 3×, 2× of it.
        num_classes, void_index: as in :class:`~vl_anomaly.networks.espnet.ESPNet`.
    """

    has_mask_queries = False
    #: its convolutions run faster in the channels-last memory format on the CPU (AnomalyPredictor; measured,
    #: docs/benchmarks.md)
    prefers_channels_last = True
    feature_stride = 8
    size_divisor = 32

    def __init__(self, num_outputs: int = 20, scale: float = 2.0, decoder_base: int = 16,
                 num_classes: int = 19, void_index: int | None = 19) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.void_index = void_index
        self.base_net = ESPNetv2Encoder(scale)
        c1, c2, c3, c4 = self.base_net.channels
        self.feature_channels = c3
        d1, d2, d3 = 4 * decoder_base, 3 * decoder_base, 2 * decoder_base
        proj = min(num_outputs // 2, decoder_base)
        self.bu_dec_l1 = EfficientPyramidPooling(c4, proj, d1)
        self.bu_dec_l2 = EfficientPyramidPooling(d1, proj, d2)
        self.bu_dec_l3 = EfficientPyramidPooling(d2, proj, d3)
        self.bu_dec_l4 = EfficientPyramidPooling(d3, proj, num_outputs, last_bn_act=False)
        self.merge_enc_dec_l2 = EfficientPointwiseProjection(c3, d1)
        self.merge_enc_dec_l3 = EfficientPointwiseProjection(c2, d2)
        self.merge_enc_dec_l4 = EfficientPointwiseProjection(c1, d3)
        self.bu_br_l2 = nn.Sequential(nn.BatchNorm2d(d1), nn.PReLU(d1))
        self.bu_br_l3 = nn.Sequential(nn.BatchNorm2d(d2), nn.PReLU(d2))
        self.bu_br_l4 = nn.Sequential(nn.BatchNorm2d(d3), nn.PReLU(d3))

    def forward_raw(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W) → (all output channels (B, num_outputs, H, W), level-3 features (B, c3, H/8, W/8))``."""
        levels = self.base_net(pixel_values)
        out = edgenets_decode(levels, (self.bu_dec_l1, self.bu_dec_l2, self.bu_dec_l3, self.bu_dec_l4),
                              (self.merge_enc_dec_l2, self.merge_enc_dec_l3, self.merge_enc_dec_l4),
                              (self.bu_br_l2, self.bu_br_l3, self.bu_br_l4), pixel_values.shape[-2:])
        return out, levels[2]

    def forward(self, pixel_values: torch.Tensor) -> SegmenterOutput:
        raw, features = self.forward_raw(pixel_values)
        return split_void_channel(raw, features, self.feature_stride, self.num_classes, self.void_index)


__all__ = ["edgenets_decode", "ESPNetv2", "ESPNetv2Encoder", "EESP", "StridedEESP", "EfficientPyramidPooling",
           "EfficientPointwiseProjection"]
