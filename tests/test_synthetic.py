"""Synthetic slide generator: file layout for both readers, exact labels, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
import tiffslide
from skimage.measure import label, regionprops

from wsiseg.synthetic import (
    CLASS_COLOURS,
    CLASS_NAMES,
    GENERATOR_NAME,
    GENERATOR_VERSION,
    SynthPaths,
    SynthSpec,
    level_shapes,
    render_region,
    write_synthetic_slide,
)

SMALL = SynthSpec(width_px=2048, height_px=1536, seed=11)


@pytest.fixture(scope="session")
def small_slide(tmp_path_factory: pytest.TempPathFactory) -> SynthPaths:
    """The default small slide (2048 x 1536 at 0.5 µm/px, 4x pyramid), written once."""
    return write_synthetic_slide(tmp_path_factory.mktemp("synth_small"), "small", SMALL)


@pytest.fixture(scope="session")
def small_render() -> tuple[np.ndarray, np.ndarray]:
    return render_region(SMALL, 0, 0, SMALL.width_px, SMALL.height_px)


def _mask_level(path: Path, level: int) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[level].asarray()


def test_constants() -> None:
    assert CLASS_NAMES == ("background", "stroma", "benign_gland", "tumour")
    assert len(CLASS_COLOURS) == len(CLASS_NAMES)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in CLASS_COLOURS)
    assert isinstance(GENERATOR_VERSION, str) and GENERATOR_VERSION


def test_level_shapes() -> None:
    assert level_shapes(SMALL) == [(1536, 2048), (384, 512), (96, 128)]
    spec = SynthSpec(width_px=1000, height_px=300, tile_px=128, level_factor=2)
    assert level_shapes(spec) == [(300, 1000), (150, 500), (75, 250), (38, 125)]


def test_openslide_reads_all_levels(small_slide: SynthPaths) -> None:
    shapes = level_shapes(SMALL)
    with openslide.OpenSlide(str(small_slide.image)) as osr:
        assert osr.properties["openslide.vendor"] == "generic-tiff"
        assert osr.level_count == len(shapes)
        assert osr.level_dimensions == tuple((w, h) for h, w in shapes)
        assert abs(float(osr.properties["openslide.mpp-x"]) - SMALL.mpp) < 1e-3
        assert abs(float(osr.properties["openslide.mpp-y"]) - SMALL.mpp) < 1e-3
        for level, (h, w) in enumerate(shapes):
            region = np.asarray(osr.read_region((0, 0), level, (w, h)))
            assert region.shape == (h, w, 4)
        desc = json.loads(osr.properties["tiff.ImageDescription"])
        assert desc["generator"] == GENERATOR_NAME == "wsiseg.io.synthetic"  # kept: files unchanged
        assert desc["version"] == GENERATOR_VERSION
        assert desc["seed"] == SMALL.seed and desc["mpp"] == SMALL.mpp


def test_tiffslide_agrees_with_openslide(small_slide: SynthPaths) -> None:
    shapes = level_shapes(SMALL)
    with (
        tiffslide.TiffSlide(small_slide.image) as ts,
        openslide.OpenSlide(str(small_slide.image)) as osr,
    ):
        assert ts.level_count == len(shapes)
        assert ts.level_dimensions == tuple((w, h) for h, w in shapes)
        assert abs(float(ts.properties["tiffslide.mpp-x"]) - SMALL.mpp) < 1e-3
        for level, (h, w) in enumerate(shapes):
            a = np.asarray(ts.read_region((0, 0), level, (w, h)))[..., :3]
            b = np.asarray(osr.read_region((0, 0), level, (w, h)))[..., :3]
            # same JPEG decoding (YCbCr 4:2:0) in both readers
            assert np.abs(a.astype(int) - b).max() <= 2, level


def test_file_layout(small_slide: SynthPaths) -> None:
    shapes = level_shapes(SMALL)
    for path, spp in ((small_slide.image, 3), (small_slide.mask, 1)):
        with tifffile.TiffFile(path) as tif:
            assert not tif.is_ome
            assert len(tif.pages) == len(shapes)  # top-level IFDs, no SubIFDs
            for level, page in enumerate(tif.pages):
                assert isinstance(page, tifffile.TiffPage)
                assert page.is_tiled and page.tilewidth == SMALL.tile_px
                assert page.shape[:2] == shapes[level]
                assert page.samplesperpixel == spp
                assert page.subfiletype == (0 if level == 0 else 1)
                assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
                xres = page.tags["XResolution"].value
                mpp_level = 1e4 / (xres[0] / xres[1])
                expected = SMALL.mpp * shapes[0][1] / shapes[level][1]
                assert mpp_level == pytest.approx(expected, rel=1e-6)
                assert not page.subifds
            if spp == 3:
                assert tif.pages[0].compression == tifffile.COMPRESSION.JPEG
            else:
                assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
                assert tif.pages[0].dtype == np.uint8


def test_mask_levels_match_image_levels(small_slide: SynthPaths) -> None:
    with tiffslide.TiffSlide(small_slide.image) as im, tiffslide.TiffSlide(small_slide.mask) as mk:
        assert mk.level_dimensions == im.level_dimensions
        assert abs(float(mk.properties["tiffslide.mpp-x"]) - SMALL.mpp) < 1e-3
    for level in range(len(level_shapes(SMALL))):
        m = _mask_level(small_slide.mask, level)
        assert m.dtype == np.uint8 and m.ndim == 2
        assert set(np.unique(m)) <= {0, 1, 2, 3}


def test_written_level0_equals_render(small_slide: SynthPaths, small_render) -> None:
    rgb, lab = small_render
    np.testing.assert_array_equal(_mask_level(small_slide.mask, 0), lab)
    with tiffslide.TiffSlide(small_slide.image) as ts:
        img = np.asarray(ts.read_region((0, 0), 0, (SMALL.width_px, SMALL.height_px)))[..., :3]
    diff = np.abs(img.astype(np.int16) - rgb.astype(np.int16))
    assert diff.mean() < 3.0
    assert np.percentile(diff, 99) < 25


def test_lower_levels_are_downsampled(small_slide: SynthPaths, small_render) -> None:
    rgb, lab = small_render
    f = SMALL.level_factor
    m1 = _mask_level(small_slide.mask, 1)
    # block mode of the exact labels: every mask value occurs in its block
    blocks = lab.reshape(m1.shape[0], f, m1.shape[1], f)
    assert (blocks == m1[:, None, :, None]).any(axis=(1, 3)).all()
    # image: area average (not decimation) of level 0
    with tiffslide.TiffSlide(small_slide.image) as ts:
        lv1 = np.asarray(ts.read_region((0, 0), 1, ts.level_dimensions[1]))[..., :3]
    mean = rgb.reshape(lv1.shape[0], f, lv1.shape[1], f, 3).mean(axis=(1, 3))
    tissue = m1 > 0
    err_mean = np.abs(lv1 - mean)[tissue].mean()
    err_decimated = np.abs(lv1.astype(int) - rgb[::f, ::f])[tissue].mean()
    assert err_mean < 8.0 and err_mean < 0.6 * err_decimated


def test_render_region_is_tiling_independent(small_render) -> None:
    rgb, lab = small_render
    for x0, y0, w, h in ((333, 217, 700, 901), (1001, 5, 77, 1200), (0, 1200, 2048, 336)):
        r2, l2 = render_region(SMALL, x0, y0, w, h)
        np.testing.assert_array_equal(l2, lab[y0 : y0 + h, x0 : x0 + w])
        assert np.abs(r2.astype(int) - rgb[y0 : y0 + h, x0 : x0 + w]).max() <= 1


def test_every_class_present(small_render) -> None:
    _, lab = small_render
    counts = np.bincount(lab.ravel(), minlength=4)
    assert (counts > 0).all(), counts
    frac = counts / lab.size
    assert 0.2 < frac[0] < 0.8  # glass and tissue
    assert frac[3] > 0.001


def test_glass_is_near_white_and_tissue_is_stained(small_render) -> None:
    rgb, lab = small_render
    glass = rgb[lab == 0].astype(float)
    assert glass.mean() > 225 and glass.std() < 6
    stroma = rgb[lab == 1].astype(float).mean(0)
    assert stroma[0] > stroma[1] + 30  # eosin pink: red above green
    tumour = rgb[lab == 3].astype(float).mean(0)
    assert tumour.mean() < stroma.mean()  # crowded dark nuclei


def test_small_tumour_foci(small_render) -> None:
    _, lab = small_render
    mpp = SMALL.mpp
    diam = [p.equivalent_diameter_area * mpp for p in regionprops(label(lab == 3))]
    assert len(diam) >= 3
    assert min(diam) < 60.0
    assert sum(d < 60.0 for d in diam) >= 2


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_classes_present_for_other_seeds(seed: int) -> None:
    spec = SynthSpec(width_px=2048, height_px=1536, seed=seed)
    _, lab = render_region(spec, 0, 0, 2048, 1536)
    assert (np.bincount(lab.ravel(), minlength=4) > 0).all()


def test_determinism_and_seed(tmp_path: Path, small_slide: SynthPaths) -> None:
    again = write_synthetic_slide(tmp_path, "again", SMALL)
    assert again.mask.read_bytes() == small_slide.mask.read_bytes()
    for level in range(len(level_shapes(SMALL))):
        a = tifffile.TiffFile(small_slide.image).series[0].levels[level].asarray()
        b = tifffile.TiffFile(again.image).series[0].levels[level].asarray()
        np.testing.assert_array_equal(a, b)
    other = render_region(SynthSpec(width_px=2048, height_px=1536, seed=12), 0, 0, 2048, 1536)[1]
    assert (other != render_region(SMALL, 0, 0, 2048, 1536)[1]).mean() > 0.05


def test_no_temp_files_left(small_slide: SynthPaths) -> None:
    names = sorted(p.name for p in small_slide.image.parent.iterdir())
    assert names == ["small.tiff", "small_mask.tiff"]


def test_progress_reaches_total(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    spec = SynthSpec(width_px=700, height_px=500, seed=3, tile_px=128)
    write_synthetic_slide(tmp_path, "p", spec, progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1]
    tiles = sum(-(-h // 128) * -(-w // 128) for h, w in level_shapes(spec))
    assert calls[-1][1] == 2 * tiles  # image and mask
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_mpp_quarter_is_same_physical_slide() -> None:
    half = SynthSpec(width_px=1024, height_px=768, seed=4)
    quarter = SynthSpec(width_px=2048, height_px=1536, seed=4, mpp=0.25)
    _, lab_h = render_region(half, 0, 0, 1024, 768)
    _, lab_q = render_region(quarter, 0, 0, 2048, 1536)
    assert lab_q.shape == (2 * lab_h.shape[0], 2 * lab_h.shape[1])
    # each 0.5 µm pixel centre lies between four 0.25 µm pixel centres; compare one of them
    agree = (lab_q[1::2, 1::2] == lab_h).mean()
    assert agree > 0.97
    fh = np.bincount(lab_h.ravel(), minlength=4) / lab_h.size
    fq = np.bincount(lab_q.ravel(), minlength=4) / lab_q.size
    assert np.abs(fh - fq).max() < 0.01


def test_mpp_quarter_file(tmp_path: Path) -> None:
    spec = SynthSpec(width_px=1024, height_px=768, seed=4, mpp=0.25)
    paths = write_synthetic_slide(tmp_path, "q", spec)
    with openslide.OpenSlide(str(paths.image)) as osr:
        assert abs(float(osr.properties["openslide.mpp-x"]) - 0.25) < 1e-3
    with tiffslide.TiffSlide(paths.mask) as ts:
        assert abs(float(ts.properties["tiffslide.mpp-x"]) - 0.25) < 1e-3


def test_level_factor_two_and_odd_sizes(tmp_path: Path) -> None:
    spec = SynthSpec(width_px=1500, height_px=1001, seed=2, level_factor=2, tile_px=128)
    paths = write_synthetic_slide(tmp_path, "f2", spec)
    shapes = level_shapes(spec)
    assert len(shapes) == 5 and shapes[-1] == (63, 94)
    with openslide.OpenSlide(str(paths.image)) as osr, tiffslide.TiffSlide(paths.image) as ts:
        assert osr.level_dimensions == ts.level_dimensions == tuple((w, h) for h, w in shapes)
        np.testing.assert_allclose(osr.level_downsamples, ts.level_downsamples, rtol=1e-6)
        last = len(shapes) - 1
        size = osr.level_dimensions[last]
        a = np.asarray(osr.read_region((0, 0), last, size))[..., :3].astype(int)
        b = np.asarray(ts.read_region((0, 0), last, size))[..., :3]
        assert np.abs(a - b).max() <= 2
    _, lab = render_region(spec, 0, 0, 1500, 1001)
    np.testing.assert_array_equal(_mask_level(paths.mask, 0), lab)
    for level, shape in enumerate(shapes):
        assert _mask_level(paths.mask, level).shape == shape


def test_bigtiff_opens_in_both_readers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wsiseg.synthetic.tiff as synth

    monkeypatch.setattr(synth, "_BIGTIFF_BYTES", 0)  # as for slides over 4 GiB uncompressed
    spec = SynthSpec(width_px=640, height_px=480, seed=1, tile_px=128)
    paths = write_synthetic_slide(tmp_path, "big", spec)
    with tifffile.TiffFile(paths.image) as tif:
        assert tif.is_bigtiff
    with openslide.OpenSlide(str(paths.image)) as osr, tiffslide.TiffSlide(paths.image) as ts:
        assert osr.level_count == ts.level_count == len(level_shapes(spec))
        a = np.asarray(osr.read_region((0, 0), 0, (640, 480)))[..., :3].astype(int)
        b = np.asarray(ts.read_region((0, 0), 0, (640, 480)))[..., :3]
        assert np.abs(a - b).max() <= 2
    with tiffslide.TiffSlide(paths.mask) as ts:
        assert ts.level_count == len(level_shapes(spec))


def test_overwrites_existing_files(tmp_path: Path) -> None:
    spec = SynthSpec(width_px=300, height_px=200, seed=1, tile_px=64)
    (tmp_path / "x.tiff").write_bytes(b"old")
    paths = write_synthetic_slide(tmp_path, "x", spec)
    with tiffslide.TiffSlide(paths.image) as ts:
        assert ts.dimensions == (300, 200)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tiff", "x_mask.tiff"]


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wsiseg.synthetic.tiff as synth

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "_down_mode", boom)
    spec = SynthSpec(width_px=600, height_px=400, seed=1, tile_px=64)
    with pytest.raises(RuntimeError, match="disk full"):
        write_synthetic_slide(tmp_path, "bad", spec)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tile_px": 100}, "tile_px must be a positive multiple of 16"),
        ({"tile_px": 0}, "tile_px must be a positive multiple of 16"),
        ({"width_px": 0}, "width_px must be positive"),
        ({"height_px": -5}, "height_px must be positive"),
        ({"level_factor": 3}, "level_factor must be 2 or 4"),
        ({"mpp": 0.0}, "mpp must be in"),
        ({"jpeg_quality": 0}, "jpeg_quality"),
        ({"seed": -1}, "seed must be non-negative"),
        ({"width_px": 10.5}, "width_px must be an integer"),
        ({"n_cores": 0}, "n_cores"),
    ],
)
def test_bad_spec_raises(kwargs: dict[str, object], match: str) -> None:
    base: dict[str, object] = {"width_px": 512, "height_px": 512}
    with pytest.raises(ValueError, match=match):
        SynthSpec(**{**base, **kwargs})  # type: ignore[arg-type]


def test_bad_region_and_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size must be positive"):
        render_region(SMALL, 0, 0, 0, 10)
    with pytest.raises(ValueError, match="bad slide name"):
        write_synthetic_slide(tmp_path, "a/b", SMALL)


def test_memory_is_bounded(tmp_path: Path) -> None:
    """Peak allocations while writing do not grow with the slide: no level is held whole."""
    import tracemalloc

    widths, height = (2048, 8192), 768
    peaks = []
    for width in widths:
        spec = SynthSpec(width_px=width, height_px=height, seed=0, n_cores=1)
        render_region(spec, 0, 0, 16, 16)  # build the scene and textures outside the trace
        tracemalloc.start()
        try:
            write_synthetic_slide(tmp_path, f"mem{width}", spec)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    extra_level0_rgb = (widths[1] - widths[0]) * height * 3
    assert peaks[1] - peaks[0] < 0.25 * extra_level0_rgb, peaks
    assert peaks[1] < 48e6, peaks
