"""The sidecar record of every exported graph (``<file>.onnx.json``) and the names shared by export, runners and
adapters. See :mod:`vl_anomaly.deploy.export` for the three kinds of graph."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import VLAnomalyError

OUTPUT_FIELDS = ("logits", "pixel_features", "void_logits", "class_queries_logits", "masks_queries_logits",
                 "query_embeddings", "member_logits")
VL_OUTPUTS = ("s_pix", "s_mask")
OPSET = 18
KINDS = ("segmenter", "clip_image", "vl_anomaly")


class ExportError(VLAnomalyError):
    """An export that failed or does not match PyTorch."""


@dataclass
class ExportRecord:
    """The sidecar of an exported graph. ``kind``: one of :data:`KINDS`; ``extras``: kind-specific (for
    ``vl_anomaly``: the companion files, class names, score sources and fusion config)."""

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
    kind: str = "segmenter"
    inputs: list[str] = field(default_factory=lambda: ["pixel_values"])
    extras: dict = field(default_factory=dict)

    def save(self, onnx_path: Path) -> Path:
        path = Path(f"{onnx_path}.json")
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, onnx_path: Path) -> "ExportRecord":
        if not Path(onnx_path).is_file():
            raise ExportError(f"ONNX model {onnx_path} does not exist")
        path = Path(f"{onnx_path}.json")
        if not path.is_file():
            raise ExportError(f"{onnx_path} has no sidecar {path.name}; export it with `vl-anomaly export`")
        try:
            data = json.loads(path.read_text())
            data["input_size"] = tuple(data["input_size"])
            record = cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise ExportError(f"sidecar {path} is not a vl-anomaly export record ({exc}); re-export") from exc
        if record.kind not in KINDS:
            raise ExportError(f"sidecar {path} has unknown kind {record.kind!r} (expected one of {KINDS})")
        return record


def vl_companion_paths(out: str | Path) -> tuple[Path, Path]:
    """The CLIP image graph and text-embedding file exported next to a VL graph ``<stem>.onnx``."""
    out = Path(out)
    stem = out.name[: -len(".onnx")] if out.name.endswith(".onnx") else out.name
    return out.with_name(f"{stem}.clip_image.onnx"), out.with_name(f"{stem}.text.safetensors")
