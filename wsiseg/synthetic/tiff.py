"""Writing the image and label mask as pyramidal TIFFs: :func:`write_synthetic_slide`."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import tifffile

from wsiseg.fileops import atomic_path
from wsiseg.synthetic.noise import _BLOCK
from wsiseg.synthetic.render import _render, _scene_and_textures
from wsiseg.synthetic.scene import _Scene
from wsiseg.synthetic.spec import (
    CLASS_COLOURS,
    CLASS_NAMES,
    GENERATOR_NAME,
    GENERATOR_VERSION,
    U8,
    SynthPaths,
    SynthSpec,
    level_shapes,
)
from wsiseg.synthetic.textures import _Textures

__all__ = ["write_synthetic_slide"]

logger = logging.getLogger(__name__)


_BIGTIFF_BYTES = 2**32 - 2**25  # BigTIFF when the uncompressed level 0 is larger


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
    is written. Files are written under :func:`wsiseg.fileops.atomic_path`
    temporaries and renamed at the end, so an interrupted run leaves nothing
    under the final names, only temporaries that the stale-temporary cleanup
    recognises.
    """
    if not name or any(s in name for s in ("/", "\\", os.sep)) or name in (".", ".."):
        raise ValueError(f"write_synthetic_slide: bad slide name {name!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final_img = out_dir / f"{name}.tiff"
    final_mask = out_dir / f"{name}_mask.tiff"
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
    # Nested: the mask is renamed first, the image last; the raw lower levels are
    # scratch named after each temporary (".NAME.tiff.XXXXXXXX.partial.L1.raw").
    with (
        atomic_path(final_img, overwrite=True) as tmp_img,
        atomic_path(final_mask, overwrite=True) as tmp_mask,
    ):
        _write_pyramid(tmp_img, tmp_img, spec, sc, tx, "image", tick)
        _write_pyramid(tmp_mask, tmp_mask, spec, sc, tx, "mask", tick)
    return SynthPaths(image=final_img, mask=final_mask)
