"""Score maps of an evaluation: decoded frames prefetched by worker threads, inference through the predictor, and
the float16 ``.npy`` maps reused while the run key (model, weights, pre-processing, scoring) is unchanged."""

from __future__ import annotations

import json
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..datasets import AnomalyDataset
from ..pipeline import AnomalyPredictor


@dataclass
class EvalTimings:
    """Wall-clock seconds per stage of one evaluation."""

    loading: float = 0.0       # waiting for decoded images/labels (after prefetching)
    inference: float = 0.0     # predictor.score_maps
    metrics: float = 0.0       # pixel + component metrics
    writing: float = 0.0       # score-map files, plots, report
    per_dataset: dict = field(default_factory=dict)


def prefetch(dataset: AnomalyDataset, workers: int, with_image: bool):
    """Yield ``(index, frame id, image or None, label)`` in order, decoding ahead in ``workers`` threads."""
    def job(i):
        if with_image:
            return dataset.load(i)
        return dataset.frames[i].frame_id, None, dataset.load_label(i)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        window: deque = deque()
        submitted = 0
        while submitted < len(dataset) and len(window) < 2 * max(1, workers):
            window.append(pool.submit(job, submitted))
            submitted += 1
        for i in range(len(dataset)):
            future = window.popleft()
            if submitted < len(dataset):
                window.append(pool.submit(job, submitted))
                submitted += 1
            frame_id, image, label = future.result()
            yield i, frame_id, image, label


def _run_key(predictor: AnomalyPredictor | None, weights: str) -> dict:
    if predictor is None:
        return {"source": "saved score maps"}
    return {"model": predictor.name, "weights": str(weights), "preprocess": predictor.preprocess_cfg.to_dict(),
            "scoring": predictor.scoring.to_dict()}


def score_map_dir(out_dir: Path, dataset: str, score: str) -> Path:
    return out_dir / "score_maps" / dataset / score


def produce_score_maps(dataset: AnomalyDataset, predictor: AnomalyPredictor | None, scores: list[str],
                       out_dir: Path, weights: str = "default", workers: int = 2,
                       timings: EvalTimings | None = None, saved_maps: Path | None = None) -> int:
    """Make sure ``OUT/score_maps/<dataset>/<score>/<fid>.npy`` exist for every frame and score.

    Runs inference (one forward pass per frame for all scores) unless the maps exist from a run with the same
    model, weights and preprocessing; with ``saved_maps`` (a folder ``<saved>/<dataset>/<fid>.npy`` of the
    user's own maps), copies those instead. Returns the number of frames inferred.
    """
    timings = timings or EvalTimings()
    run_file = out_dir / "score_maps" / dataset.name / "run.json"
    key = _run_key(predictor, weights)
    previous = json.loads(run_file.read_text()) if run_file.is_file() else None
    missing = [i for i, f in enumerate(dataset.frames)
               if not all((score_map_dir(out_dir, dataset.name, s) / f"{f.frame_id}.npy").is_file() for s in scores)]
    if previous == key and not missing:
        return 0
    if previous != key:
        missing = list(range(len(dataset)))
    for s in scores:
        score_map_dir(out_dir, dataset.name, s).mkdir(parents=True, exist_ok=True)
    if saved_maps is not None:
        for i in missing:
            fid = dataset.frames[i].frame_id
            src = saved_maps / dataset.name / f"{fid}.npy"
            if not src.is_file():
                raise FileNotFoundError(f"saved score map {src} is missing")
            for s in scores:
                np.save(score_map_dir(out_dir, dataset.name, s) / f"{fid}.npy", np.load(src).astype(np.float16))
    else:
        todo = set(missing)
        t_wait = time.perf_counter()
        for i, fid, image, _ in tqdm(prefetch(dataset, workers, True), total=len(dataset),
                                     desc=f"infer {dataset.name}", unit="frame"):
            if i not in todo:
                continue
            t0 = time.perf_counter()
            timings.loading += t0 - t_wait
            maps, _, _ = predictor.score_maps(image, scores)
            t1 = time.perf_counter()
            timings.inference += t1 - t0
            for s, m in maps.items():
                np.save(score_map_dir(out_dir, dataset.name, s) / f"{fid}.npy", m.astype(np.float16))
            t_wait = time.perf_counter()
            timings.writing += t_wait - t1
    run_file.write_text(json.dumps(key, indent=2) + "\n")
    return len(missing)


