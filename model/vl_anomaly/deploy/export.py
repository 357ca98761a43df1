"""ONNX export of the registry's models, with a numerical check against PyTorch as part of every export.

Three kinds of graph (documented in docs/deployment.md), all exporter ``dynamo=True``, opset 18, weights inside
the file, and each with a JSON sidecar (``<file>.json``, :class:`ExportRecord`: model, weights, size, outputs and
their shapes, versions, the SHA-256 of the ONNX file and the check's max abs differences):

* ``segmenter`` (:func:`export_onnx`): one graph per network input size (ENGINEERING-NOTES §6.4: dynamic H/W
  exports silently but computes wrong results for Mask2Former's pixel decoder), batch 1. Input ``pixel_values
  (1, 3, H, W)`` float32, pre-processed as the weights expect (:mod:`vl_anomaly.preprocess`); outputs named after
  :class:`~vl_anomaly.outputs.SegmenterOutput` fields, present when the model has them: ``logits (1, K, H, W)``,
  ``pixel_features (1, C, H/s, W/s)``, ``void_logits (1, 1, H, W)`` (ESPNet family), ``class_queries_logits
  (1, Q, K+1)``, ``masks_queries_logits (1, Q, H/4, W/4)``, ``query_embeddings (1, Q, D)`` (Mask2Former).
* ``clip_image`` (:func:`export_clip_image_onnx`): the frozen CLIP image tower with a **dynamic batch** of crops,
  ``images (B, 3, S, S)`` → ``image_embeddings (B, D)``.
* ``vl_anomaly`` (:func:`export_vl_onnx`): the per-frame VL-Anomaly graph — segmenter + PL-Aligner with the cached
  class text embeddings as constants — whose outputs are the segmenter's plus ``s_pix (1, K, H/s, W/s)`` and,
  with mask queries, ``s_mask (1, Q, K+1)``; exported together with its ``clip_image`` graph and a safetensors
  file of the two text-embedding tables, so no text tower runs on the target.
"""


import datetime as dt
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..outputs import SegmenterOutput
from ..pretrained import sha256_file
from ..registry import get_model_config, list_models
from ..scores import ScoringCfg
from .records import OPSET, OUTPUT_FIELDS, ExportError, ExportRecord, vl_companion_paths
from .runners import ort_session


def _export_checked(module: nn.Module, inputs: list[torch.Tensor], out: Path, input_name: str,
                    output_names: list[str], name: str, atol: float, rtol: float,
                    dynamic_shapes: tuple | None = None) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Export ``module`` (tensor → tuple of tensors) with ``inputs[0]`` as example, then run PyTorch and ONNX
    Runtime on every input; raise :class:`ExportError` when an output differs by more than
    ``atol + rtol · max|PyTorch output|`` (float32 re-association; ESPNet's logits reach ±2000 on random inputs).
    Returns the max abs differences and the output shapes at ``inputs[0]``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    try:
        torch.onnx.export(module, (inputs[0],), str(out), dynamo=True, opset_version=OPSET, external_data=False,
                          input_names=[input_name], output_names=output_names, dynamic_shapes=dynamic_shapes)
    except Exception as exc:                                                   # noqa: BLE001
        raise ExportError(f"ONNX export of {name} failed: {exc}") from exc
    session = ort_session(out, providers=["CPUExecutionProvider"])
    diffs = {f: 0.0 for f in output_names}
    scales = {f: 0.0 for f in output_names}
    shapes: dict[str, list[int]] = {}
    for x in inputs:
        with torch.no_grad():
            expected = [t.numpy() for t in module(x)]
        got = session.run(output_names, {input_name: x.numpy()})
        for f, value, reference in zip(output_names, got, expected):
            if value.shape != reference.shape:
                raise ExportError(f"ONNX export of {name}: output {f} has shape {value.shape} for input "
                                  f"{tuple(x.shape)}, PyTorch {reference.shape}")
            diffs[f] = max(diffs[f], float(np.abs(value - reference).max()))
            scales[f] = max(scales[f], float(np.abs(reference).max()))
            shapes.setdefault(f, list(reference.shape))
    bad = {f: d for f, d in diffs.items() if not d <= atol + rtol * scales[f]}
    if bad:
        raise ExportError(f"ONNX export of {name} differs from PyTorch: max abs diff {bad} exceeds "
                          f"{atol} + {rtol} x max|output| ({ {f: scales[f] for f in bad} })")
    return diffs, shapes


def _record(out: Path, **fields) -> ExportRecord:
    import onnxruntime

    record = ExportRecord(opset=OPSET, sha256=sha256_file(out), torch_version=torch.__version__,
                          onnxruntime_version=onnxruntime.__version__,
                          date=dt.datetime.now().isoformat(timespec="seconds"), **fields)
    record.save(out)
    return record


class _Flat(nn.Module):
    """Tensor → tuple of tensors (ONNX graphs return tensors, not dataclasses): ``fn(model, x)`` → the outputs."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, ...]]) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.fn(self.model, x)


def _random_inputs(count: int, shape: tuple[int, ...], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator) for _ in range(max(1, count))]


def export_onnx(model: nn.Module, out: str | Path, input_size: tuple[int, int], name: str = "", weights: str = "",
                atol: float = 1e-3, rtol: float = 1e-5, check_inputs: int = 2, seed: int = 0) -> ExportRecord:
    """Export a segmenter (returning :class:`SegmenterOutput`) to ``out`` at ``input_size`` and check it on
    ``check_inputs`` random inputs (see :func:`_export_checked`)."""
    out = Path(out)
    model = model.eval()
    inputs = _random_inputs(check_inputs, (1, 3, *input_size), seed)
    with torch.no_grad():
        reference: SegmenterOutput = model(inputs[0])
    fields = tuple(f for f in OUTPUT_FIELDS if getattr(reference, f) is not None)

    def flat_segmenter(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = m(x)                                                    # one forward for all outputs
        return tuple(getattr(output, f) for f in fields)

    flat = _Flat(model, flat_segmenter)
    diffs, shapes = _export_checked(flat, inputs, out, "pixel_values", list(fields),
                                    name or type(model).__name__, atol, rtol)
    return _record(out, model=name, weights=str(weights), input_size=tuple(input_size), outputs=list(fields),
                   output_shapes=shapes, feature_stride=int(reference.feature_stride),
                   has_mask_queries=bool(reference.has_mask_queries), max_abs_diff=diffs)


def export_clip_image_onnx(clip, out: str | Path, max_batch: int = 64, atol: float = 1e-4,
                           name: str = "clip_image") -> ExportRecord:
    """Export the frozen CLIP image encoder with a **dynamic batch** of crops: input ``images (B, 3, S, S)``
    (CLIP-normalised), output ``image_embeddings (B, D)`` L2-normalised; checked against PyTorch at batch 2, 1
    and 3 (``1 ≤ B ≤ max_batch``, recorded in ``extras``)."""
    out = Path(out)
    size = clip.image_size
    visual = clip.model.visual.eval()
    flat = _Flat(visual, lambda m, x: (torch.nn.functional.normalize(m(x), dim=-1),))
    inputs = [torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(count)) for count in (2, 1, 3)]
    batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
    diffs, shapes = _export_checked(flat, inputs, out, "images", ["image_embeddings"], f"{name} (CLIP image encoder)",
                                    atol, 0.0, dynamic_shapes=({0: batch},))
    return _record(out, model=name, weights="", input_size=(size, size), outputs=["image_embeddings"],
                   output_shapes={"image_embeddings": [-1, shapes["image_embeddings"][1]]}, feature_stride=0,
                   has_mask_queries=False, max_abs_diff=diffs, kind="clip_image", inputs=["images"],
                   extras={"max_batch": int(max(2, max_batch))})


def export_vl_onnx(model: nn.Module, out: str | Path, input_size: tuple[int, int], name: str = "",
                   weights: str = "", atol: float = 1e-3, rtol: float = 1e-5, check_inputs: int = 2,
                   seed: int = 0, scoring: ScoringCfg | None = None) -> ExportRecord:
    """Export a :class:`~vl_anomaly.networks.vl_anomaly.VLAnomalyModel` for deployment, checked against PyTorch:

    * ``out``: segmenter + PL-Aligner, input ``pixel_values (1, 3, H, W)``; outputs the segmenter's fields, then
      ``s_pix`` and (mask-query segmenters) ``s_mask``. The class text embeddings are computed once from the
      prompts (the inference cache) and become constants of the graph.
    * ``<stem>.clip_image.onnx``: the CLIP image encoder, dynamic batch up to ``scoring.max_crops``.
    * ``<stem>.text.safetensors``: ``class_text (K, D)`` (the prompts' embeddings, as in the graph) and
      ``crop_text (K, D)`` (handcrafted, template-ensembled embeddings of the CLIP crop score).

    The record's ``extras`` name the companion files (with their SHA-256), the class names and, for the record,
    the scoring settings exported with (``scoring``, default: the registered config of ``name``); the predictor
    takes its scoring from the model config, as for the PyTorch model.
    """
    from safetensors.torch import save_file

    out = Path(out)
    model = model.eval()
    with torch.no_grad():
        text = model.refresh_text_cache().clone()
    inputs = _random_inputs(check_inputs, (1, 3, *input_size), seed)
    with torch.no_grad():
        reference = model(inputs[0])
    fields = tuple(f for f in OUTPUT_FIELDS if getattr(reference.base, f) is not None)
    vl_fields = ("s_pix",) + (("s_mask",) if reference.s_mask is not None else ())

    def flat_vl(m: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = m.align(m.segmenter(x), m.text_embeddings)         # the cached text, constant in the graph
        return tuple(getattr(output.base, f) for f in fields) + tuple(getattr(output, f) for f in vl_fields)

    diffs, shapes = _export_checked(_Flat(model, flat_vl), inputs, out, "pixel_values",
                                    list(fields + vl_fields), name or "VL-Anomaly", atol, rtol)
    if scoring is None:
        scoring = ScoringCfg.from_model_config(get_model_config(name)) if name in list_models() else ScoringCfg()
    clip_path, text_path = vl_companion_paths(out)
    clip_record = export_clip_image_onnx(model.clip, clip_path, max_batch=int(scoring.max_crops),
                                         name=f"{name}.clip_image")
    save_file({"class_text": text.contiguous(), "crop_text": model.crop_text_embeddings().contiguous()},
              str(text_path))
    extras = {"clip_image": clip_path.name, "clip_image_sha256": clip_record.sha256, "text": text_path.name,
              "text_sha256": sha256_file(text_path), "class_names": list(model.prompts.class_names),
              "scoring": scoring.to_dict()}
    return _record(out, model=name, weights=str(weights), input_size=tuple(input_size),
                   outputs=list(fields + vl_fields), output_shapes=shapes,
                   feature_stride=int(reference.base.feature_stride),
                   has_mask_queries=bool(reference.base.has_mask_queries), max_abs_diff=diffs, kind="vl_anomaly",
                   extras=extras)


def export_model(model: nn.Module, out: str | Path, input_size: tuple[int, int], name: str = "",
                 weights: str = "") -> ExportRecord:
    """Export any registered model: VL-Anomaly models with :func:`export_vl_onnx` (plus their CLIP image encoder
    and text tables), segmenters with :func:`export_onnx`. Returns the record of the main graph."""
    if getattr(model, "is_vision_language", False):
        return export_vl_onnx(model, out, tuple(input_size), name=name, weights=str(weights))
    return export_onnx(model, out, tuple(input_size), name=name, weights=str(weights))
