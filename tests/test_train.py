"""Training, checkpoints, resume and evaluation on a small synthetic slide (CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsiseg.cli import main
from wsiseg.models.checkpoint import CheckpointError
from wsiseg.models.config import packaged_model_config
from wsiseg.models.deformseg import DeformSeg, MemorySource
from wsiseg.models.loading import load_model
from wsiseg.train.datasets import discover_sources
from wsiseg.train.loop import TrainConfig, train, training_step
from wsiseg.train.regions import RegionDrawer, to_tensors

TINY = packaged_model_config("tiny")


@pytest.fixture(scope="module")
def sources(small_synthetic):
    return discover_sources(small_synthetic.image.parent)


def test_discovers_synthetic_pairs(sources, small_synthetic) -> None:
    (src,) = sources
    assert src.name == "small" and src.size == (3072, 2048) and src.mpp == pytest.approx(0.5)
    img, lab = src.read(1000, 600, 512, 512, (256, 256))
    assert img.shape == (256, 256, 3) and lab.shape == (256, 256)
    assert set(np.unique(lab)) <= {0, 1, 2, 3}


def test_regions_come_from_tissue(sources) -> None:
    drawer = RegionDrawer(sources, 256, 0.5)
    _, labels = drawer.draw(6, np.random.default_rng(0))
    tissue = ((labels > 0) & (labels < 255)).mean(axis=(1, 2))
    assert (tissue > 0).all()


@pytest.mark.parametrize("sampler", ["learned", "uniform", "tiled"])
def test_every_sampler_trains_one_step(sources, sampler: str) -> None:
    torch.manual_seed(0)
    model = DeformSeg(TINY.replace(sampler=sampler))
    imgs, labs = RegionDrawer(sources, 256, 0.5).draw(2, np.random.default_rng(0))
    x, y = to_tensors(imgs, labs)
    loss, seg, edge = training_step(model, x, y, 1.0, np.random.default_rng(0))
    loss.backward()
    assert np.isfinite(seg)
    grads = [p.grad for p in model.segmenter.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    if sampler == "learned":
        assert edge > 0
        assert model.saliency is not None
        sal = [p.grad for p in model.saliency.parameters() if p.grad is not None]
        assert sal and any(g.abs().sum() > 0 for g in sal), "gradients must reach the saliency net"
    probs, _ = model.predict(MemorySource(x), (256, 256))
    assert probs.shape == (2, 4, 256, 256)
    assert torch.allclose(probs.sum(1), torch.ones(2, 256, 256), atol=1e-4)


def test_short_training_lowers_loss_and_checkpoints(sources, tmp_path: Path) -> None:
    losses: list[float] = []
    cfg = TrainConfig(
        steps=40,
        batch_size=4,
        lr=3e-3,
        pool_regions=8,
        refresh_every=1000,
        steps_per_epoch=20,
        val_regions=2,
        seed=3,
    )
    best = train(TINY, cfg, sources, tmp_path / "run", on_step=lambda i: losses.append(i.loss))
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8]), losses
    assert best.exists() and (tmp_path / "run" / "last.safetensors").exists()
    meta = json.loads((tmp_path / "run" / "best.json").read_text())["config"]
    assert meta["model"]["segmenter"] == "unet-tiny" and meta["data"]["train_images"] == ["small"]
    model = load_model(best, device="cpu")
    assert model.config == TINY
    # Resume continues from the saved step and finishes the longer run.
    steps_seen: list[int] = []
    longer = TrainConfig(**{**cfg.__dict__, "steps": 50})
    train(
        TINY,
        longer,
        sources,
        tmp_path / "run",
        resume=True,
        on_step=lambda i: steps_seen.append(i.step),
    )
    assert steps_seen[0] == 41 and steps_seen[-1] == 50
    with pytest.raises(Exception, match="not empty"):
        train(TINY, cfg, sources, tmp_path / "run")


def test_cli_train_and_evaluate(small_synthetic, tmp_path: Path, capsys) -> None:
    data = small_synthetic.image.parent
    runs = {}
    for sampler in ("learned", "uniform"):
        out = tmp_path / sampler
        main(
            [
                "train",
                "--config",
                "tiny",
                "--sampler",
                sampler,
                "--data",
                str(data),
                "-o",
                str(out),
                "--steps",
                "4",
            ]
        )
        runs[sampler] = out / "best.safetensors"
        assert json.loads((out / "config.json").read_text())["model"]["sampler"] == sampler
    ev = tmp_path / "eval"
    main(
        [
            "evaluate",
            "--model",
            str(runs["learned"]),
            "--baseline",
            str(runs["uniform"]),
            "--data",
            str(data),
            "-o",
            str(ev),
        ]
    )
    result = json.loads((ev / "eval.json").read_text())
    assert result["n_slides"] == 1
    labels = list(result["models"])
    assert labels[0].startswith("learned") and labels[1].startswith("uniform")
    for r in result["models"].values():
        assert 0 <= r["miou"] <= 1 and len(r["iou"]) == 4
    assert "diff_vs_first" in result["models"][labels[1]]
    assert "mIoU" in (ev / "eval.md").read_text()
    capsys.readouterr()


def test_pickled_checkpoint_is_refused_by_loader(tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(2)}, bad)
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(bad, device="cpu")


def test_unknown_architecture_is_refused(tmp_path: Path) -> None:
    from wsiseg.models.checkpoint import save_checkpoint

    model = DeformSeg(TINY)
    cfg = {"model": {**TINY.to_dict(), "segmenter": "no-such-net"}}
    path = save_checkpoint(tmp_path / "m", model.state_dict(), cfg)
    with pytest.raises(CheckpointError, match="no-such-net"):
        load_model(path, device="cpu")
