"""Synthetic prostate needle-biopsy whole-slide images with exact ground truth.

The generator draws a deterministic *scene* from a :class:`SynthSpec` (the seed
and the physical size of the slide) and renders any level-0 region of it on
demand, so a slide of any size is written tile by tile with bounded memory and
the same pixels come out whatever the tiling.

Content and classes (label ids are the indices of :data:`CLASS_NAMES`):

``0 background``
    Near-white glass with slight grain.
``1 stroma``
    A few elongated tissue cores (needle biopsies): long bands about
    1-1.5 mm wide (narrower on slides too small to hold that), slightly
    curved, with irregular edges, rounded ends and the odd ragged transverse
    crack (glass, class 0).
    Pink eosinophilic fibromuscular stroma with fibres running along the core,
    slow staining variation and scattered spindle-shaped nuclei and
    lymphocytes.
``2 benign_gland``
    Large glands, 100-400 µm across, with irregular, sometimes lobulated
    outlines: a purple epithelial ring (a row of flat dark basal nuclei and a
    row of round secretory nuclei over pale cytoplasm) with papillary
    infoldings around a pale lumen, some with pink corpora amylacea. The
    label covers epithelium and lumen.
``3 tumour``
    Several foci per core of small crowded glands and solid cords 15-60 µm
    across: amphophilic cytoplasm, enlarged dark nuclei with nucleoli, small
    or no lumina, separated by thin stroma (which stays class 1). Foci range
    from a single gland or a few glands (the smallest are one or two samples
    across at 1/256 of the pixels) to hundreds.

Labels are exact: a pixel's label is the object whose colours were painted
there (cores, then glands; nuclei never change a label). Every size is in µm
and converted with ``spec.mpp``: the same seed and physical size at 0.25 µm/px
give the same slide at twice the pixels. Textures are functions of absolute
pixel coordinates (hash-based jittered grids, value noise and periodic noise
tables), so tiles are seamless and :func:`render_region` does not depend on
how a slide is cut into regions. The label computation uses only exactly
rounded floating-point operations, so labels are bit-identical between any
two tilings; images agree too (exactly in practice; nucleus orientations use
``sin``/``cos``, whose last bit numpy does not promise).

Cost: the scene (object lists, binned in 256 µm cells) is built once per
process and spec and cached (well under a second for an 8192 x 6144 slide,
about 10 s for 60k x 60k); rendering then costs the same per pixel whatever
the slide size: glass is a slice of a precomputed periodic texture, tissue
is vectorised numpy over the objects that touch the block.

Files written by :func:`write_synthetic_slide`:

* ``NAME.tiff``: tiled pyramidal TIFF in the layout OpenSlide's generic-TIFF
  reader expects (levels as top-level IFDs in decreasing size, levels after
  the first marked as reduced images, no SubIFDs, not OME). JPEG tiles stored
  as YCbCr with 2x2 chroma subsampling (the common WSI convention; OpenSlide
  and tiffslide decode them identically), pixel size in the resolution tags
  (pixels per cm) of every level, lower levels area-averaged from the level
  above, a JSON ImageDescription naming generator, version, seed and mpp.
* ``NAME_mask.tiff``: the labels, same geometry and levels, uint8, deflate,
  lower levels by block mode (ties go to the higher class id so small tumour
  foci survive as long as possible), never averaged.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tifffile

__all__ = [
    "CLASS_COLOURS",
    "CLASS_NAMES",
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "SynthPaths",
    "SynthSpec",
    "level_shapes",
    "render_region",
    "write_synthetic_slide",
]

logger = logging.getLogger(__name__)

GENERATOR_NAME = "wsiseg.io.synthetic"
#: Bump whenever the rendered output changes for an unchanged spec.
GENERATOR_VERSION = "1.0.0"

CLASS_NAMES: tuple[str, ...] = ("background", "stroma", "benign_gland", "tumour")
#: RGB per class id, for overlays (background is white).
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),
    (150, 200, 150),
    (50, 120, 220),
    (200, 0, 0),
)

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
BoolA = npt.NDArray[np.bool_]

# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class SynthSpec:
    """What to generate.

    Parameters
    ----------
    width_px, height_px
        Level-0 size in pixels (positive).
    seed
        Non-negative seed; the scene depends only on the seed, the physical
        size (pixels x mpp) and the content knobs below.
    mpp
        Level-0 pixel size in µm (0.5 or 0.25 are the usual; 0.1-2 allowed).
    tile_px
        TIFF tile size, a positive multiple of 16.
    level_factor
        Downsample between pyramid levels, 2 or 4.
    jpeg_quality
        JPEG quality of the image tiles, 1-100.
    n_cores
        Number of tissue cores; ``None`` picks 1-6 from the slide size.
    core_width_um
        Range of core widths in µm (clamped so cores fit the slide).
    tumour_foci_per_mm
        Tumour foci per mm of core length; when positive, every core gets at
        least three, the first of one to a few glands.
    benign_gland_fraction
        Target fraction of core area covered by benign glands.
    """

    width_px: int
    height_px: int
    seed: int = 0
    mpp: float = 0.5
    tile_px: int = 256
    level_factor: int = 4
    jpeg_quality: int = 90
    n_cores: int | None = None
    core_width_um: tuple[float, float] = (1000.0, 1500.0)
    tumour_foci_per_mm: float = 0.8
    benign_gland_fraction: float = 0.3

    def __post_init__(self) -> None:
        def _int(name: str) -> int:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"SynthSpec.{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
            return int(value)

        def _float(name: str, lo: float, hi: float, unit: str = "") -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ValueError(f"SynthSpec.{name} must be a number, got {value!r}")
            if not lo <= float(value) <= hi:
                raise ValueError(f"SynthSpec.{name} must be in {lo:g}..{hi:g}{unit}, got {value!r}")
            object.__setattr__(self, name, float(value))
            return float(value)

        for name in ("width_px", "height_px"):
            if _int(name) <= 0:
                raise ValueError(f"SynthSpec.{name} must be positive, got {getattr(self, name)}")
        if _int("seed") < 0:
            raise ValueError(f"SynthSpec.seed must be non-negative, got {self.seed}")
        if _int("tile_px") <= 0 or self.tile_px % 16:
            raise ValueError(
                f"SynthSpec.tile_px must be a positive multiple of 16, got {self.tile_px}"
            )
        if _int("level_factor") not in (2, 4):
            raise ValueError(f"SynthSpec.level_factor must be 2 or 4, got {self.level_factor}")
        if not 1 <= _int("jpeg_quality") <= 100:
            raise ValueError(f"SynthSpec.jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        _float("mpp", 0.1, 2.0, " µm/px")
        if self.n_cores is not None and not 1 <= _int("n_cores") <= 20:
            raise ValueError(f"SynthSpec.n_cores must be None or 1..20, got {self.n_cores}")
        try:
            lo, hi = (float(v) for v in self.core_width_um)
        except (TypeError, ValueError):
            lo = hi = math.nan
        if not 50.0 <= lo <= hi:
            raise ValueError(
                "SynthSpec.core_width_um must be (lo, hi) with 50 <= lo <= hi µm, "
                f"got {self.core_width_um!r}"
            )
        object.__setattr__(self, "core_width_um", (lo, hi))
        _float("tumour_foci_per_mm", 0.0, 10.0)
        _float("benign_gland_fraction", 0.0, 0.6)

    @property
    def width_um(self) -> float:
        """Physical width in µm."""
        return self.width_px * float(self.mpp)

    @property
    def height_um(self) -> float:
        """Physical height in µm."""
        return self.height_px * float(self.mpp)


@dataclass(frozen=True)
class SynthPaths:
    """Paths of a written synthetic slide: the image and its label mask."""

    image: Path
    mask: Path


def level_shapes(spec: SynthSpec) -> list[tuple[int, int]]:
    """Pyramid level sizes ``(height, width)`` of the files a spec produces.

    Each level is the previous one divided by ``level_factor`` (rounded up),
    until a level fits in one tile.

    Parameters
    ----------
    spec
        The slide spec.

    Returns
    -------
    list of (int, int)
        Level sizes, level 0 first.
    """
    h, w = spec.height_px, spec.width_px
    out = [(h, w)]
    while max(h, w) > spec.tile_px:
        h = -(-h // spec.level_factor)
        w = -(-w // spec.level_factor)
        out.append((h, w))
    return out


# --------------------------------------------------------------------------- hashing / noise

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


# --------------------------------------------------------------------------- scene

_ROUGH_LAT_UM = 55.0  # lattice of the core-edge roughness
_WIDTH_LAT_UM = 350.0  # lattice of the slow core-width variation
_MAX_NUC_UM = 7.5  # largest nucleus half-length (stamp margin)
_CRACK_WOBBLE_UM = 25.0
_BIGTIFF_BYTES = 2**32 - 2**25  # BigTIFF when the uncompressed level 0 is larger


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

_BIN_UM = 256.0


@dataclass(frozen=True)
class _Scene:
    width_um: float
    height_um: float
    seed: int
    vtab: F32  # value-noise lattice (flat _Q*_Q)
    rtab: F32  # lobe radius tables
    cores: tuple[_Core, ...]
    glands: tuple[_Gland, ...]
    bins: dict[tuple[int, int], npt.NDArray[np.int64]]


@dataclass(frozen=True)
class _Textures:
    mpp: float
    grain: F32  # doubled (2P, 2P) periodic white-ish noise
    mid: F32  # doubled (2P, 2P) periodic smooth noise, ~1.5 µm
    warp: F32  # doubled (2P, 2P) periodic smooth noise, ~12 µm (fibre waviness)
    fibre: F32  # flat (PF*PF) stroma fibre factor, core frame
    lut: npt.NDArray[np.uint32]  # (256*256) packed RGB by (H, E) quantised
    bg: U8  # doubled (2P, 2P, 3) glass: what _compose makes of unpainted pixels


@dataclass(frozen=True)
class _SceneParams:
    """What the scene depends on: physical size, seed and content knobs (not mpp)."""

    width_um: float
    height_um: float
    seed: int
    n_cores: int | None
    core_width_um: tuple[float, float]
    tumour_foci_per_mm: float
    benign_gland_fraction: float


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


def _gland_points(
    sc: _Scene, g: _Gland, X: F32, Y: F32, lumen: bool
) -> tuple[F32, F32 | None, npt.NDArray[np.int8]]:
    """Depth (µm, > 0 inside), lumen depth and the deepest lobe at points."""
    D: F32 | None = None
    L: F32 | None = None
    arg = np.zeros(X.shape, np.int8)
    t_epi = np.float32(g.t_epi)
    for k, lb in enumerate(g.lobes):
        d, pap = _lobe_fields(sc.rtab, lb, X, Y, lumen)
        if lumen:
            lum = d - t_epi if pap is None else d - t_epi - pap
            L = lum if L is None else np.maximum(L, lum)
        if D is None:
            D = d
        else:
            arg[d > D] = k
            D = np.maximum(D, d)
    assert D is not None
    return D, L, arg


def _gland_extent(lobes: list[tuple[float, ...]], x: float, y: float) -> float:
    ext = 0.0
    for lb in lobes:
        e = lb[_L_R] * (1.0 + lb[_L_AMP] + lb[_L_AMP2]) / lb[_L_IASP]
        ext = max(ext, math.hypot(lb[_L_CX] - x, lb[_L_CY] - y) + e)
    return ext


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


def _scene_params(spec: SynthSpec) -> _SceneParams:
    return _SceneParams(
        width_um=spec.width_um,
        height_um=spec.height_um,
        seed=int(spec.seed),
        n_cores=spec.n_cores,
        core_width_um=(float(spec.core_width_um[0]), float(spec.core_width_um[1])),
        tumour_foci_per_mm=float(spec.tumour_foci_per_mm),
        benign_gland_fraction=float(spec.benign_gland_fraction),
    )


@lru_cache(maxsize=8)
def _build_scene(prm: _SceneParams) -> _Scene:
    rng = np.random.default_rng(np.random.SeedSequence([prm.seed, 0x5EED, 1]))
    vtab = rng.uniform(-1.0, 1.0, _Q * _Q).astype(np.float32)
    cores = _make_cores(rng, prm)
    glands: list[_Gland] = []
    tables = _Tables()
    for core in cores:
        placer = _Placer(core.bbox)
        # a third of the benign glands first (so small cores keep some), then the
        # tumour foci, then the rest of the benign glands around them
        _place_benign(rng, vtab, core, prm, placer, glands, tables, 1.0 / 3.0)
        _place_tumour(rng, vtab, core, prm, placer, glands, tables)
        _place_benign(rng, vtab, core, prm, placer, glands, tables, 2.0 / 3.0)
    bins: dict[tuple[int, int], list[int]] = {}
    for g in glands:
        bx0, by0 = int(g.bbox[0] // _BIN_UM), int(g.bbox[1] // _BIN_UM)
        bx1, by1 = int(g.bbox[2] // _BIN_UM), int(g.bbox[3] // _BIN_UM)
        for by in range(by0, by1 + 1):
            for bx in range(bx0, bx1 + 1):
                bins.setdefault((bx, by), []).append(g.gid)
    logger.debug(
        "synthetic scene seed=%d %.0fx%.0f µm: %d cores, %d benign, %d tumour glands",
        prm.seed,
        prm.width_um,
        prm.height_um,
        len(cores),
        sum(g.kind == 2 for g in glands),
        sum(g.kind == 3 for g in glands),
    )
    return _Scene(
        width_um=prm.width_um,
        height_um=prm.height_um,
        seed=prm.seed,
        vtab=vtab,
        rtab=tables.array(),
        cores=tuple(cores),
        glands=tuple(glands),
        bins={k: np.asarray(v, np.int64) for k, v in bins.items()},
    )


# --------------------------------------------------------------------------- colour

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
    return packed.reshape(-1).astype("<u4")


_GRAIN_SHIFT = (137, 211)  # (y, x) offset of the second grain channel


def _compose(Hf: F32, Ef: F32, g1: F32, g2: F32, lut: npt.NDArray[np.uint32]) -> U8:
    """Stain concentrations (modified in place) plus grain -> RGB through the LUT."""
    Hf += np.float32(0.006) * g1 + np.float32(0.05) * Hf * g2
    Ef += np.float32(0.007) * g2 + np.float32(0.06) * Ef * g1
    hq = np.clip(Hf * np.float32(255.0 / _H_MAX) + np.float32(0.5), 0, 255).astype(np.int32)
    eq = np.clip(Ef * np.float32(255.0 / _E_MAX) + np.float32(0.5), 0, 255).astype(np.int32)
    h, w = Hf.shape
    rgba = lut.take(hq * 256 + eq).view(np.uint8).reshape(h, w, 4)
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


# --------------------------------------------------------------------------- nuclei


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


# --------------------------------------------------------------------------- rendering


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


def _tex(tab: F32, x0: int, y0: int, w: int, h: int, dx: int = 0, dy: int = 0) -> F32:
    ox = (x0 + dx) % _P
    oy = (y0 + dy) % _P
    return tab[oy : oy + h, ox : ox + w]


def _tex3(tab: U8, x0: int, y0: int, w: int, h: int) -> U8:
    ox = x0 % _P
    oy = y0 % _P
    return tab[oy : oy + h, ox : ox + w]


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


def _glands_in(sc: _Scene, x0u: float, y0u: float, x1u: float, y1u: float) -> list[_Gland]:
    ids: list[npt.NDArray[np.int64]] = []
    for by in range(int(y0u // _BIN_UM), int(y1u // _BIN_UM) + 1):
        for bx in range(int(x0u // _BIN_UM), int(x1u // _BIN_UM) + 1):
            a = sc.bins.get((bx, by))
            if a is not None:
                ids.append(a)
    if not ids:
        return []
    out = []
    for gid in np.unique(np.concatenate(ids)):
        g = sc.glands[int(gid)]
        b = g.bbox
        if b[2] >= x0u and b[0] <= x1u and b[3] >= y0u and b[1] <= y1u:
            out.append(g)
    return out


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


# --------------------------------------------------------------------------- writing


def _block_sum(a: npt.NDArray[Any], f: int) -> npt.NDArray[Any]:
    """Sum over f x f blocks of the first two axes (sizes multiples of f) by slice adds."""
    rows = a[0::f].copy()
    for i in range(1, f):
        rows += a[i::f]
    out = rows[:, 0::f].copy()
    for j in range(1, f):
        out += rows[:, j::f]
    return out


def _pad_to(a: npt.NDArray[Any], f: int) -> npt.NDArray[Any]:
    ph, pw = -a.shape[0] % f, -a.shape[1] % f
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw)) + ((0, 0),) * (a.ndim - 2), mode="edge")
    return a


def _down_mean(band: U8, f: int) -> U8:
    """Area average by f x f blocks (edge-replicated to a multiple of f), rounded."""
    s = _block_sum(_pad_to(band, f).astype(np.uint16), f)
    out: U8 = ((s + (f * f) // 2) // (f * f)).astype(np.uint8)
    return out


_MODE_CODE = np.array([1 << (8 * c) for c in range(4)], np.uint32)


def _down_mode(band: U8, f: int) -> U8:
    """Block mode over f x f blocks (ties go to the higher class id)."""
    counts = _block_sum(_MODE_CODE.take(_pad_to(band, f)), f)  # one byte per class
    best = np.zeros(counts.shape, np.uint8)
    best_n = counts & np.uint32(0xFF)
    for c in range(1, len(CLASS_NAMES)):
        n = (counts >> np.uint32(8 * c)) & np.uint32(0xFF)
        better = n >= best_n
        best[better] = c
        np.maximum(best_n, n, out=best_n)
    return best


class _RawLevel:
    """A lower level kept on disk (raw, row-major) while the pyramid is written."""

    def __init__(self, path: Path, h: int, w: int, c: int) -> None:
        self.path, self.h, self.w, self.c = path, h, w, c
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in finish()
        self.rows = 0

    def append(self, rows: U8) -> None:
        rows = rows[: self.h - self.rows]
        self._fh.write(np.ascontiguousarray(rows).tobytes())
        self.rows += rows.shape[0]

    def finish(self) -> None:
        self._fh.close()
        if self.rows != self.h:
            raise RuntimeError(f"internal: level has {self.rows} rows, expected {self.h}")

    def read(self, r0: int, r1: int) -> U8:
        row = self.w * self.c
        with open(self.path, "rb") as fh:
            fh.seek(r0 * row)
            data = np.fromfile(fh, np.uint8, (r1 - r0) * row)
        shape = (r1 - r0, self.w, self.c) if self.c > 1 else (r1 - r0, self.w)
        return data.reshape(shape)


def _description(spec: SynthSpec, kind: str) -> str:
    d: dict[str, Any] = {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "kind": kind,
        "seed": spec.seed,
        "mpp": float(spec.mpp),
        "spec": asdict(spec),
    }
    if kind == "mask":
        d["classes"] = {str(i): n for i, n in enumerate(CLASS_NAMES)}
        d["colours"] = {str(i): list(c) for i, c in enumerate(CLASS_COLOURS)}
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


def _write_pyramid(
    path: Path,
    raw_stem: Path,
    spec: SynthSpec,
    sc: _Scene,
    tx: _Textures,
    kind: str,
    tick: Callable[[int], None],
) -> None:
    is_img = kind == "image"
    C = 3 if is_img else 1
    T, f = spec.tile_px, spec.level_factor
    levels = level_shapes(spec)
    h0, w0 = levels[0]
    ppcm = 1e4 / float(spec.mpp)
    big = h0 * w0 * C > _BIGTIFF_BYTES
    opts: dict[str, Any] = {
        "tile": (T, T),
        "metadata": None,
        "resolutionunit": tifffile.RESUNIT.CENTIMETER,
        "software": f"{GENERATOR_NAME} {GENERATOR_VERSION}",
        "maxworkers": 1,
    }
    if is_img:
        opts.update(
            photometric="rgb",
            compression="jpeg",
            compressionargs={"level": int(spec.jpeg_quality)},
            subsampling=(2, 2),
        )
    else:
        opts.update(photometric="minisblack", compression="zlib", compressionargs={"level": 6})
    down = _down_mean if is_img else _down_mode
    raws: list[_RawLevel] = []

    # tifffile stops pulling once it has every tile, so all bookkeeping for a
    # row of tiles happens before its last tile is yielded.
    def level0_tiles(nxt: _RawLevel | None) -> Iterator[U8]:
        bw = max(T, (_BLOCK // T) * T)
        for y in range(0, h0, T):
            vh = min(T, h0 - y)
            band = None
            if nxt is not None:  # this row of tiles, downsampled, for the next level
                band_shape = (-(-vh // f), nxt.w, C) if C > 1 else (-(-vh // f), nxt.w)
                band = np.empty(band_shape, np.uint8)
            for x in range(0, w0, bw):
                ww = min(bw, -(-(w0 - x) // T) * T)
                im, lab = _render(sc, tx, x, y, ww, T, is_img)
                arr = im if is_img else lab
                assert arr is not None
                if nxt is not None and band is not None:
                    d = down(arr[:vh, : min(ww, w0 - x)], f)
                    band[:, x // f : x // f + d.shape[1]] = d
                    if x + bw >= w0:
                        nxt.append(band)
                if x + bw >= w0:
                    tick(-(-w0 // T))
                for tx0 in range(0, ww, T):
                    yield arr[:, tx0 : tx0 + T]

    def raw_tiles(src: _RawLevel, nxt: _RawLevel | None) -> Iterator[U8]:
        for y in range(0, src.h, T):
            rows = src.read(y, min(src.h, y + T))
            if nxt is not None:
                nxt.append(down(rows, f))
            tick(-(-src.w // T))
            vh = rows.shape[0]
            for x in range(0, src.w, T):
                t = rows[:, x : x + T]
                if is_img and (vh < T or t.shape[1] < T):
                    t = np.pad(t, ((0, T - vh), (0, T - t.shape[1]), (0, 0)), mode="edge")
                yield t

    try:
        with tifffile.TiffWriter(path, bigtiff=big) as tif:
            src: _RawLevel | None = None
            for k, (lh, lw) in enumerate(levels):
                nxt = None
                if k + 1 < len(levels):
                    nh, nw = levels[k + 1]
                    raw_path = raw_stem.parent / f"{raw_stem.name}.L{k + 1}.raw"
                    nxt = _RawLevel(raw_path, nh, nw, C)
                    raws.append(nxt)
                it = level0_tiles(nxt) if k == 0 else raw_tiles(src, nxt)  # type: ignore[arg-type]
                tif.write(
                    it,
                    shape=(lh, lw, C) if C > 1 else (lh, lw),
                    dtype=np.uint8,
                    subfiletype=0 if k == 0 else 1,
                    resolution=(ppcm * lw / w0, ppcm * lh / h0),
                    description=_description(spec, kind) if k == 0 else None,
                    **opts,
                )
                if nxt is not None:
                    nxt.finish()
                if src is not None:
                    src.path.unlink(missing_ok=True)
                src = nxt
    finally:
        for r in raws:
            r._fh.close()
            r.path.unlink(missing_ok=True)


def write_synthetic_slide(
    out_dir: Path | str,
    name: str,
    spec: SynthSpec,
    progress: Callable[[int, int], None] | None = None,
) -> SynthPaths:
    """Write a synthetic slide and its label mask as pyramidal TIFFs.

    Parameters
    ----------
    out_dir
        Output folder (created if missing).
    name
        File stem: writes ``NAME.tiff`` and ``NAME_mask.tiff``, replacing
        existing files of those names.
    spec
        What to generate.
    progress
        Called as ``progress(done, total)`` in tiles, over all levels of both
        files, once per row of tiles.

    Returns
    -------
    SynthPaths
        The image and mask paths.

    Raises
    ------
    ValueError
        If ``name`` is empty or contains a path separator.

    Notes
    -----
    Memory stays bounded whatever the slide size: level 0 is rendered and
    written one row of tiles at a time, and each lower level is kept in a
    temporary raw file in ``out_dir`` (1/factor² of the level above) until it
    is written. Files are written under temporary names and renamed at the
    end, so an interrupted run leaves nothing under the final names.
    """
    if not name or any(s in name for s in ("/", "\\", os.sep)) or name in (".", ".."):
        raise ValueError(f"write_synthetic_slide: bad slide name {name!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final_img = out_dir / f"{name}.tiff"
    final_mask = out_dir / f"{name}_mask.tiff"
    token = uuid.uuid4().hex[:12]
    tmp_img = out_dir / f".{name}.{token}.tiff.partial"
    tmp_mask = out_dir / f".{name}.{token}_mask.tiff.partial"
    sc, tx = _scene_and_textures(spec)
    levels = level_shapes(spec)
    T = spec.tile_px
    total = 2 * sum(-(-lh // T) * -(-lw // T) for lh, lw in levels)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    logger.info(
        "writing synthetic slide %s (%dx%d px, %.3g µm/px, seed %d, %d levels)",
        final_img,
        spec.width_px,
        spec.height_px,
        spec.mpp,
        spec.seed,
        len(levels),
    )
    try:
        _write_pyramid(tmp_img, out_dir / f".{name}.{token}.img", spec, sc, tx, "image", tick)
        _write_pyramid(tmp_mask, out_dir / f".{name}.{token}.mask", spec, sc, tx, "mask", tick)
        os.replace(tmp_mask, final_mask)
        os.replace(tmp_img, final_img)
    finally:
        tmp_img.unlink(missing_ok=True)
        tmp_mask.unlink(missing_ok=True)
    return SynthPaths(image=final_img, mask=final_mask)
