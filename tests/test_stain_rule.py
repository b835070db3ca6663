"""The deterministic stain-rule labeller used as a sanity check on real H&E slides."""

from __future__ import annotations

import numpy as np
import pytest

from wsiseg.bench.stain_rule import stain_rule_labels, stain_rule_source


def _patch() -> np.ndarray:
    img = np.full((60, 90, 3), 250, np.uint8)  # glass
    img[:, 30:60] = (230, 140, 190)  # eosin-pink stroma
    img[:, 60:] = (230, 140, 190)
    img[20:40, 65:85] = (70, 50, 140)  # a haematoxylin-dark nucleus cluster
    return img


def test_classes_follow_the_stain() -> None:
    lab = stain_rule_labels(_patch())
    assert np.all(lab[:, :25] == 0)
    assert np.all(lab[5:55, 35:55] == 1)
    assert np.all(lab[25:35, 70:80] == 2)


def test_deterministic_and_smooth() -> None:
    img = _patch()
    rng = np.random.default_rng(0)
    noisy = img.copy()
    flips = rng.random(img.shape[:2]) < 0.002  # isolated dark specks in the stroma
    noisy[flips & (np.arange(90)[None, :] >= 30) & (np.arange(90)[None, :] < 60)] = (70, 50, 140)
    a, b = stain_rule_labels(noisy), stain_rule_labels(noisy)
    assert np.array_equal(a, b)
    assert np.all(a[5:55, 35:55] == 1)  # single-pixel specks are smoothed away


def test_extreme_outliers_do_not_move_the_threshold() -> None:
    img = _patch()
    img[0:2, 30:32] = (5, 5, 5)  # a pen mark: huge optical density
    lab = stain_rule_labels(img)
    assert np.all(lab[25:35, 70:80] == 2)


def test_blank_and_bad_input() -> None:
    assert not stain_rule_labels(np.full((8, 8, 3), 255, np.uint8)).any()
    with pytest.raises(ValueError):
        stain_rule_labels(np.zeros((8, 8), np.uint8))
    src = stain_rule_source("p", _patch(), 0.5)
    assert src.size == (90, 60) and src.labels.max() == 2


def test_real_slide_gives_all_three_classes(shared_data) -> None:
    from wsiseg.io import open_slide

    with open_slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as r:
        w, h = r.level_dimensions[0]
        rgb = np.asarray(r.read_region(0, w // 2 - 256, h // 2 - 256, 512, 512))[..., :3]
    frac = np.bincount(stain_rule_labels(rgb).ravel(), minlength=3) / (512 * 512)
    assert frac[1] > 0.3 and 0.03 < frac[2] < 0.5
