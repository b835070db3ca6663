"""Painting level-0 pixels: glass, stroma, glands, nuclei; :func:`render_region`."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from wsiseg.synthetic.cores import _core_inside
from wsiseg.synthetic.glands import _CL_X0, _CL_X1, _CL_Y0, _CL_Y1, _Gland, _lobe_fields
from wsiseg.synthetic.noise import _BLOCK, _PF, _vnoise
from wsiseg.synthetic.nuclei import _gland_nuclei, _nuc_pad, _Nuclei, _stroma_nuclei
from wsiseg.synthetic.scene import _build_scene, _glands_in, _Scene
from wsiseg.synthetic.spec import F32, U8, SynthSpec, _scene_params
from wsiseg.synthetic.textures import (
    _GRAIN_SHIFT,
    _build_textures,
    _compose,
    _tex,
    _tex3,
    _Textures,
)

__all__ = ["render_region"]


def _lowfreq(sc: _Scene, mpp: float, x0: int, y0: int, w: int, h: int) -> F32:
    """Slow staining variation (about 1 +- 0.1), bilinear from a 32-px absolute grid."""
    S = 32
    j0, j1 = x0 // S, (x0 + w - 1) // S + 1
    i0, i1 = y0 // S, (y0 + h - 1) // S + 1
    nx = (np.arange(j0, j1 + 1) * S * mpp).astype(np.float32)
    ny = (np.arange(i0, i1 + 1) * S * mpp).astype(np.float32)
    NX = np.broadcast_to(nx[None, :], (ny.size, nx.size))
    NY = np.broadcast_to(ny[:, None], (ny.size, nx.size))
    c = (
        np.float32(1.0)
        + np.float32(0.07)
        * _vnoise(sc.vtab, NX * np.float32(1 / 220.0), NY * np.float32(1 / 220.0))
        + np.float32(0.05)
        * _vnoise(
            sc.vtab,
            NX * np.float32(1 / 55.0) + np.float32(101.0),
            NY * np.float32(1 / 55.0) + np.float32(37.0),
        )
    )
    xs = np.arange(x0, x0 + w)
    ys = np.arange(y0, y0 + h)
    jx = xs // S - j0
    iy = ys // S - i0
    fx = ((xs % S).astype(np.float32) * np.float32(1.0 / S))[None, :]
    fy = ((ys % S).astype(np.float32) * np.float32(1.0 / S))[:, None]
    r = c[:, jx] * (np.float32(1.0) - fx) + c[:, jx + 1] * fx
    out: F32 = r[iy, :] * (np.float32(1.0) - fy) + r[iy + 1, :] * fy
    return out


def _window(
    bbox: tuple[float, float, float, float], mpp: float, x0: int, y0: int, w: int, h: int
) -> tuple[int, int, int, int] | None:
    c0 = max(0, math.floor(bbox[0] / mpp) - 1 - x0)
    c1 = min(w, math.ceil(bbox[2] / mpp) + 1 - x0)
    r0 = max(0, math.floor(bbox[1] / mpp) - 1 - y0)
    r1 = min(h, math.ceil(bbox[3] / mpp) + 1 - y0)
    if c0 >= c1 or r0 >= r1:
        return None
    return r0, r1, c0, c1


def _gland_window(
    sc: _Scene,
    g: _Gland,
    X: F32,
    Y: F32,
    win: tuple[int, int, int, int],
    mpp: float,
    x0: int,
    y0: int,
    lumen: bool,
) -> tuple[F32, F32 | None]:
    """Depth and lumen depth of a gland over a block window, each lobe only in its bbox."""
    r0, r1, c0, c1 = win
    shape = (r1 - r0, c1 - c0)
    D = np.full(shape, np.float32(-1e9), np.float32)
    L = np.full(shape, np.float32(-1e9), np.float32) if lumen else None
    t_epi = np.float32(g.t_epi)
    for lb in g.lobes:
        sub = _window((lb[_CL_X0], lb[_CL_Y0], lb[_CL_X1], lb[_CL_Y1]), mpp, x0, y0, c1, r1)
        if sub is None:
            continue
        s0, s1, d0, d1 = max(sub[0], r0), sub[1], max(sub[2], c0), sub[3]
        if s0 >= s1 or d0 >= d1:
            continue
        d, pap = _lobe_fields(sc.rtab, lb, X[None, d0:d1], Y[s0:s1, None], lumen)
        view = (slice(s0 - r0, s1 - r0), slice(d0 - c0, d1 - c0))
        np.maximum(D[view], d, out=D[view])
        if L is not None:
            lum = d - t_epi if pap is None else d - t_epi - pap
            np.maximum(L[view], lum, out=L[view])
    return D, L


def _render_block(
    sc: _Scene, tx: _Textures, x0: int, y0: int, w: int, h: int, want_image: bool
) -> tuple[U8 | None, U8]:
    """Render a block of at most _BLOCK x _BLOCK level-0 pixels.

    Painting order: glass, cores (stroma), glands; a pixel's label is the last
    object painted there. Nuclei are stamped into two accumulators, stromal
    and epithelial, and each is shown only on its own class, so a nucleus near
    an edge never paints across it.
    """
    mpp = tx.mpp
    f32 = np.float32
    X = ((np.arange(x0, x0 + w, dtype=np.float64) + 0.5) * mpp).astype(f32)
    Y = ((np.arange(y0, y0 + h, dtype=np.float64) + 0.5) * mpp).astype(f32)
    lab = np.zeros((h, w), np.uint8)
    Hf = np.zeros((h, w), f32) if want_image else None
    Ef = np.zeros((h, w), f32) if want_image else None
    stroma_nuc, epi_nuc, nucleoli = _Nuclei(), _Nuclei(), _Nuclei()
    x0u, y0u, x1u, y1u = x0 * mpp, y0 * mpp, (x0 + w) * mpp, (y0 + h) * mpp
    inv_mpp = f32(1.0 / mpp)
    any_tissue = False
    for c in sc.cores:
        win = _window(c.bbox, mpp, x0, y0, w, h)
        if win is None:
            continue
        r0, r1, c0, c1 = win
        inside, u, v = _core_inside(sc.vtab, c, X[None, c0:c1], Y[r0:r1, None])
        if not inside.any():
            continue
        any_tissue = True
        lab[r0:r1, c0:c1][inside] = 1
        if Hf is not None and Ef is not None:
            # fibres along the core, gently wavy; slight mottling
            wa = _tex(tx.warp, x0 + c0, y0 + r0, c1 - c0, r1 - r0)
            iu = np.floor(u * inv_mpp).astype(np.int32) & (_PF - 1)
            iv = np.floor((v + f32(6.0) * wa) * inv_mpp).astype(np.int32) & (_PF - 1)
            fib = tx.fibre.take(iv * _PF + iu)
            mid = _tex(tx.mid, x0 + c0, y0 + r0, c1 - c0, r1 - r0)
            e = f32(0.62 * c.stain_e) * fib * (f32(1.0) + f32(0.08) * mid)
            hh = f32(0.07 * c.stain_h) + f32(0.025) * mid
            np.copyto(Ef[r0:r1, c0:c1], e, where=inside)
            np.copyto(Hf[r0:r1, c0:c1], hh, where=inside)
    if not any_tissue:
        return (_tex3(tx.bg, x0, y0, w, h) if want_image else None), lab
    if want_image:
        _stroma_nuclei(sc, tx, stroma_nuc, x0, y0, w, h)
    for g in _glands_in(sc, x0u, y0u, x1u, y1u):
        win = _window(g.bbox, mpp, x0, y0, w, h)
        if win is None:
            continue
        r0, r1, c0, c1 = win
        D, L = _gland_window(sc, g, X, Y, win, mpp, x0, y0, want_image)
        inside = D > 0
        if not inside.any():
            continue
        lab[r0:r1, c0:c1][inside] = g.kind
        if Hf is None or Ef is None:
            continue
        assert L is not None
        mid = _tex(tx.mid, x0 + c0, y0 + r0, c1 - c0, r1 - r0, 97, 193)
        lum = L > 0
        if g.kind == 3:
            # amphophilic (purple-pink) cytoplasm, small clear lumina
            e = np.where(lum, f32(0.07), f32(0.24 * g.stain) + f32(0.04) * mid)
            hh = np.where(lum, f32(0.025), f32(0.30 * g.stain) + f32(0.04) * mid)
        else:
            # pale cytoplasm, darker towards the basal side; lumen with faint secretions
            depth = np.clip(D * f32(1.0 / g.t_epi), f32(0.0), f32(1.0))
            e_epi = (f32(0.30) - f32(0.08) * depth) * f32(g.stain) + f32(0.04) * mid
            h_epi = f32(0.16) - f32(0.05) * depth + f32(0.02) * mid
            sec = np.maximum(mid, f32(0.0))
            e = np.where(lum, f32(0.05) + f32(0.035) * sec, e_epi)
            hh = np.where(lum, f32(0.015) + f32(0.008) * sec, h_epi)
            if g.ca[2] > 0:
                dxc = X[None, c0:c1] - f32(g.ca[0])
                dyc = Y[r0:r1, None] - f32(g.ca[1])
                rr = np.sqrt(dxc * dxc + dyc * dyc)
                ca_in = lum & (rr < f32(g.ca[2]))
                if ca_in.any():
                    ring = rr * f32(1.0 / 2.5)
                    ring = ring - np.floor(ring)
                    e = np.where(ca_in, f32(0.75) + f32(0.2) * ring, e)
                    hh = np.where(ca_in, f32(0.10) + f32(0.06) * ring, hh)
        np.copyto(Ef[r0:r1, c0:c1], e, where=inside)
        np.copyto(Hf[r0:r1, c0:c1], hh, where=inside)
        _gland_nuclei(sc, tx, g, epi_nuc, nucleoli, x0, y0, w, h)
    if Hf is None or Ef is None:
        return None, lab
    pad = _nuc_pad(mpp)
    acc_s = np.zeros((h + 2 * pad, w + 2 * pad), f32)
    acc_e = np.zeros((h + 2 * pad, w + 2 * pad), f32)
    stroma_nuc.stamp(acc_s, x0, y0, mpp)
    epi_nuc.stamp(acc_e, x0, y0, mpp)
    nucleoli.stamp(acc_e, x0, y0, mpp)
    inner = (slice(pad, pad + h), slice(pad, pad + w))
    acc = np.where(lab == 1, acc_s[inner], np.where(lab >= 2, acc_e[inner], f32(0.0)))
    lf = _lowfreq(sc, mpp, x0, y0, w, h)
    g1 = _tex(tx.grain, x0, y0, w, h)
    g2 = _tex(tx.grain, x0, y0, w, h, _GRAIN_SHIFT[1], _GRAIN_SHIFT[0])
    Hf += acc * (f32(1.0) + f32(0.22) * g2)
    Ef *= f32(1.0) - f32(0.5) * np.minimum(acc, f32(1.0))
    Hf *= lf
    Ef *= lf
    return _compose(Hf, Ef, g1, g2, tx.lut), lab


def _render(
    sc: _Scene, tx: _Textures, x0: int, y0: int, w: int, h: int, want_image: bool
) -> tuple[U8 | None, U8]:
    if w <= _BLOCK and h <= _BLOCK:
        return _render_block(sc, tx, x0, y0, w, h, want_image)
    rgb = np.empty((h, w, 3), np.uint8) if want_image else None
    lab = np.empty((h, w), np.uint8)
    for by in range(0, h, _BLOCK):
        for bx in range(0, w, _BLOCK):
            bh, bw = min(_BLOCK, h - by), min(_BLOCK, w - bx)
            im, lb = _render_block(sc, tx, x0 + bx, y0 + by, bw, bh, want_image)
            lab[by : by + bh, bx : bx + bw] = lb
            if rgb is not None and im is not None:
                rgb[by : by + bh, bx : bx + bw] = im
    return rgb, lab


def _scene_and_textures(spec: SynthSpec) -> tuple[_Scene, _Textures]:
    return _build_scene(_scene_params(spec)), _build_textures(int(spec.seed), float(spec.mpp))


def render_region(
    spec: SynthSpec, x0: int, y0: int, w: int, h: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Render a level-0 region of the synthetic slide.

    Parameters
    ----------
    spec
        The slide spec.
    x0, y0
        Top-left corner in level-0 pixels (may lie outside the slide, where
        the result is whatever the scene holds there, usually glass).
    w, h
        Region size in pixels (positive).

    Returns
    -------
    rgb : numpy.ndarray
        ``(h, w, 3)`` uint8 image.
    labels : numpy.ndarray
        ``(h, w)`` uint8 class ids (see :data:`CLASS_NAMES`).

    Raises
    ------
    ValueError
        If the size is not positive.

    Notes
    -----
    The result does not depend on how a slide is cut into regions: labels are
    bit-identical, and so is the image on the same machine.
    """
    for n, val in (("x0", x0), ("y0", y0), ("w", w), ("h", h)):
        if isinstance(val, bool) or not isinstance(val, int | np.integer):
            raise ValueError(f"render_region: {n} must be an integer, got {val!r}")
    if w <= 0 or h <= 0:
        raise ValueError(f"render_region: size must be positive, got {w}x{h}")
    sc, tx = _scene_and_textures(spec)
    rgb, lab = _render(sc, tx, int(x0), int(y0), int(w), int(h), True)
    assert rgb is not None
    return np.ascontiguousarray(rgb), lab
