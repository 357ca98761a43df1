"""Does VL-Anomaly training learn? End to end on a synthetic road world (issue 17 item 1), no downloads.

1. :mod:`vl_anomaly.train.synthetic` writes training scenes (Cityscapes layout), outlier objects (COCO layout), a
   validation split (scenes with objects of the *training* outlier family) and held-out test scenes whose objects
   have shapes, hues and textures never pasted in training; 256 × 512 pixels (``--quick`` and the Mask2Former
   arrangement: 128 × 256; ``--size`` overrides).
2. The registered ``vl_anomaly_espnetv2_vitb16`` arrangement (real ESPNetv2 Cityscapes weights) with a tiny
   random CLIP (the real tokenizer), its CLIP crops taken where the text-guided score fires, is evaluated
   untrained, trained with the real ``train()`` of ``vl-anomaly train`` — head and segmenter together
   (``freeze_segmenter: false``: the paper's segmenter is trained on the domain it runs on, and the real ESPNetv2
   has never seen this world: frozen, its MSP is at chance here and its stride-8 features cannot resolve the small
   objects, docs/method.md), outlier pasting on (1–3 objects of 4–40 % of the crop height) — its checkpoint
   loaded back through ``create_predictor``, and evaluated again with the same ``run_evaluation`` as
   ``vl-anomaly eval``.
3. The fusion is fitted (``calibration.fit_fusion``, as ``vl-anomaly calibrate --form auto``) on the validation
   split — never on the test scenes — separately for the untrained and the trained head: weights and form (the
   weighted sum, or the gated form that the validation pixels may prefer). The weighted sum alone, fitted on the
   same pixels, is reported beside it as ``fused_sum``.
4. Pixel AP (official protocol) on the test scenes per source — detector (msp), text_guided, clip_crops, fused —
   untrained vs trained, and per kind of novel object (colour, texture, shape: :func:`ap_by_kind`).

The Mask2Former arrangement (``--arrangement mask2former``, shorter): ``vl_anomaly_mask2former_swin_t_vitb16``
with a small Mask2Former (Swin, 32 wide, 20 queries; no Cityscapes Mask2Former weights exist here) trained from
random weights together with its head — Mask2Former's own loss, R6, R9 (Hungarian) and R10 — same data, same
evaluation.

    .venv/bin/python benchmarks/vl_learnability.py [--quick] [--arrangement espnetv2|mask2former] [--size H W]
        [--seed N] [-o FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from vl_anomaly import add_model_config, create_predictor, get_model_config
from vl_anomaly.cpu import cpu_model, set_threads
from vl_anomaly.networks.clip_towers import TINY_CLIP_CONFIG
from vl_anomaly.calibration import FUSION_FORMS, fit_fusion, sample_pixels, write_fused_maps
from vl_anomaly.datasets import load_dataset
from vl_anomaly.fusion import FusionCfg
from vl_anomaly.evaluation import run_evaluation
from vl_anomaly.metrics import PixelMetrics
from vl_anomaly.train.synthetic import (NOVEL_COLOUR_NAMES, TRAIN_GREYS, TRAIN_OUTLIERS, write_anomaly_set,
                                        write_cityscapes, write_coco_outliers)
from vl_anomaly.train.trainer import TrainCfg, train

SOURCES = ["msp", "text_guided", "clip_crops", "fused"]
NAME = "vl_learnability_tiny"
#: scene size (H, W) of the ``--quick`` runs and the Mask2Former arrangement; the full ESPNetv2 run uses
#: :data:`FULL_SIZE`: the segmenter's stride-8 features resolve the small objects there (docs/method.md).
SIZE = (128, 256)
FULL_SIZE = (256, 512)
PASTE_SIZE, PASTE_COUNT = (0.04, 0.4), 3
#: outlier images (one object each) that training pastes from; 240 were measured and did not do better (fused AP
#: 78.2 and 74.0 on the two worlds against 83.2 and 74.3, docs/method.md).
OUTLIER_IMAGES = 48
#: registered arrangement per ``--arrangement``.
ARRANGEMENTS = {"espnetv2": "vl_anomaly_espnetv2_vitb16", "mask2former": "vl_anomaly_mask2former_swin_t_vitb16"}
#: the Mask2Former arrangement's segmenter, small enough to train from random weights on 2 cores.
SMALL_MASK2FORMER = dict(backbone=dict(type="swin", embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8],
                                       window_size=7),
                         feature_size=64, mask_feature_size=64, hidden_dim=64, encoder_feedforward_dim=128,
                         encoder_layers=1, decoder_layers=3, num_attention_heads=4, dim_feedforward=128,
                         num_queries=20)


def register_tiny(folder: Path, arrangement: str = "espnetv2") -> str:
    """The registered arrangement with a tiny random CLIP config (weights None), 4 context vectors and the CLIP
    crops taken where the text-guided score fires; for ``mask2former`` its segmenter is :data:`SMALL_MASK2FORMER`."""
    cfg = get_model_config(ARRANGEMENTS[arrangement])
    cfg.pop("name")
    cfg["clip"] = {"name": "tiny", "weights": None, "config": TINY_CLIP_CONFIG}
    cfg["arch"] = {"n_ctx": 4, "heads": 8, "tau": 0.07}
    cfg["sources"] = {**cfg.get("sources", {}), "detector": "text_guided"}
    if arrangement == "mask2former":
        segmenter = f"{NAME}_mask2former_segmenter"
        (folder / f"{segmenter}.yaml").write_text(yaml.safe_dump(
            {"family": "mask2former", "classes": "cityscapes", "arch": SMALL_MASK2FORMER}))
        add_model_config(folder / f"{segmenter}.yaml")
        cfg["segmenter"] = segmenter
    path = folder / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    add_model_config(path)
    return NAME


def ap_by_kind(data: Path, maps: Path, sources: list[str] = SOURCES) -> dict[str, dict[str, float]]:
    """Pixel AP (official protocol) of each source on the novel objects of one kind at a time — by colour
    (cyan, magenta, near-white), by texture (plain, striped) and by shape — the other objects' pixels void, every
    known pixel a negative (so the figures are lower than the all-objects AP, and comparable with each other);
    from ``<data>/objects.json``, ``<data>/objects/`` and the saved score maps ``<maps>/<source>/<frame>.npy``.
    Returns ``{kind: {source: AP}}``."""
    def kinds_of(o: dict) -> set[str]:
        colour = NOVEL_COLOUR_NAMES[o["colour"]] if o["colour"] >= 0 else "training"
        return {f"colour={colour}", f"texture={'striped' if o['striped'] else 'plain'}", f"shape={o['shape']}"}

    objects = {frame: [kinds_of(o) for o in found]
               for frame, found in json.loads((data / "objects.json").read_text()).items()}
    kinds = sorted(set().union(*(k for found in objects.values() for k in found)))
    metrics = {(k, s): PixelMetrics() for k in kinds for s in sources}
    for frame, found in objects.items():
        truth = cv2.imread(str(data / "labels_masks" / f"{frame}.png"), cv2.IMREAD_UNCHANGED)
        instances = cv2.imread(str(data / "objects" / f"{frame}.png"), cv2.IMREAD_UNCHANGED)
        scores = {s: np.load(maps / s / f"{frame}.npy") for s in sources}
        for kind in kinds:
            of_kind = np.isin(instances, [k for k, object_kinds in enumerate(found, start=1) if kind in object_kinds])
            label = np.where((truth == 1) & ~of_kind, 255, truth).astype(np.uint8)
            for s in sources:
                metrics[kind, s].add(scores[s], label, frame)
    return {k: {s: round(100 * metrics[k, s].compute().AuPRC, 2) for s in sources} for k in kinds}


def evaluate(weights: str, data: Path, out: Path, seed: int,
             size: tuple[int, int] = SIZE) -> tuple[dict[str, float], dict]:
    """Fit the fusion (both forms) on the validation split, then pixel AP of every source on the test scenes, and
    of the weighted sum alone fitted on the same pixels (``fused_sum``, from the saved maps); returns
    ``({source: AP}, {"form", "gate", "weights", "sum_weights"})``."""
    sources = [s for s in SOURCES if s != "fused"]
    torch.manual_seed(seed)                    # the same random CLIP as in training (same construction order)
    predictor = create_predictor(NAME, weights=weights, score="text_guided", input_size=size)
    validation = load_dataset(f"road_anomaly_21={data / 'validation'}")
    run_evaluation([validation], sources, out / "validation", predictor, workers=1)
    samples = {"validation": sample_pixels(validation, out / "validation" / "score_maps", sources)}
    fusion = fit_fusion(samples, sources, step=0.1, model=NAME, forms=FUSION_FORMS)
    sum_only = FusionCfg(fusion.record["best_by_form"]["sum"]["weights"], fusion.norms)   # the search's best sum
    predictor.scoring = predictor.scoring.with_fusion(fusion)              # same model, now with score "fused"
    test = load_dataset(f"road_anomaly_21={data / 'novel'}")
    results = run_evaluation([test], SOURCES, out / "test", predictor, workers=1)
    scores = results["datasets"]["road_anomaly_21"]["scores"]
    ap = {s: round(scores[s]["pixel"]["AuPRC"], 2) for s in SOURCES}
    folder = write_fused_maps(test, out / "test" / "score_maps", sum_only, name="fused_sum")
    metrics = PixelMetrics()
    for index in range(len(test)):
        frame_id, _, truth = test.load(index)
        metrics.add(np.load(folder / f"{frame_id}.npy").astype(np.float32), truth, frame_id)
    ap["fused_sum"] = round(100 * metrics.compute().AuPRC, 2)
    return ap, {"form": fusion.form, "gate": fusion.gate, "weights": fusion.weights, "sum_weights": sum_only.weights}


def train_cfg(data: Path, output: Path, arrangement: str, size: tuple[int, int], iterations: int, seed: int = 0,
              frozen_modules: tuple[str, ...] | None = None, batch: int = 4) -> TrainCfg:
    """The training of this study (head and segmenter together, outliers pasted, one checkpoint at the end) on
    ``data/cityscapes`` and ``data/coco``, from the arrangement's starting weights (the real ESPNetv2's; no
    Mask2Former weights exist here: random)."""
    return TrainCfg(model=NAME, cityscapes=str(data / "cityscapes"), coco=str(data / "coco"), output=str(output),
                    weights="untrained" if arrangement == "espnetv2" else "none", clip_weights="default",
                    paste_prob=0.8, paste_size=PASTE_SIZE, paste_count=PASTE_COUNT, freeze_segmenter=False,
                    segmenter_frozen_modules=tuple(frozen_modules or ()), crop=size, min_scale=1.0, max_scale=1.0,
                    iterations=iterations, batch_size=batch, lr=1e-3, workers=0, checkpoint_every=iterations,
                    log_every=50, seed=seed, resume=False)


def run(quick: bool, workdir: Path, seed: int = 0, progress: bool = True,
        sizes: tuple[int, int, int] | None = None, arrangement: str = "espnetv2",
        size: tuple[int, int] | None = None, frozen_modules: tuple[str, ...] | None = None) -> dict:
    """The whole path in ``workdir``; ``sizes`` = (train scenes, test scenes, iterations) overrides the presets
    (ESPNetv2 quick: 160, 24, 400 at 128×256; full: 400, 60, 400 at 256×512 — more iterations overfit: 1200 gave
    fused AP 35, docs/method.md; Mask2Former, from random weights: 160, 24, 300 and 400, 60, 800 at 128×256) and
    ``size`` = (H, W) the scene size; the validation split has as many scenes as the test one."""
    start = time.perf_counter()
    presets = {"espnetv2": ((160, 24, 400), (400, 60, 400)), "mask2former": ((160, 24, 300), (400, 60, 800))}
    n_train, n_test, iterations = sizes or presets[arrangement][0 if quick else 1]
    size = tuple(size or (FULL_SIZE if arrangement == "espnetv2" and not quick else SIZE))
    data = workdir / "data"
    write_cityscapes(data / "cityscapes", "train", n_train, size, seed)
    write_coco_outliers(data / "coco", OUTLIER_IMAGES, seed=seed)
    write_anomaly_set(data / "validation", n_test, size, seed + 2, objects=(TRAIN_OUTLIERS[0], None))
    write_anomaly_set(data / "novel", n_test, size, seed + 1)
    register_tiny(workdir, arrangement)
    cfg = train_cfg(data, workdir / "train", arrangement, size, iterations, seed, frozen_modules)
    untrained, untrained_fusion = evaluate(cfg.weights, data, workdir / "eval_untrained", seed, size)
    t0 = time.perf_counter()
    history = train(cfg, progress=progress)
    train_s = time.perf_counter() - t0
    trained, trained_fusion = evaluate(str(workdir / "train" / "checkpoint" / "head.safetensors"), data,
                                        workdir / "eval_trained", seed, size)
    by_kind = {name: ap_by_kind(data / "novel", workdir / name / "test" / "score_maps" / "road_anomaly_21",
                                [*SOURCES, "fused_sum"]) for name in ("eval_untrained", "eval_trained")}
    losses = history["losses"]
    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "cpu": cpu_model(),
            "platform": platform.platform(), "torch": torch.__version__, "quick": quick, "arrangement": arrangement,
            "setup": {"seed": seed, "train_scenes": n_train, "test_scenes": n_test, "size": list(size),
                      "iterations": iterations, "batch": 4, "outlier_images": OUTLIER_IMAGES,
                      "segmenter_frozen_modules": list(cfg.segmenter_frozen_modules),
                      "outliers": "discs/ellipses/triangles/squares/pentagons, hues 0-150 and 345-360 deg, "
                                  f"{1 - TRAIN_GREYS[0]:.0%} saturated, {TRAIN_GREYS[0]:.0%} greyish "
                                  f"(value <= {TRAIN_GREYS[2][1]:g}) (pasted with p=0.8, 1-{PASTE_COUNT} per crop, "
                                  f"{PASTE_SIZE[0]:g}-{PASTE_SIZE[1]:g} of its height)",
                      "validation_objects": "the training outlier family (fusion fitted here)",
                      "novel_test_objects": "crosses/rings/stars, cyan/magenta/near-white, some striped",
                      "model": f"{ARRANGEMENTS[arrangement]} arrangement, "
                               + ("real ESPNetv2 trained with the head" if arrangement == "espnetv2" else
                                  "small Mask2Former (SMALL_MASK2FORMER) trained from random weights with the head")
                               + ", tiny random CLIP, CLIP crops where text_guided fires"},
            "untrained_ap": untrained, "trained_ap": trained,
            "trained_ap_by_kind": by_kind["eval_trained"], "untrained_ap_by_kind": by_kind["eval_untrained"],
            "fusion_weights": {"untrained": untrained_fusion["weights"], "trained": trained_fusion["weights"]},
            "fusion_form": {name: f["form"] + (f" by {f['gate']}" if f["gate"] else "")
                            for name, f in (("untrained", untrained_fusion), ("trained", trained_fusion))},
            "fusion_sum_weights": {"untrained": untrained_fusion["sum_weights"],
                                   "trained": trained_fusion["sum_weights"]},
            "loss_first_last": [round(sum(losses[:10]) / max(1, len(losses[:10])), 4),
                                round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4)],
            "train_seconds": round(train_s, 1), "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer scenes and iterations (≈ 3 min on 2 Intel Xeon cores, ≈ 5 on 2 AMD EPYC cores)")
    parser.add_argument("--arrangement", choices=sorted(ARRANGEMENTS), default="espnetv2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0,
                        help="draws the whole world (scenes, outliers, validation and test objects) and training")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="scene size (default 256 512 for the full ESPNetv2 run, else 128 256)")
    parser.add_argument("--frozen-modules", nargs="*", default=None, metavar="NAME",
                        help="segmenter modules kept frozen while it trains (TrainCfg.segmenter_frozen_modules)")
    parser.add_argument("-o", "--output", default="benchmarks/results/vl_learnability.json")
    args = parser.parse_args()
    set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vl_learnability_") as workdir:
        report = run(args.quick, Path(workdir), seed=args.seed, arrangement=args.arrangement, size=args.size,
                     frozen_modules=args.frozen_modules)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("untrained_ap", "trained_ap", "train_seconds", "seconds")}, indent=1))


if __name__ == "__main__":
    main()
