"""Tissue cores (needle biopsies): placement, outline and the exact membership test."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from wsiseg.synthetic.noise import _Q, _vnoise, _vnoise1
from wsiseg.synthetic.spec import F32, BoolA, _SceneParams

_ROUGH_LAT_UM = 55.0  # lattice of the core-edge roughness
_WIDTH_LAT_UM = 350.0  # lattice of the slow core-width variation

_CRACK_WOBBLE_UM = 25.0


@dataclass(frozen=True, slots=True)
class _Core:
    cx: float
    cy: float
    ct: float
    st: float
    half_len: float
    half_width: float
    cap: float
    bend2: float
    bend3: float
    width_amp: float
    width_off: float
    rough_um: float
    rough_ox: float
    rough_oy: float
    gaps: tuple[tuple[float, float, float], ...]  # (u centre, half width, slope)
    stain_h: float
    stain_e: float
    bbox: tuple[float, float, float, float]


def _core_uv_to_xy(c: _Core, u: float, v_rel: float) -> tuple[float, float]:
    t = u / c.half_len
    v = t * t * (c.bend2 + c.bend3 * t) + v_rel
    return c.cx + u * c.ct - v * c.st, c.cy + u * c.st + v * c.ct


def _core_bbox(c: _Core) -> tuple[float, float, float, float]:
    t = np.linspace(-1.0, 1.0, 513)
    u = t * c.half_len
    vc = t * t * (c.bend2 + c.bend3 * t)
    hw = c.half_width * (1.0 + c.width_amp) + c.rough_um
    xs, ys = [], []
    for s in (-1.0, 1.0):
        v = vc + s * hw
        xs.append(c.cx + u * c.ct - v * c.st)
        ys.append(c.cy + u * c.st + v * c.ct)
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    m = 2.0
    return float(x.min() - m), float(y.min() - m), float(x.max() + m), float(y.max() + m)


def _make_cores(rng: np.random.Generator, spec: _SceneParams) -> list[_Core]:
    W, H = spec.width_um, spec.height_um
    portrait = H > W
    lx, ly = (H, W) if portrait else (W, H)  # canonical frame: cores along x
    n = spec.n_cores if spec.n_cores is not None else int(np.clip(round(ly / 4500.0), 1, 6))
    pitch = ly / n
    cores: list[_Core] = []
    for i in range(n):
        width = float(rng.uniform(*spec.core_width_um))
        width = min(width, 0.62 * pitch)
        hw = width / 2.0
        n_seg = max(1, math.ceil(0.86 * lx / 18000.0))
        seg_len = 0.86 * lx / n_seg
        for j in range(n_seg):
            length = seg_len * float(rng.uniform(0.82, 0.97))
            half_len = length / 2.0
            room = max(0.0, pitch / 2.0 - 1.25 * hw)
            cyc = (i + 0.5) * pitch + float(rng.uniform(-0.3, 0.3)) * room
            cxc = (j + 0.5) * (lx / n_seg) + float(rng.uniform(-0.04, 0.04)) * seg_len
            theta = math.radians(float(rng.uniform(-2.5, 2.5)))
            bend2 = float(rng.uniform(-1.0, 1.0)) * min(0.5 * width, room, 0.05 * length)
            bend3 = float(rng.uniform(-1.0, 1.0)) * min(0.3 * width, room, 0.03 * length)
            gaps: list[tuple[float, float, float]] = []
            for _ in range(min(3, int(rng.poisson(length / 12000.0)))):
                gaps.append(
                    (
                        float(rng.uniform(-0.6, 0.6)) * half_len,
                        float(rng.uniform(12.0, 45.0)),
                        float(rng.uniform(-0.5, 0.5)),
                    )
                )
            stain_h = float(rng.uniform(0.9, 1.12))
            stain_e = float(rng.uniform(0.88, 1.12))
            width_off = float(rng.uniform(0.0, _Q))
            rough_o = rng.uniform(0.0, _Q, 2)
            for _attempt in range(40):
                if portrait:
                    cx, cy, th = cyc, cxc, math.pi / 2.0 - theta
                else:
                    cx, cy, th = cxc, cyc, theta
                core = _Core(
                    cx=cx,
                    cy=cy,
                    ct=math.cos(th),
                    st=math.sin(th),
                    half_len=half_len,
                    half_width=hw,
                    cap=min(1.2 * hw, 0.3 * half_len),
                    bend2=bend2,
                    bend3=bend3,
                    width_amp=0.1,
                    width_off=width_off,
                    rough_um=min(14.0, 0.05 * hw),
                    rough_ox=float(rough_o[0]),
                    rough_oy=float(rough_o[1]),
                    gaps=tuple(gaps),
                    stain_h=stain_h,
                    stain_e=stain_e,
                    bbox=(0.0, 0.0, 0.0, 0.0),
                )
                bb = _core_bbox(core)
                core = replace(core, bbox=bb)
                if bb[0] >= 5 and bb[1] >= 5 and bb[2] <= W - 5 and bb[3] <= H - 5:
                    break
                theta *= 0.6
                bend2 *= 0.7
                bend3 *= 0.7
                half_len *= 0.97
                hw *= 0.98
            cores.append(core)
    return cores


def _core_inside(vtab: F32, c: _Core, X: F32, Y: F32) -> tuple[BoolA, F32, F32]:
    """Membership of points (broadcast X, Y in µm) in a core, plus core-frame u, v.

    The decision for each element depends on that element's coordinates only
    (exact float32 arithmetic), so any tiling gives the same answer.
    """
    dx = X - np.float32(c.cx)
    dy = Y - np.float32(c.cy)
    ct, st = np.float32(c.ct), np.float32(c.st)
    u = dx * ct + dy * st
    v = dy * ct - dx * st
    t = u * np.float32(1.0 / c.half_len)
    dv = v - t * t * (np.float32(c.bend2) + np.float32(c.bend3) * t)
    # slow width variation along the core (1D value noise along u)
    wn = _vnoise1(vtab, u * np.float32(1.0 / _WIDTH_LAT_UM) + np.float32(c.width_off))
    hw = np.float32(c.half_width) * (np.float32(1.0) + np.float32(c.width_amp) * wn)
    ue = np.maximum(np.abs(u) - np.float32(c.half_len - c.cap), np.float32(0.0)) * np.float32(
        1.0 / c.cap
    )
    e = ue * ue
    r = np.float32(c.rough_um)
    a_in = dv / (hw - r)
    a_out = dv / (hw + r)
    sure_in = a_in * a_in + e < np.float32(0.9999)
    sure_out = a_out * a_out + e > np.float32(1.0001)
    inside = sure_in.copy()
    band = np.nonzero(~(sure_in | sure_out))
    if band[0].size:
        Xb = np.broadcast_to(X, inside.shape)[band]
        Yb = np.broadcast_to(Y, inside.shape)[band]
        ox, oy = np.float32(c.rough_ox), np.float32(c.rough_oy)
        rn = np.float32(0.8) * _vnoise(
            vtab,
            Xb * np.float32(1.0 / _ROUGH_LAT_UM) + ox,
            Yb * np.float32(1.0 / _ROUGH_LAT_UM) + oy,
        ) + np.float32(0.2) * _vnoise(
            vtab, Xb * np.float32(1.0 / 11.0) + oy, Yb * np.float32(1.0 / 11.0) + ox
        )
        a = dv[band] / (hw[band] + r * rn)
        inside[band] = a * a + e[band] < np.float32(1.0)
    for k, (ug, gw, slope) in enumerate(c.gaps):
        # a transverse crack with a wandering, ragged course
        g0 = u - np.float32(ug) + np.float32(slope) * v
        amp = np.float32(_CRACK_WOBBLE_UM)
        near = np.nonzero(np.abs(g0) < np.float32(1.4 * gw) + amp)
        if near[0].size == 0:
            continue
        vb = v[near]
        wob = _vnoise1(
            vtab, vb * np.float32(1.0 / 90.0) + np.float32(c.width_off + 1000.0 * (k + 1))
        )
        g = np.abs(g0[near] + amp * wob)
        Xb = np.broadcast_to(X, g0.shape)[near]
        Yb = np.broadcast_to(Y, g0.shape)[near]
        rn = _vnoise(
            vtab,
            Xb * np.float32(1.0 / 9.0) + np.float32(c.rough_oy + 31.0),
            Yb * np.float32(1.0 / 9.0) + np.float32(c.rough_ox + 57.0),
        )
        crack = g < np.float32(gw) * (np.float32(1.0) + np.float32(0.35) * rn)
        inside[tuple(ix[crack] for ix in near)] = False
    return inside, u, v
