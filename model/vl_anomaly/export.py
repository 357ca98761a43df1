"""ONNX export of the registry's segmenters, with a numerical check against PyTorch as part of the export.

One graph per network input size (ENGINEERING-NOTES §6.4: dynamic H/W exports silently but computes wrong
results for Mask2Former's pixel decoder), batch 1, exporter ``dynamo=True``, opset 18, weights inside the file.

Graph interface (documented in docs/deployment.md): input ``pixel_values`` ``(1, 3, H, W)`` float32, pre-processed
as the weights expect (:mod:`vl_anomaly.preprocess`); outputs, named after :class:`~vl_anomaly.outputs.SegmenterOutput`
fields and present when the model has them: ``logits (1, K, H, W)``, ``pixel_features (1, C, H/s, W/s)``,
``void_logits (1, 1, H, W)`` (ESPNet family), ``class_queries_logits (1, Q, K+1)``, ``masks_queries_logits
(1, Q, H/4, W/4)``, ``query_embeddings (1, Q, D)`` (Mask2Former). A JSON sidecar (``<file>.json``) records
model, weights, size, outputs, versions, the SHA-256 of the ONNX file and the check's max abs differences.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import VLAnomalyError
from .outputs import SegmenterOutput
from .pretrained import sha256_file

OUTPUT_FIELDS = ("logits", "pixel_features", "void_logits", "class_queries_logits", "masks_queries_logits",
                 "query_embeddings")
OPSET = 18


class ExportError(VLAnomalyError):
    """An export that failed or does not match PyTorch."""


class _Flat(nn.Module):
    """``SegmenterOutput`` → a tuple of the present fields (ONNX graphs return tensors, not dataclasses)."""

    def __init__(self, model: nn.Module, fields: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.fields = model, fields

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(pixel_values)
        return tuple(getattr(out, f) for f in self.fields)


@dataclass
class ExportRecord:
    """The sidecar of an exported graph."""

    model: str
    weights: str
    input_size: tuple[int, int]
    outputs: list[str]
    output_shapes: dict[str, list[int]]
    feature_stride: int
    has_mask_queries: bool
    opset: int
    sha256: str
    max_abs_diff: dict[str, float]
    torch_version: str
    onnxruntime_version: str
    date: str

    def save(self, onnx_path: Path) -> Path:
        path = Path(f"{onnx_path}.json")
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, onnx_path: Path) -> "ExportRecord":
        path = Path(f"{onnx_path}.json")
        if not path.is_file():
            raise ExportError(f"{onnx_path} has no sidecar {path.name}; export it with `vl-anomaly export`")
        data = json.loads(path.read_text())
        data["input_size"] = tuple(data["input_size"])
        return cls(**data)


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    providers = [p for p in preferred if p in ort.get_available_providers()]
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:                                                   # noqa: BLE001
        raise ExportError(f"ONNX Runtime cannot load {path}: {exc}") from exc


def export_onnx(model: nn.Module, out: str | Path, input_size: tuple[int, int], name: str = "", weights: str = "",
                atol: float = 1e-3, rtol: float = 1e-5, check_inputs: int = 2, seed: int = 0) -> ExportRecord:
    """Export ``model`` (a segmenter returning :class:`SegmenterOutput`) to ``out`` and check it.

    The check runs PyTorch and ONNX Runtime on ``check_inputs`` random inputs of the export size and raises
    :class:`ExportError` when an output differs by more than ``atol + rtol · max|PyTorch output|`` (float32
    re-association; ESPNet's logits reach ±2000 on random inputs).
    """
    import onnxruntime

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    generator = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(1, 3, *input_size, generator=generator) for _ in range(max(1, check_inputs))]
    with torch.no_grad():
        reference: SegmenterOutput = model(inputs[0])
    fields = tuple(f for f in OUTPUT_FIELDS if getattr(reference, f) is not None)
    try:
        torch.onnx.export(_Flat(model, fields), (inputs[0],), str(out), dynamo=True, opset_version=OPSET,
                          external_data=False, input_names=["pixel_values"], output_names=list(fields))
    except Exception as exc:                                                   # noqa: BLE001
        raise ExportError(f"ONNX export of {name or type(model).__name__} failed: {exc}") from exc
    session = _session(out)
    diffs = {f: 0.0 for f in fields}
    scales = {f: 0.0 for f in fields}
    for x in inputs:
        with torch.no_grad():
            expected = model(x)
        got = session.run(list(fields), {"pixel_values": x.numpy()})
        for f, value in zip(fields, got):
            reference_value = getattr(expected, f).numpy()
            diffs[f] = max(diffs[f], float(np.abs(value - reference_value).max()))
            scales[f] = max(scales[f], float(np.abs(reference_value).max()))
    bad = {f: d for f, d in diffs.items() if not d <= atol + rtol * scales[f]}
    if bad:
        raise ExportError(f"ONNX export of {name} differs from PyTorch: max abs diff {bad} exceeds "
                          f"{atol} + {rtol} x max|output| ({ {f: scales[f] for f in bad} })")
    record = ExportRecord(
        model=name, weights=str(weights), input_size=tuple(input_size), outputs=list(fields),
        output_shapes={f: list(getattr(reference, f).shape) for f in fields},
        feature_stride=int(reference.feature_stride), has_mask_queries=bool(reference.has_mask_queries),
        opset=OPSET, sha256=sha256_file(out), max_abs_diff=diffs, torch_version=torch.__version__,
        onnxruntime_version=onnxruntime.__version__, date=dt.datetime.now().isoformat(timespec="seconds"))
    record.save(out)
    return record


class _ClipImage(nn.Module):
    """CLIP image tower → L2-normalised embeddings ``(B, D)``."""

    def __init__(self, clip) -> None:
        super().__init__()
        self.visual = clip.model.visual

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.visual(images), dim=-1)


def export_clip_image_onnx(clip, out: str | Path, max_batch: int = 64, atol: float = 1e-4,
                           name: str = "clip_image") -> ExportRecord:
    """Export the frozen CLIP image encoder with a **dynamic batch** of crops: input ``images (B, 3, S, S)``
    (CLIP-normalised), output ``image_embeddings (B, D)``; checked against PyTorch at batch 1 and 3."""
    import onnxruntime

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    size = clip.image_size
    module = _ClipImage(clip).eval()
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        torch.onnx.export(module, (example,), str(out), dynamo=True, opset_version=OPSET, external_data=False,
                          input_names=["images"], output_names=["image_embeddings"],
                          dynamic_shapes=({0: batch},))
    except Exception as exc:                                                   # noqa: BLE001
        raise ExportError(f"ONNX export of the CLIP image encoder failed: {exc}") from exc
    session = _session(out)
    worst = 0.0
    for count in (1, 3):
        x = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(count))
        with torch.no_grad():
            expected = module(x).numpy()
        got = session.run(["image_embeddings"], {"images": x.numpy()})[0]
        if got.shape != expected.shape:
            raise ExportError(f"CLIP image export returns {got.shape} for batch {count}, expected {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > atol:
        raise ExportError(f"CLIP image export differs from PyTorch by {worst} (> {atol})")
    with torch.no_grad():
        dim = int(module(example[:1]).shape[-1])
    record = ExportRecord(
        model=name, weights="", input_size=(size, size), outputs=["image_embeddings"],
        output_shapes={"image_embeddings": [-1, dim]}, feature_stride=0, has_mask_queries=False, opset=OPSET,
        sha256=sha256_file(out), max_abs_diff={"image_embeddings": worst}, torch_version=torch.__version__,
        onnxruntime_version=onnxruntime.__version__, date=dt.datetime.now().isoformat(timespec="seconds"))
    record.save(out)
    return record
