"""Small building blocks shared by the ESPNet family.

Attribute names (``conv``, ``bn``, ``act``) are chosen so that the published Cityscapes state dicts load with
``strict=True``; they are facts about those files, the code is ours.
"""

from __future__ import annotations

import torch
from torch import nn


def batch_norm(channels: int, eps: float) -> nn.BatchNorm2d:
    """BatchNorm2d with the given eps. (Checkpoints from PyTorch < 0.4 lack ``num_batches_tracked``; PyTorch's
    loader fills it in for such version-less state dicts, so ``strict=True`` still holds.)"""
    return nn.BatchNorm2d(channels, eps=eps)


def conv2d(in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1,
           bias: bool = False) -> nn.Conv2d:
    """'Same'-padded convolution: output size = ceil(input / stride)."""
    padding = (kernel - 1) // 2 * dilation
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                     bias=bias)


class Conv(nn.Module):
    """Convolution only (``conv``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1,
                 groups: int = 1) -> None:
        super().__init__()
        self.conv = conv2d(in_ch, out_ch, kernel, stride, dilation, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvBN(nn.Module):
    """Convolution → batch norm (``conv``, ``bn``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.conv = conv2d(in_ch, out_ch, kernel, stride, groups=groups)
        self.bn = batch_norm(out_ch, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class ConvBNPReLU(nn.Module):
    """Convolution → batch norm → PReLU (``conv``, ``bn``, ``act``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.conv = conv2d(in_ch, out_ch, kernel, stride, groups=groups)
        self.bn = batch_norm(out_ch, eps)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class BNPReLU(nn.Module):
    """Batch norm → PReLU (``bn``, ``act``)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.bn = batch_norm(channels, eps)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class SeqConvBNPReLU(nn.Module):
    """Conv → BN → PReLU stored as ``cbr.0/1/2`` (the naming of the EdgeNets decoders and of DiCENet);
    'same' padding, output ``⌈H/stride⌉ × ⌈W/stride⌉``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.cbr = nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2,
                                           groups=groups, bias=False),
                                 nn.BatchNorm2d(out_ch), nn.PReLU(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr(x)


class SeqBNPReLU(nn.Module):
    """BN → PReLU stored as ``br.0/1``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.br(x)


def avg_pool_half(x: torch.Tensor) -> torch.Tensor:
    """3×3 average pooling with stride 2 and padding 1 (zeros counted): ``(B, C, H, W) → (B, C, ⌈H/2⌉, ⌈W/2⌉)``."""
    return nn.functional.avg_pool2d(x, kernel_size=3, stride=2, padding=1)
