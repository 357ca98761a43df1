"""Adapters that give exported graphs the PyTorch models' interfaces, so
:class:`~vl_anomaly.pipeline.AnomalyPredictor` runs the same scores on every backend: :class:`ExportedSegmenter`
(``pixel_values → SegmenterOutput``), :class:`ExportedClipImages` (CLIP's ``encode_images``) and
:class:`ExportedVLModel` (``pixel_values → VLOutput`` plus the CLIP crop encoder and the text tables).
:func:`load_exported` reads an export's record and builds the right one."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..outputs import SegmenterOutput, VLOutput
from .records import ExportError, ExportRecord, vl_companion_paths
from .runners import GraphRunner, make_runner


class ExportedSegmenter(nn.Module):
    """An exported segmenter behind a runner; ``forward``: ``pixel_values (1, 3, H, W)`` at the export size →
    :class:`SegmenterOutput`. Attributes mirror the PyTorch segmenters (``feature_stride``, ``has_mask_queries``,
    ``feature_channels``)."""

    def __init__(self, runner: GraphRunner) -> None:
        super().__init__()
        self.runner = runner
        self.path, self.record = runner.path, runner.record
        self.feature_stride = self.record.feature_stride
        self.has_mask_queries = self.record.has_mask_queries
        self.is_ensemble = "member_logits" in self.record.outputs
        self.feature_channels = self.record.output_shapes["pixel_features"][1]
        self.input_size = tuple(self.record.input_size)

    def _run(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        if tuple(pixel_values.shape) != (1, 3, *self.input_size):
            raise ConfigError(f"{self.path.name} was exported for input (1, 3, {self.input_size[0]}, "
                              f"{self.input_size[1]}); got {tuple(pixel_values.shape)}. Export one graph per size "
                              "(vl-anomaly export --input-size H W)")
        return self.runner.run({"pixel_values": pixel_values})

    def forward(self, pixel_values: torch.Tensor) -> SegmenterOutput:
        return SegmenterOutput(feature_stride=self.feature_stride, **self._run(pixel_values))


class ExportedClipImages:
    """The exported CLIP image encoder with the ``image_size`` / ``encode_images`` interface of
    :class:`~vl_anomaly.networks.clip_towers.FrozenCLIP`, so :func:`vl_anomaly.vl_scores.clip_crop_score` runs it
    unchanged (one batched call for all crops, at most ``max_batch``)."""

    def __init__(self, runner: GraphRunner) -> None:
        if runner.record.kind != "clip_image":
            raise ExportError(f"{runner.path} is a {runner.record.kind} export, not a CLIP image encoder")
        self.runner = runner
        self.path, self.record = runner.path, runner.record
        self.image_size = int(self.record.input_size[0])
        self.max_batch = int(self.record.extras.get("max_batch", 64))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` CLIP-normalised crops → ``(B, D)`` L2-normalised embeddings."""
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, self.image_size, self.image_size):
            raise ConfigError(f"CLIP expects (B, 3, {self.image_size}, {self.image_size}) crops, got "
                              f"{tuple(images.shape)}")
        chunks = []
        for i in range(0, images.shape[0], self.max_batch):
            chunk = images[i: i + self.max_batch]
            embeddings = self.runner.run({"images": chunk})["image_embeddings"]
            if embeddings.shape[0] != chunk.shape[0]:        # the crop score zips crops with embeddings
                raise ExportError(f"{self.path.name} returned {embeddings.shape[0]} embeddings for {chunk.shape[0]} "
                                  "crops")
            chunks.append(embeddings)
        return torch.cat(chunks).to(images.device)


class ExportedVLModel(ExportedSegmenter):
    """An exported VL-Anomaly model (:func:`vl_anomaly.deploy.export.export_vl_onnx`): ``forward`` gives a
    :class:`~vl_anomaly.outputs.VLOutput` like the PyTorch model; ``clip`` is the exported CLIP image
    encoder; the text tables come from the export."""

    is_vision_language = True

    def __init__(self, runner: GraphRunner, clip_runner: GraphRunner) -> None:
        super().__init__(runner)
        from safetensors.torch import load_file

        from ..pretrained import sha256_file

        if self.record.kind != "vl_anomaly":
            raise ExportError(f"{self.path} is a {self.record.kind} export, not a VL-Anomaly model")
        extras = self.record.extras
        _, text_path = vl_companion_paths(self.path)
        if not text_path.is_file():
            raise ExportError(f"{self.path.name} needs its text embeddings {text_path.name} next to it")
        if sha256_file(text_path) != extras["text_sha256"]:
            raise ExportError(f"{text_path} does not match the export record (re-export {self.path.name})")
        if clip_runner.record.sha256 != extras["clip_image_sha256"]:
            raise ExportError(f"{clip_runner.path} is not the CLIP encoder exported with {self.path.name}")
        tables = load_file(str(text_path))
        self.register_buffer("class_text", tables["class_text"])
        self.register_buffer("crop_text", tables["crop_text"])
        self.clip = ExportedClipImages(clip_runner)
        self.class_names = tuple(extras["class_names"])

    def crop_text_embeddings(self) -> torch.Tensor:
        return self.crop_text

    @property
    def known_classes(self) -> tuple[str, ...]:
        return self.class_names

    anomaly_prompts: tuple[str, ...] = ()

    def anomaly_text_embeddings(self) -> None:
        return None

    def set_vocabulary(self, known_classes=None, anomaly_prompts=None) -> dict:
        raise ConfigError(f"the vocabulary of the exported VL model {self.path.name} is fixed at export: its class "
                          "text is a constant of the graph and no CLIP text tower runs on the target. Change it "
                          "on the PyTorch model and export again (vl-anomaly export --known-classes ...); anomaly prompts are not part of "
                          "exports yet")

    def forward(self, pixel_values: torch.Tensor):
        out = self._run(pixel_values)
        s_pix, s_mask = out.pop("s_pix"), out.pop("s_mask", None)
        base = SegmenterOutput(feature_stride=self.feature_stride, **out)
        return VLOutput(base=base, s_pix=s_pix, s_mask=s_mask, text=self.class_text)


def load_exported(path: str | Path, backend: str = "onnxruntime", threads: int | None = None,
                  precision: str = "fp16", engine_path: str | Path | None = None,
                  force_engine_update: bool = False, device: str = "cuda", provider_fallback: str = "warn",
                  parity_pixels: Callable[[], torch.Tensor] | None = None) -> nn.Module | ExportedClipImages:
    """An export (any kind, read from its sidecar) run by ``backend``: :class:`ExportedSegmenter`,
    :class:`ExportedVLModel` (its CLIP graph found next to it) or :class:`ExportedClipImages`. The other arguments
    go to :func:`vl_anomaly.deploy.runners.make_runner` (``device``: the CUDA device of a TensorRT engine)."""
    path = Path(path)
    kind = ExportRecord.load(path).kind
    options = dict(force_engine_update=force_engine_update, device=device, provider_fallback=provider_fallback)
    runner = make_runner(path, backend, threads, precision, engine_path, parity_pixels=parity_pixels, **options)
    if kind == "clip_image":
        return ExportedClipImages(runner)
    if kind == "vl_anomaly":
        clip_path, _ = vl_companion_paths(path)
        if not clip_path.is_file():
            raise ExportError(f"{path.name} needs its CLIP image encoder {clip_path.name} next to it")
        return ExportedVLModel(runner, make_runner(clip_path, backend, threads, precision, **options))
    return ExportedSegmenter(runner)
