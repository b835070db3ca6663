"""The vectorised pixel-edge tracer: exact, valid, 4-connected, oriented, no collinear vertices."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from wsiseg.geometry import mask_to_polygon_array, mask_to_polygons, polygons_to_mask

masks = st.integers(1, 24).flatmap(
    lambda h: st.integers(1, 24).flatmap(lambda w: arrays(np.bool_, (h, w)))
)


def _rings(poly: shapely.Polygon) -> list[np.ndarray]:
    return [np.asarray(poly.exterior.coords)] + [np.asarray(r.coords) for r in poly.interiors]


def _assert_no_collinear(poly: shapely.Polygon) -> None:
    for ring in _rings(poly):
        v = np.diff(ring, axis=0)
        nxt = np.roll(v, -1, axis=0)
        cross = v[:, 0] * nxt[:, 1] - v[:, 1] * nxt[:, 0]
        assert np.all(cross != 0), "collinear or repeated vertex"


@settings(max_examples=300, deadline=None)
@given(masks)
def test_round_trip_is_exact(mask: np.ndarray) -> None:
    g = mask_to_polygons(mask)
    assert g.is_valid, shapely.is_valid_reason(g)
    assert g.area == mask.sum()
    np.testing.assert_array_equal(polygons_to_mask(g, mask.shape), mask)


@settings(max_examples=200, deadline=None)
@given(
    masks,
    st.sampled_from([1.0, 0.5, 3.0, 16.0, 2.75]),
    st.tuples(st.sampled_from([0.0, 7.0, -3.25]), st.sampled_from([0.0, 11.5])),
)
def test_scaled_round_trip_and_structure(
    mask: np.ndarray, scale: float, offset: tuple[float, float]
) -> None:
    parts = mask_to_polygon_array(mask, scale, offset)
    _, n = ndimage.label(mask)  # 4-connectivity
    assert len(parts) == n
    for p in parts:
        assert p.is_valid, shapely.is_valid_reason(p)
        assert p.exterior.is_ccw
        assert not any(r.is_ccw for r in p.interiors)
        _assert_no_collinear(p)
    assert shapely.area(parts).sum() == pytest.approx(mask.sum() * scale**2)
    g = mask_to_polygons(mask, scale, offset)
    np.testing.assert_array_equal(polygons_to_mask(g, mask.shape, scale, offset), mask)


def test_components_come_in_raster_order() -> None:
    m = np.zeros((10, 10), bool)
    m[5:8, 0:2] = True  # first pixel (5, 0)
    m[1:3, 6:9] = True  # first pixel (1, 6)
    m[1, 2] = True  # first pixel (1, 2)
    firsts = [(p.bounds[1], p.bounds[0]) for p in mask_to_polygon_array(m)]
    assert firsts == [(1, 2), (1, 6), (5, 0)]


def test_diagonal_contacts_are_separate_polygons() -> None:
    checker = (np.indices((6, 6)).sum(axis=0) % 2).astype(bool)
    g = mask_to_polygons(checker)
    assert g.is_valid and len(g.geoms) == checker.sum()


def test_holes_touching_shell_and_each_other_stay_valid() -> None:
    m = np.ones((7, 7), bool)
    m[1, 1] = m[2, 2] = False  # two holes touching at a vertex
    m[0, 4] = False  # a notch in the border
    m[1, 5] = False  # hole touching the notch (shell) at a vertex
    g = mask_to_polygons(m)
    assert g.is_valid, shapely.is_valid_reason(g)
    assert g.area == m.sum()
    np.testing.assert_array_equal(polygons_to_mask(g, m.shape), m)


def test_islands_inside_holes() -> None:
    m = np.zeros((30, 30), bool)
    m[2:28, 2:28] = True
    m[6:24, 6:24] = False
    m[10:20, 10:20] = True
    m[13:17, 13:17] = False
    parts = mask_to_polygon_array(m)
    assert len(parts) == 2 and all(len(p.interiors) == 1 for p in parts)
    np.testing.assert_array_equal(polygons_to_mask(mask_to_polygons(m), m.shape), m)


def test_junction_vertices_are_kept() -> None:
    m = np.zeros((4, 6), bool)
    m[1:3, :] = True
    junctions = np.zeros((5, 7), bool)
    junctions[1, 3] = True  # on the straight top edge
    junctions[0, 0] = True  # not on the boundary: ignored
    (poly,) = mask_to_polygon_array(m, junctions=junctions)
    coords = {tuple(c) for c in np.asarray(poly.exterior.coords)}
    assert (3.0, 1.0) in coords and (0.0, 0.0) not in coords
    assert len(coords) == 5


def test_large_noisy_mask_is_exact() -> None:
    rng = np.random.default_rng(3)
    m = ndimage.binary_opening(rng.random((700, 500)) > 0.5) | (rng.random((700, 500)) > 0.97)
    g = mask_to_polygons(m, 2.0, (5.0, 5.0))
    assert g.is_valid
    assert g.area == 4 * m.sum()
    assert len(g.geoms) == ndimage.label(m)[1]
    np.testing.assert_array_equal(polygons_to_mask(g, m.shape, 2.0, (5.0, 5.0)), m)


def test_empty_and_full_masks() -> None:
    assert mask_to_polygons(np.zeros((5, 5), bool)).is_empty
    assert len(mask_to_polygon_array(np.zeros((0, 3), bool))) == 0
    full = mask_to_polygons(np.ones((3, 4), bool))
    assert len(full.geoms) == 1 and full.area == 12
    assert len(full.geoms[0].exterior.coords) == 5


def test_count_values_equals_bincount_across_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting in pieces gives np.bincount's counts (values >= n dropped), for pieces
    that split the input unevenly and for a non-contiguous view."""
    import wsiseg.geometry as geometry

    monkeypatch.setattr(geometry, "_COUNT_PIECE", 7)
    rng = np.random.default_rng(3)
    for dtype in (np.uint8, np.int32):
        values = rng.integers(0, 12, (23, 19)).astype(dtype)
        for view in (values, values[:, ::2], values[::3]):
            got = geometry.count_values(view, 10)
            want = np.bincount(view.ravel(), minlength=12)[:10]
            assert got.dtype == np.int64 and np.array_equal(got, want)
    assert np.array_equal(geometry.count_values(np.zeros((0, 4), np.uint8), 3), [0, 0, 0])
