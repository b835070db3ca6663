"""Raster masks <-> polygons in level-0 pixel coordinates (shapely).

Polygons are traced on pixel edges: a mask pixel (row r, col c) is the square
``[c, c+1] x [r, r+1]`` in mask pixels, scaled to level-0 pixels. Holes are kept.

Tracing (:func:`mask_to_polygons`, :func:`mask_to_polygon_array`) is vectorised:

1. connected components of the True pixels with **4-connectivity**
   (``scipy.ndimage.label``): one polygon per component;
2. the corner vertices of the boundary on the pixel-corner lattice are found from
   the 2x2 pixel block around every lattice vertex (straight runs carry no vertex,
   so the output has no collinear vertices);
3. each corner has one outgoing boundary segment (two at a "saddle", where two
   pixels touch diagonally); the segment ends at the next corner on the same
   lattice line, which turns the boundary into a permutation of segments whose
   cycles are the rings (ordered with one depth-first pass of
   ``scipy.sparse.csgraph``);
4. shells come out counter-clockwise and holes clockwise as shapely computes it
   on the raw coordinates (``is_ccw``; GeoJSON's right-hand rule) -- on an image
   shown with y down they look the other way round; a ring belongs to the
   component of the pixels it bounds, so holes need no point-in-polygon search.

At a saddle the boundary joins the two diagonal True pixels when they belong to
the same 4-connected component and separates them otherwise. Every ring is then
simple: diagonally touching components are separate polygons sharing one vertex,
and a hole may touch its shell or another hole at one vertex. Both are valid
(OGC/GEOS), so the result is valid without ``make_valid``.
"""

from __future__ import annotations

import numpy as np
import shapely
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components, depth_first_order
from shapely.geometry import GeometryCollection, MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

__all__ = [
    "as_multipolygon",
    "count_values",
    "mask_to_polygon_array",
    "mask_to_polygons",
    "polygons_to_mask",
    "scale_geometry",
]

# Directions of travel in image coordinates (y down).
_RIGHT, _DOWN, _LEFT, _UP = 0, 1, 2, 3


def _direction_tables() -> tuple[np.ndarray, np.ndarray]:
    """Outgoing directions per 2x2 block code (bit 0 NW, 1 NE, 2 SW, 3 SE pixel).

    Boundary edges are walked with the True pixel on the right in image
    coordinates (y down), i.e. counter-clockwise in a y-up frame.
    """
    out1 = np.full(16, -1, np.int8)
    out2 = np.full(16, -1, np.int8)
    for code in range(16):
        nw, ne, sw, se = (code >> 0) & 1, (code >> 1) & 1, (code >> 2) & 1, (code >> 3) & 1
        dirs = []
        if se and not ne:
            dirs.append(_RIGHT)
        if sw and not se:
            dirs.append(_DOWN)
        if nw and not sw:
            dirs.append(_LEFT)
        if ne and not nw:
            dirs.append(_UP)
        if dirs:
            out1[code] = dirs[0]
        if len(dirs) == 2:
            out2[code] = dirs[1]
    return out1, out2


_OUT1, _OUT2 = _direction_tables()
_STRIP_ROWS = 256
_COUNT_PIECE = 1 << 20  # values per np.bincount call (it widens its input to intp)


def _corners(pad: np.ndarray, junctions: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Lattice vertices (y, x) in row-major order where the boundary of ``pad[1:-1, 1:-1]`` turns.

    A vertex is a corner unless its 2x2 pixel block is uniform or a straight edge;
    ``junctions`` adds vertices on straight boundary stretches. Worked in row strips
    to bound temporaries.
    """
    h1, w1 = pad.shape[0] - 1, pad.shape[1] - 1
    found = []
    for r0 in range(0, h1, _STRIP_ROWS):
        r1 = min(h1, r0 + _STRIP_ROWS)
        block = pad[r0 : r1 + 1]
        dx = block[:, :-1] ^ block[:, 1:]  # left/right pixels differ, (rows + 1, w1)
        dy = block[:-1] ^ block[1:]  # top/bottom pixels differ, (rows, w1 + 1)
        across = dx[:-1] | dx[1:]
        keep = across & (dy[:, :-1] | dy[:, 1:])
        if junctions is not None:
            keep |= junctions[r0:r1] & (across | dy[:, :-1])
        found.append(np.flatnonzero(keep) + r0 * w1)
    ys, xs = np.divmod(np.concatenate(found), w1)
    return ys, xs


def _trace(
    mask: np.ndarray, junctions: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Trace the 4-connected components of ``mask`` on the pixel-corner lattice.

    Returns
    -------
    coords : ndarray of int64, shape (M, 2)
        Closed rings, (x, y) lattice coordinates, grouped by component (shell first).
    ring_offsets : ndarray of int64
        Start of each ring in ``coords`` (length rings + 1).
    polygon_offsets : ndarray of int64
        Start of each component's rings in ``ring_offsets`` (length n + 1).
    n : int
        Number of components, in raster order of their first pixel.
    """
    h, w = mask.shape
    labels, n = ndimage.label(mask)
    if n == 0:
        empty = np.zeros(1, np.int64)
        return np.zeros((0, 2), np.int64), empty, empty, 0

    pad = np.zeros((h + 2, w + 2), bool)
    pad[1:-1, 1:-1] = mask
    ys, xs = _corners(pad, junctions)  # row-major: consecutive corners on a row line
    # 2x2 block code at each corner: bit 0 NW, 1 NE, 2 SW, 3 SE pixel.
    flat = pad.ravel()
    i = ys * (w + 2) + xs
    c = (
        flat[i].view(np.uint8)
        | (flat[i + 1].view(np.uint8) << 1)
        | (flat[i + w + 2].view(np.uint8) << 2)
        | (flat[i + w + 3].view(np.uint8) << 3)
    )
    del pad, flat, i
    k = ys.size

    # One node per outgoing segment: every corner has one, a saddle has a second.
    saddle = np.flatnonzero((c == 6) | (c == 9))
    node_corner = np.concatenate([np.arange(k), saddle])
    node_dir = np.concatenate([_OUT1[c], _OUT2[c[saddle]]])
    second = np.full(k, -1, np.int64)
    second[saddle] = k + np.arange(saddle.size)
    n_nodes = node_corner.size

    # The segment ends at the next corner along its lattice line.
    xkey = xs.astype(np.uint16) if w < 65535 else xs  # uint16 sorts by radix
    col_order = np.argsort(xkey, kind="stable")  # column-major, y ascending within a column
    col_pos = np.empty(k, np.int64)
    col_pos[col_order] = np.arange(k)
    step = np.array([1, 1, -1, -1], np.int64)[node_dir]
    vertical = (node_dir == _DOWN) | (node_dir == _UP)
    end = node_corner + step
    end[vertical] = col_order[col_pos[node_corner[vertical]] + step[vertical]]

    # Next segment: the only one leaving the end corner, or at a saddle the one that
    # turns left (joins the diagonal pixels) or right (separates them).
    nxt = end.copy()
    at_saddle = np.flatnonzero(second[end] >= 0)
    if at_saddle.size:
        e = end[at_saddle]
        ex, ey, ec = xs[e], ys[e], c[e]
        diag9 = ec == 9
        a = np.where(diag9, labels[ey - 1, ex - 1], labels[ey - 1, ex])
        b = np.where(diag9, labels[ey, ex], labels[ey, ex - 1])
        turn = np.where(a == b, 3, 1)
        dout = (node_dir[at_saddle] + turn) % 4
        nxt[at_saddle] = np.where(_OUT1[ec] == dout, e, second[e])

    # Rings = cycles of the permutation ``nxt``.
    graph = csr_matrix(
        (np.ones(n_nodes, np.int8), nxt, np.arange(n_nodes + 1)), shape=(n_nodes, n_nodes)
    )
    n_rings, ring = connected_components(graph, directed=True, connection="weak")
    del graph
    # Ring labels are numbered in order of their lowest node: that node starts the ring.
    running = np.maximum.accumulate(ring)
    starts = np.flatnonzero(np.concatenate([[True], ring[1:] > running[:-1]]))
    # Depth-first order from a chain of dummy roots, one per ring, lists the nodes of
    # ring 0 in order, then ring 1, ...; each dummy points to its ring and the next dummy.
    dummies = n_nodes + np.arange(n_rings)
    dummy_edges = np.empty(2 * n_rings, np.int64)
    dummy_edges[0::2] = starts
    dummy_edges[1::2] = dummies + 1
    indices = np.concatenate([nxt, dummy_edges[:-1]])
    indptr = np.concatenate(
        [np.arange(n_nodes + 1), n_nodes + 2 * np.arange(1, n_rings + 1) - (dummies == dummies[-1])]
    )
    size = n_nodes + n_rings
    dfs_graph = csr_matrix((np.ones(indices.size, np.int8), indices, indptr), shape=(size, size))
    order = depth_first_order(dfs_graph, n_nodes, directed=True, return_predecessors=False)
    del dfs_graph
    order = order[order < n_nodes]
    ring_len = np.bincount(ring, minlength=n_rings)
    ring_start = np.cumsum(ring_len) - ring_len

    # Twice the signed area (shoelace) of each ring: > 0 for shells.
    xa, ya, xe, ye = xs[node_corner], ys[node_corner], xs[end], ys[end]
    area2 = np.bincount(ring, weights=(xa * ye - xe * ya).astype(np.float64), minlength=n_rings)
    shell = area2 > 0
    # The component a ring bounds: the pixel on the right of its first segment.
    s = order[ring_start]
    sx, sy, sd = xs[node_corner[s]], ys[node_corner[s]], node_dir[s]
    px = sx - ((sd == _LEFT) | (sd == _DOWN))
    py = sy - ((sd == _LEFT) | (sd == _UP))
    comp = labels[py, px]
    del labels

    # Group rings per component, shell first; close each ring.
    ring_order = np.argsort(comp.astype(np.int64) * 2 + ~shell, kind="stable")
    lens = ring_len[ring_order] + 1
    ring_offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    first = ring_start[ring_order]
    pos = np.arange(ring_offsets[-1]) - np.repeat(ring_offsets[:-1] - first, lens)
    pos[ring_offsets[1:] - 1] = first
    corner = node_corner[order[pos]]
    coords = np.stack([xs[corner], ys[corner]], axis=1)
    per_comp = np.bincount(comp, minlength=n + 1)[1:]
    polygon_offsets = np.concatenate([[0], np.cumsum(per_comp)]).astype(np.int64)
    return coords, ring_offsets, polygon_offsets, n


def _scaled(coords: np.ndarray, scale: float, offset: tuple[float, float]) -> np.ndarray:
    out = coords.astype(np.float64)
    if scale != 1.0:
        out *= scale
    if offset[0] or offset[1]:
        out += np.asarray(offset, np.float64)
    return out


def mask_to_polygon_array(
    mask: np.ndarray,
    scale: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
    *,
    junctions: np.ndarray | None = None,
) -> np.ndarray:
    """One Polygon per 4-connected component of the True pixels of ``mask``.

    Parameters
    ----------
    mask : ndarray of bool, shape (h, w)
        The pixels to trace.
    scale : float
        Output units per mask pixel.
    offset : tuple of float
        (x, y) added after scaling.
    junctions : ndarray of bool, shape (h + 1, w + 1), optional
        Lattice vertices to keep as polygon vertices where they lie on a straight
        stretch of boundary (e.g. where two other classes meet it, so that a
        coverage of several masks has matching vertices on shared edges).

    Returns
    -------
    ndarray of shapely.Polygon
        In raster order (row, then column) of each component's first pixel;
        shells counter-clockwise, holes clockwise, every polygon valid.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if junctions is not None and junctions.shape != (mask.shape[0] + 1, mask.shape[1] + 1):
        raise ValueError("junctions must have shape (h + 1, w + 1)")
    coords, ring_offsets, polygon_offsets, n = _trace(mask, junctions)
    if n == 0:
        return np.empty(0, dtype=object)
    polygons: np.ndarray = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON,
        _scaled(coords, scale, offset),
        (ring_offsets, polygon_offsets),
    )
    return polygons


def mask_to_polygons(
    mask: np.ndarray, scale: float = 1.0, offset: tuple[float, float] = (0.0, 0.0)
) -> MultiPolygon:
    """Union of the True pixels of ``mask`` as a MultiPolygon on pixel edges.

    Parameters
    ----------
    mask : ndarray of bool, shape (h, w)
        The pixels to trace.
    scale : float
        Output units per mask pixel (e.g. level-0 pixels per mask pixel).
    offset : tuple of float
        (x, y) added after scaling.

    Returns
    -------
    shapely.MultiPolygon
        One part per 4-connected component (see the module notes), holes kept;
        valid, with area ``mask.sum() * scale**2``. Empty when no pixel is set.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    coords, ring_offsets, polygon_offsets, n = _trace(mask)
    if n == 0:
        return MultiPolygon()
    geom = shapely.from_ragged_array(
        shapely.GeometryType.MULTIPOLYGON,
        _scaled(coords, scale, offset),
        (ring_offsets, polygon_offsets, np.array([0, n], np.int64)),
    )[0]
    assert isinstance(geom, MultiPolygon)
    return geom


def _polygon_parts(geom: BaseGeometry) -> list[Polygon]:
    """Non-empty polygons of ``geom``, from collections at any depth; points and lines dropped."""
    out: list[Polygon] = []
    for part in shapely.get_parts(geom):
        if isinstance(part, Polygon):
            if not part.is_empty:
                out.append(part)
        elif isinstance(part, MultiPolygon | GeometryCollection):
            out.extend(_polygon_parts(part))
    return out


def as_multipolygon(geom: BaseGeometry) -> MultiPolygon:
    """The polygonal parts of ``geom`` (made valid first) as one valid MultiPolygon.

    Points and lines are dropped; parts of a collection that overlap are merged.
    """
    if isinstance(geom, MultiPolygon) and geom.is_valid:
        return geom
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    out = MultiPolygon(_polygon_parts(geom))
    if not out.is_valid:  # a collection's polygons may overlap: merge them
        out = MultiPolygon(_polygon_parts(shapely.union_all(out.geoms)))
    return out


def scale_geometry(
    geom: BaseGeometry, scale: float, offset: tuple[float, float] = (0.0, 0.0)
) -> BaseGeometry:
    """``geom * scale + offset`` (x, y)."""
    return shapely.transform(geom, lambda xy: xy * scale + np.asarray(offset, dtype=float))


def count_values(values: np.ndarray, n: int) -> np.ndarray:
    """How many times each of ``0 .. n-1`` occurs in ``values`` (non-negative integers;
    larger ones are not counted), int64 of length ``n``. ``np.bincount`` in pieces, so
    its intp copy of the input stays small for a raster of any size or dtype."""
    flat = values.reshape(-1)
    out = np.zeros(n, np.int64)
    for i in range(0, flat.size, _COUNT_PIECE):
        out += np.bincount(flat[i : i + _COUNT_PIECE], minlength=n)[:n]
    return out


def polygons_to_mask(
    geom: BaseGeometry,
    shape: tuple[int, int],
    scale: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
    *,
    rows: tuple[int, int] | None = None,
) -> np.ndarray:
    """Rasterise ``geom`` (level-0 units) into a mask of ``shape`` whose pixel is ``scale`` units.

    A pixel is inside when its centre is inside the geometry (holes excluded).
    ``offset`` (x, y) is the level-0 position of the mask's top-left corner.
    Scanline even-odd fill over all rings, so the cost is O(pixels + crossings);
    overlapping parts are made valid (merged) first. ``rows=(r0, r1)`` rasterises
    only those rows of the ``shape`` mask (a band, for bounded memory): the same
    arithmetic, so the band equals ``polygons_to_mask(geom, shape, ...)[r0:r1]``.

    Returns
    -------
    ndarray of bool, shape ``shape`` (``(r1 - r0, w)`` with ``rows``)
    """
    h, w = int(shape[0]), int(shape[1])
    r0, r1 = (0, h) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= r0 <= r1 <= h:
        raise ValueError(f"rows {rows} are not a range of the mask's {h} rows")
    out = np.zeros((r1 - r0, w), bool)
    rings = shapely.get_rings(np.asarray(as_multipolygon(geom).geoms))
    if rings.size == 0 or r1 == r0 or w == 0:
        return out
    xy, ring_idx = shapely.get_coordinates(rings, return_index=True)
    xy = (xy - np.asarray(offset, np.float64)) / scale
    same = ring_idx[:-1] == ring_idx[1:]
    x0, y0 = xy[:-1, 0][same], xy[:-1, 1][same]
    x1, y1 = xy[1:, 0][same], xy[1:, 1][same]
    # Scanline through pixel centres y = r + 0.5, half-open in y: ymin <= yc < ymax.
    r_lo = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), r0, r1).astype(np.int64)
    r_hi = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), r0, r1).astype(np.int64)
    count = np.maximum(r_hi - r_lo, 0)
    total = int(count.sum())
    if total == 0:
        return out
    edge = np.repeat(np.arange(count.size), count)
    row = r_lo[edge] + np.arange(total) - np.repeat(np.cumsum(count) - count, count)
    yc = row + 0.5
    xc = x0[edge] + (yc - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    # A crossing at x toggles every pixel whose centre lies right of it.
    first_col = np.clip(np.floor(xc - 0.5) + 1, 0, w).astype(np.int64)
    flat, n_cross = np.unique((row - r0) * (w + 1) + first_col, return_counts=True)
    toggles = np.zeros((r1 - r0) * (w + 1), np.uint8)
    toggles[flat[n_cross % 2 == 1]] = 1
    out[:] = np.bitwise_xor.accumulate(toggles.reshape(r1 - r0, w + 1), axis=1)[:, :w]
    return out
