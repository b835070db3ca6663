"""Write a slide as an OME-Zarr multiscale image (zarr v3, NGFF 0.5), chunk by chunk."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from wsiseg.fileops import atomic_path
from wsiseg.io.pyramid import level_array
from wsiseg.io.reader import SlideReader

__all__ = ["NGFF_VERSION", "write_omezarr", "multiscales_metadata"]

log = logging.getLogger(__name__)

NGFF_VERSION = "0.5"


def multiscales_metadata(
    name: str, mpp: tuple[float, float], downsamples: list[tuple[float, float]]
) -> dict[str, Any]:
    """NGFF ``multiscales`` for (c, y, x) RGB levels with the given (y, x) downsamples."""
    mx, my = mpp
    return {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": [
                    {"name": "c", "type": "channel"},
                    {"name": "y", "type": "space", "unit": "micrometer"},
                    {"name": "x", "type": "space", "unit": "micrometer"},
                ],
                "datasets": [
                    {
                        "path": str(i),
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [1.0, my * dy, mx * dx]}
                        ],
                    }
                    for i, (dy, dx) in enumerate(downsamples)
                ],
            }
        ],
        "omero": {
            "channels": [
                {"label": c, "color": col, "window": {"start": 0, "end": 255, "min": 0, "max": 255}}
                for c, col in zip("RGB", ("FF0000", "00FF00", "0000FF"), strict=True)
            ],
            "rdefs": {"model": "color"},
        },
    }


def _store_level(group: zarr.Group, index: int, arr: da.Array, chunk_px: int) -> zarr.Array[Any]:
    chw = arr.transpose(2, 0, 1).rechunk((3, chunk_px, chunk_px))
    z = zarr.create_array(
        store=group.store,
        name=f"{group.path}/{index}" if group.path else str(index),
        shape=chw.shape,
        dtype=np.uint8,
        chunks=(3, chunk_px, chunk_px),
        compressors=BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"),
        dimension_names=("c", "y", "x"),
        fill_value=255,
    )
    # dask computes and writes one chunk at a time: memory stays bounded.
    da.store(chw, z, lock=False, compute=True)  # type: ignore[arg-type]
    return z


def write_omezarr(
    reader: SlideReader,
    out: Path,
    *,
    chunk_px: int = 512,
    min_level_px: int = 512,
    overwrite: bool = False,
    on_level: Callable[[int, tuple[int, int]], None] | None = None,
) -> Path:
    """Convert ``reader``'s slide to an OME-Zarr multiscale image at ``out``.

    Every level of the slide is copied; if the slide's smallest level is still larger
    than ``min_level_px``, 2x averaged levels are added (from the written zarr, so
    memory stays bounded). Written under a temporary name and renamed when complete.
    """
    mpp = reader.mpp
    out = Path(out)
    with atomic_path(out, overwrite=overwrite) as tmp:
        root = zarr.open_group(zarr.storage.LocalStore(tmp), mode="w", zarr_format=3)
        w0, h0 = reader.level_dimensions[0]
        downsamples: list[tuple[float, float]] = []
        last: zarr.Array[Any] | None = None
        for level in range(reader.level_count):
            w, h = reader.level_dimensions[level]
            log.info("%s: level %d (%dx%d)", reader.path.name, level, w, h)
            last = _store_level(root, level, level_array(reader, level), chunk_px)
            downsamples.append((h0 / h, w0 / w))
            if on_level is not None:
                on_level(level, (w, h))
        assert last is not None
        while max(last.shape[1:]) > min_level_px and min(last.shape[1:]) >= 2:
            index = len(downsamples)
            src = da.from_zarr(last).transpose(1, 2, 0)
            h, w = src.shape[:2]
            src = src[: h - h % 2, : w - w % 2].astype(np.float32)
            half = da.coarsen(np.mean, src, {0: 2, 1: 2})
            half = da.round(half).astype(np.uint8)
            last = _store_level(root, index, half, chunk_px)
            downsamples.append((h0 / half.shape[0], w0 / half.shape[1]))
            if on_level is not None:
                on_level(index, (half.shape[1], half.shape[0]))
        meta = multiscales_metadata(reader.path.name, mpp, downsamples)
        root.attrs["ome"] = meta
        root.attrs["wsiseg"] = {
            "source": str(reader.path),
            "backend": getattr(reader, "backend", "unknown"),
            "mpp": list(mpp),
        }
    return out
