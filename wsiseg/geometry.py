"""Raster masks <-> polygons in level-0 pixel coordinates (shapely).

Polygons are traced on pixel edges: a mask pixel (row r, col c) is the square
``[c, c+1] x [r, r+1]`` in mask pixels, scaled to level-0 pixels. Holes are kept.
"""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

__all__ = ["as_multipolygon", "mask_to_polygons", "polygons_to_mask", "scale_geometry"]


def _runs(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """Horizontal runs (row, start, stop) of True pixels."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask
    diff = np.diff(padded, axis=1)
    rows_s, cols_s = np.nonzero(diff == 1)
    _, cols_e = np.nonzero(diff == -1)
    return list(zip(rows_s.tolist(), cols_s.tolist(), cols_e.tolist(), strict=True))


def mask_to_polygons(
    mask: np.ndarray, scale: float = 1.0, offset: tuple[float, float] = (0.0, 0.0)
) -> BaseGeometry:
    """Union of the True pixels of ``mask`` as a (Multi)Polygon on pixel edges.

    ``scale`` multiplies mask pixels into output units; ``offset`` (x, y) is added after.
    Runs of each row are merged first, then rows are unioned as a coverage (fast and
    exact: the pieces share edges only).
    """
    mask = np.asarray(mask, bool)
    runs = _runs(mask)
    if not runs:
        return MultiPolygon()
    boxes = [box(c0, r, c1, r + 1) for r, c0, c1 in runs]
    # union_all (not coverage_union) keeps diagonal pixel contacts valid.
    geom = shapely.union_all(boxes)
    if scale != 1.0 or offset != (0.0, 0.0):
        geom = scale_geometry(geom, scale, offset)
    return as_multipolygon(geom)


def as_multipolygon(geom: BaseGeometry) -> MultiPolygon:
    """The polygonal parts of ``geom`` (made valid first) as one MultiPolygon."""
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    parts = [p for p in shapely.get_parts(geom) if isinstance(p, Polygon) and not p.is_empty]
    nested = [q for p in shapely.get_parts(geom) if isinstance(p, MultiPolygon) for q in p.geoms]
    return MultiPolygon(parts + nested)


def scale_geometry(
    geom: BaseGeometry, scale: float, offset: tuple[float, float] = (0.0, 0.0)
) -> BaseGeometry:
    """``geom * scale + offset`` (x, y)."""
    return shapely.transform(geom, lambda xy: xy * scale + np.asarray(offset, dtype=float))


def polygons_to_mask(
    geom: BaseGeometry,
    shape: tuple[int, int],
    scale: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Rasterise ``geom`` (level-0 units) into a mask of ``shape`` whose pixel is ``scale`` units.

    A pixel is inside when its centre is inside the geometry (holes excluded).
    """
    from skimage.draw import polygon as fill_polygon

    h, w = shape
    out = np.zeros((h, w), bool)
    g = scale_geometry(geom, 1.0 / scale, (-offset[0] / scale, -offset[1] / scale))

    def ring(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Pixel (r, c) has its centre at (c + 0.5, r + 0.5) in mask units.
        return fill_polygon(coords[:, 1] - 0.5, coords[:, 0] - 0.5, shape=(h, w))

    for poly in as_multipolygon(g).geoms:
        rr, cc = ring(np.asarray(poly.exterior.coords))
        part = np.zeros((h, w), bool)
        part[rr, cc] = True
        for hole in poly.interiors:
            hr, hc = ring(np.asarray(hole.coords))
            part[hr, hc] = False
        out |= part
    return out
