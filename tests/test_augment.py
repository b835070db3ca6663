"""Real-tissue augmentation (wsiseg.train.augment) and colour statistics (wsiseg.colour)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsiseg.colour import (
    HED_FROM_RGB_OD,
    RGB_OD_FROM_HED,
    ColourStats,
    colour_distance,
    colour_stats,
    rgb_to_od,
)
from wsiseg.errors import InputError
from wsiseg.models.config import packaged_model_config
from wsiseg.train.augment import RealAugment, augment_real, hed_jitter, rescale
from wsiseg.train.datasets import ArraySource
from wsiseg.train.loop import TrainConfig, train

GEOMETRY_ONLY = RealAugment(p_scale=1.0, p_stain=0.0, p_light=0.0, p_blur=0.0)
ALL_ON = RealAugment(p_scale=1.0, p_stain=1.0, p_light=1.0, p_blur=1.0)


def _blocks(n: int = 4, side: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images whose red channel encodes the label (blocks of 8 px): 40 + 60 x label."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.repeat(rng.integers(0, 4, (n, side // 8, side // 8)), 8, 1), 8, 2)
    labels = labels.astype(np.uint8)
    images = np.zeros((n, side, side, 3), np.uint8)
    images[..., 0] = 40 + 60 * labels
    images[..., 1] = rng.integers(0, 256, (n, side, side))
    images[..., 2] = 128
    return images, labels


def test_same_seed_same_batch_other_seed_other_batch() -> None:
    images, labels = _blocks()
    a = augment_real(images, labels, np.random.default_rng(5), ALL_ON)
    b = augment_real(images, labels, np.random.default_rng(5), ALL_ON)
    c = augment_real(images, labels, np.random.default_rng(6), ALL_ON)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # The input is left untouched.
    np.testing.assert_array_equal(images, _blocks()[0])


def test_labels_move_with_the_image() -> None:
    images, labels = _blocks(n=16)
    out_i, out_l = augment_real(images, labels, np.random.default_rng(0), GEOMETRY_ONLY)
    red = out_i[..., 0].astype(int)
    # Inside a block (the 3x3 neighbourhood shares one value), not a bilinear blend of two.
    pad = np.pad(red, ((0, 0), (1, 1), (1, 1)), mode="edge")
    same = np.ones_like(red, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= pad[:, dy : dy + red.shape[1], dx : dx + red.shape[2]] == red
    pure = same & ((red - 40) % 60 == 0)
    assert pure.mean() > 0.4
    np.testing.assert_array_equal(out_l[pure], ((red[pure] - 40) // 60).astype(np.uint8))
    assert not np.array_equal(out_l, labels)  # something did move


def test_rescale_keeps_centre_and_zooms() -> None:
    img = np.zeros((65, 65, 3), np.uint8)
    lab = np.zeros((65, 65), np.uint8)
    img[24:41, 24:41] = 200
    lab[24:41, 24:41] = 1
    big_i, big_l = rescale(img, lab, 1.1)
    small_i, small_l = rescale(img, lab, 0.9)
    assert big_l[32, 32] == 1 and small_l[32, 32] == 1
    assert big_l.sum() > lab.sum() > small_l.sum()
    ys, xs = np.nonzero(big_l)
    assert ys.mean() == pytest.approx(32, abs=0.5) and xs.mean() == pytest.approx(32, abs=0.5)
    np.testing.assert_array_equal(big_i[..., 0] > 100, big_l.astype(bool))


def test_hed_jitter_keeps_white_and_bounds_stained_pixels() -> None:
    s, b = ALL_ON.stain_scale, ALL_ON.stain_shift
    white = np.full((1, 1, 3), 255, np.uint8)
    for sign in (-1, 1):
        out = hed_jitter(white, np.full(3, 1 + sign * s), np.full(3, sign * b))
        assert out.min() >= 235, out
    stained = np.array([[[120, 60, 160], [200, 120, 190], [90, 40, 120]]], np.uint8)
    rng = np.random.default_rng(0)
    od = rgb_to_od(stained).astype(np.float64)
    conc = np.abs(od @ HED_FROM_RGB_OD)
    changed = 0
    for _ in range(50):
        scale, shift = rng.uniform(1 - s, 1 + s, 3), rng.uniform(-b, b, 3)
        out = hed_jitter(stained, scale, shift)
        changed += int(not np.array_equal(out, stained))
        # |dOD| <= (|c| s + b) . |M| per channel, plus rounding of 8-bit intensities.
        bound = (conc * s + b) @ np.abs(RGB_OD_FROM_HED) + 0.02
        assert np.all(np.abs(rgb_to_od(out) - od) <= bound)
    assert changed >= 45
    same = hed_jitter(stained, np.ones(3), np.zeros(3))
    assert np.abs(same.astype(int) - stained).max() <= 1


def test_colour_stats_and_distance() -> None:
    rng = np.random.default_rng(1)
    he = np.full((64, 64, 3), 255, np.uint8)
    he[16:48, 16:48] = rng.integers(0, 20, (32, 32, 3)) + np.array([150, 80, 170], np.uint8)
    stats = colour_stats([he, np.full((8, 8, 3), 255, np.uint8)])
    assert stats is not None and stats.images == 2 and stats.pixels == 32 * 32
    assert stats.mean[1] > stats.mean[0] > stats.mean[2] > 0  # eosin/haematoxylin: green OD
    assert ColourStats.from_dict(stats.to_dict()).mean == pytest.approx(stats.mean, abs=1e-5)
    assert colour_distance(stats, stats) == 0
    brown = np.full((64, 64, 3), 255, np.uint8)
    brown[8:56, 8:56] = (140, 90, 40)  # DAB-like
    other = colour_stats([brown])
    assert other is not None and colour_distance(other, stats) > 3
    assert colour_stats([np.full((8, 8, 3), 255, np.uint8)]) is None


def test_train_config_augment_values() -> None:
    assert TrainConfig().augment == "basic"
    assert TrainConfig.from_dict({"augment": "real"}).augment == "real"
    with pytest.raises(InputError, match="unknown augment"):
        TrainConfig.from_dict({"augment": "heavy"})


def test_training_with_real_augmentation_stores_colour_stats(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = np.full((96, 128, 3), 255, np.uint8)
    img[10:90, 10:120] = rng.integers(0, 30, (80, 110, 3)) + np.array([150, 70, 160], np.uint8)
    lab = np.zeros((96, 128), np.uint8)
    lab[30:70, 30:90] = 1
    src = ArraySource("a", img, lab, 0.5)
    cfg = packaged_model_config("tiny").replace(
        classes=(("Background", (255, 255, 255)), ("Gland", (0, 0, 200)))
    )
    tcfg = TrainConfig(
        steps=2, batch_size=2, pool_regions=2, steps_per_epoch=2, val_regions=1, augment="real"
    )
    best = train(cfg, tcfg, [src], tmp_path / "run", device="cpu")
    meta = json.loads(best.with_suffix(".json").read_text())["config"]
    assert meta["train_cfg"]["augment"] == "real"
    stats = ColourStats.from_dict(meta["colour_stats"])
    expected = colour_stats([img])
    assert expected is not None and stats.mean == pytest.approx(expected.mean, abs=1e-3)
