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

from wsiseg.geometry import _DOWN, _LEFT, _OUT1, _OUT2, _RIGHT, _UP, _corners

__all__ = ["TracedCoverage", "trace_bands"]


@dataclass(frozen=True)
class TracedCoverage:
    """Polygons of all classes in coverage order (class, then first pixel).

    ``coords`` are closed rings of (x, y) lattice points; ``ring_offsets`` and
    ``polygon_offsets`` as in ``shapely.to_ragged_array``; ``classes`` per polygon.
    """

    coords: np.ndarray
    ring_offsets: np.ndarray
    polygon_offsets: np.ndarray
    classes: np.ndarray


class _UnionFind:
    """Global component ids (0 = none) with class, pixel count and first pixel per root."""

    def __init__(self) -> None:
        self.parent = np.zeros(1, np.int64)
        self.count = np.zeros(1, np.int64)
        self.first = np.zeros(1, np.int64)
        self.n = 1

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
        root = i
        while self.parent[root] != root:
            root = int(self.parent[root])
        while self.parent[i] != root:
            self.parent[i], i = root, int(self.parent[i])
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            keep, gone = min(ra, rb), max(ra, rb)
            self.parent[gone] = keep
            self.count[keep] += self.count[gone]
            self.first[keep] = min(self.first[keep], self.first[gone])

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
    pad: np.ndarray, junctions: np.ndarray | None, gid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nodes of one class in a window: (lattice row, column, second node?, direction, gid).

    ``pad`` is the class mask of the window rows with a False column on each side;
    lattice row ``i`` lies between window rows ``i`` and ``i + 1``.
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
    saddle = np.flatnonzero((c == 6) | (c == 9))
    corner = np.concatenate([np.arange(ys.size), saddle])
    direction = np.concatenate([_OUT1[c], _OUT2[c[saddle]]])
    second = np.zeros(corner.size, bool)
    second[ys.size :] = True
    sy, sx = ys[corner], xs[corner]
    # The pixel on the right of the outgoing segment (window row, raster column).
    px = sx - ((direction == _LEFT) | (direction == _DOWN))
    py = sy + 1 - ((direction == _LEFT) | (direction == _UP))
    return sy, sx, second, direction, gid[py, px]


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
    component. Returns closed rings (x, y), ring offsets, polygon offsets.
    """
    h1, w1 = lattice
    big = h1 * w1
    order = np.argsort(key)
    key, direction, comp = key[order], direction[order], comp[order]
    plain = key % big
    y, x = np.divmod(plain, w1)
    n = key.size

    # End corner of each segment: the next corner of the same component along its
    # row (RIGHT / LEFT) or column (DOWN / UP); at a corner with two nodes of that
    # component (a saddle joining it), the one turning left.
    horizontal = (direction == _RIGHT) | (direction == _LEFT)
    nxt = np.empty(n, np.int64)
    for along, sel in (
        (comp * big + plain, horizontal),
        (comp * big + x * h1 + y, ~horizontal),
    ):
        idx = np.flatnonzero(sel)
        if idx.size == 0:
            continue
        srt = np.argsort(along, kind="stable")
        sorted_keys = along[srt]
        forward = (direction[idx] == _RIGHT) | (direction[idx] == _DOWN)
        at = np.where(
            forward,
            np.searchsorted(sorted_keys, along[idx], "right"),
            np.searchsorted(sorted_keys, along[idx], "left") - 1,
        )
        target = sorted_keys[at]
        lo = np.searchsorted(sorted_keys, target, "left")
        hi = np.searchsorted(sorted_keys, target, "right")
        first, other = srt[lo], srt[np.minimum(lo + 1, n - 1)]
        turn_left = (direction[idx] + 3) % 4
        pick_other = (hi - lo == 2) & (direction[first] != turn_left)
        nxt[idx] = np.where(pick_other, other, first)

    # Rings = cycles of ``nxt``, numbered by their lowest node (``key`` order), which
    # starts the ring (the same depth-first chain as the whole-raster tracer).
    graph = csr_matrix((np.ones(n, np.int8), nxt, np.arange(n + 1)), shape=(n, n))
    n_rings, ring = connected_components(graph, directed=True, connection="weak")
    del graph
    running = np.maximum.accumulate(ring)
    starts = np.flatnonzero(np.concatenate([[True], ring[1:] > running[:-1]]))
    dummies = n + np.arange(n_rings)
    dummy_edges = np.empty(2 * n_rings, np.int64)
    dummy_edges[0::2] = starts
    dummy_edges[1::2] = dummies + 1
    indices = np.concatenate([nxt, dummy_edges[:-1]])
    indptr = np.concatenate(
        [np.arange(n + 1), n + 2 * np.arange(1, n_rings + 1) - (dummies == dummies[-1])]
    )
    size = n + n_rings
    dfs = csr_matrix((np.ones(indices.size, np.int8), indices, indptr), shape=(size, size))
    walk = depth_first_order(dfs, n, directed=True, return_predecessors=False)
    del dfs
    walk = walk[walk < n]
    ring_len = np.bincount(ring, minlength=n_rings)
    ring_start = np.cumsum(ring_len) - ring_len
    area2 = np.bincount(
        ring, weights=(x * y[nxt] - x[nxt] * y).astype(np.float64), minlength=n_rings
    )
    shell = area2 > 0
    ring_comp = comp[walk[ring_start]]
    ring_order = np.argsort(comp_rank[ring_comp] * 2 + ~shell, kind="stable")
    lens = ring_len[ring_order] + 1
    ring_offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    first_at = ring_start[ring_order]
    pos = np.arange(ring_offsets[-1]) - np.repeat(ring_offsets[:-1] - first_at, lens)
    pos[ring_offsets[1:] - 1] = first_at
    node = walk[pos]
    coords = np.stack([x[node], y[node]], axis=1)
    per_comp = np.bincount(comp_rank[ring_comp], minlength=comp_rank.size)
    polygon_offsets = np.concatenate([[0], np.cumsum(per_comp)]).astype(np.int64)
    return coords, ring_offsets, polygon_offsets


class _Pool:
    """Nodes of one class whose component is not complete yet."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, key: np.ndarray, direction: np.ndarray, gid: np.ndarray) -> None:
        if key.size:
            self.parts.append((key, direction, gid))

    def take(
        self, uf: _UnionFind, active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Remove and return the nodes (key, direction, root) of complete components."""
        if not self.parts:
            return None
        key = np.concatenate([p[0] for p in self.parts])
        direction = np.concatenate([p[1] for p in self.parts])
        root = uf.roots(np.concatenate([p[2] for p in self.parts]))
        done = ~np.isin(root, active)
        self.parts = [(key[~done], direction[~done], root[~done])] if not done.all() else []
        if not done.any():
            return None
        return key[done], direction[done], root[done]


def trace_bands(
    labels: Any,
    n_classes: int,
    *,
    band_rows: int,
    junctions: bool,
    keep: Callable[[np.ndarray], np.ndarray],
) -> TracedCoverage:
    """Polygons of every class ``1 .. n_classes - 1`` of ``labels``, band by band.

    Parameters
    ----------
    labels : array-like, shape (h, w), integer
        Class ids; read as ``labels[r0:r1]`` (numpy or zarr), ``band_rows`` rows at a time.
    n_classes : int
        Number of classes; values outside ``0 .. n_classes - 1`` raise ValueError.
    band_rows : int
        Rows per band (>= 1).
    junctions : bool
        Keep lattice vertices where three or more labels meet (outside = 0) as
        vertices on straight stretches (``mask_to_polygon_array(junctions=...)``).
    keep : callable
        Pixel counts (int64 array) -> bool array: which components to keep.

    Returns
    -------
    TracedCoverage
        Kept polygons ordered by class, then first pixel; each equal (coordinates,
        ring start, ring order) to ``mask_to_polygon_array(labels == k, junctions=...)``.
    """
    h, w = (int(v) for v in labels.shape)
    band_rows = max(1, int(band_rows))
    h1, w1 = h + 1, w + 1
    uf = _UnionFind()
    pools = [_Pool() for _ in range(n_classes)]
    found: list[list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = [
        [] for _ in range(n_classes)
    ]
    prev_lab = np.zeros(w, np.int64)
    prev_gid = np.zeros(w, np.int64)
    for a in range(0, h1, band_rows):
        b = min(a + band_rows, h1)
        rows = max(0, min(b, h) - a)
        band = np.asarray(labels[a : a + rows]).astype(np.int64, copy=False)
        if band.size and (int(band.min()) < 0 or int(band.max()) >= n_classes):
            raise ValueError(
                f"label values {int(band.min())}..{int(band.max())} but {n_classes} classes"
            )
        gid = np.zeros((rows, w), np.int64)
        present = np.flatnonzero(np.bincount(band.ravel(), minlength=n_classes))
        for k in present[present > 0]:
            lab, n = ndimage.label(band == k)
            first = _first_pixels(lab, n) + a * w
            count = np.bincount(lab.ravel(), minlength=n + 1)[1:]
            base = uf.add(first, count)
            m = lab > 0
            gid[m] = lab[m] + (base - 1)
        if rows and a > 0:
            touch = (prev_lab == band[0]) & (prev_lab > 0)
            for u, v in np.unique(np.stack([prev_gid[touch], gid[0][touch]], 1), axis=0):
                uf.union(int(u), int(v))
        # Window: the row above the band, the band, and past the raster a zero row.
        tail = b - a - rows
        window = np.concatenate([prev_lab[None], band, np.zeros((tail, w), np.int64)])
        wgid = np.concatenate([prev_gid[None], gid, np.zeros((tail, w), np.int64)])
        junc = _junction_rows(window) if junctions else None
        in_window = np.flatnonzero(np.bincount(window.ravel(), minlength=n_classes))
        for k in in_window[in_window > 0]:
            pad = np.zeros((window.shape[0], w + 2), bool)
            pad[:, 1:-1] = window == k
            sy, sx, second, direction, node_gid = _band_nodes(pad, junc, wgid)
            key = second * (h1 * w1) + (a + sy) * w1 + sx
            pools[k].add(key, direction.astype(np.int8), node_gid)
        if rows:
            prev_lab, prev_gid = band[-1].copy(), gid[-1].copy()
        del band, gid, window, wgid, junc
        # Components with no pixel in the last row read are complete.
        active = uf.roots(np.unique(prev_gid[prev_gid > 0])) if b <= h else np.zeros(0, np.int64)
        for k in range(1, n_classes):
            taken = pools[k].take(uf, active)
            if taken is None:
                continue
            key, direction, root = taken
            comps, comp = np.unique(root, return_inverse=True)
            first = uf.first[comps]
            rank = np.empty(comps.size, np.int64)
            rank[np.argsort(first)] = np.arange(comps.size)
            coords, ring_off, poly_off = _assemble(key, direction, comp, rank, (h1, w1))
            by_rank = np.empty_like(comps)
            by_rank[rank] = comps
            found[k].append(
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
    """All blocks joined, polygons sorted by class, then first pixel."""
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
    if not coords:
        zero = np.zeros(1, np.int64)
        return TracedCoverage(np.zeros((0, 2), np.int64), zero, zero, np.zeros(0, np.int64))
    xy = np.concatenate(coords)
    ring_off = np.concatenate([*rings, [n_pts]])
    poly_off = np.concatenate([*polys, [n_rings]])
    cls = np.concatenate(classes)
    order = np.lexsort((np.concatenate(firsts), cls))
    n_r = np.diff(poly_off)[order]
    ring_ids = _spans(poly_off[:-1][order], n_r)
    lens = np.diff(ring_off)[ring_ids]
    pts = _spans(ring_off[:-1][ring_ids], lens)
    return TracedCoverage(
        xy[pts],
        np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        np.concatenate([[0], np.cumsum(n_r)]).astype(np.int64),
        cls[order],
    )
