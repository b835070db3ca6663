"""Coverage simplification edge by edge, identical to ``shapely.coverage_simplify``.

``shapely.coverage_simplify(polygons, tolerance, simplify_boundary=True)`` (GEOS
``CoverageSimplifier``) splits the rings of a polygon coverage into edges at
*nodes*, simplifies every edge with topology-preserving Visvalingam-Whyatt (TPVW)
and rebuilds the rings from the simplified edges. Called on a whole slide it holds
every ring, segment and edge at once, and its spatial index makes each vertex
removal test against every edge whose envelope covers it. :func:`simplify_coverage`
gives the same coordinates for pixel-edge polygons (integer, axis-parallel
segments, edge-matched: a stretch two rings share has the same vertices on both,
as :mod:`wsiseg.export.trace` gives with junctions) with bounded GEOS calls:

1. nodes, edges, their order and orientation are found as GEOS finds them, with
   numpy: a vertex is a node where it lies on more than two rings, where more than
   two *boundary* segments (segments of one ring only) meet, or where a ring passes
   from boundary segments to shared ones; a ring is split at its nodes starting
   from its first node; an edge shared by two rings keeps the orientation of the
   first ring (coverage order) and edges are simplified in order of creation;
2. each edge is simplified by GEOS in a *cell* of its own: translated far from
   everything else, closed into a stand-in polygon through two points beyond its
   bounding box, with a *tab* ring (its end node and two far points) at each end
   so that the ends stay nodes; no stand-in vertex can lie in a removal triangle
   or be removed. Edges that TPVW cannot change, or only by the middle vertex of
   three, need no GEOS call;
3. TPVW couples edges in two ways only: a vertex of another edge inside a removal
   triangle blocks the removal, and a corner whose base equals another two-point
   edge is kept. Every removal triangle lies in the convex hull of the original
   vertices between two consecutive kept vertices, so after each round the hull
   of every such *stretch* is searched for vertices of other edges: an interior
   vertex joins the two edges into one cell (simplified together, in creation
   order, at their true relative position), a node is added to the cell as a fixed
   vertex. Edges with the same two end nodes share a cell from the start. Rounds
   repeat until no stretch finds anything new; then each cell's result is what the
   whole coverage gives (the same removals are tested against the same vertices
   in the same order);
4. rings are rebuilt from the edges as GEOS does (with its two-edge quirk: the
   first edge keeps its stored direction).

All coordinates are integers well inside 2**53, so translation changes no area,
orientation or envelope test.
"""

from __future__ import annotations

import numpy as np
import shapely

from wsiseg.export.trace import find_root

__all__ = ["simplify_coverage"]

_CHUNK_VERTICES = 100_000  # vertices per GEOS call and per chunk of numpy work


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + n)`` for every (s, n)."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offs = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, np.int64) - offs, lengths) + np.arange(total)


class _Edges:
    """Nodes and edges of a lattice coverage, as GEOS ``CoverageRingEdges`` builds them.

    Vertices are numbered by their sorted lattice key ``y * width + x``; edges by
    creation (rings in coverage order, each from its first node), with the
    coordinates of the ring that created them (closed edges repeat their first vertex).
    """

    def __init__(self, coords: np.ndarray, ring_offsets: np.ndarray, ring_rank: np.ndarray) -> None:
        ring_len = np.diff(ring_offsets) - 1  # open vertices per ring
        n_rings = ring_len.size
        start = np.cumsum(ring_len) - ring_len
        ends = start + ring_len - 1
        keep = np.ones(coords.shape[0], bool)
        keep[ring_offsets[1:] - 1] = False
        x = coords[:, 0][keep]
        self.width = int(x.max()) + 2
        vkey = coords[:, 1][keep].astype(np.int64) * self.width + x
        del keep, x
        self.vkeys = np.unique(vkey)
        nv = self.vkeys.size
        vid = np.searchsorted(self.vkeys, vkey).astype(np.int32)
        del vkey
        vcount = np.bincount(vid, minlength=nv)
        vnext = np.empty_like(vid)
        vnext[:-1] = vid[1:]
        vnext[ends] = vid[start]

        # Segments lie on pixel edges: a segment is its lower end (the lower vertex id)
        # and whether it is vertical; the coverage is edge-matched (a shared stretch
        # has the same vertices on both rings), so equal keys are equal segments.
        keep = np.ones(coords.shape[0] - 1, bool)
        keep[ring_offsets[1:-1] - 1] = False  # no segment from a ring's end to the next ring
        vertical = (coords[:, 0][1:] == coords[:, 0][:-1])[keep]
        if not (vertical | (coords[:, 1][1:] == coords[:, 1][:-1])[keep]).all():
            raise ValueError("polygons must have axis-parallel segments (pixel edges)")
        sid = np.minimum(vid, vnext) * 2 + vertical.astype(np.int32)
        del keep, vertical
        odd = np.bincount(sid, minlength=2 * nv)
        odd &= 1
        boundary = odd.astype(bool)[sid]  # segment i -> i + 1 lies on one ring only
        del odd
        ns = 2 * nv
        node_v = vcount > 2
        del vcount
        degree = np.bincount(vid[boundary], minlength=nv)
        degree += np.bincount(vnext[boundary], minlength=nv)
        node_v |= degree > 2
        del degree, vnext
        bprev = np.empty_like(boundary)
        bprev[1:] = boundary[:-1]
        bprev[start] = boundary[ends]
        node_v[vid[boundary != bprev]] = True
        del boundary, bprev
        self.node_v = node_v

        # Edge occurrences: each ring split at its nodes from its first node; a ring
        # with no node is one free edge, a ring with one node one closed edge.
        at_node = np.flatnonzero(node_v[vid])  # ring-major, position ascending
        r = np.searchsorted(start, at_node, "right") - 1
        n_nodes = np.bincount(r, minlength=n_rings)
        first_node = np.cumsum(n_nodes) - n_nodes
        k = np.arange(at_node.size)
        following = at_node[np.where(k + 1 < first_node[r] + n_nodes[r], k + 1, first_node[r])]
        free = np.flatnonzero(n_nodes == 0)
        occ_ring = np.concatenate([r, free])
        occ_start = np.concatenate([at_node, start[free]])
        occ_end = np.concatenate([following, start[free]])
        del at_node, following, k, r
        order = np.lexsort((occ_start, ring_rank[occ_ring]))
        occ_ring, occ_start, occ_end = occ_ring[order], occ_start[order], occ_end[order]
        occ_nodes = n_nodes[occ_ring]
        rl = ring_len[occ_ring]
        occ_closed = occ_nodes <= 1  # the edge is the whole ring
        occ_len = np.where(occ_closed, rl + 1, (occ_end - occ_start) % rl + 1)

        # Identity: an open edge by its first and last segment, a closed one by its
        # lowest segment (a segment lies on one edge); the first occurrence creates it.
        before_end = np.where(occ_end == start[occ_ring], ends[occ_ring], occ_end - 1)
        a, b = sid[occ_start].astype(np.int64), sid[before_end].astype(np.int64)
        ring_min = np.minimum.reduceat(sid, start).astype(np.int64)
        del sid
        key = np.where(
            occ_closed, ns * ns + ring_min[occ_ring], np.minimum(a, b) * ns + np.maximum(a, b)
        )
        del a, b, before_end, ring_min
        _, first_occ, occ_edge = np.unique(key, return_index=True, return_inverse=True)
        creation = np.argsort(first_occ, kind="stable")
        rank = np.empty_like(creation)
        rank[creation] = np.arange(creation.size)
        self.occ_edge = rank[occ_edge]
        self.occ_ring = occ_ring
        self.occ_start_v = vid[occ_start]
        # Occurrences are grouped by ring, rings in coverage order.
        self.ring_edges = np.flatnonzero(np.r_[True, occ_ring[1:] != occ_ring[:-1], True])
        creator = first_occ[creation]
        self.n_edges = n_edges = creator.size
        self.free = occ_nodes[creator] == 0
        self.closed = occ_closed[creator]
        elen = occ_len[creator]
        self.edge_offsets = np.concatenate([[0], np.cumsum(elen)]).astype(np.int64)
        cr = occ_ring[creator]
        first = occ_start[creator] - start[cr]
        at = _ranges(np.zeros(n_edges, np.int64), elen)
        at += np.repeat(first, elen)
        at %= np.repeat(ring_len[cr], elen)
        at += np.repeat(start[cr], elen)
        self.edge_v = vid[at]
        del at, vid
        self.start_v = self.edge_v[self.edge_offsets[:-1]]
        self.end_v = self.edge_v[self.edge_offsets[1:] - 1]
        # The edge of every vertex that is no node (a vertex inside an edge is on no other).
        owner = np.full(nv, -1, np.int32)
        owner[self.edge_v] = np.repeat(np.arange(n_edges, dtype=np.int32), elen)
        owner[node_v] = -1
        self.owner = owner
        x, y = self.xy(self.edge_v)
        bounds = self.edge_offsets[:-1]
        self.bx0, self.bx1 = np.minimum.reduceat(x, bounds), np.maximum.reduceat(x, bounds)
        self.by0, self.by1 = np.minimum.reduceat(y, bounds), np.maximum.reduceat(y, bounds)
        self.n_rings = n_rings

    def xy(self, vids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lattice (x, y) of vertices."""
        y, x = np.divmod(self.vkeys[vids], self.width)
        return x, y

    def n_open(self, ids: np.ndarray) -> np.ndarray:
        """Vertices of edges without the closing repeat."""
        out: np.ndarray = self.edge_offsets[ids + 1] - self.edge_offsets[ids] - self.closed[ids]
        return out

    def positions(self, edge: np.ndarray, vid: np.ndarray) -> np.ndarray:
        """Position of each vertex ``vid`` along edge ``edge`` (not the closing repeat)."""
        ids, inv = np.unique(edge, return_inverse=True)
        n = self.n_open(ids)
        src = _ranges(self.edge_offsets[ids], n)
        local = np.repeat(np.arange(ids.size), n)
        table = local * self.vkeys.size + self.edge_v[src]
        pos = src - np.repeat(self.edge_offsets[ids], n)
        sorter = np.argsort(table)
        at = np.searchsorted(table, inv * self.vkeys.size + vid, sorter=sorter)
        out: np.ndarray = pos[sorter[at]]
        return out


class _Cells:
    """Union-find of edges simplified together (one cell), with each cell's fixed nodes."""

    def __init__(self, e: _Edges) -> None:
        self.parent = np.arange(e.n_edges)
        self.pins: dict[int, set[int]] = {}
        ids = np.flatnonzero(~e.closed)
        a, b = e.start_v[ids], e.end_v[ids]
        pair = np.minimum(a, b) * e.vkeys.size + np.maximum(a, b)
        order = np.argsort(pair, kind="stable")
        for i in np.flatnonzero(pair[order][1:] == pair[order][:-1]):
            # Edges between the same two nodes: a corner's base may be the other edge.
            self.union(int(ids[order[i]]), int(ids[order[i + 1]]))

    def find(self, i: int) -> int:
        return find_root(self.parent, i)

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            keep, gone = min(ra, rb), max(ra, rb)
            self.parent[gone] = keep
            if gone in self.pins:
                self.pins.setdefault(keep, set()).update(self.pins.pop(gone))
            ra = keep
        return ra

    def pin(self, edge: int, vertex: int) -> int | None:
        """Fix ``vertex`` in the cell of ``edge``; the cell's root if that is new."""
        root = self.find(edge)
        pins = self.pins.setdefault(root, set())
        if vertex in pins:
            return None
        pins.add(vertex)
        return root

    def roots(self) -> np.ndarray:
        p = self.parent
        while True:
            q = p[p]
            if np.array_equal(q, p):
                break
            p = q
        self.parent = p
        return p


def _settled(
    e: _Edges, ids: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_settled_chunk` over chunks of about ``_CHUNK_VERTICES / 4`` vertices."""
    size = np.cumsum(e.n_open(ids))
    total = int(size[-1]) if size.size else 0
    step = _CHUNK_VERTICES // 4
    cuts = np.searchsorted(size, np.arange(step, total, step))
    parts = [
        _settled_chunk(e, ids[i0:i1], tolerance)
        for i0, i1 in zip(np.r_[0, cuts], np.r_[cuts, ids.size], strict=True)
    ]
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
    )


def _settled_chunk(
    e: _Edges, ids: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges whose simplification alone needs no GEOS call: (mask over ``ids``, kept
    count per masked edge, their kept positions, flat).

    TPVW removes nothing from an edge with no corner of area <= tolerance ** 2 (its
    queue starts empty), and from an open edge of three vertices exactly its middle
    corner when small enough (no other vertex of its own can lie in that triangle).
    """
    n = e.n_open(ids)
    closed, free = e.closed[ids], e.free[ids]
    pos = _ranges(np.zeros(ids.size, np.int64), n)
    edge = np.repeat(np.arange(ids.size), n)
    base = np.repeat(e.edge_offsets[ids], n)
    size = np.repeat(n, n)
    prev = np.where(pos == 0, size - 1, pos - 1)  # (closed edges wrap around)
    nxt = np.where(pos == size - 1, 0, pos + 1)
    x, y = e.xy(e.edge_v[base + pos])
    px, py = e.xy(e.edge_v[base + prev])
    nx, ny = e.xy(e.edge_v[base + nxt])
    area = np.abs((nx - px) * (y - py) - (x - px) * (ny - py)) / 2.0  # as GEOS Triangle::area
    del x, y, px, py, nx, ny, base, prev
    corner = np.where(np.repeat(closed, n), np.repeat(free, n) | (pos > 0), (pos > 0) & (nxt > 0))
    small = corner & (area <= tolerance * tolerance)
    none = np.bincount(edge, weights=small, minlength=ids.size) == 0
    middle = ~closed & (n == 3)
    done = none | middle
    kept = done[edge] & (none[edge] | (pos != 1) | ~small)
    return done, np.bincount(edge[kept], minlength=ids.size)[done], pos[kept].astype(np.int32)


def _simplify_cells(
    e: _Edges,
    members: np.ndarray,
    cell_start: np.ndarray,
    pin_v: np.ndarray,
    pin_cell: np.ndarray,
    tolerance: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Kept positions (flat, per-member offsets) of the edges ``members`` (grouped by cell,
    each cell from ``cell_start``, in creation order within a cell). A cell of one
    edge and no pinned node that :func:`_settled` settles needs no GEOS call."""
    sizes = np.diff(cell_start)
    first = members[cell_start[:-1]]
    alone = np.flatnonzero((sizes == 1) & (np.bincount(pin_cell, minlength=sizes.size) == 0))
    settled, n_settled, settled_pos = _settled(e, first[alone], tolerance)
    rest_cell = np.ones(sizes.size, bool)
    rest_cell[alone[settled]] = False
    rest = np.repeat(rest_cell, sizes)
    counts = np.zeros(members.size, np.int64)
    counts[~rest] = n_settled
    geos_pos = np.zeros(0, np.int32)
    if rest.any():
        geos_pos, geos_off = _simplify_geos(
            e,
            members[rest],
            np.concatenate([[0], np.cumsum(sizes[rest_cell])]),
            pin_v,
            (np.cumsum(rest_cell) - 1)[pin_cell],
            tolerance,
        )
        counts[rest] = np.diff(geos_off)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    flat = np.empty(int(offsets[-1]), np.int32)
    flat[_ranges(offsets[:-1][rest], counts[rest])] = geos_pos
    flat[_ranges(offsets[:-1][~rest], counts[~rest])] = settled_pos
    return flat, offsets


def _simplify_geos(
    e: _Edges,
    members: np.ndarray,
    cell_start: np.ndarray,
    pin_v: np.ndarray,
    pin_cell: np.ndarray,
    tolerance: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Kept positions (flat, per-member offsets) of the edges ``members`` (grouped by cell,
    each cell from ``cell_start``, in creation order within a cell), simplified by GEOS.

    Each cell is translated to a column of its own. Every edge is the ring of one
    stand-in polygon: an open edge closed through two points beyond the cell's
    bounding box, a closed edge as it is. A *tab* ring (a node and two far points)
    at each end node makes it a node (more than two boundary segments meet there);
    a pinned node is a tab ring too. Every stand-in corner has an area far above
    ``tolerance ** 2``, so no stand-in vertex is ever removed or inside a triangle.
    """
    margin = int(np.ceil(tolerance)) + 4
    n_cells = cell_start.size - 1
    sizes = np.diff(cell_start)
    cell_of = np.repeat(np.arange(n_cells), sizes)
    j = np.arange(members.size) - cell_start[cell_of]
    jp = np.zeros(pin_v.size, np.int64)
    if pin_v.size:
        order = np.argsort(pin_cell, kind="stable")
        pin_v, pin_cell = pin_v[order], pin_cell[order]
        jp = np.arange(pin_v.size) - np.searchsorted(pin_cell, pin_cell)
    bx0 = np.minimum.reduceat(e.bx0[members], cell_start[:-1])
    bx1 = np.maximum.reduceat(e.bx1[members], cell_start[:-1])
    by0 = np.minimum.reduceat(e.by0[members], cell_start[:-1])
    by1 = np.maximum.reduceat(e.by1[members], cell_start[:-1])
    px, py = e.xy(pin_v)
    np.minimum.at(bx0, pin_cell, px)
    np.maximum.at(bx1, pin_cell, px)
    np.minimum.at(by0, pin_cell, py)
    np.maximum.at(by1, pin_cell, py)
    step = bx1 - bx0 + 8 * margin + 2
    dx = np.cumsum(step) - step + 2 * margin - bx0
    dy = 2 * margin - by0

    n_pts = e.edge_offsets[members + 1] - e.edge_offsets[members]
    opened = ~e.closed[members]
    tabbed = ~e.free[members]
    cost = n_pts + 3 * opened + 4 * tabbed + 4 * opened
    cell_cost = np.add.reduceat(cost, cell_start[:-1]) + 4 * np.bincount(
        pin_cell, minlength=n_cells
    )
    cuts = [0]
    total = 0
    for c, v in enumerate(cell_cost.tolist()):
        total += v
        if total > _CHUNK_VERTICES and c + 1 < n_cells:
            cuts.append(c + 1)
            total = 0
    cuts.append(n_cells)

    flat: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    for c0, c1 in zip(cuts[:-1], cuts[1:], strict=True):
        m0, m1 = int(cell_start[c0]), int(cell_start[c1])
        p0, p1 = np.searchsorted(pin_cell, [c0, c1])
        got_pos, got_n = _simplify_chunk(
            e,
            members[m0:m1],
            cell_of[m0:m1],
            j[m0:m1],
            pin_v[p0:p1],
            pin_cell[p0:p1],
            jp[p0:p1],
            (bx0, bx1, by0, by1, dx, dy),
            margin,
            tolerance,
        )
        flat.append(got_pos)
        counts.append(got_n)
    n = np.concatenate(counts)
    return np.concatenate(flat), np.concatenate([[0], np.cumsum(n)])


def _simplify_chunk(
    e: _Edges,
    ids: np.ndarray,
    cell: np.ndarray,
    j: np.ndarray,
    pin_v: np.ndarray,
    pin_cell: np.ndarray,
    jp: np.ndarray,
    box: tuple[np.ndarray, ...],
    margin: int,
    tolerance: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One GEOS call for whole cells: kept positions and their count per edge."""
    bx0, bx1, by0, by1, dx, dy = box
    n_pts = e.edge_offsets[ids + 1] - e.edge_offsets[ids]
    opened = ~e.closed[ids]
    lo, hi = by0[cell] - margin - j, by1[cell] + margin + j
    shift_x, shift_y = dx[cell], dy[cell]

    # Stand-in rings: every edge (closed through two far points when open) ...
    ring_n = n_pts + 3 * opened
    ring_start = np.cumsum(ring_n) - ring_n
    xs = np.empty(int(ring_n.sum()), np.int64)
    ys = np.empty_like(xs)
    dest = _ranges(ring_start, n_pts)
    key = e.vkeys[e.edge_v[_ranges(e.edge_offsets[ids], n_pts)]]
    ys[dest] = key // e.width + np.repeat(shift_y, n_pts)
    xs[dest] = key % e.width + np.repeat(shift_x, n_pts)
    del key, dest
    o = np.flatnonzero(opened)
    tail = ring_start[o] + n_pts[o]
    xs[tail] = xs[tail + 1] = (bx1[cell] + margin + dx[cell])[o]
    ys[tail] = lo[o] + shift_y[o]
    ys[tail + 1] = hi[o] + shift_y[o]
    xs[tail + 2], ys[tail + 2] = xs[ring_start[o]], ys[ring_start[o]]
    # ... then a tab ring at each end node, and one per pinned node.
    tabs_at = [ring_start[~e.free[ids]], ring_start[o] + n_pts[o] - 1]
    tab_cell = [cell[~e.free[ids]], cell[o]]
    tab_j = [j[~e.free[ids]], j[o]]
    tab_col = [bx0 - margin, bx1 + 2 * margin]
    tab_x = [xs[t] for t in tabs_at] + [e.xy(pin_v)[0] + dx[pin_cell]]
    tab_y = [ys[t] for t in tabs_at] + [e.xy(pin_v)[1] + dy[pin_cell]]
    cols = [tab_col[0][tab_cell[0]], tab_col[1][tab_cell[1]], (bx1 + 3 * margin)[pin_cell]]
    tcell = [tab_cell[0], tab_cell[1], pin_cell]
    tj = [tab_j[0], tab_j[1], jp]
    tx = np.concatenate(tab_x)
    ty = np.concatenate(tab_y)
    tc = np.concatenate(cols) + dx[np.concatenate(tcell)]
    tjj = np.concatenate(tj)
    tcc = np.concatenate(tcell)
    tlo = by0[tcc] - margin - tjj + dy[tcc]
    thi = by1[tcc] + margin + tjj + dy[tcc]
    tabs = np.stack([tx, tc, tc, tx, ty, tlo, thi, ty], axis=1).reshape(-1, 2, 4)
    tab_xy = np.stack([tabs[:, 0].ravel(), tabs[:, 1].ravel()], axis=1)

    coords = np.empty((xs.size + tab_xy.shape[0], 2), np.float64)
    coords[: xs.size, 0], coords[: xs.size, 1] = xs, ys
    coords[xs.size :] = tab_xy
    del xs, ys, tab_xy, tabs
    n_rings = ids.size + tx.size
    lens = np.concatenate([ring_n, np.full(tx.size, 4, np.int64)])
    del tx, ty, tc, tjj, tcc, tlo, thi
    offsets = np.concatenate([[0], np.cumsum(lens)])
    polys = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, coords, (offsets, np.arange(n_rings + 1))
    )
    del coords
    simp = shapely.coverage_simplify(polys, tolerance, simplify_boundary=True)[: ids.size]
    del polys
    _, out, (ro, _po) = shapely.to_ragged_array(simp)
    ring_of = np.repeat(np.arange(ids.size), np.diff(ro))
    beyond = (bx1[cell] + dx[cell]).astype(np.float64)
    far = np.flatnonzero(out[:, 0] > beyond[ring_of])
    count = np.diff(ro) - 1  # closed edges: all but the closing vertex
    if far.size:
        rings_far, first = np.unique(ring_of[far], return_index=True)
        count[rings_far] = far[first] - ro[rings_far]
    got = out[_ranges(ro[:-1], count)].astype(np.int64)
    key = (got[:, 1] - np.repeat(shift_y, count)) * e.width + got[:, 0] - np.repeat(shift_x, count)
    vid = np.searchsorted(e.vkeys, key)
    return e.positions(np.repeat(ids, count), vid).astype(np.int32), count


def _stretch_hits(
    e: _Edges, ids: np.ndarray, flat: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_stretch_hits_chunk` over chunks of edges of about ``_CHUNK_VERTICES``."""
    size = np.cumsum(e.n_open(ids))
    cuts = np.searchsorted(size, np.arange(_CHUNK_VERTICES, int(size[-1]), _CHUNK_VERTICES))
    edges, vertices = [], []
    for i0, i1 in zip(np.r_[0, cuts], np.r_[cuts, ids.size], strict=True):
        if i1 <= i0:
            continue
        k0, k1 = int(offsets[i0]), int(offsets[i1])
        a, v = _stretch_hits_chunk(e, ids[i0:i1], flat[k0:k1], offsets[i0 : i1 + 1] - k0)
        edges.append(a)
        vertices.append(v)
    return np.concatenate(edges), np.concatenate(vertices)


def _stretch_hits_chunk(
    e: _Edges, ids: np.ndarray, flat: np.ndarray, offsets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(edge, vertex) pairs: a vertex of another edge, or a node other than the edge's
    ends, inside the closed convex hull of the original vertices between two
    consecutive kept vertices of the edge (where any removal triangle lies)."""
    n_kept = np.diff(offsets)
    edge = np.repeat(ids, n_kept)
    n_open = np.repeat(e.n_open(ids), n_kept)
    closed = np.repeat(e.closed[ids], n_kept)
    nxt = np.empty_like(flat)
    nxt[:-1] = flat[1:]
    last = offsets[1:] - 1
    nxt[last] = flat[offsets[:-1]] + n_open[last]  # closed edges wrap around
    use = (nxt - flat >= 2) & (closed | (np.arange(flat.size) != np.repeat(last, n_kept)))
    st, ln, ow = flat[use], (nxt - flat)[use] + 1, edge[use]
    if st.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    sid = np.repeat(np.arange(st.size), ln)
    pos = _ranges(st, ln) % np.repeat(e.n_open(ow), ln)
    x, y = e.xy(e.edge_v[e.edge_offsets[ow][sid] + pos])
    bounds = np.cumsum(ln) - ln
    xmin, xmax = np.minimum.reduceat(x, bounds), np.maximum.reduceat(x, bounds)
    ymin, ymax = np.minimum.reduceat(y, bounds), np.maximum.reduceat(y, bounds)
    # Candidates: the vertices in each stretch's bounding box, row by row ...
    h = ymax - ymin + 1
    row_sid = np.repeat(np.arange(st.size), h)
    rows = _ranges(ymin, h)
    lo = np.searchsorted(e.vkeys, rows * e.width + xmin[row_sid], "left")
    hi = np.searchsorted(e.vkeys, rows * e.width + xmax[row_sid], "right")
    cand = _ranges(lo, hi - lo)
    cand_sid = np.repeat(row_sid, hi - lo)
    owner = ow[cand_sid]
    other = (e.owner[cand] != owner) & (cand != e.start_v[owner]) & (cand != e.end_v[owner])
    cand, cand_sid, owner = cand[other], cand_sid[other], owner[other]
    if cand.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # ... kept where inside the convex hull (boundary included).
    need, inv = np.unique(cand_sid, return_inverse=True)
    sel = np.isin(sid, need)
    pts = np.stack([x[sel], y[sel]], axis=1).astype(np.float64)
    hulls = shapely.convex_hull(shapely.multipoints(pts, indices=np.searchsorted(need, sid[sel])))
    cx, cy = e.xy(cand)
    inside = shapely.intersects_xy(hulls[inv], cx.astype(np.float64), cy.astype(np.float64))
    return owner[inside], cand[inside]


def simplify_coverage(
    coords: np.ndarray,
    ring_offsets: np.ndarray,
    polygon_offsets: np.ndarray,
    tolerance: float,
    order: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``shapely.coverage_simplify(..., simplify_boundary=True)`` of lattice polygons.

    Parameters
    ----------
    coords : ndarray of int, shape (V, 2)
        Closed rings, (x, y) non-negative integers (as ``shapely.to_ragged_array``).
    ring_offsets, polygon_offsets : ndarray of int
        Ring starts in ``coords`` and polygon starts in the rings (length + 1 each);
        each polygon's shell first.
    tolerance : float
        As for ``shapely.coverage_simplify``.
    order : ndarray of int, optional
        The coverage order of the polygons (indices); by default as stored.

    Returns
    -------
    (coords, ring_offsets, polygon_offsets)
        The simplified polygons in coverage order (int32 coordinates), equal to what
        ``shapely.coverage_simplify`` returns for the polygons in that order.
    """
    ring_offsets = np.asarray(ring_offsets, np.int64)
    polygon_offsets = np.asarray(polygon_offsets, np.int64)
    n_polys = polygon_offsets.size - 1
    order = np.arange(n_polys) if order is None else np.asarray(order, np.int64)
    rings_per = np.diff(polygon_offsets)[order]
    if ring_offsets.size <= 1:
        return np.zeros((0, 2), np.int32), ring_offsets, np.zeros(n_polys + 1, np.int64)
    ring_rank = np.empty(ring_offsets.size - 1, np.int64)
    ring_rank[_ranges(polygon_offsets[:-1][order], rings_per)] = np.arange(ring_rank.size)
    e = _Edges(np.asarray(coords), ring_offsets, ring_rank)
    del ring_rank
    cells = _Cells(e)
    latest = np.full(e.n_edges, -1)  # round that last simplified each edge
    rounds: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    todo = np.arange(e.n_edges)
    while todo.size:
        roots = cells.roots()[todo]
        order = np.lexsort((todo, roots))
        members, roots = todo[order], roots[order]
        cell_start = np.flatnonzero(np.r_[True, roots[1:] != roots[:-1], True])
        cell_root = roots[cell_start[:-1]]
        pinned = [(c, v) for c, r in enumerate(cell_root.tolist()) for v in cells.pins.get(r, ())]
        pin_cell = np.array([c for c, _ in pinned], np.int64)
        pin_v = np.array([v for _, v in pinned], np.int64)
        flat, offsets = _simplify_cells(e, members, cell_start, pin_v, pin_cell, tolerance)
        latest[members] = len(rounds)
        rounds.append((members, flat, offsets))
        changed: set[int] = set()
        for a, v in zip(
            *(h.tolist() for h in _stretch_hits(e, members, flat, offsets)), strict=True
        ):
            owner = int(e.owner[v])
            if owner >= 0:
                if cells.find(a) != cells.find(owner):
                    changed.add(cells.union(a, owner))
            else:
                root = cells.pin(a, v)
                if root is not None:
                    changed.add(root)
        roots_now = cells.roots()
        changed = {int(roots_now[r]) for r in changed}
        todo = np.flatnonzero(np.isin(roots_now, np.fromiter(changed, np.int64)))
    return _rebuild(e, rounds, latest, np.concatenate([[0], np.cumsum(rings_per)]))


def _rebuild(
    e: _Edges,
    rounds: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    latest: np.ndarray,
    polygon_offsets: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rings from the simplified edges, joined as GEOS ``CoverageRingEdges::buildRing`` does."""
    n_kept = np.zeros(e.n_edges, np.int64)  # (rings come out in coverage order)
    for r, (ids, _flat, offsets) in enumerate(rounds):
        mine = latest[ids] == r
        n_kept[ids[mine]] = np.diff(offsets)[mine]
    closed = e.closed
    slen = n_kept + closed  # closed edges repeat their first kept vertex
    soff = np.concatenate([[0], np.cumsum(slen)])
    pos = np.empty(int(soff[-1]), np.int32)
    for r, (ids, flat, offsets) in enumerate(rounds):
        mine = np.flatnonzero(latest[ids] == r)
        k = np.diff(offsets)[mine]
        pos[_ranges(soff[ids[mine]], k)] = flat[_ranges(offsets[mine], k)]
        c = mine[closed[ids[mine]]]
        pos[soff[ids[c] + 1] - 1] = flat[offsets[c]]

    occ_edge, occ_ring = e.occ_edge, e.occ_ring
    n_occ = np.repeat(np.diff(e.ring_edges), np.diff(e.ring_edges))
    first = np.r_[True, occ_ring[1:] != occ_ring[:-1]]
    prev_edge = np.r_[occ_edge[:1], occ_edge[:-1]]
    # One edge: as stored. Two: the first as stored, the second to follow it. More:
    # each in the ring's own direction (what GEOS's checks amount to for simple rings).
    forward = np.where(
        n_occ == 1,
        True,
        np.where(
            n_occ == 2,
            first | (e.start_v[occ_edge] == e.end_v[prev_edge]),
            e.start_v[occ_edge] == e.occ_start_v,
        ),
    )
    skip = (~first).astype(np.int64)  # a joined edge's first vertex ends the one before
    count = slen[occ_edge] - skip
    base = np.where(forward, soff[occ_edge] + skip, soff[occ_edge + 1] - 1 - skip)
    step = np.where(forward, 1, -1)
    ring_len = np.add.reduceat(count, e.ring_edges[:-1])
    out_off = np.concatenate([[0], np.cumsum(count)])
    out = np.empty((int(out_off[-1]), 2), np.int32)
    for o0 in range(0, count.size, _CHUNK_VERTICES // 8):  # a few thousand edges at a time
        o = slice(o0, o0 + _CHUNK_VERTICES // 8)
        n = count[o]
        at = np.repeat(base[o], n) + np.repeat(step[o], n) * _ranges(np.zeros(n.size, np.int64), n)
        x, y = e.xy(e.edge_v[np.repeat(e.edge_offsets[occ_edge[o]], n) + pos[at]])
        dest = slice(int(out_off[o0]), int(out_off[o0 + n.size]))
        out[dest, 0], out[dest, 1] = x, y
    return out, np.concatenate([[0], np.cumsum(ring_len)]), polygon_offsets
