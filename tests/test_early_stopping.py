"""Early stopping in the training loop: patience, best checkpoint, whole-image validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsiseg.models.config import packaged_model_config
from wsiseg.models.deformseg import DeformSeg
from wsiseg.train.datasets import ArraySource, discover_sources
from wsiseg.train.evaluate import confusion_per_image, fitted_boxes
from wsiseg.train.loop import TrainConfig, read_train_state, train

TINY = packaged_model_config("tiny")


@pytest.fixture(scope="module")
def data(small_synthetic):  # type: ignore[no-untyped-def]
    (src,) = discover_sources(small_synthetic.image.parent)
    img, lab = src.read(1024, 512, 1024, 1024, (512, 512))  # a 512 µm patch at 1 µm/px
    return [src], [ArraySource("val", img, lab, 1.0)]


def _cfg(**kw: object) -> TrainConfig:
    base = dict(
        steps=40,
        batch_size=2,
        pool_regions=4,
        refresh_every=1000,
        steps_per_epoch=4,
        val_every=2,
        val_whole=True,
        seed=1,
    )
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_stops_when_validation_plateaus(data, tmp_path: Path) -> None:
    train_src, val_src = data
    seen: list[int] = []
    # lr 0: the weights never change, so the validation score cannot keep improving
    cfg = _cfg(lr=0.0, weight_decay=0.0, patience=2)
    best = train(
        TINY,
        cfg,
        train_src,
        tmp_path / "run",
        val_sources=val_src,
        on_step=lambda i: seen.append(i.step),
    )
    state = read_train_state(tmp_path / "run")
    stopped, best_step, hist = state["stopped_step"], state["best_step"], state["history"]
    assert stopped is not None and stopped < cfg.steps and seen[-1] == stopped
    assert [h[0] for h in hist] == list(range(2, stopped + 1, 2))
    scores = [h[1] for h in hist]
    assert best_step == hist[scores.index(max(scores))][0]  # first step with the best score
    assert all(s <= max(scores) for s in scores[-2:]) and stopped - best_step >= 2 * 2
    assert state["step"] == stopped and state["early_stop"] and best.is_file()
    assert (tmp_path / "run" / "last.safetensors").is_file()
    # a stopped run that is resumed trains nothing more
    again: list[int] = []
    train(
        TINY,
        cfg,
        train_src,
        tmp_path / "run",
        val_sources=val_src,
        resume=True,
        on_step=lambda i: again.append(i.step),
    )
    assert again == [] and read_train_state(tmp_path / "run")["stopped_step"] == stopped


def test_patience_zero_runs_every_step(data, tmp_path: Path) -> None:
    train_src, val_src = data
    cfg = _cfg(steps=8, lr=0.0, weight_decay=0.0)
    seen: list[int] = []
    train(
        TINY,
        cfg,
        train_src,
        tmp_path / "run",
        val_sources=val_src,
        on_step=lambda i: seen.append(i.step),
    )
    state = read_train_state(tmp_path / "run")
    assert seen == list(range(1, 9)) and state["stopped_step"] == 8 and not state["early_stop"]
    assert [h[0] for h in state["history"]] == [2, 4, 6, 8]


def test_whole_image_validation_is_deterministic(data, tmp_path: Path) -> None:
    train_src, val_src = data
    cfg = _cfg(steps=4, val_every=0, steps_per_epoch=4)
    for name in ("a", "b"):
        train(TINY, cfg, train_src, tmp_path / name, val_sources=val_src)
    a, b = (read_train_state(tmp_path / n)["history"] for n in ("a", "b"))
    assert a == b and len(a) == 1 and 0 <= a[0][1] <= 1


def test_defaults_keep_earlier_behaviour() -> None:
    cfg = TrainConfig()
    assert (cfg.val_every, cfg.patience, cfg.val_whole) == (0, 0, False)
    assert cfg.val_interval == cfg.steps_per_epoch
    with pytest.raises(Exception, match="patience"):
        TrainConfig(patience=-1)


def test_fitted_boxes_cover_without_padding() -> None:
    assert fitted_boxes(1000, 506) == [0, 494]
    assert fitted_boxes(522, 512) == [0, 10]
    assert fitted_boxes(453, 512) == [0]
    starts = fitted_boxes(2000, 300)
    assert starts[0] == 0 and starts[-1] == 1700 and len(starts) == 7


def test_whole_image_confusion_counts_every_pixel_once(data) -> None:
    _, (val,) = data
    model = DeformSeg(TINY.replace(sampler="uniform"))
    seen: list[tuple[int, tuple[int, ...]]] = []
    cms = confusion_per_image(model, [val], on_image=lambda i, p, t: seen.append((i, p.shape)))
    assert cms.shape == (1, 4, 4) and cms.sum() == int((val.labels < 255).sum())
    assert seen == [(0, (512, 512))]
