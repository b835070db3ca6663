"""The machinery every accuracy benchmark shares: run keys, result files, locks, timing.

A *run* is one model trained and evaluated under one configuration. Its key is a hash
of everything that decides its result (`run_key`), so a finished run's result file
``OUT/<key>.json`` is found again by any later process or machine, and a changed
configuration is a new run. `claim` lets several processes share one results folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsiseg.fileops import atomic_path
from wsiseg.models.config import ModelConfig
from wsiseg.models.deformseg import DeformSeg, MemorySource
from wsiseg.models.precision import nets_autocast
from wsiseg.train.loop import TrainConfig, training_step

__all__ = [
    "run_key",
    "train_identity",
    "file_signature",
    "read_result",
    "write_result",
    "claim",
    "machine",
    "time_run_kind",
    "budget_label",
]

#: TrainConfig fields added after results were first committed, at the values that
#: reproduce the earlier behaviour: left out of the key while at them, so those
#: results keep their keys.
_LATER_DEFAULTS: dict[str, Any] = {
    "augment": "basic",
    "val_every": 0,
    "patience": 0,
    "val_whole": False,
    "lr_schedule": "constant",
    "warmup_steps": 0,
    "min_lr_fraction": 0.01,
    "precision": "auto",
    "channels_last": False,
}


def train_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The training settings that decide a result (not ``threads``), for `run_key`."""
    d = dataclasses.asdict(cfg)
    d.pop("threads")  # how many threads does not change the result's meaning
    for name, default in _LATER_DEFAULTS.items():
        if d.get(name) == default:
            d.pop(name)
    return d


def run_key(identity: Mapping[str, Any]) -> str:
    """12 hex digits of the SHA-1 of ``identity`` as canonical JSON."""
    return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def file_signature(paths: Sequence[Path]) -> list[list[Any]]:
    """[name, size] of each file, sorted by path."""
    return [[p.name, p.stat().st_size] for p in sorted(paths)]


def read_result(out: Path, key: str) -> dict[str, Any] | None:
    """The finished run's record, or None when there is none."""
    path = Path(out) / f"{key}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_result(out: Path, key: str, record: Mapping[str, Any]) -> Path:
    """Write ``OUT/<key>.json`` atomically (a killed process leaves no half file)."""
    path = Path(out) / f"{key}.json"
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return path


@contextlib.contextmanager
def claim(lock: Path) -> Iterator[bool]:
    """Hold ``lock`` (a file with our pid) while running; False if a live process holds it.

    Lets several benchmark processes share one results folder: each run is trained by
    one of them. A lock left by a killed process (its pid gone) is taken over.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or "0")
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                yield False
                return
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        try:
            yield True
        finally:
            lock.unlink(missing_ok=True)
        return
    yield False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def machine() -> dict[str, Any]:
    """Where a result was made."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def time_run_kind(
    cfg: ModelConfig, batch_size: int, repeats: int = 3, train_cfg: TrainConfig | None = None
) -> tuple[float, float]:
    """Seconds per training step of ``batch_size`` regions and per predicted region, timed
    on random data (the fastest step after a warm-up one), with ``train_cfg``'s precision
    and memory format when given."""
    rng = np.random.default_rng(0)
    model = DeformSeg(cfg)
    if train_cfg is not None and train_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp = train_cfg.autocast_dtype(model.device) if train_cfg is not None else None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    r = cfg.region_px
    x = torch.rand(batch_size, 3, r, r)
    y = torch.randint(0, cfg.num_classes, (batch_size, r, r))
    times = []
    for _ in range(max(2, repeats)):
        t0 = time.perf_counter()
        with nets_autocast(model.device, amp):
            loss, _, _ = training_step(model, x, y, 1.0, rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        model.predict(MemorySource(x[:2]), (r, r))
    return min(times[1:]), (time.perf_counter() - t0) / 2


def budget_label(budget: float) -> str:
    """``full`` for budget 1, else ``1/N``."""
    return "full" if budget >= 1 else f"1/{round(1 / budget)}"
