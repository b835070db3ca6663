"""GeoJSON traced band by band equals the whole-raster GeoJSON exactly (issue 13).

The oracle is the whole-raster algorithm as it was before the banded path: every
class traced on the full raster (``mask_to_polygon_array`` with junctions), small
regions dropped, one ``shapely.coverage_simplify`` over all polygons, then scale,
snap, cut and number. The banded path must give equal feature lists (same ids, same
coordinates, same order, same floats) for any band height.
"""

from __future__ import annotations

import json
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from shapely.geometry import box

from wsiseg.export.geojson import (
    AREA_MEASUREMENT,
    FEATURE_ID_NAMESPACE,
    _geojson_geometry,
    _polygonal,
    iter_features,
    labels_to_features,
    write_geojson,
)
from wsiseg.geometry import mask_to_polygon_array

NAMES = ["Background", "Tumor", "Stroma", "Other"]
COLOURS = [(0, 0, 0), (200, 0, 0), (0, 150, 0), (20, 20, 220)]


def _junctions(labels: np.ndarray) -> np.ndarray:
    pad = np.pad(labels, 1)
    a, b, c, d = pad[:-1, :-1], pad[:-1, 1:], pad[1:, :-1], pad[1:, 1:]
    n = (b != a).astype(np.uint8)
    n += (c != a) & (c != b)
    n += (d != a) & (d != b) & (d != c)
    return n >= 2


def reference_features(
    labels: np.ndarray,
    *,
    downsample: float,
    offset: tuple[float, float] = (0.0, 0.0),
    class_names: list[str],
    class_colours: list[tuple[int, int, int]],
    mpp: float,
    slide_id: str,
    min_area_um2: float = 100.0,
    simplify_px: float = 0.75,
    locked: bool = False,
    slide_size: tuple[int, int] | None = None,
    clip: shapely.Geometry | None = None,
) -> list[dict[str, Any]]:
    """The whole-raster algorithm (the oracle)."""
    lab = np.asarray(labels)
    px_area_um2 = (downsample * mpp) ** 2
    present = [int(k) for k in np.unique(lab) if k != 0]
    junctions = _junctions(lab) if simplify_px > 0 and len(present) > 1 else None
    polys, owner = [], []
    for k in present:
        parts = mask_to_polygon_array(lab == k, junctions=junctions)
        keep = shapely.area(parts) * px_area_um2 >= min_area_um2
        polys.append(parts[keep])
        owner.append(np.full(int(keep.sum()), k))
    if not polys or not sum(p.size for p in polys):
        return []
    geoms = np.concatenate(polys)
    classes = np.concatenate(owner)
    if simplify_px > 0:
        geoms = shapely.coverage_simplify(geoms, float(simplify_px), simplify_boundary=True)
    geoms = shapely.transform(
        geoms, lambda xy: xy * float(downsample) + np.asarray(offset, np.float64)
    )
    geoms = shapely.set_precision(geoms, 0.01)
    if slide_size is not None:
        edge = box(0, 0, *slide_size)
        past = ~shapely.within(geoms, edge)
        geoms[past] = shapely.set_precision(shapely.intersection(geoms[past], edge), 0.01)
    if clip is not None:
        out = ~shapely.within(geoms, clip)
        geoms[out] = shapely.set_precision(shapely.intersection(geoms[out], clip), 0.01)
    features = []
    index = dict.fromkeys(present, 0)
    for geom, k in zip(geoms, classes, strict=True):
        final = _polygonal(geom)
        if final is None:
            continue
        name = str(class_names[k])
        fid = uuid.uuid5(FEATURE_ID_NAMESPACE, f"{slide_id}/{name}/{index[k]}")
        index[k] += 1
        features.append(
            {
                "type": "Feature",
                "id": str(fid),
                "geometry": _geojson_geometry(final),
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": name, "color": [int(v) for v in class_colours[k]]},
                    "isLocked": bool(locked),
                    "measurements": {AREA_MEASUREMENT: float(final.area) * mpp * mpp},
                },
            }
        )
    return features


def blobs(h: int, w: int, seed: int, sigma: float = 2.5, background: float = 0.3) -> np.ndarray:
    """Three classes of smooth random blobs that touch each other, on a background."""
    rng = np.random.default_rng(seed)
    fields = [ndimage.gaussian_filter(rng.normal(size=(h, w)), sigma) for _ in range(3)]
    lab = (np.argmax(fields, axis=0) + 1).astype(np.uint8)
    g = ndimage.gaussian_filter(rng.normal(size=(h, w)), sigma)
    lab[g < np.quantile(g, background)] = 0
    return lab


def assert_same(labels: Any, band_rows: int, **kw: Any) -> list[dict[str, Any]]:
    args: dict[str, Any] = dict(
        downsample=4.0, class_names=NAMES, class_colours=COLOURS, mpp=0.25, slide_id="s1"
    )
    args.update(kw)
    want = reference_features(np.asarray(labels[:]), **args)
    got = labels_to_features(labels, band_rows=band_rows, **args)
    assert json.dumps(got) == json.dumps(want)
    assert got == want
    return got


# -- random rasters ------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 28), st.integers(1, 28)), elements=st.integers(0, 3)),
    st.integers(1, 6),
    st.sampled_from([0.0, 0.75, 1.0, 1.5, 3.0]),
    st.sampled_from([0.0, 2.0]),
    st.sampled_from([1.0, 2.0, 3.3333]),
    st.booleans(),
    st.booleans(),
)
def test_random_rasters_any_band_height(
    lab: np.ndarray,
    band_rows: int,
    simplify: float,
    min_area: float,
    downsample: float,
    cut: bool,
    roi: bool,
) -> None:
    h, w = lab.shape
    kw: dict[str, Any] = dict(
        downsample=downsample,
        offset=(0.5, 1.25),
        mpp=0.5,
        min_area_um2=min_area,
        simplify_px=simplify,
    )
    if cut:  # the slide ends inside the last row and column
        kw["slide_size"] = (int(w * downsample - 1), int(h * downsample - 1))
    if roi:
        kw["clip"] = shapely.Point(w * downsample / 2, h * downsample / 2).buffer(
            0.4 * max(h, w) * downsample, quad_segs=4
        )
    assert_same(lab, band_rows, **kw)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("band_rows", [1, 2, 5, 16, 64])
def test_blobs_crossing_many_seams(seed: int, band_rows: int) -> None:
    lab = blobs(90, 130, seed, sigma=1.5 + seed % 3)
    feats = assert_same(
        lab,
        band_rows,
        simplify_px=[0.75, 1.0, 1.5][seed % 3],
        min_area_um2=[0.0, 4.0][seed % 2],
        mpp=0.25,
        downsample=2.0,
    )
    assert any(len(f["geometry"]["coordinates"]) > 1 for f in feats), "holes"
    tall = max(
        np.ptp(np.asarray(f["geometry"]["coordinates"][0])[:, 1]) / 2.0
        for f in feats
        if f["geometry"]["type"] == "Polygon"
    )
    assert tall > 2 * band_rows or band_rows == 64, "regions cross seams"


def test_shapes_that_close_far_below() -> None:
    """Rings whose halves meet only many bands later, holes touching their shell at a
    corner, a spiral, a checkerboard of saddles, a region the size of the raster."""
    lab = np.zeros((64, 64), np.uint8)
    lab[2:60, 2:30] = 1
    lab[6:56, 6:26] = 0  # a tall ring: two walls joined only at the top and bottom
    lab[10:50, 10:22] = 2  # filling its hole, touching nothing but the ring
    lab[20:30, 14:18] = 0
    lab[30, 18] = 0  # hole touching the hole at a corner
    y, x = np.mgrid[:64, :64]
    lab[(x >= 32) & ((x + y) % 2 == 0) & (y < 20)] = 3  # saddles
    for r in range(1, 12, 2):  # a square spiral
        lab[40 - r : 40 + r + 1, 46 - r] = 1
        lab[40 - r, 46 - r : 46 + r + 1] = 1
    lab[63, :] = 2
    lab[:, 63] = 2
    for band_rows in (1, 3, 7, 64):
        for simplify in (0.0, 0.75, 1.5):
            assert_same(lab, band_rows, simplify_px=simplify, min_area_um2=0.0)


def test_zarr_labels_read_in_bands() -> None:
    lab = blobs(70, 90, 11)
    z = zarr.create_array(store={}, shape=lab.shape, chunks=(16, 32), dtype=np.uint8)
    z[:] = lab
    a = assert_same(z, 9, min_area_um2=2.0)
    assert a == labels_to_features(
        lab,
        downsample=4.0,
        class_names=NAMES,
        class_colours=COLOURS,
        mpp=0.25,
        slide_id="s1",
        min_area_um2=2.0,
    )


def peak_traced_mib(make: Callable[[], object]) -> float:
    """Peak memory numpy and Python allocate while ``make()`` runs (tracemalloc), MiB.

    GEOS's own allocations are not seen (the whole-raster algorithm holds every ring
    and edge of the slide there too), so this understates the whole-raster peak.
    """
    tracemalloc.start()
    try:
        make()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_bands_hold_less_than_the_whole_raster(tmp_path: Path) -> None:
    """On a 2400 x 2400 raster of smooth regions, 100-row bands need well under half the
    memory of tracing the whole raster (which holds several raster-sized arrays)."""
    lab = blobs(2400, 2400, 5, sigma=16.0)
    kw: dict[str, Any] = dict(
        downsample=4.0, class_names=NAMES, class_colours=COLOURS, mpp=0.25, slide_id="s1"
    )
    whole = peak_traced_mib(
        lambda: write_geojson(tmp_path / "a.geojson", reference_features(lab, **kw))
    )
    banded = peak_traced_mib(
        lambda: write_geojson(tmp_path / "b.geojson", iter_features(lab, band_rows=100, **kw))
    )
    assert (tmp_path / "a.geojson").read_bytes() == (tmp_path / "b.geojson").read_bytes()
    print(f"peak traced memory: whole raster {whole:.1f} MiB, 100-row bands {banded:.1f} MiB")
    assert banded < whole / 2, (banded, whole)


# -- streaming and errors ------------------------------------------------------------


def test_write_geojson_streams_the_same_bytes(tmp_path: Path) -> None:
    lab = blobs(60, 80, 3)
    kw: dict[str, Any] = dict(
        downsample=4.0, class_names=NAMES, class_colours=COLOURS, mpp=0.25, slide_id="s1"
    )
    feats = labels_to_features(lab, **kw)
    whole = json.dumps(
        {"type": "FeatureCollection", "features": feats},
        ensure_ascii=True,
        separators=(",", ":"),
        allow_nan=False,
    ).encode("ascii")
    a = write_geojson(tmp_path / "list.geojson", feats)
    b = write_geojson(tmp_path / "iter.geojson", iter_features(lab, band_rows=5, **kw))
    assert a.read_bytes() == whole == b.read_bytes()
    assert "µ" in AREA_MEASUREMENT and b"\\u00b5" in whole  # escaped: ASCII file


def test_bad_labels_fail_before_writing(tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(
        downsample=1.0, class_names=NAMES, class_colours=COLOURS, mpp=1.0, slide_id="s"
    )
    bad = np.zeros((30, 5), np.uint8)
    bad[25, 2] = 9  # in the last band only
    with pytest.raises(ValueError, match="classes"):
        iter_features(bad, band_rows=4, **kw)
    with pytest.raises(ValueError, match="integer"):
        iter_features(np.zeros((3, 3), np.float32), **kw)
    with pytest.raises(ValueError, match="2-D"):
        iter_features(np.zeros(3, np.uint8), **kw)
    assert labels_to_features(np.zeros((0, 4), np.uint8), **kw) == []


# -- end to end ----------------------------------------------------------------------


def test_segment_geojson_equals_whole_raster_tracing(
    model: Path, cluster: str, small_synthetic: Any, tmp_path: Path, capsys, monkeypatch
) -> None:
    """`wsiseg segment` with 7-row bands writes what the whole-raster algorithm gives
    for the label mask it wrote."""
    import wsiseg.pipeline.run as run
    from tests.segment_helpers import segment_cli
    from wsiseg.export.ome_tiff import read_label_ome_tiff
    from wsiseg.models.config import packaged_model_config

    calls: list[int] = []

    def banded(labels: Any, **kw: Any) -> Any:
        calls.append(labels.shape[0])
        return iter_features(labels, **{**kw, "band_rows": 7})

    monkeypatch.setattr(run, "iter_features", banded)
    code, _, err = segment_cli(
        [str(small_synthetic.image), "-o", str(tmp_path / "out")], model, cluster, capsys
    )
    assert code == 0, err
    out = tmp_path / "out" / "small"
    summary = json.loads((out / "summary.json").read_text())
    labels = read_label_ome_tiff(out / "mask.ome.tif")
    cfg = packaged_model_config("tiny")
    want = reference_features(
        labels,
        downsample=summary["output_mpp"] / summary["slide_mpp"],
        class_names=list(cfg.class_names),
        class_colours=[c[1] for c in cfg.classes],
        mpp=summary["slide_mpp"],
        slide_id=summary["slide_id"],
        slide_size=(3072, 2048),
    )
    got = json.loads((out / "annotations.geojson").read_text())["features"]
    assert calls == [labels.shape[0]] and labels.shape[0] > 7 * 10
    assert want and got == json.loads(json.dumps(want))
