"""Segmentation networks, one file per family; each registers its builder with the model registry."""

from torch import nn

from ..registry import register_family
from .espnet import ESPNet
from .espnetv2 import ESPNetv2
from .clip_towers import FrozenCLIP
from .dicenet import DiCENet
from .ensemble import EnsembleSegmenter, MemberInput
from .mask2former import Mask2FormerSegmenter
from .vl_anomaly import VLAnomalyModel


@register_family("espnet")
def _build_espnet(**arch) -> ESPNet:
    return ESPNet(**arch)


@register_family("espnetv2")
def _build_espnetv2(**arch) -> ESPNetv2:
    return ESPNetv2(**arch)


@register_family("dicenet")
def _build_dicenet(**arch) -> DiCENet:
    return DiCENet(**arch)


@register_family("mask2former")
def _build_mask2former(num_classes: int = 19, **arch) -> Mask2FormerSegmenter:
    return Mask2FormerSegmenter.from_config(arch, num_classes=num_classes)


@register_family("ensemble")
def _build_ensemble(members: list[nn.Module], member_inputs: list[MemberInput], member_names: list[str],
                    **arch) -> EnsembleSegmenter:
    if arch:
        raise TypeError(f"unexpected ensemble arch settings {sorted(arch)}; the members' input resolutions are "
                        "given as 'resolution' per member")
    return EnsembleSegmenter(members, member_inputs, member_names)


@register_family("vl_anomaly")
def _build_vl_anomaly(segmenter: nn.Module, clip: FrozenCLIP, class_names: tuple[str, ...], **arch) -> VLAnomalyModel:
    return VLAnomalyModel(segmenter, clip, class_names, **arch)


__all__ = ["DiCENet", "EnsembleSegmenter", "ESPNet", "ESPNetv2", "Mask2FormerSegmenter", "VLAnomalyModel"]
