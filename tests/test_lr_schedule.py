"""Learning-rate schedule, autocast precision and memory format of the training loop."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from wsiseg.errors import InputError
from wsiseg.models.checkpoint import load_checkpoint
from wsiseg.models.config import packaged_model_config
from wsiseg.train.datasets import discover_sources
from wsiseg.train.loop import StepInfo, TrainConfig, read_train_state, train

TINY = packaged_model_config("tiny")


def test_constant_schedule_is_the_default() -> None:
    cfg = TrainConfig(steps=100, lr=2e-3)
    assert {cfg.lr_at(s) for s in (0, 50, 99)} == {2e-3}


def test_cosine_warms_up_then_decays_to_its_floor() -> None:
    cfg = TrainConfig(steps=1000, lr=1e-3, lr_schedule="cosine", warmup_steps=100)
    lrs = [cfg.lr_at(s) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[99] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:99], lrs[1:100], strict=True))  # warm-up rises
    assert all(a >= b for a, b in zip(lrs[100:], lrs[101:], strict=False))  # then falls
    mid = 100 + (1000 - 100) // 2
    assert lrs[mid] == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5), rel=1e-3)
    assert lrs[-1] == pytest.approx(1e-5, rel=0.05)  # min_lr_fraction 0.01 at the end
    assert cfg.lr_at(5000) == pytest.approx(1e-5)  # past the end: the floor, not a rebound


@pytest.mark.parametrize(
    "kw",
    [
        {"lr_schedule": "step"},
        {"precision": "fp16"},
        {"warmup_steps": -1},
        {"min_lr_fraction": 1.5},
        {"steps": 0},  # would write an untrained "best" checkpoint
        {"batch_size": 0},
    ],
)
def test_bad_settings_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(InputError):
        TrainConfig(**kw)  # type: ignore[arg-type]


def test_precision_decides_the_autocast_dtype() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert TrainConfig().autocast_dtype(cpu) is None
    assert TrainConfig().autocast_dtype(cuda) is torch.bfloat16
    assert TrainConfig(precision="bf16").autocast_dtype(cpu) is torch.bfloat16
    assert TrainConfig(precision="fp32").autocast_dtype(cuda) is None


def test_bf16_channels_last_cosine_run_trains_and_resumes(small_synthetic, tmp_path: Path) -> None:
    """The benchmark's settings on CPU: the loss stays finite, checkpoints load and
    carry the settings, and a run interrupted after its first checkpoint resumes there
    and finishes the schedule."""
    sources = discover_sources(small_synthetic.image.parent)
    cfg = TrainConfig(
        steps=6,
        batch_size=2,
        pool_regions=4,
        refresh_every=1000,
        steps_per_epoch=3,
        val_every=3,
        val_regions=2,
        seed=3,
        lr_schedule="cosine",
        warmup_steps=2,
        precision="bf16",
        channels_last=True,
    )
    losses: list[float] = []
    train(TINY, cfg, sources, tmp_path / "one", on_step=lambda i: losses.append(i.loss))
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    state = read_train_state(tmp_path / "one")
    assert state["step"] == 6 and len(state["history"]) == 2
    weights, meta = load_checkpoint(tmp_path / "one" / "last.safetensors")
    assert meta["train_cfg"]["lr_schedule"] == "cosine"
    assert meta["train_cfg"]["precision"] == "bf16"
    assert all(v.is_floating_point() is False or v.dtype == torch.float32 for v in weights.values())

    def interrupt(info: StepInfo) -> None:
        if info.step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TINY, cfg, sources, tmp_path / "two", on_step=interrupt)
    assert read_train_state(tmp_path / "two")["step"] == 3
    steps: list[int] = []
    train(TINY, cfg, sources, tmp_path / "two", resume=True, on_step=lambda i: steps.append(i.step))
    assert steps == [4, 5, 6] and read_train_state(tmp_path / "two")["step"] == 6
