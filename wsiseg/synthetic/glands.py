"""Glands: star-shaped lobes, their tabulated outlines, and placement inside a core."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from wsiseg.synthetic.cores import _Core, _core_inside, _core_uv_to_xy
from wsiseg.synthetic.noise import _Q, _vnoise
from wsiseg.synthetic.spec import F32, BoolA, _SceneParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Gland:
    gid: int
    kind: int  # 2 benign, 3 tumour
    lobes: tuple[tuple[float, ...], ...]
    t_epi: float
    pap_um: float
    solid: bool
    ca: tuple[float, float, float]  # corpus amylaceum (x, y, r); r = 0: none
    stain: float
    bbox: tuple[float, float, float, float]


# lobe tuple fields
(_L_CX, _L_CY, _L_R, _L_CT, _L_ST, _L_IASP, _L_AMP, _L_OX, _L_OY, _L_KO, _L_AMP2, _L_KO2) = range(
    12
)
(_L_POX, _L_POY, _L_KP) = range(12, 15)


@lru_cache(maxsize=512)
def _disc_cells(k: int) -> BoolA:
    """Cells (2k+1 square) within k cells of the centre cell."""
    o = np.arange(-k, k + 1)
    return (o[:, None] ** 2 + o[None, :] ** 2) <= k * k


class _Placer:
    """Where glands already are within one core, on a grid of small cells.

    Shapes (bounding discs, or each lobe's bounding ellipse) are marked
    conservatively, every cell that may hold a point of the shape, and a
    candidate is free when no marked cell lies within its shape dilated by the
    gap, so placed glands keep at least that gap.
    """

    _C = 2.0  # cell size, µm
    _HD = 2.0 * 0.75  # a little over half the cell diagonal

    def __init__(self, bbox: tuple[float, float, float, float]) -> None:
        self.x0, self.y0 = bbox[0], bbox[1]
        nx = math.ceil((bbox[2] - bbox[0]) / self._C) + 1
        ny = math.ceil((bbox[3] - bbox[1]) / self._C) + 1
        self.grid = np.zeros((ny, nx), bool)

    def _region(
        self, x: float, y: float, r: float, lobes: list[tuple[float, ...]] | None, margin: float
    ) -> tuple[tuple[slice, slice], BoolA] | None:
        c, reach = self._C, r + margin + self._HD
        ny, nx = self.grid.shape
        if lobes is None:  # a disc: a cached cell mask around the centre cell, one cell wider
            k = math.ceil(reach / c) + 1
            ci = math.floor((x - self.x0) / c)
            cj = math.floor((y - self.y0) / c)
            c0, c1 = max(0, ci - k), min(nx, ci + k + 1)
            r0, r1 = max(0, cj - k), min(ny, cj + k + 1)
            if c0 >= c1 or r0 >= r1:
                return None
            disc = _disc_cells(k)[r0 - cj + k : r1 - cj + k, c0 - ci + k : c1 - ci + k]
            return (slice(r0, r1), slice(c0, c1)), disc
        c0 = max(0, math.floor((x - reach - self.x0) / c))
        c1 = min(nx, math.floor((x + reach - self.x0) / c) + 2)
        r0 = max(0, math.floor((y - reach - self.y0) / c))
        r1 = min(ny, math.floor((y + reach - self.y0) / c) + 2)
        if c0 >= c1 or r0 >= r1:
            return None
        X = (self.x0 + (np.arange(c0, c1) + 0.5) * c).astype(np.float32)[None, :]
        Y = (self.y0 + (np.arange(r0, r1) + 0.5) * c).astype(np.float32)[:, None]
        # each lobe as its bounding ellipse, dilated
        mask = np.zeros((r1 - r0, c1 - c0), bool)
        for lb in lobes:
            dx = X - np.float32(lb[_L_CX])
            dy = Y - np.float32(lb[_L_CY])
            ct, st = np.float32(lb[_L_CT]), np.float32(lb[_L_ST])
            p = (dx * ct + dy * st) * np.float32(lb[_L_IASP])
            q = dy * ct - dx * st
            lim = lb[_L_R] * (1.0 + lb[_L_AMP] + lb[_L_AMP2]) + margin + self._HD
            mask |= p * p + q * q <= np.float32(lim * lim)
        return (slice(r0, r1), slice(c0, c1)), mask

    def free(
        self, x: float, y: float, r: float, gap: float, lobes: list[tuple[float, ...]] | None = None
    ) -> bool:
        c, ny, nx = self._C, *self.grid.shape
        ci, cj = math.floor((x - self.x0) / c), math.floor((y - self.y0) / c)
        if 0 <= ci < nx and 0 <= cj < ny and self.grid[cj, ci]:
            return False  # the centre is taken (the common case in a crowded focus)
        reach = r + gap + self._HD
        k = math.ceil(reach / c) + 1
        if not self.grid[max(0, cj - k) : cj + k + 1, max(0, ci - k) : ci + k + 1].any():
            return True  # nothing anywhere near
        reg = self._region(x, y, r, lobes, gap)
        return reg is None or not bool((self.grid[reg[0]] & reg[1]).any())

    def add(
        self, x: float, y: float, r: float, lobes: list[tuple[float, ...]] | None = None
    ) -> None:
        reg = self._region(x, y, r, lobes, 0.0)
        if reg is not None:
            self.grid[reg[0]] |= reg[1]


# compiled lobe fields: centre, frame, radius tables (offsets into _Scene.rtab), bbox
(_CL_CX, _CL_CY, _CL_CT, _CL_ST, _CL_IASP, _CL_OFFR, _CL_OFFP, _CL_N) = range(8)
(_CL_X0, _CL_Y0, _CL_X1, _CL_Y1) = range(8, 12)


class _Tables:
    """Builder of the flat table of lobe radius functions."""

    def __init__(self) -> None:
        self.parts: list[F32] = []
        self.size = 0

    def add(self, arr: F32) -> int:
        off = self.size
        self.parts.append(arr.astype(np.float32))
        self.size += arr.size
        return off

    def array(self) -> F32:
        return np.concatenate(self.parts) if self.parts else np.zeros(2, np.float32)


@lru_cache(maxsize=16)
def _diamond_dirs(n: int) -> tuple[F32, F32]:
    """Unit directions at diamond angles 4k/n, k = 0..n+1 (inverse of the lookup)."""
    da = np.arange(n + 2, dtype=np.float64) * (4.0 / n) % 4.0
    t = np.where(da < 1, da, np.where(da < 3, 2.0 - da, da - 4.0))  # q / (|p| + |q|)
    pp = np.where((da < 1) | (da >= 3), 1.0 - np.abs(t), -(1.0 - np.abs(t)))
    norm = np.hypot(pp, t)
    return (pp / norm).astype(np.float32), (t / norm).astype(np.float32)


def _compile_lobe(
    vtab: F32, lb: tuple[float, ...], pap_um: float, tables: _Tables
) -> tuple[float, ...]:
    """Tabulate a lobe's radius (and papilla depth) against the diamond angle."""
    circ = 2.0 * math.pi * lb[_L_R] / lb[_L_IASP]
    n = 64
    while n < 4096 and circ / n > 0.5:
        n *= 2
    ux, uy = _diamond_dirs(n)
    ox, oy = np.float32(lb[_L_OX]), np.float32(lb[_L_OY])
    ko, k2 = np.float32(lb[_L_KO]), np.float32(lb[_L_KO2])
    noise = np.float32(lb[_L_AMP]) * _vnoise(vtab, ox + ko * ux, oy + ko * uy)
    noise += np.float32(lb[_L_AMP2]) * _vnoise(
        vtab, ox + np.float32(61.0) + k2 * ux, oy + np.float32(23.0) + k2 * uy
    )
    off_r = tables.add(np.float32(lb[_L_R]) * (np.float32(1.0) + noise))
    off_p = -1
    if pap_um > 0:
        kp = np.float32(lb[_L_KP])
        pn = _vnoise(vtab, np.float32(lb[_L_POX]) + kp * ux, np.float32(lb[_L_POY]) + kp * uy)
        sp = np.clip(pn * np.float32(1.4) - np.float32(0.1), np.float32(0.0), np.float32(1.0))
        off_p = tables.add(np.float32(pap_um) * sp * sp * (np.float32(3.0) - np.float32(2.0) * sp))
    e = lb[_L_R] * (1.0 + lb[_L_AMP] + lb[_L_AMP2]) / lb[_L_IASP] + 1.0
    return (
        lb[_L_CX],
        lb[_L_CY],
        lb[_L_CT],
        lb[_L_ST],
        lb[_L_IASP],
        float(off_r),
        float(off_p),
        float(n),
        lb[_L_CX] - e,
        lb[_L_CY] - e,
        lb[_L_CX] + e,
        lb[_L_CY] + e,
    )


def _lobe_fields(
    rtab: F32, lb: tuple[float, ...], X: F32, Y: F32, lumen: bool
) -> tuple[F32, F32 | None]:
    """Depth inside one lobe (µm, > 0 inside) and its papilla depth, exact arithmetic only."""
    dx = X - np.float32(lb[_CL_CX])
    dy = Y - np.float32(lb[_CL_CY])
    ct, st = np.float32(lb[_CL_CT]), np.float32(lb[_CL_ST])
    p = (dx * ct + dy * st) * np.float32(lb[_CL_IASP])
    q = dy * ct - dx * st
    s = np.maximum(np.abs(p) + np.abs(q), np.float32(1e-6))
    t = q / s
    da = np.where(p >= 0, np.where(q >= 0, t, t + np.float32(4.0)), np.float32(2.0) - t)
    pos = da * np.float32(lb[_CL_N] / 4.0)
    fi = np.floor(pos)
    fr = pos - fi
    i = fi.astype(np.int32)
    ir = i + np.int32(lb[_CL_OFFR])
    r0 = rtab.take(ir)
    d = r0 + fr * (rtab.take(ir + 1) - r0) - np.sqrt(p * p + q * q)
    pap = None
    if lumen and lb[_CL_OFFP] >= 0:
        ip = i + np.int32(lb[_CL_OFFP])
        p0 = rtab.take(ip)
        pap = p0 + fr * (rtab.take(ip + 1) - p0)
    return d, pap


def _gland_bbox(lobes: list[tuple[float, ...]]) -> tuple[float, float, float, float]:
    x0 = y0 = math.inf
    x1 = y1 = -math.inf
    for lb in lobes:
        e = lb[_L_R] * (1.0 + lb[_L_AMP] + lb[_L_AMP2]) / lb[_L_IASP] + 1.0
        x0, y0 = min(x0, lb[_L_CX] - e), min(y0, lb[_L_CY] - e)
        x1, y1 = max(x1, lb[_L_CX] + e), max(y1, lb[_L_CY] + e)
    return x0, y0, x1, y1


def _lobe(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    r: float,
    aspect: float,
    amp: tuple[float, float],
    k_out: tuple[float, float],
    k_pap: float,
) -> tuple[float, ...]:
    """A star-shaped lobe: radius r(angle) from value noise sampled on a circle."""
    th = float(rng.uniform(0.0, math.pi))
    o = rng.uniform(8.0, _Q - 80.0, 4)
    return (
        cx,
        cy,
        r,
        math.cos(th),
        math.sin(th),
        1.0 / aspect,
        amp[0],
        float(o[0]),
        float(o[1]),
        k_out[0],
        amp[1],
        k_out[1],
        float(o[2]),
        float(o[3]),
        k_pap,
    )


def _disc_in_core(vtab: F32, c: _Core, x: float, y: float, r: float) -> bool:
    ang = np.linspace(0.0, 2.0 * np.pi, 28, endpoint=False)
    px = np.concatenate([[x], x + r * np.cos(ang), x + 0.5 * r * np.cos(ang)]).astype(np.float32)
    py = np.concatenate([[y], y + r * np.sin(ang), y + 0.5 * r * np.sin(ang)]).astype(np.float32)
    inside, _, _ = _core_inside(vtab, c, px, py)
    return bool(inside.all())


def _place_tumour(
    rng: np.random.Generator,
    vtab: F32,
    core: _Core,
    prm: _SceneParams,
    placer: _Placer,
    glands: list[_Gland],
    tables: _Tables,
) -> None:
    """Foci of small crowded glands and cords; the first focus holds one to a few glands."""
    hw = core.half_width
    usable = core.half_len - 0.5 * core.cap
    length_mm = 2.0 * core.half_len / 1000.0
    expected = length_mm * prm.tumour_foci_per_mm * float(rng.uniform(0.7, 1.3))
    n_foci = max(3, int(round(expected))) if prm.tumour_foci_per_mm > 0 else 0
    amp, kk = (0.14, 0.06), (1.3, 3.2)
    grow = 1.0 + amp[0] + amp[1]
    for f in range(n_foci):
        if f == 0:
            rf = float(rng.uniform(12.0, 30.0))
        elif f == 1:
            rf = float(rng.uniform(35.0, 70.0))
        elif f == 2:
            rf = float(rng.uniform(0.4, 0.75)) * hw
        else:
            rf = float(np.exp(rng.uniform(np.log(80.0), np.log(900.0))))
        rf = min(rf, 0.75 * hw)
        ru = min(rf * float(rng.uniform(1.0, 3.0)), usable * 0.9)
        uf = float(rng.uniform(-1.0, 1.0)) * max(0.0, usable - ru)
        vf = float(rng.uniform(-1.0, 1.0)) * max(0.0, hw - rf - 25.0)
        target = max(1, int(0.3 * ru * rf / 14.0**2))  # about what random packing reaches
        n_att = 5 * target + 30
        # candidates drawn in one go: position, kind, size, shape, fusion, gap
        rr = np.sqrt(rng.uniform(size=n_att))
        ph = rng.uniform(0.0, 2.0 * math.pi, n_att)
        cord = rng.uniform(size=n_att) < 0.18
        size = np.where(
            cord, rng.uniform(5.5, 8.0, n_att), 7.5 + 22.5 * rng.uniform(size=n_att) ** 2.0
        )  # cords: strands 11-16 µm wide; glands 15-60 µm across
        aspect = np.where(cord, rng.uniform(2.5, 5.0, n_att), rng.uniform(1.0, 1.7, n_att))
        fused = ~cord & (size > 11.0) & (rng.uniform(size=n_att) < 0.2)
        ang2 = rng.uniform(0.0, 2.0 * math.pi, n_att)
        size2 = size * rng.uniform(0.55, 0.85, n_att)
        aspect2 = rng.uniform(1.0, 1.4, n_att)
        gaps = rng.uniform(3.0, 6.0, n_att)  # > the overhang of an edge nucleus
        accepted = misses = 0
        for k in range(n_att):
            if accepted >= target or misses > 150:
                break
            u = uf + ru * rr[k] * math.cos(ph[k])
            x, y = _core_uv_to_xy(core, u, vf + rf * rr[k] * math.sin(ph[k]))
            r = float(size[k])
            ext = r * grow * float(aspect[k])
            lobes = [_lobe(rng, x, y, r, float(aspect[k]), amp, kk, 0.0)]
            if fused[k]:
                x2 = x + 0.95 * r * math.cos(ang2[k])
                y2 = y + 0.95 * r * math.sin(ang2[k])
                ext = max(ext, 0.95 * r + float(size2[k]) * grow * float(aspect2[k]))
                lobes.append(_lobe(rng, x2, y2, float(size2[k]), float(aspect2[k]), amp, kk, 0.0))
            if not placer.free(x, y, ext, float(gaps[k]), lobes) or not _disc_in_core(
                vtab, core, x, y, ext + 12.0
            ):
                misses += 1
                continue
            misses = 0
            placer.add(x, y, ext, lobes)
            solid = bool(cord[k]) or r < 9.0 or rng.uniform() < 0.1
            t_epi = r if solid else min(0.75 * r, float(rng.uniform(6.5, 10.0)))
            glands.append(
                _Gland(
                    gid=len(glands),
                    kind=3,
                    lobes=tuple(_compile_lobe(vtab, lb, 0.0, tables) for lb in lobes),
                    t_epi=t_epi,
                    pap_um=0.0,
                    solid=solid,
                    ca=(0.0, 0.0, 0.0),
                    stain=float(rng.uniform(0.9, 1.1)),
                    bbox=_gland_bbox(lobes),
                )
            )
            accepted += 1
        logger.debug(
            "tumour focus %d: radius %.0fx%.0f µm, %d/%d glands", f, ru, rf, accepted, target
        )


def _place_benign(
    rng: np.random.Generator,
    vtab: F32,
    core: _Core,
    prm: _SceneParams,
    placer: _Placer,
    glands: list[_Gland],
    tables: _Tables,
    share: float,
) -> None:
    """Large irregular glands with papillary infoldings: ``share`` of the target area."""
    hw = core.half_width
    usable = core.half_len - 0.3 * core.cap
    target_area = share * prm.benign_gland_fraction * 4.0 * core.half_len * hw
    covered = 0.0
    r_hi = min(180.0, 0.62 * hw)
    if r_hi < 45.0 or target_area <= 0:
        return
    n_try = int(80 + 30 * target_area / (math.pi * 100.0**2))
    # candidates drawn in one go: size, position, outline, up to two extra lobes, gap
    r_main = np.exp(rng.uniform(np.log(45.0), np.log(r_hi), n_try))
    us = rng.uniform(-usable, usable, n_try)
    vs = rng.uniform(-1.0, 1.0, n_try) * np.maximum(0.0, hw - r_main)
    amps = np.stack([rng.uniform(0.14, 0.26, n_try), rng.uniform(0.04, 0.08, n_try)], 1)
    ks = np.stack([rng.uniform(0.9, 1.4, n_try), rng.uniform(2.8, 4.2, n_try)], 1)
    aspect = rng.uniform(1.0, 1.7, n_try)
    n_lobes = np.where(r_main < 70, 1, rng.integers(1, 4, n_try))
    l_ang = rng.uniform(0.0, 2.0 * math.pi, (n_try, 2))
    l_r = r_main[:, None] * rng.uniform(0.45, 0.75, (n_try, 2))
    l_dist = r_main[:, None] * rng.uniform(0.6, 0.95, (n_try, 2))
    l_asp = rng.uniform(1.0, 1.5, (n_try, 2))
    gaps = rng.uniform(12.0, 50.0, n_try)
    misses = 0
    for k in range(n_try):
        if covered >= target_area or misses > 400:
            break
        rm = float(r_main[k])
        x, y = _core_uv_to_xy(core, float(us[k]), float(vs[k]))
        amp = (float(amps[k, 0]), float(amps[k, 1]))
        grow = 1.0 + amp[0] + amp[1]
        ext = rm * grow * float(aspect[k])
        extra = []
        for j in range(int(n_lobes[k]) - 1):
            lx = x + float(l_dist[k, j]) * math.cos(l_ang[k, j])
            ly = y + float(l_dist[k, j]) * math.sin(l_ang[k, j])
            extra.append((lx, ly, float(l_r[k, j]), float(l_asp[k, j])))
            ext = max(ext, float(l_dist[k, j]) + float(l_r[k, j]) * grow * float(l_asp[k, j]))
        if not placer.free(x, y, ext, float(gaps[k])) or not _disc_in_core(
            vtab, core, x, y, ext + 15.0
        ):
            misses += 1
            continue
        misses = 0
        kk = (float(ks[k, 0]), float(ks[k, 1]))
        lobes = [_lobe(rng, x, y, rm, float(aspect[k]), amp, kk, max(1.5, rm / 30.0))]
        for lx, ly, rl, asp in extra:
            lobes.append(_lobe(rng, lx, ly, rl, asp, amp, kk, max(1.5, rl / 30.0)))
        placer.add(x, y, ext, lobes)
        t_epi = float(rng.uniform(13.0, 20.0))
        ca = (0.0, 0.0, 0.0)
        lumen_r = rm * (1.0 - amp[0] - amp[1]) - t_epi - 0.45 * rm
        if lumen_r > 12.0 and rng.uniform() < 0.3:
            ca = (x, y, float(rng.uniform(8.0, min(26.0, lumen_r))))
        pap_um = min(45.0, float(rng.uniform(0.2, 0.4)) * rm)
        glands.append(
            _Gland(
                gid=len(glands),
                kind=2,
                lobes=tuple(_compile_lobe(vtab, lb, pap_um, tables) for lb in lobes),
                t_epi=t_epi,
                pap_um=pap_um,
                solid=False,
                ca=ca,
                stain=float(rng.uniform(0.9, 1.1)),
                bbox=_gland_bbox(lobes),
            )
        )
        covered += math.pi * rm**2 * (1.0 + 0.3 * (len(lobes) - 1))
