"""Training loop of the vision-language head: ``vl-anomaly train --config train.yaml`` (or under ``torchrun``).

What trains: the prompt context and the PL-Aligner layers (and the segmenter only with ``freeze_segmenter:
false``); CLIP never. Loss ``L = w_seg·L_seg (the segmenter's own: Mask2Former's, or pixel CE; only when it
trains) + w_pix·L_pix (R6) + w_mtxt·L_mtxt (R9, mask-query segmenters) + w_ood·L_ood (R10, when outliers are
pasted)``. AdamW (no weight decay on the prompt context), poly learning-rate decay,
gradient accumulation, gradient clipping, mixed precision (``amp``: fp16 + GradScaler on CUDA, bf16 on CPU),
DistributedDataParallel when started by ``torchrun`` (``WORLD_SIZE`` > 1; gloo on CPU, nccl on CUDA),
TensorBoard logs and a progress bar on rank 0. Checkpoints are safetensors: ``head.safetensors`` (trainable
weights + cached text embeddings, loadable by ``create_model(name, weights=...)``), ``optimizer.safetensors``
and ``trainer.json`` (iteration, config, parameter groups); ``resume: true`` continues exactly where it stopped
(data order and augmentation are functions of seed, epoch and index).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from ..cpu import flush_to_zero, set_threads
from ..errors import ConfigError
from ..factory import create_model, get_preprocess_cfg
from .data import OUTLIER_LABEL, AugmentCfg, CityscapesTrain, CocoOutliers
from .losses import mask_text_loss, outlier_margin_loss, pixel_alignment_loss


@dataclass
class TrainCfg:
    """A training run (YAML keys of the same names; see configs/train/*.yaml)."""

    model: str
    cityscapes: str
    output: str
    weights: str = "untrained"
    clip_weights: str = "default"
    split: str = "train"
    coco: str | None = None
    paste_prob: float = 0.0
    paste_size: tuple[float, float] = (0.25, 0.5)
    paste_count: int = 1
    crop: tuple[int, int] = (512, 1024)
    min_scale: float = 0.5
    max_scale: float = 2.0
    iterations: int = 20000
    batch_size: int = 8
    accumulate: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.05
    grad_clip: float = 0.01
    amp: bool = False
    workers: int = 2
    freeze_segmenter: bool = True
    #: with ``freeze_segmenter: false``, submodules of the segmenter that still stay frozen (weights and BatchNorm
    #: statistics), by name — e.g. ESPNetv2's stem and first stage ``[base_net.level1, base_net.level2_0]``, as
    #: detectron2's ``FREEZE_AT: 2``: their backward pass is skipped (a fifth of a training step at 128×256 on a
    #: CPU, docs/benchmarks.md).
    segmenter_frozen_modules: tuple[str, ...] = ()
    segmenter_lr_mult: float = 1.0
    loss_segmenter: float = 1.0
    loss_pixel: float = 1.0
    loss_mask_text: float = 2.0
    loss_outlier: float = 1.0
    margin: float = 1.0
    log_every: int = 10
    checkpoint_every: int = 1000
    seed: int = 0
    resume: bool = True
    extra: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path, **overrides) -> "TrainCfg":
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:       # incl. python/* tags: safe_load refuses them
            raise ConfigError(f"training config {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"training config {path} must be a mapping of settings, got {type(data).__name__}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown training config keys {sorted(unknown)}; known: {sorted(known)}")
        if isinstance(data.get("segmenter_frozen_modules"), str):         # one name written without a list
            data["segmenter_frozen_modules"] = [data["segmenter_frozen_modules"]]
        for key in ("crop", "paste_size", "segmenter_frozen_modules"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


class EpochSampler(Sampler):
    """Deterministic per-epoch permutation, split across ranks, starting at an offset (for exact resume)."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.epoch, self.offset = 0, 0

    def indices(self) -> list[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size).tolist()
        return order[self.rank::self.world]

    def __iter__(self):
        return iter(self.indices()[self.offset:])

    def __len__(self) -> int:
        return len(self.indices()) - self.offset


def _distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    return rank, world, device


def head_state(model) -> dict[str, torch.Tensor]:
    """The weights a head checkpoint holds: everything but CLIP (and but the segmenter when frozen)."""
    skip = ("clip.",) + (("segmenter.",) if model.freeze_segmenter else ())
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if not k.startswith(skip)}


def _save(out: Path, model, optimizer, iteration: int, cfg: TrainCfg) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.refresh_text_cache()
    save_file(head_state(model), str(out / "head.safetensors"))
    state = optimizer.state_dict()
    tensors = {f"state.{i}.{k}": v.contiguous().cpu() for i, s in state["state"].items() for k, v in s.items()
               if torch.is_tensor(v)}
    save_file(tensors, str(out / "optimizer.safetensors"))
    meta = {"iteration": iteration, "param_groups": state["param_groups"], "config": asdict(cfg)}
    (out / "trainer.json").write_text(json.dumps(meta, indent=1, default=list) + "\n")


def _load(out: Path, model, optimizer) -> int:
    head = load_file(str(out / "head.safetensors"))
    missing, unexpected = model.load_state_dict(head, strict=False)
    if unexpected:
        raise ConfigError(f"checkpoint {out} has unexpected keys {unexpected[:5]}")
    meta = json.loads((out / "trainer.json").read_text())
    tensors = load_file(str(out / "optimizer.safetensors"))
    state: dict = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["iteration"])


def _segmenter_loss(segmenter, output, labels: torch.Tensor) -> torch.Tensor:
    """The segmenter's own loss when it trains, from the forward pass already made: Mask2Former's (matching, CE,
    BCE, dice, per decoder layer), else pixel CE on its logits (the ESPNet recipes' loss); void and pasted outliers
    ignored."""
    if hasattr(segmenter, "segmentation_loss"):
        return segmenter.segmentation_loss(output.base, labels)
    target = torch.where(labels == OUTLIER_LABEL, torch.full_like(labels, 255), labels)
    return torch.nn.functional.cross_entropy(output.base.logits.float(), target, ignore_index=255)


def train(cfg: TrainCfg, progress: bool = True, max_steps: int | None = None) -> dict:
    """Run (or resume) a training; returns ``{"iteration", "losses": [per step of this call], "output"}``.
    ``max_steps`` stops after that many iterations of this call (time-sliced jobs; a checkpoint is written)."""
    if not (math.isfinite(cfg.segmenter_lr_mult) and cfg.segmenter_lr_mult >= 0):
        raise ConfigError(f"segmenter_lr_mult must be a finite number ≥ 0, got {cfg.segmenter_lr_mult!r}")
    rank, world, device = _distributed()
    set_threads(0)                              # torch's OpenMP workers created with flush-to-zero (cpu.py)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, weights=cfg.weights, device=str(device), clip_weights=cfg.clip_weights)
    if not hasattr(model, "pixel_aligner"):
        raise ConfigError(f"{cfg.model} is not a vl_anomaly model: only the vision-language head is trained here")
    if cfg.freeze_segmenter and cfg.segmenter_frozen_modules:
        raise ConfigError("segmenter_frozen_modules names parts of a segmenter that trains; with freeze_segmenter: "
                          "true the whole segmenter is frozen already (set one or the other)")
    model.set_segmenter_trainable(not cfg.freeze_segmenter, cfg.segmenter_frozen_modules)
    model.train()
    preprocess = get_preprocess_cfg(cfg.model)
    outliers = CocoOutliers(cfg.coco) if cfg.coco else None
    dataset = CityscapesTrain(cfg.cityscapes, cfg.split, preprocess,
                              AugmentCfg(tuple(cfg.crop), cfg.min_scale, cfg.max_scale), outliers, cfg.paste_prob,
                              cfg.seed, tuple(cfg.paste_size), cfg.paste_count)
    sampler = EpochSampler(len(dataset), cfg.seed, rank, world)
    params = model.trainable_parameters()
    no_decay = [p for n, p in params.items() if n.startswith("prompts.")]
    decay = [p for n, p in params.items() if not n.startswith(("prompts.", "segmenter."))]
    segmenter = [p for n, p in params.items() if n.startswith("segmenter.")]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "lr_mult": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0}]
    if segmenter:                                   # only when it trains (freeze_segmenter: false)
        groups.append({"params": segmenter, "weight_decay": cfg.weight_decay, "lr_mult": cfg.segmenter_lr_mult})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    out = Path(cfg.output)
    start = _load(out / "checkpoint", model, optimizer) if cfg.resume and (out / "checkpoint" / "trainer.json").is_file() \
        else 0
    trained = model
    if world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    use_cuda_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_cuda_amp)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
    steps_per_epoch = max(1, len(sampler.indices()) // cfg.batch_size)
    losses: list[float] = []
    bar = tqdm(total=cfg.iterations, initial=start, desc="train", unit="it", disable=not progress or rank != 0)
    iteration = start
    micro = start * cfg.accumulate
    loader_iter = None
    stop_at = cfg.iterations if max_steps is None else min(cfg.iterations, start + max_steps)
    while iteration < stop_at:
        if loader_iter is None:
            sampler.epoch, sampler.offset = divmod(micro, steps_per_epoch)
            sampler.offset *= cfg.batch_size
            dataset.set_epoch(sampler.epoch)
            loader_iter = iter(DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                                          num_workers=cfg.workers, drop_last=True))
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * group.get("lr_mult", 1.0) * (1 - iteration / cfg.iterations) ** 0.9
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        parts: dict[str, float] = {}
        for _ in range(cfg.accumulate):
            try:
                images, labels = next(loader_iter)
            except StopIteration:
                loader_iter = None
                sampler.epoch += 1
                sampler.offset = 0
                dataset.set_epoch(sampler.epoch)
                loader_iter = iter(DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                                              num_workers=cfg.workers, drop_last=True))
                images, labels = next(loader_iter)
            images, labels = images.to(device), labels.to(device)
            with flush_to_zero(), torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.amp):
                output = trained(images)
                terms = {"pixel": cfg.loss_pixel * pixel_alignment_loss(output.s_pix.float(), labels)}
                if not cfg.freeze_segmenter and cfg.loss_segmenter > 0:
                    terms["segmenter"] = cfg.loss_segmenter * _segmenter_loss(model.segmenter, output, labels)
                if output.s_mask is not None and cfg.loss_mask_text > 0:
                    terms["mask_text"] = cfg.loss_mask_text * mask_text_loss(
                        output.s_mask.float(), output.base.masks_queries_logits.float(), labels)
                if outliers is not None and cfg.loss_outlier > 0:
                    score = 1.0 - output.s_pix.float().softmax(1).amax(1)
                    terms["outlier"] = cfg.loss_outlier * outlier_margin_loss(score, labels, cfg.margin)
                loss = sum(terms.values()) / cfg.accumulate
            with flush_to_zero():                       # as inference does: subnormals slow some CPUs (cpu.py)
                scaler.scale(loss).backward()
            total += float(loss.detach())
            for k, v in terms.items():
                parts[k] = parts.get(k, 0.0) + float(v.detach()) / cfg.accumulate
            micro += 1
        scaler.unscale_(optimizer)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        iteration += 1
        losses.append(total)
        bar.update(1)
        if writer is not None and iteration % cfg.log_every == 0:
            writer.add_scalar("loss/total", total, iteration)
            for k, v in parts.items():
                writer.add_scalar(f"loss/{k}", v, iteration)
            writer.add_scalar("lr", optimizer.param_groups[0]["lr"], iteration)
            bar.set_postfix(loss=f"{total:.4f}")
        if rank == 0 and (iteration % cfg.checkpoint_every == 0 or iteration == stop_at):
            _save(out / "checkpoint", model, optimizer, iteration, cfg)
    bar.close()
    if writer is not None:
        writer.close()
    if world > 1:
        torch.distributed.barrier()
    if not math.isfinite(losses[-1] if losses else 0.0):
        raise ConfigError("training diverged (non-finite loss)")
    return {"iteration": iteration, "losses": losses, "output": str(out)}
