"""DiCENet (Mehta et al., "DiCENet: Dimension-wise Convolutions for Efficient Networks", TPAMI 2020) for semantic
segmentation.

Our implementation, written from the paper. Parameter names follow the published Cityscapes checkpoint
(``dicenet_s_1.75_city_1024x512``, sacmehta/EdgeNets, MIT) so that it loads with ``strict=True``; the decoder is the
EdgeNets segmentation decoder that ESPNetv2 uses too (:class:`~vl_anomaly.networks.espnetv2.EfficientPyramidPooling`,
:class:`~vl_anomaly.networks.espnetv2.EfficientPointwiseProjection`).

**Dimension-wise convolution (DiCE unit)**, ``(B, C, H, W) → (B, C_out, H, W)``: three depth-wise 3×3 convolutions,
one per dimension of the feature volume — over the channels (an ordinary depth-wise conv), over the rows (the volume
transposed so that the H rows are the "channels") and over the columns (the W columns as "channels") — concatenated
(3C), BN-PReLU, shuffled in 3 groups, fused back to C by a grouped 1×1 ("dimension-wise fusion"), then a grouped 3×3
projection to C_out, gated per channel by a squeeze-excitation-like branch (global pool → 1×1 to C/4 → ReLU → 1×1 to
C_out → sigmoid).

The row- and column-wise convolutions hold one kernel per row (column), so they exist for a fixed *design* size:
the published network was built for 224 × 224 inputs (28 rows/columns at stride 8, 14 at stride 16) and trained on
Cityscapes at 1024 × 512 with those weights. A map of another size is brought to the design size along that axis
before the convolution (adaptive average pooling when larger, bilinear with ``align_corners=True`` when smaller)
and back afterwards with the converse operation.

**Encoder** (width scale s = 1.75 → channels 24, 24, 210, 420):

* ``level1``: 3×3 conv, stride 2, BN-PReLU → ``(B, 24, H/2, W/2)``; ``level2``: 3×3 max-pool, stride 2 → H/4.
* ``level3``: a strided DiCE unit (a depth-wise stride-2 branch and an average-pool → DiCE branch, concatenated
  and shuffled: 48 channels at H/8), then 3 shuffle blocks (half the channels pass through, the other half goes
  through 1×1 conv-BN-PReLU → DiCE; concatenated and shuffled) → ``(B, 210, H/8, W/8)``.
* ``level4``: a strided DiCE unit and 7 shuffle blocks → ``(B, 420, H/16, W/16)``.

**Decoder**: pyramid pooling on level 4; three times ×2 bilinear upsampling (``align_corners=True``) + a point-wise
projection of level 3, 2 and 1, BN-PReLU, pyramid pooling; the last outputs ``num_outputs`` channels at H/2,
bilinearly upsampled to H × W. 20 outputs: 19 Cityscapes train IDs + background/void (channel 19).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..outputs import SegmenterOutput
from .espnet import split_void_channel
from .espnetv2 import EfficientPointwiseProjection, EfficientPyramidPooling, edgenets_decode
from .layers import SeqBNPReLU, SeqConvBNPReLU

#: Encoder channels per width scale s: level 1, level 2 (max-pool of level 1), level 3, level 4.
DICENET_CHANNELS = {0.5: (24, 24, 48, 96), 0.75: (24, 24, 86, 172), 1.0: (24, 24, 116, 232),
                    1.25: (24, 24, 144, 288), 1.5: (24, 24, 176, 352), 1.75: (24, 24, 210, 420),
                    2.0: (24, 24, 244, 488)}
_BLOCKS = (3, 7)                  # shuffle blocks after the strided unit at levels 3 and 4
_DESIGN_SIZE = 224                # the input size the row/column convolutions were built for


def _resize_axis(x: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """Bring dimension ``axis`` (2 = rows, 3 = columns) of ``(B, C, H, W)`` to ``size``: adaptive average pooling
    when it is larger, bilinear interpolation (``align_corners=True``) when smaller."""
    current = x.shape[axis]
    if current == size:
        return x
    target = list(x.shape[-2:])
    target[axis - 2] = size
    if current > size:
        return F.adaptive_avg_pool2d(x, tuple(target))
    return F.interpolate(x, size=tuple(target), mode="bilinear", align_corners=True)


class DimensionWiseConv(nn.Module):
    """The DiCE unit. ``(B, in_ch, H, W) → (B, out_ch, H, W)``; ``rows``/``cols``: the design size of the row- and
    column-wise convolutions (see the module docstring)."""

    def __init__(self, in_ch: int, out_ch: int, rows: int, cols: int) -> None:
        super().__init__()
        self.rows, self.cols = rows, cols
        self.conv_channel = nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False)
        self.conv_width = nn.Conv2d(cols, cols, 3, padding=1, groups=cols, bias=False)
        self.conv_height = nn.Conv2d(rows, rows, 3, padding=1, groups=rows, bias=False)
        self.br_act = SeqBNPReLU(3 * in_ch)
        self.shuffle = nn.ChannelShuffle(3)
        self.weight_avg_layer = SeqConvBNPReLU(3 * in_ch, in_ch, 1, groups=in_ch)
        self.proj_layer = SeqConvBNPReLU(in_ch, out_ch, 3, groups=math.gcd(in_ch, out_ch))
        self.linear_comb_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, in_ch // 4, 1, bias=False),
                                               nn.ReLU(), nn.Conv2d(in_ch // 4, out_ch, 1, bias=False), nn.Sigmoid())

    def _along(self, x: torch.Tensor, axis: int, conv: nn.Conv2d, size: int) -> torch.Tensor:
        """Depth-wise conv with dimension ``axis`` as the channels: resize that axis to ``size``, move it to dim 1,
        convolve, move it back, resize to the input's extent. ``(B, C, H, W) → (B, C, H, W)``."""
        extent = x.shape[axis]
        y = _resize_axis(x, axis, size).transpose(1, axis)
        y = conv(y).transpose(1, axis)
        return _resize_axis(y, axis, extent)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        volume = torch.cat([self.conv_channel(x), self._along(x, 2, self.conv_height, self.rows),
                            self._along(x, 3, self.conv_width, self.cols)], dim=1)          # (B, 3C, H, W)
        fused = self.weight_avg_layer(self.shuffle(self.br_act(volume)))               # (B, C, H, W)
        return self.proj_layer(fused) * self.linear_comb_layer(fused)


class StridedDimensionWiseUnit(nn.Module):
    """Down-sampling unit: ``(B, C, H, W) → (B, 2C, ⌈H/2⌉, ⌈W/2⌉)`` — a depth-wise stride-2 conv → 1×1 branch
    (``left_layer``) and a 3×3 average pool → DiCE → 1×1 branch (``right_layer``), concatenated, shuffled in 2."""

    def __init__(self, channels: int, rows: int, cols: int) -> None:
        super().__init__()
        self.left_layer = nn.Sequential(SeqConvBNPReLU(channels, channels, 3, stride=2, groups=channels),
                                        SeqConvBNPReLU(channels, channels, 1))
        self.right_layer = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1),
                                         DimensionWiseConv(channels, channels, rows, cols),
                                         SeqConvBNPReLU(channels, channels, 1))
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(torch.cat([self.left_layer(x), self.right_layer(x)], dim=1))


class ShuffleDimensionWiseBlock(nn.Module):
    """``(B, in_ch, H, W) → (B, out_ch, H, W)``: the first ``round(in_ch / 2)`` channels pass through; the rest go
    through 1×1 conv-BN-PReLU → DiCE to ``out_ch − round(in_ch / 2)`` channels; concatenated, shuffled in 2."""

    def __init__(self, in_ch: int, out_ch: int, rows: int, cols: int) -> None:
        super().__init__()
        self.keep = round(0.5 * in_ch)
        right_out = out_ch - self.keep
        self.layer_right = nn.Sequential(SeqConvBNPReLU(in_ch - self.keep, right_out, 1),
                                         DimensionWiseConv(right_out, right_out, rows, cols))
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(torch.cat([x[:, :self.keep], self.layer_right(x[:, self.keep:])], dim=1))


class DiCENetEncoder(nn.Module):
    """``(B, 3, H, W) → (level 1 (B, c1, H/2, W/2), level 2 (B, c2, H/4, W/4), level 3 (B, c3, H/8, W/8),
    level 4 (B, c4, H/16, W/16))``."""

    def __init__(self, scale: float = 1.75, design_size: int = _DESIGN_SIZE) -> None:
        super().__init__()
        if scale not in DICENET_CHANNELS:
            raise ValueError(f"DiCENet width scale {scale} is not one of {sorted(DICENET_CHANNELS)}")
        c1, c2, c3, c4 = DICENET_CHANNELS[scale]
        self.channels = (c1, c2, c3, c4)
        s8, s16 = design_size // 8, design_size // 16
        self.level1 = SeqConvBNPReLU(3, c1, 3, stride=2)
        self.level2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.level3 = nn.Sequential(StridedDimensionWiseUnit(c2, s8, s8),
                                    *[ShuffleDimensionWiseBlock(2 * c2 if i == 0 else c3, c3, s8, s8)
                                      for i in range(_BLOCKS[0])])
        self.level4 = nn.Sequential(StridedDimensionWiseUnit(c3, s16, s16),
                                    *[ShuffleDimensionWiseBlock(2 * c3 if i == 0 else c4, c4, s16, s16)
                                      for i in range(_BLOCKS[1])])

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        l1 = self.level1(image)
        l2 = self.level2(l1)
        l3 = self.level3(l2)
        return l1, l2, l3, self.level4(l3)


class DiCENet(nn.Module):
    """DiCENet segmentation network. ``forward``: ``(B, 3, H, W) → SegmenterOutput`` (H, W multiples of 32).

    Args:
        num_outputs: network output channels (20 for the published Cityscapes model).
        scale: encoder width scale s (:data:`DICENET_CHANNELS`).
        decoder_base: base decoder width (16 for Cityscapes); decoder widths are 4×, 3×, 2× of it.
        num_classes, void_index: as in :class:`~vl_anomaly.networks.espnet.ESPNet`.
        design_size: input size the row/column convolutions were built for (224 for the published weights).
    """

    has_mask_queries = False
    feature_stride = 8
    size_divisor = 32

    def __init__(self, num_outputs: int = 20, scale: float = 1.75, decoder_base: int = 16, num_classes: int = 19,
                 void_index: int | None = 19, design_size: int = _DESIGN_SIZE) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.void_index = void_index
        self.base_net = DiCENetEncoder(scale, design_size)
        c1, c2, c3, c4 = self.base_net.channels
        self.feature_channels = c3
        d1, d2, d3 = 4 * decoder_base, 3 * decoder_base, 2 * decoder_base
        proj = min(num_outputs // 2, decoder_base)
        self.eff_pool_16x16 = EfficientPyramidPooling(c4, proj, d1)
        self.eff_pool_32x32 = EfficientPyramidPooling(d1, proj, d2)
        self.eff_pool_64x64 = EfficientPyramidPooling(d2, proj, d3)
        self.eff_pool_128x128 = EfficientPyramidPooling(d3, proj, num_outputs, last_bn_act=False)
        self.proj_enc_32x32 = EfficientPointwiseProjection(c3, d1)
        self.proj_enc_64x64 = EfficientPointwiseProjection(c2, d2)
        self.proj_enc_128x128 = EfficientPointwiseProjection(c1, d3)
        self.bu_br_32x32 = nn.Sequential(nn.BatchNorm2d(d1), nn.PReLU(d1))
        self.bu_br_64x64 = nn.Sequential(nn.BatchNorm2d(d2), nn.PReLU(d2))
        self.bu_br_128x128 = nn.Sequential(nn.BatchNorm2d(d3), nn.PReLU(d3))

    def forward_raw(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W) → (all output channels (B, num_outputs, H, W), level-3 features (B, c3, H/8, W/8))``."""
        levels = self.base_net(pixel_values)
        out = edgenets_decode(levels, (self.eff_pool_16x16, self.eff_pool_32x32, self.eff_pool_64x64,
                                       self.eff_pool_128x128),
                              (self.proj_enc_32x32, self.proj_enc_64x64, self.proj_enc_128x128),
                              (self.bu_br_32x32, self.bu_br_64x64, self.bu_br_128x128), pixel_values.shape[-2:])
        return out, levels[2]

    def forward(self, pixel_values: torch.Tensor) -> SegmenterOutput:
        raw, features = self.forward_raw(pixel_values)
        return split_void_channel(raw, features, self.feature_stride, self.num_classes, self.void_index)


__all__ = ["DICENET_CHANNELS", "DiCENet", "DiCENetEncoder", "DimensionWiseConv", "ShuffleDimensionWiseBlock",
           "StridedDimensionWiseUnit"]
