"""Lazy pyramids: each slide level as a dask array whose chunks are tile-aligned reads.

Nothing is decoded until a chunk is computed. The array-like object pickles as a
`SlideRef`, so a dask worker opens its own reader (one per process, cached).
"""

from __future__ import annotations

import functools
import logging
import math
import os

import dask.array as da
import numpy as np
from PIL import Image

from wsiseg.io.reader import BaseSlideReader, SlideReader, SlideRef

__all__ = [
    "LevelSource",
    "chunk_shape",
    "downsampled_level",
    "file_stamp",
    "level_array",
    "pyramid",
]

log = logging.getLogger(__name__)

DEFAULT_CHUNK_PX = 1024


def file_stamp(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """(inode, size, mtime) of a file: a cache key part that changes when the file is replaced."""
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _cached_reader(ref: SlideRef) -> SlideReader:
    return _cached_open(ref, file_stamp(ref.path))


@functools.lru_cache(maxsize=8)
def _cached_open(ref: SlideRef, stamp: tuple[int, int, int]) -> SlideReader:
    # One open handle per slide per process (dask tasks on a worker share it); a file
    # replaced under the same name gets a new one.
    return ref.open()


class LevelSource:
    """Array-like view of one slide level (``shape = (h, w, 3)``) for `dask.array.from_array`."""

    def __init__(self, ref: SlideRef, level: int, shape: tuple[int, int]) -> None:
        self.ref = ref
        self.level = level
        self.shape = (shape[0], shape[1], 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        ys, xs = key[0], key[1]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), np.uint8)
        reader = _cached_reader(self.ref)
        out = reader.read_region(self.level, x0, y0, x1 - x0, y1 - y0)
        return out[(slice(None), slice(None), *key[2:])] if len(key) > 2 else out


def chunk_shape(reader: SlideReader, target_px: int = DEFAULT_CHUNK_PX) -> tuple[int, int]:
    """Chunk (h, w): the smallest multiple of the slide's tile size that reaches ``target_px``."""
    tile = reader.tile_size
    if tile is None:
        return target_px, target_px
    tw, th = tile
    return th * max(1, math.ceil(target_px / th)), tw * max(1, math.ceil(target_px / tw))


def level_array(reader: SlideReader, level: int, chunk_px: int = DEFAULT_CHUNK_PX) -> da.Array:
    """Level ``level`` as a lazy ``(h, w, 3)`` uint8 dask array with tile-aligned chunks."""
    w, h = reader.level_dimensions[level]
    src = LevelSource(reader.ref(), level, (h, w))
    ch, cw = chunk_shape(reader, chunk_px)
    arr: da.Array = da.from_array(
        src,
        chunks=(min(ch, h), min(cw, w), 3),
        asarray=False,
        lock=False,
        fancy=False,
        meta=np.empty((0, 0, 3), np.uint8),
        name=f"slide-{reader.path.name}-L{level}-{abs(hash(src.ref)) & 0xFFFFFFFF:x}",
    )
    return arr


def pyramid(reader: SlideReader, chunk_px: int = DEFAULT_CHUNK_PX) -> list[da.Array]:
    """Every level of the slide as lazy dask arrays, finest first."""
    return [level_array(reader, i, chunk_px) for i in range(reader.level_count)]


def downsampled_level(reader: SlideReader, downsample: float) -> np.ndarray:
    """The whole slide at ``downsample`` x level 0 (RGB uint8), with bounded memory.

    Reads the coarsest level no coarser than asked, averages integer blocks chunk by
    chunk (anti-aliased), then resizes the small remainder with a box filter.
    """
    if isinstance(reader, BaseSlideReader):
        level = reader.best_level_for_downsample(downsample)
    else:
        level = 0
    arr = level_array(reader, level)
    factor = downsample / reader.level_downsamples[level]
    k = max(1, int(math.floor(factor)))
    if k > 1:
        h, w = arr.shape[:2]
        arr = arr[: h - h % k or h, : w - w % k or w]
        if arr.shape[0] >= k and arr.shape[1] >= k:
            ch = max(k, arr.chunksize[0] - arr.chunksize[0] % k)
            cw = max(k, arr.chunksize[1] - arr.chunksize[1] % k)
            arr = arr.rechunk((ch, cw, 3))
            arr = da.coarsen(np.mean, arr.astype(np.float32), {0: k, 1: k}, trim_excess=True)
            # Back to uint8 chunk by chunk: the result never exists as float32.
            arr = da.clip(da.rint(arr), 0, 255).astype(np.uint8)
    small = np.asarray(arr.compute(scheduler="threads"))
    w0, h0 = reader.level_dimensions[0]
    out_w, out_h = max(1, round(w0 / downsample)), max(1, round(h0 / downsample))
    if small.shape[:2] != (out_h, out_w):
        small = np.asarray(Image.fromarray(small).resize((out_w, out_h), Image.Resampling.BOX))
    return small
