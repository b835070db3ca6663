"""Nuclei: jittered-grid placement in stroma and epithelium, stamped into accumulators."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from wsiseg.synthetic.cores import _core_inside
from wsiseg.synthetic.glands import _CL_CX, _CL_CY, _Gland
from wsiseg.synthetic.noise import _hash, _key, _u01
from wsiseg.synthetic.scene import _gland_points, _Scene
from wsiseg.synthetic.spec import F32
from wsiseg.synthetic.textures import _Textures

_MAX_NUC_UM = 7.5  # largest nucleus half-length (stamp margin)


def _grid_points(
    x0: float, y0: float, x1: float, y1: float, cell: float, key: int, n_attr: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], list[npt.NDArray[np.float64]]]:
    """Jittered-grid points (one per absolute cell) in a µm rectangle, with attributes."""
    i0, i1 = math.floor(x0 / cell), math.floor(x1 / cell)
    j0, j1 = math.floor(y0 / cell), math.floor(y1 / cell)
    gi, gj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1))
    ii = gi.ravel()
    jj = gj.ravel()
    attrs = [_u01(_hash(ii, jj, key + k)) for k in range(n_attr + 2)]
    px = (ii + attrs[0]) * cell
    py = (jj + attrs[1]) * cell
    keep = (px >= x0) & (px <= x1) & (py >= y0) & (py <= y1)
    return px[keep], py[keep], [a[keep] for a in attrs[2:]]


def _nuc_pad(mpp: float) -> int:
    """Margin (px) of the nucleus accumulators: centres up to _MAX_NUC_UM outside, plus a stamp."""
    return 2 * math.ceil(_MAX_NUC_UM / mpp) + 3


class _Nuclei:
    """Nuclei to stamp: rows of centre x, y (µm), semi-axes a >= b (µm), angle, darkness."""

    def __init__(self) -> None:
        self.parts: list[npt.NDArray[np.float64]] = []

    def add(self, *cols: npt.NDArray[np.float64]) -> None:
        if cols[0].size:
            self.parts.append(np.stack(np.broadcast_arrays(*cols)))

    def stamp(self, acc: F32, bx0: int, by0: int, mpp: float) -> None:
        """Max-accumulate into acc, a block padded by _nuc_pad on every side."""
        if not self.parts:
            return
        cx, cy, a, b, ang, dark = np.concatenate(self.parts, axis=1)
        pad = _nuc_pad(mpp)
        ca, sa = np.cos(ang), np.sin(ang)
        ex = np.sqrt((a * ca) ** 2 + (b * sa) ** 2)
        ey = np.sqrt((a * sa) ** 2 + (b * ca) ** 2)
        rx = math.ceil(float(ex.max()) / mpp) + 1
        ry = math.ceil(float(ey.max()) / mpp) + 1
        pcx = np.floor(cx / mpp).astype(np.int64)
        pcy = np.floor(cy / mpp).astype(np.int64)
        ox = np.arange(-rx, rx + 1)
        oy = np.arange(-ry, ry + 1)
        # offsets of pixel centres from the nucleus centre, (N, 1, kx) and (N, ky, 1)
        dx = ((pcx[:, None] + ox[None, :] + 0.5) * mpp - cx[:, None]).astype(np.float32)[:, None, :]
        dy = ((pcy[:, None] + oy[None, :] + 0.5) * mpp - cy[:, None]).astype(np.float32)[:, :, None]
        ia, ib = 1.0 / a, 1.0 / b
        f32 = np.float32
        p = dx * (ca * ia).astype(f32)[:, None, None] + dy * (sa * ia).astype(f32)[:, None, None]
        q = dy * (ca * ib).astype(f32)[:, None, None] - dx * (sa * ib).astype(f32)[:, None, None]
        v = np.float32(1.0) - (p * p + q * q)
        keep = v > 0
        soft = (b / (2.0 * mpp)).astype(f32)[:, None, None]
        val = np.minimum(v * soft, np.float32(1.0)) * dark.astype(f32)[:, None, None]
        w = acc.shape[1]
        base = (pcy - by0 + pad) * w + (pcx - bx0 + pad)
        idx = base[:, None, None] + oy[None, :, None] * w + ox[None, None, :]
        np.maximum.at(acc.reshape(-1), idx[keep], val[keep])


def _stroma_nuclei(
    sc: _Scene, tx: _Textures, out: _Nuclei, bx0: int, by0: int, w: int, h: int
) -> None:
    """Spindle-shaped stromal nuclei along the fibres, and some lymphocytes."""
    mpp = tx.mpp
    m = _MAX_NUC_UM
    x0u, y0u = bx0 * mpp - m, by0 * mpp - m
    x1u, y1u = (bx0 + w) * mpp + m, (by0 + h) * mpp + m
    cores = [
        c
        for c in sc.cores
        if not (c.bbox[2] < x0u or c.bbox[0] > x1u or c.bbox[3] < y0u or c.bbox[1] > y1u)
    ]
    if not cores:
        return
    px, py, (pres, kind, s1, s2, s3, s4) = _grid_points(
        x0u, y0u, x1u, y1u, 13.0, _key(sc.seed, 101), 6
    )
    keep = pres < 0.6
    px, py, kind, s1, s2, s3, s4 = (arr[keep] for arr in (px, py, kind, s1, s2, s3, s4))
    if px.size == 0:
        return
    theta = np.zeros(px.size)
    hit = np.zeros(px.size, bool)
    for c in cores:
        ins, u, _v = _core_inside(sc.vtab, c, px.astype(np.float32), py.astype(np.float32))
        new = ins & ~hit
        t = u.astype(np.float64) / c.half_len
        slope = t * (2.0 * c.bend2 + 3.0 * c.bend3 * t) / c.half_len
        theta[new] = (math.atan2(c.st, c.ct) + np.arctan(slope))[new]
        hit |= ins
    if not hit.any():
        return
    px, py, kind, s1, s2, s3, s4, theta = (
        arr[hit] for arr in (px, py, kind, s1, s2, s3, s4, theta)
    )
    lym = kind < 0.12
    a = np.where(lym, 2.3 + 0.5 * s1, 4.0 + 3.0 * s1)
    b = np.where(lym, a * (0.85 + 0.15 * s2), 1.0 + 0.6 * s2)
    ang = theta + (s3 - 0.5) * 0.6
    dark = np.where(lym, 1.25, 0.8) + 0.25 * s4
    out.add(px, py, a, b, ang, dark)


def _gland_nuclei(
    sc: _Scene,
    tx: _Textures,
    g: _Gland,
    big: _Nuclei,
    small: _Nuclei,
    bx0: int,
    by0: int,
    w: int,
    h: int,
) -> None:
    """Epithelial nuclei of one gland whose stamps may reach the block."""
    mpp = tx.mpp
    m = _MAX_NUC_UM
    x0u = max(g.bbox[0], bx0 * mpp - m)
    y0u = max(g.bbox[1], by0 * mpp - m)
    x1u = min(g.bbox[2], (bx0 + w) * mpp + m)
    y1u = min(g.bbox[3], (by0 + h) * mpp + m)
    if x0u >= x1u or y0u >= y1u:
        return
    if g.kind == 3:
        # crowded enlarged nuclei along the basal side (throughout solid nests and cords)
        px, py, (pres, s1, s2, s3) = _grid_points(
            x0u, y0u, x1u, y1u, 4.6, _key(sc.seed, 303, g.gid), 4
        )
        D, L, _ = _gland_points(sc, g, px.astype(np.float32), py.astype(np.float32), lumen=True)
        assert L is not None
        band = (D < 6.0) & (L < -2.0) if not g.solid else D > 2.0
        sel = (pres < 0.92) & (D > 2.6) & band
        px, py, s1, s2, s3 = (arr[sel] for arr in (px, py, s1, s2, s3))
        a = 3.3 + 1.3 * s1
        big.add(px, py, a, a * (0.75 + 0.25 * s2), s3 * math.pi, 0.95 + 0.3 * s2)
        # prominent nucleoli
        ns = s3 < 0.7
        r = np.full(int(ns.sum()), 0.75)
        small.add(
            px[ns] + (s1[ns] - 0.5) * 1.5, py[ns] + (s2[ns] - 0.5) * 1.5, r, r, r * 0.0, r + 1.0
        )
        return
    # benign: round secretory nuclei over the basal third, flat basal nuclei at the edge
    px, py, (pres, s1, s2, s3) = _grid_points(x0u, y0u, x1u, y1u, 5.2, _key(sc.seed, 202, g.gid), 4)
    D, L, _ = _gland_points(sc, g, px.astype(np.float32), py.astype(np.float32), lumen=True)
    assert L is not None
    sel = (pres < 0.85) & (D > 4.0) & (D < 8.0 + 2.0 * s3) & (L < -2.5)
    a = 2.6 + 0.8 * s1[sel]
    big.add(px[sel], py[sel], a, a * (0.7 + 0.3 * s2[sel]), s3[sel] * math.pi, 0.78 + 0.2 * s2[sel])
    px, py, (pres, s1, s2) = _grid_points(x0u, y0u, x1u, y1u, 8.0, _key(sc.seed, 203, g.gid), 3)
    D, _, arg = _gland_points(sc, g, px.astype(np.float32), py.astype(np.float32), False)
    sel = (pres < 0.75) & (D > 0.8) & (D < 3.2)
    if not sel.any():
        return
    lb = np.asarray(g.lobes)[arg[sel].astype(np.int64)]
    ang = np.arctan2(py[sel] - lb[:, _CL_CY], px[sel] - lb[:, _CL_CX]) + math.pi / 2
    a = 3.2 + 1.2 * s1[sel]
    big.add(px[sel], py[sel], a, np.full(a.size, 1.2), ang, 1.0 + 0.2 * s2[sel])
