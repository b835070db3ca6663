"""Tissue detection and mask <-> polygon conversion."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from wsiseg.geometry import mask_to_polygons, polygons_to_mask
from wsiseg.io import open_slide
from wsiseg.tissue import TissueParams, detect_tissue, tissue_mask_from_rgb
from wsiseg.train.datasets import LabelMask


def test_polygons_round_trip_with_holes_and_diagonals() -> None:
    rng = np.random.default_rng(0)
    m = ndimage.binary_opening(rng.random((120, 160)) > 0.45)
    m[30:60, 30:60] = True
    m[40:50, 40:50] = False  # a hole
    m[0, 0] = m[1, 1] = True  # diagonal contact
    g = mask_to_polygons(m)
    assert g.is_valid and g.area == m.sum()
    assert any(len(p.interiors) for p in g.geoms), "holes must stay holes"
    np.testing.assert_array_equal(polygons_to_mask(g, m.shape), m)
    g4 = mask_to_polygons(m, scale=4.0, offset=(10.0, 20.0))
    assert g4.area == pytest.approx(16 * m.sum())
    np.testing.assert_array_equal(polygons_to_mask(g4, m.shape, 4.0, (10.0, 20.0)), m)


def test_all_tissue_image_is_not_split() -> None:
    rng = np.random.default_rng(1)
    pink = np.empty((200, 200, 3), np.uint8)
    pink[..., 0] = 220 + rng.integers(-10, 10, (200, 200))
    pink[..., 1] = 120 + rng.integers(-30, 30, (200, 200))  # strong texture: Otsu would split it
    pink[..., 2] = 180 + rng.integers(-10, 10, (200, 200))
    mask, _ = tissue_mask_from_rgb(pink, 8.0)
    assert mask.mean() > 0.99


def test_blank_glass_has_no_tissue() -> None:
    rng = np.random.default_rng(2)
    glass = (240 + rng.integers(-3, 4, (150, 150, 3))).astype(np.uint8)
    mask, _ = tissue_mask_from_rgb(glass, 8.0)
    assert not mask.any()


def test_detects_tissue_of_synthetic_slide(small_synthetic) -> None:
    with open_slide(small_synthetic.image) as r:
        tm = detect_tissue(r, TissueParams(thumb_mpp=8.0))
    labels = LabelMask(small_synthetic.mask)
    level = len(labels.level_sizes) - 1
    w, h = labels.level_sizes[level]
    truth = labels.read(level, 0, 0, w, h) > 0
    truth_scale = 3072 / w
    pred = polygons_to_mask(tm.polygons, (h, w), scale=truth_scale)
    inter, union = (pred & truth).sum(), (pred | truth).sum()
    assert inter / union > 0.85
    minx, miny, maxx, maxy = tm.polygons.bounds
    assert 0 <= minx and 0 <= miny and maxx <= 3072 and maxy <= 2048


def test_real_slide_has_tissue(shared_data) -> None:
    with open_slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as r:
        tm = detect_tissue(r)
    assert 0.1 < tm.fraction < 0.9


@pytest.mark.parametrize("band_rows", [1, 7, 256])
def test_saturation_equals_skimage_hsv_in_bands(band_rows: int) -> None:
    """The banded saturation is bit-identical to skimage's whole-image HSV (so tissue
    masks do not change), greys, black and white included."""
    from skimage import color

    from wsiseg.tissue import saturation

    rng = np.random.default_rng(band_rows)
    rgb = rng.integers(0, 256, (301, 203, 3), dtype=np.uint8)
    rgb[:9] = 0
    rgb[9:20] = 255
    rgb[20:40, :, 1] = rgb[20:40, :, 2] = rgb[20:40, :, 0]  # greys: delta 0
    assert np.array_equal(saturation(rgb, band_rows), color.rgb2hsv(rgb)[..., 1])


def _whole_image_mask(
    rgb: np.ndarray, mpp: float, params: TissueParams
) -> tuple[np.ndarray, float]:
    """The tissue mask as computed before the banded version (whole-image HSV)."""
    from skimage import color, filters, morphology

    sat = color.rgb2hsv(rgb)[..., 1]
    dark = rgb.max(axis=-1) < 40
    values = sat[~dark]
    thr = params.saturation_floor
    if values.size and values.max() > values.min():
        otsu = float(filters.threshold_otsu(values))
        low = values[values <= otsu]
        if low.size and float(low.mean()) <= params.background_max:
            thr = max(otsu, params.saturation_floor)
    mask = (sat > thr) & ~dark
    radius = max(1, round(params.closing_um / mpp / 2))
    mask = morphology.closing(mask, morphology.disk(radius))
    mask = morphology.remove_small_holes(mask, max_size=max(1, round(params.max_hole_um2 / mpp**2)))
    mask = morphology.remove_small_objects(
        mask, max_size=max(1, round(params.min_object_um2 / mpp**2))
    )
    return mask, thr


def _test_images(small_synthetic) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 256, (157, 211, 3), dtype=np.uint8)
    tissue_on_glass = np.full((180, 240, 3), 235, np.uint8)
    tissue_on_glass[40:140, 60:200] = (190, 120, 170)
    tissue_on_glass[:10] = 0  # a black border
    grey = np.full((64, 64, 3), 128, np.uint8)  # no variation: the floor
    # Two stains on noisy glass: Otsu lands above the floor and decides the mask.
    stained = np.clip(rng.normal(232, 3, (190, 230, 3)), 0, 255).astype(np.uint8)
    stained[30:120, 20:110] = np.clip(rng.normal((200, 110, 170), 12, (90, 90, 3)), 0, 255)
    stained[100:170, 120:220] = np.clip(rng.normal((150, 60, 140), 12, (70, 100, 3)), 0, 255)
    with open_slide(small_synthetic.image) as reader:
        synthetic = reader.thumbnail(8.0)
    return [noise, tissue_on_glass, grey, stained, synthetic]


@pytest.mark.parametrize("band_rows", [1, 13, 256])
def test_banded_tissue_mask_equals_whole_image_mask(small_synthetic, band_rows: int) -> None:
    params = TissueParams()
    otsu_used = 0
    for rgb in _test_images(small_synthetic):
        mask, thr = tissue_mask_from_rgb(rgb, 8.0, params, band_rows=band_rows)
        ref_mask, ref_thr = _whole_image_mask(rgb, 8.0, params)
        assert thr == ref_thr
        assert np.array_equal(mask, ref_mask)
        otsu_used += thr != params.saturation_floor
    assert otsu_used, "no image exercised the Otsu threshold"


def test_banded_tissue_mask_on_a_real_slide(shared_data) -> None:
    with open_slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as reader:
        rgb = reader.thumbnail(2.0)
    mask, thr = tissue_mask_from_rgb(rgb, 2.0, band_rows=50)
    ref_mask, ref_thr = _whole_image_mask(rgb, 2.0, TissueParams())
    assert thr == ref_thr and np.array_equal(mask, ref_mask) and mask.any()


@pytest.mark.parametrize("band_rows", [1, 4, 256])
def test_remove_small_components_equals_skimage(band_rows: int) -> None:
    """The banded removal clears exactly what skimage's remove_small_objects (and, on
    the inverted mask, remove_small_holes) clears, components on the border included."""
    from skimage import morphology

    from wsiseg.tissue import remove_small_components

    rng = np.random.default_rng(band_rows)
    changed = 0
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        mask = rng.random((h, w)) < rng.random()
        max_size = int(rng.integers(1, 25))
        objects = mask.copy()
        remove_small_components(objects, max_size, band_rows)
        assert np.array_equal(objects, morphology.remove_small_objects(mask, max_size=max_size))
        holes = ~mask
        remove_small_components(holes, max_size, band_rows)
        assert np.array_equal(~holes, morphology.remove_small_holes(mask, max_size=max_size))
        changed += int((objects != mask).any())
    assert changed > 10
