"""The training loop: one code path for learned, uniform and tiled models."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from wsiseg.colour import ColourStats, colour_stats
from wsiseg.errors import InputError
from wsiseg.fileops import atomic_path
from wsiseg.models.checkpoint import save_checkpoint
from wsiseg.models.config import ModelConfig
from wsiseg.models.deformseg import DeformSeg, MemorySource
from wsiseg.models.loading import checkpoint_config, load_model, resolve_device
from wsiseg.models.precision import autocast_dtype, nets_autocast
from wsiseg.train.augment import augment_real
from wsiseg.train.datasets import LabeledSource
from wsiseg.train.evaluate import confusion_per_image
from wsiseg.train.losses import (
    edge_loss,
    edge_target,
    gamma_schedule,
    segmentation_loss,
)
from wsiseg.train.metrics import confusion_matrix, mean_iou
from wsiseg.train.regions import RegionDrawer, augment, to_tensors

__all__ = [
    "TrainConfig",
    "StepInfo",
    "check_out_dir",
    "train",
    "training_step",
    "validate",
    "read_train_state",
]

log = logging.getLogger(__name__)

AUGMENTS = ("basic", "real")
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the model's own settings live in `ModelConfig`)."""

    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    edge_gamma: float = 1.0
    seed: int = 0
    pool_regions: int = 64
    refresh_every: int = 50
    steps_per_epoch: int = 100
    val_regions: int = 16
    jitter: float = 0.06
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default
    #: "basic": flips and 90° rotations (synthetic slides); "real": also scale, H&E stain
    #: jitter, brightness/contrast and blur (`wsiseg.train.augment`) for real tissue
    augment: str = "basic"
    #: validate every ``val_every`` steps (0: every ``steps_per_epoch``, at each checkpoint)
    val_every: int = 0
    #: stop after this many validations without a better score (0: never; ``steps`` is the cap)
    patience: int = 0
    #: validate on every pixel of each validation image (`confusion_per_image`:
    #: deterministic) instead of ``val_regions`` random regions
    val_whole: bool = False
    #: "constant" lr, or "cosine": linear warm-up over ``warmup_steps``, then a cosine
    #: decay to ``min_lr_fraction`` x lr at ``steps`` (the schedule spans the whole cap)
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_fraction: float = 0.01
    #: autocast precision of the forward pass: "auto" (bf16 on CUDA, fp32 elsewhere),
    #: "fp32" or "bf16" (also on CPUs with bf16 instructions: about 2x faster there)
    precision: str = "auto"
    #: channels-last memory format for the convolutions (faster with oneDNN on CPU)
    channels_last: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.augment not in AUGMENTS:
            raise InputError(f"unknown augment {self.augment!r} (known: {', '.join(AUGMENTS)})")
        if self.val_every < 0 or self.patience < 0:
            raise InputError("val_every and patience must be >= 0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(
                f"unknown lr_schedule {self.lr_schedule!r} (known: {', '.join(LR_SCHEDULES)})"
            )
        autocast_dtype(self.precision, torch.device("cpu"))  # refuses an unknown one
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_fraction <= 1.0:
            raise InputError("warmup_steps must be >= 0 and min_lr_fraction in [0, 1]")

    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) ``step``; a pure function of the step, so resume
        needs no scheduler state."""
        if self.lr_schedule == "constant":
            return self.lr
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        floor = self.min_lr_fraction
        return self.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t)))

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype on ``device`` (None: full float32), as at inference
        (`wsiseg.models.precision.autocast_dtype`)."""
        return autocast_dtype(self.precision, device)

    @property
    def val_interval(self) -> int:
        """Steps between validations."""
        return self.val_every or self.steps_per_epoch

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown training config keys: {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass
class StepInfo:
    """Progress report passed to the caller's callback."""

    step: int
    total: int
    loss: float
    seg_loss: float
    edge_loss: float
    val_miou: float | None = None


def training_step(
    model: DeformSeg,
    images: torch.Tensor,
    labels: torch.Tensor,
    gamma: float,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, float, float]:
    """Loss of one batch of regions (images [B,3,R,R] in [0,1], labels [B,R,R])."""
    cfg = model.config
    device = model.device
    out = model.sampler.training_outputs(model, images, labels, rng)
    seg = segmentation_loss(out.logits, out.target)
    if out.density is None or gamma <= 0:
        return seg, float(seg.detach()), 0.0
    g = cfg.saliency_grid_px
    edge = edge_loss(out.density, edge_target(labels.to(device), (g, g)))
    return seg + gamma * edge, float(seg.detach()), float(edge.detach())


@torch.no_grad()
def validate(
    model: DeformSeg, images: np.ndarray, labels: np.ndarray, batch_size: int = 4
) -> tuple[float, np.ndarray]:
    """mIoU (and the confusion matrix) of whole-region predictions at full label resolution."""
    model.eval()
    k = model.config.num_classes
    cm = np.zeros((k, k), np.int64)
    for i in range(0, len(images), batch_size):
        x, y = to_tensors(images[i : i + batch_size], labels[i : i + batch_size])
        probs, _ = model.predict(
            MemorySource(x.to(model.device)), (int(y.shape[-2]), int(y.shape[-1]))
        )
        cm += confusion_matrix(probs.argmax(1).cpu().numpy(), y.numpy(), k)
    model.train()
    return mean_iou(cm), cm


def _save_train_state(run: Path, opt: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for pid, state in opt.state_dict()["state"].items():
        for key, val in state.items():
            if isinstance(val, torch.Tensor):
                tensors[f"{pid}.{key}"] = val.detach().cpu().contiguous()
    with atomic_path(run / "train_state.safetensors", overwrite=True) as tmp:
        save_file(tensors, str(tmp))
    with atomic_path(run / "train_state.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))


def read_train_state(run: Path) -> dict[str, Any]:
    """Progress of a training run in ``run``: ``step`` (last checkpoint), ``best_miou``,
    ``best_step``, ``stopped_step`` (None until it stopped early or reached ``steps``),
    ``early_stop`` (it ran out of patience), ``history`` ([step, val mIoU] per validation). Runs written before early stopping
    existed lack the later keys; they read as None / [] here."""
    meta: dict[str, Any] = json.loads((Path(run) / "train_state.json").read_text())
    meta.setdefault("best_step", None)
    meta.setdefault("stopped_step", None)
    meta.setdefault("stale", 0)
    meta.setdefault("early_stop", False)
    meta.setdefault("history", [])
    return meta


def _load_train_state(run: Path, opt: torch.optim.Optimizer) -> dict[str, Any]:
    meta = read_train_state(run)
    flat = load_file(str(run / "train_state.safetensors"))
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, val in flat.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = val
    sd["state"] = state
    opt.load_state_dict(sd)
    return meta


def _colour_stats(sources: Sequence[LabeledSource], max_px: int = 512) -> ColourStats | None:
    """OD statistics of the tissue of the training images, each read whole at <= max_px."""

    def images() -> Iterator[np.ndarray]:
        for src in sources:
            w, h = src.size
            f = min(1.0, max_px / max(w, h))
            out = (max(1, round(h * f)), max(1, round(w * f)))
            yield src.read(0, 0, w, h, out)[0]

    stats = colour_stats(images())
    if stats is not None:
        log.info("training colour (OD mean %s)", ", ".join(f"{v:.3f}" for v in stats.mean))
    return stats


def check_out_dir(out_dir: Path, *, resume: bool) -> None:
    """Refuse a training folder that holds files unless the run resumes there (callers
    check before loading data, so the refusal comes at once).

    Raises
    ------
    InputError
        ``out_dir`` is a file, or not empty without ``resume``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not resume:
        raise InputError(f"{out_dir} is not empty (use --resume to continue a run)")


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train_sources: Sequence[LabeledSource],
    out_dir: Path,
    *,
    val_sources: Sequence[LabeledSource] | None = None,
    device: str = "auto",
    resume: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    data_summary: Mapping[str, Any] | None = None,
) -> Path:
    """Train a model; checkpoints go to ``out_dir/last`` (every epoch) and ``out_dir/best``.

    Validation (on ``val_sources``, else the training sources) every
    ``train_cfg.val_interval`` steps keeps the best checkpoint; with ``patience`` > 0
    training stops after that many validations without a better score. A resumed run
    that had stopped trains no further. `read_train_state` gives the best and stopping
    steps. Returns the path of the best checkpoint (``.safetensors``).
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir, resume=resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    if train_cfg.threads > 0:
        torch.set_num_threads(train_cfg.threads)
    torch.manual_seed(train_cfg.seed)
    rng = np.random.default_rng(train_cfg.seed)
    model = DeformSeg(model_cfg).to(dev)
    if train_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(
        model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay
    )
    drawer = RegionDrawer(train_sources, model_cfg.region_px, model_cfg.task_mpp)
    val_src = list(val_sources or train_sources)
    if train_cfg.val_whole:

        def run_validation() -> float:
            score = mean_iou(confusion_per_image(model, val_src).sum(0))
            model.train()
            return score

    else:
        val_drawer = RegionDrawer(val_src, model_cfg.region_px, model_cfg.task_mpp)
        val_images, val_labels = val_drawer.draw(
            train_cfg.val_regions, np.random.default_rng(12345)
        )

        def run_validation() -> float:
            return validate(model, val_images, val_labels)[0]

    start, best = 0, -1.0
    progress: dict[str, Any] = {
        "best_step": None,
        "stopped_step": None,
        "early_stop": False,
        "stale": 0,
        "history": [],
    }
    if resume and (out_dir / "train_state.json").exists():
        loaded = load_model(out_dir / "last.safetensors", device=str(dev))
        model.load_state_dict(loaded.state_dict())
        meta = _load_train_state(out_dir, opt)
        start, best = int(meta["step"]), float(meta["best_miou"])
        progress = {k: meta[k] for k in progress}
        rng = np.random.default_rng([train_cfg.seed, start])
        log.info("resuming %s at step %d (best mIoU %.4f)", out_dir, start, best)
        if progress["early_stop"]:
            start = train_cfg.steps  # it ran out of patience: nothing more to train
        elif start < train_cfg.steps:
            progress["stopped_step"] = None  # a longer run continues
    with atomic_path(out_dir / "config.json", overwrite=True) as tmp:
        tmp.write_text(
            json.dumps(
                {"model": model_cfg.to_dict(), "train": dataclasses.asdict(train_cfg)}, indent=2
            )
        )
    summary = dict(data_summary or {})
    summary.setdefault("train_images", [s.name for s in train_sources])
    if val_sources:
        summary.setdefault("val_images", [s.name for s in val_sources])
    colour = _colour_stats(train_sources)

    def save(name: str, step: int, miou: float) -> None:
        meta = checkpoint_config(
            model_cfg,
            train_cfg=dataclasses.asdict(train_cfg),
            data=summary,
            step=step,
            val_miou=miou if np.isfinite(miou) else None,  # None: not validated since resume
            **({"colour_stats": colour.to_dict()} if colour is not None else {}),
        )
        save_checkpoint(out_dir / name, model.state_dict(), meta)

    pool_i: np.ndarray | None = None
    pool_l: np.ndarray | None = None
    amp_dtype = train_cfg.autocast_dtype(dev)
    model.train()
    t0 = time.perf_counter()
    miou = float("nan")
    for step in range(start, train_cfg.steps):
        if pool_i is None or pool_l is None or (step - start) % train_cfg.refresh_every == 0:
            pool_i, pool_l = drawer.draw(train_cfg.pool_regions, rng)
        idx = rng.integers(0, len(pool_i), size=train_cfg.batch_size)
        if train_cfg.augment == "real":
            imgs, labs = augment_real(pool_i[idx], pool_l[idx], rng)
        else:
            imgs, labs = augment(pool_i[idx], pool_l[idx], rng)
        x, y = to_tensors(imgs, labs, rng, train_cfg.jitter)
        gamma = gamma_schedule(step, train_cfg.steps, train_cfg.edge_gamma)
        for group in opt.param_groups:
            group["lr"] = train_cfg.lr_at(step)
        with nets_autocast(dev, amp_dtype):
            loss, seg, edge = training_step(model, x, y, gamma, rng)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        info = StepInfo(step + 1, train_cfg.steps, float(loss.detach()), seg, edge)
        last_step = step + 1 == train_cfg.steps
        stop = False
        if (step + 1) % train_cfg.val_interval == 0 or last_step:
            miou = run_validation()
            info.val_miou = miou
            progress["history"].append([step + 1, miou])
            if miou > best:
                best, progress["best_step"], progress["stale"] = miou, step + 1, 0
                save("best", step + 1, miou)
            else:
                progress["stale"] += 1
            log.info("step %d: val mIoU %.4f (best %.4f)", step + 1, miou, best)
            stop = 0 < train_cfg.patience <= progress["stale"]
            if stop or last_step:
                progress["stopped_step"], progress["early_stop"] = step + 1, stop
        if (step + 1) % train_cfg.steps_per_epoch == 0 or last_step or stop:
            save("last", step + 1, miou)
            _save_train_state(out_dir, opt, {"step": step + 1, "best_miou": best, **progress})
        if on_step is not None:
            on_step(info)
        if stop:
            log.info(
                "stopped at step %d: %d validations without improvement (best step %s)",
                step + 1,
                progress["stale"],
                progress["best_step"],
            )
            break
    log.info("trained from step %d in %.0f s", start, time.perf_counter() - t0)
    return out_dir / "best.safetensors"
