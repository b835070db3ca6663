"""Label raster -> polygons of every class, traced in row bands of bounded size.

:func:`trace_bands` gives exactly what :func:`wsiseg.geometry.mask_to_polygon_array`
gives for ``labels == k`` for every class ``k`` (same rings, same first vertex,
same ring and polygon order), but reads the raster one band of rows at a time (a
zarr array is never loaded whole) and holds, besides the band, only the boundary
corners of the components not yet complete and the polygons kept so far:

1. each band's components (4-connectivity, per class) get global ids; a
   union-find joins those that touch across the seam with the band above and
   sums their pixel counts and first pixels;
2. the boundary corners of the band (lattice rows of the band, seen through a
   one-row halo above) become *nodes* (one per outgoing boundary segment, two at
   a saddle), each tagged with the component on its right, and wait in a pool;
3. a component with no pixel in the last row read is complete: its nodes leave
   the pool and are joined into rings as the whole-raster tracer joins them. A
   segment ends at the next corner of the same component along its lattice line
   (the straight stretch between bounds that component only), and at a saddle of
   one component (two nodes at the corner) the ring turns left, joining the two
   diagonal pixels; a saddle between two components holds one node of each.

Rings start at their lowest node (corners in raster order, then second nodes of
saddles in raster order), holes follow the shell in the same order, polygons
follow their first pixel: as the whole-raster tracer numbers them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components, depth_first_order

from wsiseg.geometry import _DOWN, _LEFT, _OUT1, _OUT2, _RIGHT, _UP, _corners, count_values

__all__ = ["BAND_PIXELS", "TracedCoverage", "trace_bands"]

BAND_PIXELS = 1 << 22
"""Default pixels per band (about 4 M: some 80 MB of temporaries)."""


def find_root(parent: np.ndarray, i: int) -> int:
    """Root of ``i`` in the union-find forest ``parent`` (path compression on the way)."""
    root = i
    while parent[root] != root:
        root = int(parent[root])
    while parent[i] != root:
        parent[i], i = root, int(parent[i])
    return root


@dataclass(frozen=True)
class TracedCoverage:
    """Polygons of all classes, stored as found.

    ``coords`` are closed rings of (x, y) lattice points (int32); ``ring_offsets``
    and ``polygon_offsets`` as in ``shapely.to_ragged_array``; ``classes`` per
    polygon; ``order`` lists the polygons in coverage order (class, then first
    pixel), the order of ``mask_to_polygon_array`` per class.
    """

    coords: np.ndarray
    ring_offsets: np.ndarray
    polygon_offsets: np.ndarray
    classes: np.ndarray
    order: np.ndarray


class _UnionFind:
    """Global component ids (0 = none) with pixel count and first pixel per root, and the
    nodes waiting per root (``pool``: root -> list of (keys, directions))."""

    def __init__(self) -> None:
        self.parent = np.zeros(1, np.int64)
        self.count = np.zeros(1, np.int64)
        self.first = np.zeros(1, np.int64)
        self.n = 1
        self.pool: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.cls: dict[int, int] = {}  # class of each root in the pool

    def add(self, first: np.ndarray, count: np.ndarray) -> int:
        base, m = self.n, first.size
        if base + m > self.parent.size:
            size = max(2 * self.parent.size, base + m)
            for name in ("parent", "count", "first"):
                old = getattr(self, name)
                new = np.zeros(size, np.int64)
                new[: old.size] = old
                setattr(self, name, new)
        self.parent[base : base + m] = np.arange(base, base + m)
        self.count[base : base + m] = count
        self.first[base : base + m] = first
        self.n = base + m
        return base

    def find(self, i: int) -> int:
        return find_root(self.parent, i)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            keep, gone = min(ra, rb), max(ra, rb)
            self.parent[gone] = keep
            self.count[keep] += self.count[gone]
            self.first[keep] = min(self.first[keep], self.first[gone])
            if gone in self.pool:
                self.pool.setdefault(keep, []).extend(self.pool.pop(gone))
                self.cls[keep] = self.cls.pop(gone)

    def roots(self, ids: np.ndarray) -> np.ndarray:
        r: np.ndarray = self.parent[ids]
        while True:
            up = self.parent[r]
            if np.array_equal(up, r):
                return r
            r = up


def _junction_rows(window: np.ndarray) -> np.ndarray:
    """Lattice vertices between consecutive rows of ``window`` where >= 3 labels meet
    (outside the raster's columns = 0), shape (rows - 1, w + 1)."""
    pad = np.pad(window, ((0, 0), (1, 1)))
    a, b, c, d = pad[:-1, :-1], pad[:-1, 1:], pad[1:, :-1], pad[1:, 1:]
    n = (b != a).astype(np.uint8)
    n += (c != a) & (c != b)
    n += (d != a) & (d != b) & (d != c)
    out: np.ndarray = n >= 2
    return out


def _first_pixels(lab: np.ndarray, n: int) -> np.ndarray:
    """Flat index of the first pixel of labels 1..n (numbered in raster order)."""
    flat = lab.ravel()
    run = np.maximum.accumulate(flat)
    new = np.flatnonzero(run[1:] > run[:-1]) + 1
    if flat.size and flat[0] > 0:
        new = np.concatenate([[0], new])
    assert new.size == n
    return new


def _band_nodes(
    pad: np.ndarray, junctions: np.ndarray | None, above: np.ndarray, gid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nodes of one class in a window: (lattice row, column, second node?, direction, gid).

    ``pad`` is the class mask of the window rows with a False column on each side;
    lattice row ``i`` lies between window rows ``i`` and ``i + 1``. Window row 0 is
    the row above the band (component ids ``above``), the next rows are the band's
    (``gid``).
    """
    w2 = pad.shape[1]
    ys, xs = _corners(pad, junctions)
    flat = pad.ravel()
    i = ys * w2 + xs
    c = (
        flat[i].view(np.uint8)
        | (flat[i + 1].view(np.uint8) << 1)
        | (flat[i + w2].view(np.uint8) << 2)
        | (flat[i + w2 + 1].view(np.uint8) << 3)
    )
    del i
    saddle = np.flatnonzero((c == 6) | (c == 9))
    corner = np.concatenate([np.arange(ys.size), saddle])
    direction = np.concatenate([_OUT1[c], _OUT2[c[saddle]]])
    second = np.zeros(corner.size, bool)
    second[ys.size :] = True
    sy, sx = ys[corner], xs[corner]
    # The pixel on the right of the outgoing segment (window row, raster column).
    px = sx - ((direction == _LEFT) | (direction == _DOWN))
    py = sy + 1 - ((direction == _LEFT) | (direction == _UP))
    in_band = py > 0
    node_gid = np.empty(py.size, np.int64)
    node_gid[~in_band] = above[px[~in_band]]
    node_gid[in_band] = gid[py[in_band] - 1, px[in_band]]
    return sy, sx, second, direction, node_gid


def _assemble(
    key: np.ndarray,
    direction: np.ndarray,
    comp: np.ndarray,
    comp_rank: np.ndarray,
    lattice: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rings of complete components from their nodes, as ``wsiseg.geometry._trace`` joins them.

    ``key``: second-node flag, lattice row, column (``second * h1 * w1 + y * w1 + x``);
    ``comp``: component of each node (dense 0..C-1); ``comp_rank``: order of each
    component. Returns closed rings (x, y) as int32, ring offsets, polygon offsets.
    """
    h1, w1 = lattice
    big = h1 * w1
    order = np.argsort(key)
    key, direction, comp = key[order], direction[order], comp[order]
    del order
    n = key.size
    y, x = np.divmod(key % big, w1)
    del key
    y, x = y.astype(np.int32), x.astype(np.int32)

    # End corner of each segment: the next corner of the same component along its
    # row (RIGHT / LEFT) or column (DOWN / UP); at a corner with two nodes of that
    # component (a saddle joining it), the one turning left.
    nxt = np.empty(n, np.int64)
    horizontal = (direction == _RIGHT) | (direction == _LEFT)
    for sel, minor, major, size in ((horizontal, x, y, w1), (~horizontal, y, x, h1)):
        idx = np.flatnonzero(sel)
        if idx.size == 0:
            continue
        along = (comp.astype(np.int64) * big + major) * size + minor
        srt = np.argsort(along, kind="stable")
        sorted_keys = along[srt]
        forward = (direction[idx] == _RIGHT) | (direction[idx] == _DOWN)
        at = np.where(
            forward,
            np.searchsorted(sorted_keys, along[idx], "right"),
            np.searchsorted(sorted_keys, along[idx], "left") - 1,
        )
        del along, forward
        target = sorted_keys[at]
        lo = np.searchsorted(sorted_keys, target, "left")
        two = np.searchsorted(sorted_keys, target, "right") - lo == 2
        del sorted_keys, target, at
        first, other = srt[lo], srt[np.minimum(lo + 1, n - 1)]
        del srt, lo
        pick_other = two & (direction[first] != (direction[idx] + 3) % 4)
        nxt[idx] = np.where(pick_other, other, first)
        del first, other, pick_other, two, idx

    # Rings = cycles of ``nxt``, numbered by their lowest node (``key`` order), which
    # starts the ring (the same depth-first chain as the whole-raster tracer).
    graph = csr_matrix((np.ones(n, np.int8), nxt, np.arange(n + 1)), shape=(n, n))
    n_rings, ring = connected_components(graph, directed=True, connection="weak")
    del graph
    running = np.maximum.accumulate(ring)
    starts = np.flatnonzero(np.concatenate([[True], ring[1:] > running[:-1]]))
    del running
    dummies = n + np.arange(n_rings)
    dummy_edges = np.empty(2 * n_rings, np.int64)
    dummy_edges[0::2] = starts
    dummy_edges[1::2] = dummies + 1
    indices = np.concatenate([nxt, dummy_edges[:-1]])
    indptr = np.concatenate(
        [np.arange(n + 1), n + 2 * np.arange(1, n_rings + 1) - (dummies == dummies[-1])]
    )
    del dummy_edges, dummies
    size = n + n_rings
    dfs = csr_matrix((np.ones(indices.size, np.int8), indices, indptr), shape=(size, size))
    del indices, indptr
    walk = depth_first_order(dfs, n, directed=True, return_predecessors=False)
    del dfs
    walk = walk[walk < n]
    ring_len = np.bincount(ring, minlength=n_rings)
    ring_start = np.cumsum(ring_len) - ring_len
    area2 = np.bincount(
        ring,
        weights=(x.astype(np.float64) * y[nxt] - x[nxt].astype(np.float64) * y),
        minlength=n_rings,
    )
    del nxt
    shell = area2 > 0
    ring_comp = comp[walk[ring_start]]
    ring_order = np.argsort(comp_rank[ring_comp] * 2 + ~shell, kind="stable")
    lens = ring_len[ring_order] + 1
    ring_offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    first_at = ring_start[ring_order]
    pos = np.arange(ring_offsets[-1]) - np.repeat(ring_offsets[:-1] - first_at, lens)
    pos[ring_offsets[1:] - 1] = first_at
    node = walk[pos]
    del pos, walk
    coords = np.stack([x[node], y[node]], axis=1)
    per_comp = np.bincount(comp_rank[ring_comp], minlength=comp_rank.size)
    polygon_offsets = np.concatenate([[0], np.cumsum(per_comp)]).astype(np.int64)
    return coords, ring_offsets, polygon_offsets


def _band_rows(labels: Any, w: int, band_rows: int | None) -> int:
    """Rows per band: about ``BAND_PIXELS`` pixels, whole chunk rows of a chunked array."""
    if band_rows is not None:
        return max(1, int(band_rows))
    rows = max(1, BAND_PIXELS // max(w, 1))
    chunk = getattr(labels, "chunks", None)
    if isinstance(chunk, tuple) and chunk and isinstance(chunk[0], int) and chunk[0] > 0:
        rows = max(chunk[0], rows // chunk[0] * chunk[0])
    return rows


def trace_bands(
    labels: Any,
    n_classes: int,
    *,
    band_rows: int | None = None,
    junctions: bool,
    keep: Callable[[np.ndarray], np.ndarray],
) -> TracedCoverage:
    """Polygons of every class ``1 .. n_classes - 1`` of ``labels``, band by band.

    Parameters
    ----------
    labels : array-like, shape (h, w), integer
        Class ids; read as ``labels[r0:r1]`` (numpy or zarr), one band at a time.
    n_classes : int
        Number of classes; values outside ``0 .. n_classes - 1`` raise ValueError.
    band_rows : int, optional
        Rows per band; by default about :data:`BAND_PIXELS` pixels (whole chunk
        rows of a zarr array). The result does not depend on it.
    junctions : bool
        Keep lattice vertices where three or more labels meet (outside = 0) as
        vertices on straight stretches (``mask_to_polygon_array(junctions=...)``).
    keep : callable
        Pixel counts (int64 array) -> bool array: which components to keep.

    Returns
    -------
    TracedCoverage
        Kept polygons (in ``order``: by class, then first pixel), each equal
        (coordinates, ring start, ring order) to the polygon of
        ``mask_to_polygon_array(labels == k, junctions=...)``.
    """
    h, w = (int(v) for v in labels.shape)
    rows_per_band = _band_rows(labels, w, band_rows)
    h1, w1 = h + 1, w + 1
    id_type = np.int32 if h * w < 2**31 - 1 else np.int64
    uf = _UnionFind()
    found: list[list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = [
        [] for _ in range(n_classes)
    ]
    prev_lab: np.ndarray | None = None
    prev_gid = np.zeros(w, np.int64)
    for a in range(0, h1, rows_per_band):
        b = min(a + rows_per_band, h1)
        rows = max(0, min(b, h) - a)
        band = np.asarray(labels[a : a + rows])
        if prev_lab is None:
            prev_lab = np.zeros(w, band.dtype)
        if band.size:
            lo, hi = int(band.min()), int(band.max())
            if lo < 0 or hi >= n_classes:
                raise ValueError(f"label values {lo}..{hi} but {n_classes} classes")
        gid = np.zeros((rows, w), id_type)
        present = np.flatnonzero(count_values(band, n_classes))
        for k in present:
            if k == 0:
                continue
            mask = band == k
            lab, n = ndimage.label(mask)
            first = _first_pixels(lab, n) + a * w
            count = count_values(lab, n + 1)[1:]
            base = uf.add(first, count)
            gid[mask] = lab[mask] + (base - 1)
            del lab, mask
        if rows and a > 0:
            touch = (prev_lab == band[0]) & (prev_lab > 0)
            pairs = np.unique(
                np.stack([prev_gid[touch], gid[0][touch].astype(np.int64)], 1), axis=0
            )
            for u, v in pairs:
                uf.union(int(u), int(v))
        # Window: the row above the band, the band, and past the raster a zero row.
        window = np.concatenate([prev_lab[None], band, np.zeros((b - a - rows, w), band.dtype)])
        junc = _junction_rows(window) if junctions else None
        in_window = np.flatnonzero(count_values(window, n_classes))
        for k in in_window[in_window > 0]:
            pad = np.zeros((window.shape[0], w + 2), bool)
            pad[:, 1:-1] = window == k
            sy, sx, second, direction, node_gid = _band_nodes(pad, junc, prev_gid, gid)
            del pad
            if sy.size == 0:
                continue
            key = second * (h1 * w1) + (a + sy) * w1 + sx
            root = uf.roots(node_gid)
            order = np.argsort(root, kind="stable")
            root, key, direction = root[order], key[order], direction[order].astype(np.int8)
            cut = np.flatnonzero(root[1:] != root[:-1]) + 1
            for r, kk, dd in zip(
                root[np.r_[0, cut]].tolist(),
                np.split(key, cut),
                np.split(direction, cut),
                strict=True,
            ):
                uf.pool.setdefault(r, []).append((kk, dd))
                uf.cls[r] = int(k)
        if rows:
            prev_lab, prev_gid = band[-1].copy(), gid[-1].astype(np.int64)
        del band, gid, window, junc
        # Components with no pixel in the last row read are complete.
        active = set(uf.roots(np.unique(prev_gid[prev_gid > 0])).tolist()) if b <= h else set()
        by_class: dict[int, list[int]] = {}
        for r in [r for r in uf.pool if r not in active]:
            by_class.setdefault(uf.cls.pop(r), []).append(r)
        for cl, roots in sorted(by_class.items()):
            parts = [uf.pool.pop(r) for r in roots]
            sizes = np.array([sum(p[0].size for p in part) for part in parts], np.int64)
            key = np.concatenate([p[0] for part in parts for p in part])
            direction = np.concatenate([p[1] for part in parts for p in part])
            del parts
            comp = np.repeat(np.arange(len(roots), dtype=np.int32), sizes)
            comps = np.array(roots, np.int64)
            rank = np.empty(comps.size, np.int64)
            rank[np.argsort(uf.first[comps])] = np.arange(comps.size)
            coords, ring_off, poly_off = _assemble(key, direction, comp, rank, (h1, w1))
            del key, direction, comp
            by_rank = np.empty_like(comps)
            by_rank[rank] = comps
            found[cl].append(
                _kept(coords, ring_off, poly_off, keep(uf.count[by_rank]), uf.first[by_rank])
            )
    return _in_order(found)


def _kept(
    coords: np.ndarray,
    ring_off: np.ndarray,
    poly_off: np.ndarray,
    keep: np.ndarray,
    first: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The kept polygons of a ragged block, and their first pixels."""
    n_rings = np.diff(poly_off)[keep]
    rings = _spans(poly_off[:-1][keep], n_rings)
    lens = np.diff(ring_off)[rings]
    pts = _spans(ring_off[:-1][rings], lens)
    return (
        coords[pts],
        np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        np.concatenate([[0], np.cumsum(n_rings)]).astype(np.int64),
        first[keep],
    )


def _spans(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offs = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, np.int64) - offs, lengths) + np.arange(total)


def _in_order(
    found: list[list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]],
) -> TracedCoverage:
    """All blocks joined as found; ``order`` sorts the polygons by class, then first pixel."""
    coords, rings, polys, classes, firsts = [], [], [], [], []
    n_pts = n_rings = 0
    for k, blocks in enumerate(found):
        for c, r, p, f in blocks:
            coords.append(c)
            rings.append(r[:-1] + n_pts)
            polys.append(p[:-1] + n_rings)
            classes.append(np.full(f.size, k, np.int64))
            firsts.append(f)
            n_pts += c.shape[0]
            n_rings += r.size - 1
        blocks.clear()
    if not coords:
        zero = np.zeros(1, np.int64)
        none = np.zeros(0, np.int64)
        return TracedCoverage(np.zeros((0, 2), np.int32), zero, zero, none, none)
    cls = np.concatenate(classes)
    return TracedCoverage(
        np.concatenate(coords),
        np.concatenate([*rings, [n_pts]]),
        np.concatenate([*polys, [n_rings]]),
        cls,
        np.lexsort((np.concatenate(firsts), cls)),
    )
