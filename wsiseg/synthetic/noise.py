"""Deterministic hashing and value noise of absolute coordinates (so tiles are seamless)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from wsiseg.synthetic.spec import F32

_M32 = 0xFFFFFFFF
_Q = 256  # value-noise lattice period (lattice units)
_P = 512  # period of pixel-unit texture tables; render blocks are at most this size
_PF = 1024  # period of the fibre table (pixel units, core frame)
_BLOCK = _P


def _hash(ix: npt.NDArray[Any], iy: npt.NDArray[Any], key: int) -> npt.NDArray[np.uint32]:
    """32-bit integer hash of integer lattice coordinates and a key."""
    k = np.uint32((key * 0x9E3779B9 + 0x7F4A7C15) & _M32)
    h = ix.astype(np.uint32) * np.uint32(0x8DA6B343)
    h ^= iy.astype(np.uint32) * np.uint32(0xD8163841)
    h ^= k
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x7FEB352D)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x846CA68B)
    h ^= h >> np.uint32(16)
    return h


def _u01(h: npt.NDArray[np.uint32]) -> npt.NDArray[np.float64]:
    """Uniform [0, 1) from hashes."""
    return (h >> np.uint32(8)).astype(np.float64) * (1.0 / 16777216.0)


def _key(*parts: int) -> int:
    k = 0x1234567
    for p in parts:
        k = ((k ^ (p & _M32)) * 0x01000193 + 0x9E37) & _M32
    return k


def _vnoise(tab: F32, x: F32, y: F32) -> F32:
    """Value noise in [-1, 1] from a periodic lattice table (exact arithmetic only)."""
    fx = np.floor(x)
    fy = np.floor(y)
    tx = x - fx
    ty = y - fy
    m = _Q - 1
    ix = fx.astype(np.int32) & m
    iy = fy.astype(np.int32) & m
    ix1 = (ix + 1) & m
    r0 = iy * _Q
    r1 = ((iy + 1) & m) * _Q
    v00 = tab.take(r0 + ix)
    v01 = tab.take(r0 + ix1)
    v10 = tab.take(r1 + ix)
    v11 = tab.take(r1 + ix1)
    sx = tx * tx * (3.0 - 2.0 * tx)
    sy = ty * ty * (3.0 - 2.0 * ty)
    a = v00 + sx * (v01 - v00)
    b = v10 + sx * (v11 - v10)
    out: F32 = a + sy * (b - a)
    return out


def _vnoise1(tab: F32, x: F32) -> F32:
    """1D value noise in [-1, 1] (the flat lattice table read as one long row)."""
    fx = np.floor(x)
    t = x - fx
    m = tab.size - 1
    i = fx.astype(np.int32) & m
    a = tab.take(i)
    b = tab.take((i + 1) & m)
    out: F32 = a + t * t * (np.float32(3.0) - np.float32(2.0) * t) * (b - a)
    return out


def _periodic_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma_px: tuple[float, float]
) -> F32:
    """Periodic Gaussian-filtered white noise with unit standard deviation."""
    white = rng.standard_normal(shape)
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    g = np.exp(-2.0 * np.pi**2 * ((sigma_px[0] * ky) ** 2 + (sigma_px[1] * kx) ** 2))
    out = np.fft.irfft2(np.fft.rfft2(white) * g, s=shape)
    out -= out.mean()
    out /= max(float(out.std()), 1e-12)
    return out.astype(np.float32)
