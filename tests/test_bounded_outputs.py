"""The driver writes a slide's outputs band by band (issue 13, bounded memory): ROI
masking, class counts and the overlay's subsample per band of the zarr label raster
equal the whole-array computation they replaced, for any band height, and so do the
files `_write_outputs` writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
from PIL import Image
from shapely.geometry import MultiPolygon, Point, Polygon, box

from wsiseg.export import overlay
from wsiseg.geometry import polygons_to_mask
from wsiseg.pipeline import run
from wsiseg.pipeline.config import SegmentConfig
from wsiseg.pipeline.outputs import ResumeIdentity
from wsiseg.pipeline.stitch import Stitcher
from wsiseg.tiling import RegionPlan, plan_regions
from wsiseg.tissue import TissueMask

# Level-0 size not a whole number of output pixels (4 level-0 px each): the last row
# and column of the output raster are fractional, so the edge weights matter.
SLIDE = (1210, 830)  # -> output 303 x 208 (last column 0.5, last row 0.5)
N_CLASSES = 4


def _plan() -> RegionPlan:
    return plan_regions(
        SLIDE, 0.5, task_mpp=0.5, region_px=128, margin_px=16, output_mpp=2.0
    )  # cores of 24 output px: chunks of 24 rows, the raster 208 rows (not a multiple)


def _roi() -> shapely.Geometry:
    """Two parts, a hole, off-lattice vertices, and a part past the slide's edge."""
    ring = Point(600.3, 410.7).buffer(390.0, quad_segs=7)
    hole = Polygon([(500.2, 300.9), (700.6, 340.1), (640.5, 520.25), (520.0, 470.5)])
    far = box(1000.5, 20.25, 1300.0, 170.75)
    return ring.difference(hole).union(far)


def _labels(shape: tuple[int, int], seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, N_CLASSES, (shape[0] // 9 + 1, shape[1] // 9 + 1), np.uint8)
    lab = np.kron(coarse, np.ones((9, 9), np.uint8))[: shape[0], : shape[1]]
    speck = rng.random(shape) < 0.02
    lab[speck] = rng.integers(0, N_CLASSES, int(speck.sum()), np.uint8)
    return np.ascontiguousarray(lab)


def _store(tmp_path: Path, plan: RegionPlan, labels: np.ndarray) -> Stitcher:
    st = Stitcher(plan, tmp_path / "labels.zarr")
    st.labels[:] = labels
    return st


def _whole_array(
    labels: np.ndarray,
    roi: shapely.Geometry | None,
    plan: RegionPlan,
    thumb_shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The driver's computation before issue 13, on the whole raster in memory:
    (masked labels, class counts, the overlay's subsample)."""
    inside = None
    if roi is not None:
        inside = polygons_to_mask(roi, labels.shape, scale=plan.output_mpp / plan.mpp)
        labels = np.where(inside, labels, 0).astype(labels.dtype)
    h, w = labels.shape
    scale = plan.mpp / plan.output_mpp
    fx = min(max(plan.slide_size[0] * scale - (w - 1), 0.0), 1.0)
    fy = min(max(plan.slide_size[1] * scale - (h - 1), 0.0), 1.0)

    def count(part: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
        values = part if keep is None else part[keep]
        return np.bincount(values.ravel(), minlength=N_CLASSES)[:N_CLASSES].astype(float)

    def sub(rows: slice, cols: slice) -> np.ndarray:
        return count(labels[rows, cols], None if inside is None else inside[rows, cols])

    last_row, last_col = slice(h - 1, h), slice(w - 1, w)
    counts = count(labels, inside)
    counts += (fx - 1.0) * sub(slice(0, h - 1), last_col)
    counts += (fy - 1.0) * sub(last_row, slice(0, w - 1))
    counts += (fx * fy - 1.0) * sub(last_row, last_col)
    th, tw = thumb_shape
    ys = np.minimum((np.arange(th) * h / th).astype(int), h - 1)
    xs = np.minimum((np.arange(tw) * w / tw).astype(int), w - 1)
    return labels, counts, labels[ys[:, None], xs[None, :]]


@pytest.mark.parametrize("scale", [1.0, 4.0, 2.7])
def test_polygons_to_mask_rows_equal_whole_mask(scale: float) -> None:
    roi = _roi()
    shape = (int(900 / scale), int(1250 / scale))
    offset = (3.25, -7.5)
    whole = polygons_to_mask(roi, shape, scale, offset)
    assert 0 < whole.sum() < whole.size
    for step in (1, 5, 24, 61, shape[0]):
        bands = [
            polygons_to_mask(roi, shape, scale, offset, rows=(r0, min(shape[0], r0 + step)))
            for r0 in range(0, shape[0], step)
        ]
        np.testing.assert_array_equal(np.concatenate(bands), whole)
    assert polygons_to_mask(roi, shape, scale, offset, rows=(7, 7)).shape == (0, shape[1])
    with pytest.raises(ValueError, match="rows"):
        polygons_to_mask(roi, shape, scale, offset, rows=(5, shape[0] + 1))


def test_band_rows_whole_chunk_rows_within_the_budget() -> None:
    assert run._band_rows(1000, 24, 100_000) == 96  # 100 rows fit: 4 chunk rows
    assert run._band_rows(1000, 24, 30_000) == 24
    assert run._band_rows(1000, 24, 7_000) == 7  # below one chunk row: fewer rows
    assert run._band_rows(1000, 24, 10) == 1


@pytest.mark.parametrize("with_roi", [True, False])
@pytest.mark.parametrize("band_rows", [1, 7, 24, 48, 1000])
def test_scan_labels_equals_whole_array(tmp_path: Path, with_roi: bool, band_rows: int) -> None:
    plan = _plan()
    w, h = plan.output_size
    assert (w, h) == (303, 208) and h % plan.core_out_px
    labels = _labels((h, w))
    st = _store(tmp_path, plan, labels)
    roi = _roi() if with_roi else None
    thumb_shape = (97, 151)  # neither a divisor nor a multiple of the raster
    scan = run._scan_labels(st.labels, roi, plan, N_CLASSES, thumb_shape, band_rows * w)
    masked, counts, small = _whole_array(labels, roi, plan, thumb_shape)
    np.testing.assert_array_equal(np.asarray(st.labels[:]), masked)  # written back
    np.testing.assert_array_equal(scan.counts, counts)  # identical floats
    np.testing.assert_array_equal(scan.small, small)
    assert scan.small.dtype == small.dtype
    if with_roi:
        assert (masked == 0).sum() > (labels == 0).sum()  # the ROI did mask something


def _write(tmp_path: Path, name: str, roi: shapely.Geometry | None) -> Path:
    """`_write_outputs` on the same synthetic raster, into ``tmp_path/name/``."""
    plan = _plan()
    w, h = plan.output_size
    folder = tmp_path / name
    folder.mkdir()
    st = _store(folder, plan, _labels((h, w), seed=11))
    model = run.model_info("default")
    thumb_shape = (SLIDE[1] // 16, SLIDE[0] // 16)
    thumb = np.random.default_rng(5).integers(120, 255, (*thumb_shape, 3), np.uint8)
    tissue = TissueMask(np.ones(thumb_shape, bool), 16.0, MultiPolygon(), 0.5)
    density = np.random.default_rng(6).random((h // 8 + 1, w // 8 + 1)).astype(np.float32)
    result = run._RunResult(st.labels, density, 1234, {})
    identity = ResumeIdentity("m", "f", plan.mpp, plan.output_mpp, None, "tiffslide", "s")
    summary = run._write_outputs(
        Path("slide.tiff"),
        folder,
        model,
        SegmentConfig(min_area_um2=0.0),
        plan,
        run.detected_tissue_px(tissue, roi),
        thumb,
        result,
        "slide-id",
        identity,
        roi,
    )
    (folder / "summary.json").write_text(json.dumps(summary.to_json()))
    return folder


@pytest.mark.parametrize("with_roi", [True, False])
def test_write_outputs_do_not_depend_on_the_band(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_roi: bool
) -> None:
    """Many bands of 5 rows (not a chunk multiple) vs one band of the whole raster (the
    computation before issue 13): the same mask pyramid, GeoJSON, PNGs and figures."""
    roi = _roi() if with_roi else None
    monkeypatch.setattr(run, "WRITE_BAND_PIXELS", 10**9)
    one = _write(tmp_path, "one", roi)
    monkeypatch.setattr(run, "WRITE_BAND_PIXELS", 5 * _plan().output_size[0])
    many = _write(tmp_path, "many", roi)
    with (
        tifffile.TiffFile(one / "mask.ome.tif") as a,
        tifffile.TiffFile(many / "mask.ome.tif") as b,
    ):
        levels_a, levels_b = a.series[0].levels, b.series[0].levels
        assert len(levels_a) == len(levels_b)
        for la, lb in zip(levels_a, levels_b, strict=True):
            np.testing.assert_array_equal(la.asarray(), lb.asarray())
    for png in ("overlay.png", "thumbnail.png"):
        assert (one / png).read_bytes() == (many / png).read_bytes(), png
    features = json.loads((one / "annotations.geojson").read_text())
    assert features["features"]
    assert features == json.loads((many / "annotations.geojson").read_text())
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in (one, many))
    for s in (sa, sb):
        s["seconds"].pop("write")
        s.pop("versions")
    assert sa == sb
    masked, counts, small = _whole_array(
        _labels((_plan().output_size[1], _plan().output_size[0]), seed=11),
        roi,
        _plan(),
        (SLIDE[1] // 16, SLIDE[0] // 16),
    )
    with tifffile.TiffFile(many / "mask.ome.tif") as b:
        np.testing.assert_array_equal(b.series[0].levels[0].asarray(), masked)
    px_mm2 = (2.0 / 1000) ** 2
    names = list(run.model_info("default").config.class_names)
    assert [sb["classes"][n]["area_mm2"] for n in names] == [
        round(float(c) * px_mm2, 6) for c in counts
    ]


def _whole_overlay(
    thumb: np.ndarray,
    labels: np.ndarray,
    colours: list[tuple[int, int, int]],
    alpha: float,
    density: np.ndarray | None,
    legend: list[str] | None,
) -> np.ndarray:
    """`render_overlay` before issue 13: every step on the whole thumbnail at once."""
    h, w = thumb.shape[:2]
    cols = np.asarray(colours, np.float64)
    lab = overlay._nearest(labels, (h, w)).astype(np.intp)
    out = thumb.copy()
    inside = lab != 0
    out[inside] = np.round((1 - alpha) * thumb[inside] + alpha * cols[lab[inside]]).astype(np.uint8)
    edge = overlay._edges(lab)
    out[edge] = cols[lab[edge]].astype(np.uint8)
    if density is not None:
        d = np.asarray(density, np.float32)
        if d.shape != (h, w):  # nearest neighbour, as the pipeline has always sampled it
            dy = np.minimum((np.arange(h) * d.shape[0] / h).astype(int), d.shape[0] - 1)
            dx = np.minimum((np.arange(w) * d.shape[1] / w).astype(int), d.shape[1] - 1)
            d = d[dy[:, None], dx[None, :]]
        finite = d[np.isfinite(d)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        panel = overlay.viridis((d - lo) / (hi - lo) if hi > lo else np.zeros_like(d))
        gap = np.full((h, overlay._GAP_PX, 3), 255, np.uint8)
        out = np.concatenate([out, gap, panel], axis=1)
    if legend is not None:
        out = np.concatenate(
            [out, overlay._legend(out.shape[1], legend, cols, density is not None)]
        )
    return out


@pytest.mark.parametrize("density", ["none", "same", "coarse", "nan", "flat"])
def test_render_overlay_in_bands_equals_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, density: str
) -> None:
    rng = np.random.default_rng(8)
    h, w = 61, 83
    thumb = rng.integers(0, 256, (h, w, 3), np.uint8)
    labels = _labels((40, 50), seed=9)  # resized by nearest neighbour
    colours = [(255, 255, 255), (0, 200, 0), (0, 0, 200), (200, 0, 0)]
    dens: np.ndarray | None = {
        "none": None,
        "same": rng.random((h, w)).astype(np.float32),
        "coarse": rng.random((9, 13)).astype(np.float32),
        "nan": np.where(rng.random((h, w)) < 0.3, np.nan, rng.random((h, w))),
        "flat": np.full((h, w), 0.25, np.float32),
    }[density]
    legend = ["bg", "a", "b", "c"]
    want = _whole_overlay(thumb, labels, colours, 0.45, dens, legend)
    width = want.shape[1]
    for rows in (1, 7, 60, 1000):
        monkeypatch.setattr(overlay, "_BAND_PIXELS", rows * width)
        got = overlay.render_overlay(thumb, labels, colours, density=dens, legend=legend)
        np.testing.assert_array_equal(got, want)
        a, b = tmp_path / f"a{rows}.png", tmp_path / f"b{rows}.png"
        overlay.write_png(a, want)
        overlay.write_overlay_png(b, thumb, labels, colours, density=dens, legend=legend)
        assert a.read_bytes() == b.read_bytes()
    np.testing.assert_array_equal(
        overlay.render_overlay(thumb, labels, colours, alpha=0.8),
        _whole_overlay(thumb, labels, colours, 0.8, None, None),
    )


def test_preview_images_are_bounded_and_the_rest_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """overlay.png and thumbnail.png of a thumbnail larger than PREVIEW_MAX_PX a side
    are the thumbnail subsampled by a whole step; the mask, GeoJSON and areas do not
    change."""
    full = _write(tmp_path, "full", None)
    thumb_long = max(SLIDE) // 16  # 75 px
    monkeypatch.setattr(run, "PREVIEW_MAX_PX", 30)  # step ceil(75 / 30) = 3
    small = _write(tmp_path, "small", None)
    thumb = np.asarray(Image.open(full / "thumbnail.png"))
    assert max(thumb.shape[:2]) == thumb_long
    capped = np.asarray(Image.open(small / "thumbnail.png"))
    np.testing.assert_array_equal(capped, thumb[::3, ::3])
    overlay_size = Image.open(small / "overlay.png").size
    assert overlay_size[1] < Image.open(full / "overlay.png").size[1]
    assert capped.shape[1] * 2 <= overlay_size[0] <= 2 * 30 + 8  # overlay | density panel
    with (
        tifffile.TiffFile(full / "mask.ome.tif") as a,
        tifffile.TiffFile(small / "mask.ome.tif") as b,
    ):
        for la, lb in zip(a.series[0].levels, b.series[0].levels, strict=True):
            np.testing.assert_array_equal(la.asarray(), lb.asarray())
    assert (full / "annotations.geojson").read_bytes() == (
        small / "annotations.geojson"
    ).read_bytes()
    sa, sb = (json.loads((f / "summary.json").read_text()) for f in (full, small))
    assert sa["classes"] == sb["classes"]


def test_write_png_holds_one_band_not_the_image(tmp_path: Path) -> None:
    """thumbnail.png's writer encodes band by band: its Python-side temporaries stay far
    below one copy of the image (a whole-image filter buffer and its bytes were two)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2048, 2048, 3), np.uint8)  # 12 MiB
    tracemalloc.start()
    try:
        overlay.write_png(tmp_path / "big.png", rgb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < rgb.nbytes / 3, (
        f"peak {peak / 2**20:.1f} MiB for a {rgb.nbytes / 2**20:.0f} MiB image"
    )
    with Image.open(tmp_path / "big.png") as img:
        np.testing.assert_array_equal(np.asarray(img), rgb)
