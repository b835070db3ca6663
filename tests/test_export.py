"""Exports: QuPath GeoJSON, pyramidal label OME-TIFF (tifffile, tiffslide, Bio-Formats), overlay."""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shutil
import subprocess
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from scipy import ndimage
from shapely.geometry import shape

from wsiseg.export import (
    AREA_MEASUREMENT,
    CLASS_NAMES_NS,
    labels_to_features,
    read_label_classes,
    read_label_ome_tiff,
    render_overlay,
    write_geojson,
    write_label_ome_tiff,
    write_png,
)
from wsiseg.export.ome_tiff import _mode2x
from wsiseg.geometry import polygons_to_mask
from wsiseg.io.geojson import rasterise_geojson

NAMES = ["Background", "Tumor", "Stroma", "Other"]
COLOURS = [(0, 0, 0), (200, 0, 0), (0, 150, 0), (20, 20, 220)]
BIOFORMATS_JAR = Path(__file__).parent / "tools" / ".cache" / "bioformats_package.jar"


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """300 x 400 labels: a Tumor ring with a background hole, Stroma sharing edges with it,
    an Other blob and a 2x2 Other speck; smooth-ish noisy borders."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:300, :400]
    wobble = ndimage.gaussian_filter(rng.normal(size=(300, 400)), 6) * 60
    r = np.hypot(yy - 150, xx - 130) + wobble
    lab = np.zeros((300, 400), np.uint8)
    lab[(r > 40) & (r < 100)] = 1
    lab[(yy > 110 + wobble) & (xx > 190) & (xx < 385)] = 2
    lab[20:60, 300:360] = 3
    lab[10:12, 10:12] = 3  # 4 label px = 4 µm² at 1 µm per label px: below min area
    return lab


def _features(lab: np.ndarray, **kw: object) -> list[dict]:
    args: dict = dict(
        downsample=4.0,
        offset=(1000.0, 500.0),
        class_names=NAMES,
        class_colours=COLOURS,
        mpp=0.25,
        slide_id="slide-123",
    )
    args.update(kw)
    return labels_to_features(lab, **args)


# -- GeoJSON -----------------------------------------------------------------------------


def test_geojson_structure_as_qupath_reads_it(labels: np.ndarray, tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "annotations.geojson", _features(labels))
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    feats = data["features"]
    assert feats
    h, w = labels.shape
    for f in feats:
        assert f["type"] == "Feature"
        assert uuid.UUID(f["id"]).version == 5
        props = f["properties"]
        assert props["objectType"] == "annotation"
        cls = props["classification"]
        assert cls["name"] in NAMES[1:], "no background feature"
        assert cls["color"] == list(COLOURS[NAMES.index(cls["name"])])
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        geom = shape(f["geometry"])
        assert geom.is_valid and not geom.is_empty
        # QuPath 0.6+ reduces to a 0.01 px grid: already there and still valid.
        reduced = shapely.set_precision(geom, 0.01)
        assert reduced.is_valid and reduced.equals(geom)
        xy = shapely.get_coordinates(geom)
        np.testing.assert_allclose(xy * 100, np.round(xy * 100), atol=1e-6)
        assert xy[:, 0].min() >= 1000 and xy[:, 0].max() <= 1000 + 4 * w
        assert xy[:, 1].min() >= 500 and xy[:, 1].max() <= 500 + 4 * h
        area = props["measurements"][AREA_MEASUREMENT]
        assert area == pytest.approx(geom.area * 0.25**2)
    tumor = [
        shape(f["geometry"]) for f in feats if f["properties"]["classification"]["name"] == "Tumor"
    ]
    assert any(len(p.interiors) for g in tumor for p in getattr(g, "geoms", [g])), "ring hole"
    # Different classes never overlap (coverage simplification keeps shared edges).
    geoms = [shape(f["geometry"]) for f in feats]
    tree = shapely.STRtree(geoms)
    a, b = tree.query(geoms, predicate="intersects")
    pairs = a < b
    overlap = shapely.area(shapely.intersection(np.take(geoms, a[pairs]), np.take(geoms, b[pairs])))
    assert overlap.sum() < 1e-6


def test_geojson_ids_are_deterministic(labels: np.ndarray) -> None:
    ids1 = [f["id"] for f in _features(labels)]
    ids2 = [f["id"] for f in _features(labels.copy())]
    assert ids1 == ids2 and len(set(ids1)) == len(ids1)
    assert not set(ids1) & {f["id"] for f in _features(labels, slide_id="other")}
    assert json.dumps(_features(labels)) == json.dumps(_features(labels))


def test_geojson_rasterises_back(labels: np.ndarray, tmp_path: Path) -> None:
    expected = labels.copy()
    expected[10:12, 10:12] = 0  # the speck below min_area_um2 is dropped
    exact = write_geojson(tmp_path / "exact.geojson", _features(labels, simplify_px=0))
    back = rasterise_geojson(exact, labels.shape, 4.0, NAMES, offset=(1000.0, 500.0))
    np.testing.assert_array_equal(back, expected)
    simple = write_geojson(tmp_path / "simple.geojson", _features(labels))
    back = rasterise_geojson(simple, labels.shape, 4.0, NAMES, offset=(1000.0, 500.0))
    assert (back == expected).mean() > 0.995
    # Simplification does reduce the vertex count.
    n_exact = sum(
        len(shapely.get_coordinates(shape(f["geometry"])))
        for f in json.loads(exact.read_text())["features"]
    )
    n_simple = sum(
        len(shapely.get_coordinates(shape(f["geometry"])))
        for f in json.loads(simple.read_text())["features"]
    )
    assert n_simple < 0.8 * n_exact
    # With no minimum area the speck comes back too.
    specks = write_geojson(
        tmp_path / "all.geojson", _features(labels, simplify_px=0, min_area_um2=0)
    )
    np.testing.assert_array_equal(
        rasterise_geojson(specks, labels.shape, 4.0, NAMES, offset=(1000.0, 500.0)), labels
    )


def test_geojson_off_grid_scale_is_valid(labels: np.ndarray) -> None:
    feats = _features(labels, downsample=3.3333, offset=(0.123, 7.5), simplify_px=1.0)
    for f in feats:
        geom = shape(f["geometry"])
        assert geom.is_valid and shapely.set_precision(geom, 0.01).is_valid
        xy = shapely.get_coordinates(geom)
        np.testing.assert_allclose(xy * 100, np.round(xy * 100), atol=1e-6)


def test_geojson_rejects_unknown_labels() -> None:
    with pytest.raises(ValueError, match="classes"):
        labels_to_features(
            np.full((4, 4), 7, np.uint8),
            downsample=1,
            class_names=NAMES,
            class_colours=COLOURS,
            mpp=1.0,
            slide_id="s",
        )
    assert _features(np.zeros((5, 5), np.uint8)) == []


@settings(max_examples=100, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(2, 30), st.integers(2, 30)), elements=st.integers(0, 3)),
    st.sampled_from([0.0, 0.75, 1.5]),
)
def test_geojson_property_valid_coverage(lab: np.ndarray, simplify: float) -> None:
    feats = _features(lab, downsample=2.0, offset=(0.0, 0.0), min_area_um2=0, simplify_px=simplify)
    geoms = [shape(f["geometry"]) for f in feats]
    assert all(g.is_valid for g in geoms)
    if simplify == 0:
        got = np.zeros_like(lab)
        for f, g in zip(feats, geoms, strict=True):
            got[polygons_to_mask(g, lab.shape, 2.0)] = NAMES.index(
                f["properties"]["classification"]["name"]
            )
        np.testing.assert_array_equal(got, lab)
    else:
        assert shapely.union_all(geoms).area == pytest.approx(sum(g.area for g in geoms))


def test_geojson_stays_on_the_slide() -> None:
    """A slide 4099 x 3001 px at 4 px per label px: the raster's last column and row reach
    4100 and 3004; features are cut at the slide's edge and still tile it exactly."""
    width, height, ds = 4099, 3001, 4
    lab = np.ones((-(-height // ds), -(-width // ds)), np.uint8)
    lab[600:, 900:] = 2  # Stroma in the bottom-right corner
    lab[100:200, 1000:] = 3  # Other along the right edge
    lab[-3:, :50] = 3  # and along the bottom edge
    kw: dict = dict(downsample=ds, offset=(0.0, 0.0), min_area_um2=0)
    assert shapely.get_coordinates(shape(_features(lab, **kw)[1]["geometry"])).max() > width
    feats = _features(lab, slide_size=(width, height), **kw)
    geoms = [shape(f["geometry"]) for f in feats]
    xy = np.concatenate([shapely.get_coordinates(g) for g in geoms])
    assert xy.min() == 0 and xy[:, 0].max() == width and xy[:, 1].max() == height
    assert all(g.is_valid and g.geom_type == "Polygon" for g in geoms)
    np.testing.assert_allclose(xy * 100, np.round(xy * 100), atol=1e-6)  # 0.01 px grid
    assert sum(g.area for g in geoms) == pytest.approx(width * height)
    assert shapely.union_all(geoms).area == pytest.approx(width * height)  # no overlaps
    areas = [f["properties"]["measurements"][AREA_MEASUREMENT] for f in feats]
    assert sum(areas) == pytest.approx(width * height * 0.25**2)


def test_segment_geojson_stays_on_the_slide(
    model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    """End to end, on an all-tissue slide whose size is no multiple of the output pixel."""
    from tests.segment_helpers import segment_cli

    width, height = 1027, 771
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal((205, 120, 175), 12, (height, width, 3)), 0, 255).astype(np.uint8)
    slide = tmp_path / "odd.tiff"
    res = 1e4 / 0.5  # pixels per cm at 0.5 µm/px
    tifffile.imwrite(
        slide,
        img,
        tile=(256, 256),
        photometric="rgb",
        resolution=(res, res),
        resolutionunit="CENTIMETER",
    )
    code, _, err = segment_cli([str(slide), "-o", str(tmp_path / "out")], model, cluster, capsys)
    assert code == 0, err
    feats = json.loads((tmp_path / "out" / "odd" / "annotations.geojson").read_text())["features"]
    xy = np.concatenate([shapely.get_coordinates(shape(f["geometry"])) for f in feats])
    assert xy.min() >= 0 and xy[:, 0].max() <= width and xy[:, 1].max() <= height
    # The labels reach the slide's edges (all tissue), so the cut was needed.
    assert xy[:, 0].max() == width and xy[:, 1].max() == height


def test_geojson_atomic_write(tmp_path: Path) -> None:
    path = tmp_path / "a.geojson"
    write_geojson(path, [])
    with pytest.raises(FileExistsError):
        write_geojson(path, [])
    write_geojson(path, [], overwrite=True)
    assert os.listdir(tmp_path) == ["a.geojson"]
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}


# -- OME-TIFF ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_labels() -> np.ndarray:
    rng = np.random.default_rng(9)
    coarse = rng.integers(0, 4, (25, 33)).astype(np.uint8)
    lab = np.kron(coarse, np.ones((40, 40), np.uint8))[:1000, :1300]
    lab[::7, ::5] = 2  # fine detail that the pyramid must not invent values for
    return np.ascontiguousarray(lab)


@pytest.fixture(scope="module")
def ome(big_labels: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ome") / "mask.ome.tif"
    return write_label_ome_tiff(
        out, big_labels, (0.5, 0.5), NAMES, COLOURS, tile=256, min_level_px=128
    )


LEVELS = [(1000, 1300), (500, 650), (250, 325), (125, 163), (63, 82)]


def test_ome_tiff_with_tifffile(ome: Path, big_labels: np.ndarray) -> None:
    with tifffile.TiffFile(ome) as tif:
        assert tif.is_ome and not tif.is_bigtiff
        assert len(tif.series) == 1
        series = tif.series[0]
        assert [lvl.shape for lvl in series.levels] == LEVELS
        page = tif.pages.first
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (256, 256)
        assert len(page.subifds or ()) == len(LEVELS) - 1
        xml = tif.ome_metadata
        assert xml is not None
    assert 'PhysicalSizeX="0.5"' in xml and 'PhysicalSizeXUnit="µm"' in xml
    assert f'Namespace="{CLASS_NAMES_NS}"' in xml and ">Tumor</M>" in xml
    assert read_label_classes(ome) == list(zip(NAMES, COLOURS, strict=True))
    np.testing.assert_array_equal(read_label_ome_tiff(ome), big_labels)
    present = set(np.unique(big_labels).tolist())
    for k in range(1, len(LEVELS)):
        level = read_label_ome_tiff(ome, k)
        assert level.shape == LEVELS[k]
        assert set(np.unique(level).tolist()) <= present


def test_ome_tiff_with_tiffslide(ome: Path, big_labels: np.ndarray) -> None:
    import tiffslide

    with tiffslide.TiffSlide(ome) as slide:
        assert slide.level_count == len(LEVELS)
        assert slide.level_dimensions == tuple((w, h) for h, w in LEVELS)
        assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(0.5)
        region = np.asarray(slide.read_region((100, 200), 0, (300, 150), as_array=True))
    np.testing.assert_array_equal(
        region.reshape(150, 300, -1)[..., 0], big_labels[200:350, 100:400]
    )


def test_mode_downsample() -> None:
    block = np.array([[1, 1, 2, 3, 5], [0, 2, 2, 0, 5], [4, 4, 7, 7, 0]], np.uint8)
    # 2x2 mode, ties to the top-left pixel; odd edges repeat the last row/column.
    np.testing.assert_array_equal(_mode2x(block), [[1, 2, 5], [4, 7, 0]])


def test_ome_tiff_memory_is_bounded(tmp_path: Path) -> None:
    h, w = 6000, 5000
    store = zarr.create_array(
        store=str(tmp_path / "labels.zarr"), shape=(h, w), chunks=(500, 500), dtype=np.uint8
    )
    rng = np.random.default_rng(0)
    for r in range(0, h, 1000):
        coarse = rng.integers(0, 4, (20, 50)).astype(np.uint8)
        store[r : r + 1000] = np.kron(coarse, np.ones((50, 100), np.uint8))
    tracemalloc.start()
    try:
        out = write_label_ome_tiff(
            tmp_path / "big.ome.tif", store, (1.0, 1.0), NAMES, COLOURS, tile=256
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < h * w / 4, f"peak {peak / 2**20:.1f} MiB for a {h * w / 2**20:.0f} MiB raster"
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].levels[0].shape == (h, w)
        np.testing.assert_array_equal(tif.series[0].levels[0].asarray()[:1000], store[:1000])
    assert sorted(os.listdir(tmp_path)) == ["big.ome.tif", "labels.zarr"]


def test_ome_tiff_atomic_and_refuses_overwrite(tmp_path: Path) -> None:
    lab = np.zeros((40, 50), np.uint8)
    path = write_label_ome_tiff(tmp_path / "m.ome.tif", lab, (1.0, 1.0), NAMES, COLOURS)
    with pytest.raises(FileExistsError):
        write_label_ome_tiff(path, lab + 1, (1.0, 1.0), NAMES, COLOURS)
    np.testing.assert_array_equal(read_label_ome_tiff(path), lab)
    with pytest.raises(ValueError, match="no class"):
        write_label_ome_tiff(path, lab + 9, (1.0, 1.0), NAMES, COLOURS, overwrite=True)
    np.testing.assert_array_equal(read_label_ome_tiff(path), lab)  # untouched
    write_label_ome_tiff(path, lab + 1, (1.0, 1.0), NAMES, COLOURS, overwrite=True)
    np.testing.assert_array_equal(read_label_ome_tiff(path), lab + 1)
    assert os.listdir(tmp_path) == ["m.ome.tif"]
    with pytest.raises(ValueError, match="multiple of 16"):
        write_label_ome_tiff(tmp_path / "x.ome.tif", lab, 1.0, NAMES, COLOURS, tile=100)
    with pytest.raises(ValueError, match="uint8"):
        write_label_ome_tiff(tmp_path / "x.ome.tif", lab.astype(np.int32), 1.0, NAMES, COLOURS)


def test_ome_tiff_bigtiff_and_single_level(tmp_path: Path) -> None:
    lab = np.arange(100 * 90, dtype=np.uint32).reshape(100, 90).astype(np.uint8) % 4
    path = write_label_ome_tiff(
        tmp_path / "s.ome.tif", lab.astype(np.uint8), 2.0, NAMES, COLOURS, bigtiff=True
    )
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and len(tif.series[0].levels) == 1
    np.testing.assert_array_equal(read_label_ome_tiff(path), lab)


def _java_tools() -> str:
    java = shutil.which("java")
    if java is None:
        pytest.skip("java not found (apt-get install -y default-jre-headless)")
    if not BIOFORMATS_JAR.is_file():
        pytest.skip(f"{BIOFORMATS_JAR} missing (run tests/tools/fetch_bioformats.sh)")
    return java


@pytest.mark.java
def test_ome_tiff_with_bioformats(ome: Path, big_labels: np.ndarray, tmp_path: Path) -> None:
    java = _java_tools()
    cmd = [java, "-cp", str(BIOFORMATS_JAR)]
    info = subprocess.run(
        [
            *cmd,
            "loci.formats.tools.ImageInfo",
            "-nopix",
            "-noflat",
            "-omexml",
            "-no-upgrade",
            str(ome),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "Series count = 1" in info
    assert f"Resolutions = {len(LEVELS)}" in info
    sizes = [int(v) for v in re.findall(r"sizeX\[\d+\] = (\d+)", info)]
    assert sizes == [w for _, w in LEVELS]
    assert "Pixel type = uint8" in info
    assert re.search(r'PhysicalSizeX="0\.5"', info) and 'PhysicalSizeXUnit="µm"' in info
    assert ">Tumor</M>" in info  # class names reach Bio-Formats' OME-XML
    # Bio-Formats decodes every level's tiles to the same pixels.
    copy = tmp_path / "copy.ome.tif"
    subprocess.run(
        [*cmd, "loci.formats.tools.ImageConverter", "-noflat", "-no-upgrade", str(ome), str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    with tifffile.TiffFile(copy) as tif:
        levels = tif.series[0].levels
        assert len(levels) == len(LEVELS)
        for k, level in enumerate(levels):
            np.testing.assert_array_equal(level.asarray(), read_label_ome_tiff(ome, k))


# -- overlay -----------------------------------------------------------------------------


def test_overlay_size_and_colours(tmp_path: Path) -> None:
    thumb = np.full((80, 120, 3), 200, np.uint8)
    lab = np.zeros((40, 60), np.uint8)  # half size: resized by nearest
    lab[10:30, 10:30] = 1
    lab[5:15, 40:55] = 2
    img = render_overlay(thumb, lab, COLOURS, alpha=0.5)
    assert img.shape == (80, 120, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[40, 40], [200, 100, 100])  # inside Tumor: blended
    np.testing.assert_array_equal(img[20, 20], COLOURS[1])  # Tumor outline
    np.testing.assert_array_equal(img[20, 90], [100, 175, 100])  # inside Stroma
    np.testing.assert_array_equal(img[70, 5], [200, 200, 200])  # background untouched
    density = np.linspace(0, 1, 20 * 30).reshape(20, 30)
    both = render_overlay(thumb, lab, COLOURS, density=density, legend=NAMES)
    assert both.shape[1] == 2 * 120 + 4 and both.shape[0] > 80
    np.testing.assert_array_equal(both[:80, :120], render_overlay(thumb, lab, COLOURS))
    assert not np.array_equal(both[0, 124 + 5], both[79, 124 + 115])  # a gradient panel
    path = write_png(tmp_path / "overlay.png", both)
    np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), both)
    with pytest.raises(FileExistsError):
        write_png(path, both)
    assert os.listdir(tmp_path) == ["overlay.png"]


@pytest.mark.parametrize("shape", [(1, 1), (3, 700), (257, 129)])
def test_png_written_band_by_band_decodes_exactly(tmp_path: Path, shape: tuple[int, int]) -> None:
    """The streamed PNG encoder: any image, cut into bands of any size, gives the same
    file, which PIL (libpng's reader, with its CRC checks) decodes to the very pixels."""
    from wsiseg.export import overlay

    h, w = shape
    rng = np.random.default_rng(h * w)
    rgb = rng.integers(0, 256, (h, w, 3), np.uint8)
    rgb[: h // 2] = rgb[: h // 2] // 64 * 64  # some structure for the filter to use
    whole = overlay.write_png(tmp_path / "whole.png", rgb)
    with Image.open(whole) as img:
        assert img.mode == "RGB" and img.size == (w, h)
        np.testing.assert_array_equal(np.asarray(img), rgb)
    for step in (1, 2, 50):
        bands = [rgb[r : r + step] for r in range(0, h, step)]
        path = overlay._save_png(tmp_path / f"b{step}.png", (h, w), bands, False)
        assert path.read_bytes() == whole.read_bytes()
    with pytest.raises(ValueError, match="rows"):
        overlay._save_png(tmp_path / "short.png", (h + 1, w), [rgb], False)
    assert not (tmp_path / "short.png").exists()


@pytest.mark.parametrize("band_rows", [1, 5, 1000])
def test_png_read_band_by_band_gives_the_written_pixels(tmp_path: Path, band_rows: int) -> None:
    """wsiseg's own PNGs decode band by band to the pixels written; a PNG with PIL's
    adaptive filters (Sub/Average/Paeth rows) or another colour type is refused, so the
    caller can fall back to PIL."""
    from wsiseg.export import overlay

    rng = np.random.default_rng(band_rows)
    rgb = rng.integers(0, 256, (23, 37, 3), np.uint8)
    rgb[5:15] = rgb[5:15] // 32 * 32
    path = overlay.write_png(tmp_path / "a.png", rgb)
    shape, bands = overlay.read_png_bands(path, band_rows)
    got = list(bands)
    assert shape == (23, 37) and all(b.shape[0] <= band_rows for b in got)
    np.testing.assert_array_equal(np.concatenate(got), rgb)
    smooth = np.tile(np.arange(37, dtype=np.uint8)[None, :, None] * 6, (23, 1, 3))
    Image.fromarray(smooth).save(tmp_path / "pil.png")  # PIL filters smooth rows by Sub/Paeth
    with pytest.raises(overlay.PngNotStreamable, match="filter"):
        list(overlay.read_png_bands(tmp_path / "pil.png", band_rows)[1])
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    with pytest.raises(overlay.PngNotStreamable, match="8-bit RGB"):
        overlay.read_png_bands(tmp_path / "grey.png", band_rows)


def test_qupath_script_is_package_data() -> None:
    script = importlib.resources.files("wsiseg.export") / "qupath_import.groovy"
    text = script.read_text(encoding="utf-8")
    assert "PathIO.readObjects" in text and "annotations.geojson" in text
    assert "saveImageData" in text and "def OUT = " in text
