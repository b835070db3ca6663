"""Colour (H&E optical densities -> RGB lookup table) and periodic texture tables."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from wsiseg.synthetic.noise import _P, _PF, _periodic_noise
from wsiseg.synthetic.spec import F32, U8


@dataclass(frozen=True)
class _Textures:
    mpp: float
    grain: F32  # doubled (2P, 2P) periodic white-ish noise
    mid: F32  # doubled (2P, 2P) periodic smooth noise, ~1.5 µm
    warp: F32  # doubled (2P, 2P) periodic smooth noise, ~12 µm (fibre waviness)
    fibre: F32  # flat (PF*PF) stroma fibre factor, core frame
    lut: npt.NDArray[np.uint32]  # (256*256) packed RGB by (H, E) quantised
    bg: U8  # doubled (2P, 2P, 3) glass: what _compose makes of unpainted pixels


# optical densities per unit stain (R, G, B), tuned to typical H&E scans
_OD_H = np.array([0.70, 0.80, 0.32])
_OD_E = np.array([0.10, 0.83, 0.42])
_OD_BG = np.array([0.040, 0.042, 0.048])
_H_MAX = 2.2
_E_MAX = 1.6


def _make_lut() -> npt.NDArray[np.uint32]:
    hq = np.arange(256) * (_H_MAX / 255.0)
    eq = np.arange(256) * (_E_MAX / 255.0)
    od = _OD_BG + hq[:, None, None] * _OD_H + eq[None, :, None] * _OD_E
    rgb = np.clip(np.rint(255.0 * np.exp(-od)), 0, 255).astype(np.uint32)
    packed = rgb[..., 0] | (rgb[..., 1] << 8) | (rgb[..., 2] << 16)
    lut: npt.NDArray[np.uint32] = packed.reshape(-1).astype("<u4")
    return lut


_GRAIN_SHIFT = (137, 211)  # (y, x) offset of the second grain channel


def _compose(Hf: F32, Ef: F32, g1: F32, g2: F32, lut: npt.NDArray[np.uint32]) -> U8:
    """Stain concentrations (modified in place) plus grain -> RGB through the LUT."""
    Hf += np.float32(0.006) * g1 + np.float32(0.05) * Hf * g2
    Ef += np.float32(0.007) * g2 + np.float32(0.06) * Ef * g1
    hq = np.clip(Hf * np.float32(255.0 / _H_MAX) + np.float32(0.5), 0, 255).astype(np.int32)
    eq = np.clip(Ef * np.float32(255.0 / _E_MAX) + np.float32(0.5), 0, 255).astype(np.int32)
    h, w = Hf.shape
    rgba: U8 = lut.take(hq * 256 + eq).view(np.uint8).reshape(h, w, 4)
    return rgba[..., :3]


@lru_cache(maxsize=8)
def _build_textures(seed: int, mpp: float) -> _Textures:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7E47, 2]))
    grain = _periodic_noise(rng, (_P, _P), (0.5, 0.5))
    mid = _periodic_noise(rng, (_P, _P), (1.3 / mpp, 1.3 / mpp))
    warp = _periodic_noise(rng, (_P, _P), (10.0 / mpp, 10.0 / mpp))
    fib = _periodic_noise(rng, (_PF, _PF), (0.6 / mpp, 12.0 / mpp))  # rows: across, cols: along
    fib2 = _periodic_noise(rng, (_PF, _PF), (2.5 / mpp, 30.0 / mpp))
    fibre = np.clip(0.86 + 0.14 * fib + 0.12 * fib2, 0.3, 1.3).astype(np.float32)
    lut = _make_lut()
    g2 = np.roll(grain, (-_GRAIN_SHIFT[0], -_GRAIN_SHIFT[1]), axis=(0, 1))
    bg = _compose(np.zeros((_P, _P), np.float32), np.zeros((_P, _P), np.float32), grain, g2, lut)
    return _Textures(
        mpp=mpp,
        grain=np.tile(grain, (2, 2)),
        mid=np.tile(mid, (2, 2)),
        warp=np.tile(warp, (2, 2)),
        fibre=fibre.reshape(-1),
        lut=lut,
        bg=np.ascontiguousarray(np.tile(bg, (2, 2, 1))),
    )


def _tex(tab: F32, x0: int, y0: int, w: int, h: int, dx: int = 0, dy: int = 0) -> F32:
    ox = (x0 + dx) % _P
    oy = (y0 + dy) % _P
    return tab[oy : oy + h, ox : ox + w]


def _tex3(tab: U8, x0: int, y0: int, w: int, h: int) -> U8:
    ox = x0 % _P
    oy = y0 % _P
    return tab[oy : oy + h, ox : ox + w]
