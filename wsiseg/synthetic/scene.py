"""The scene of a spec: cores and glands drawn once (cached) and binned for lookups."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from wsiseg.synthetic.cores import _Core, _make_cores
from wsiseg.synthetic.glands import (
    _Gland,
    _lobe_fields,
    _place_benign,
    _place_tumour,
    _Placer,
    _Tables,
)
from wsiseg.synthetic.noise import _Q
from wsiseg.synthetic.spec import F32, _SceneParams

logger = logging.getLogger(__name__)


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
