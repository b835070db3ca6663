"""Concrete readers over OpenSlide and tiffslide."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from wsiseg.io.reader import BaseSlideReader, composite_on_white

__all__ = ["OpenSlideReader", "TiffSlideReader", "BACKENDS"]

log = logging.getLogger(__name__)

#: Block size of the fixed read lattice for levels with non-integer downsamples.
_LATTICE_PX = 256
#: Bytes of decoded tiles kept by OpenSlide for all the slides a process has open (one
#: cache shared by the driver's and every worker thread's handle; OpenSlide's default
#: is this much per handle, so memory grew with the handles as large slides filled them).
OPENSLIDE_CACHE_BYTES = 32 << 20


@functools.cache
def _shared_openslide_cache() -> Any:
    """The process's one tile cache, or None where OpenSlide cannot share one
    (openslide-python < 1.3 or OpenSlide < 4.0: then each handle keeps its own)."""
    import openslide

    if not hasattr(openslide, "OpenSlideCache"):
        return None
    try:
        return openslide.OpenSlideCache(OPENSLIDE_CACHE_BYTES)
    except openslide.OpenSlideVersionError:
        return None


class _WrappedSlide(BaseSlideReader):
    """Metadata shared by backends that wrap an OpenSlide-like object in ``_slide``.

    Metadata is read once: after a decoding error an OpenSlide handle fails every
    later call, and the error must stay a read error of that region.
    """

    _slide: Any
    _props: dict[str, str]

    @functools.cached_property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)

    @functools.cached_property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self._slide.level_downsamples)

    @property
    def properties(self) -> dict[str, str]:
        return self._props

    def close(self) -> None:
        self._slide.close()


class OpenSlideReader(_WrappedSlide):
    """Reader over ``openslide.OpenSlide`` (vendor formats, DICOM, generic tiled TIFF)."""

    backend = "openslide"
    _prefix = "openslide"

    def __init__(self, path: Path, mpp_override: float | None = None) -> None:
        super().__init__(path, mpp_override)
        import openslide

        self._slide: Any = openslide.OpenSlide(str(self._openable_path(self.path)))
        self._props = dict(self._slide.properties)
        cache = _shared_openslide_cache()
        if cache is not None:
            self._slide.set_cache(cache)

    @staticmethod
    def _openable_path(path: Path) -> Path:
        # A DICOM series folder is one slide: OpenSlide takes any file of the series.
        if path.is_dir():
            from wsiseg.io.discovery import folder_series_file

            return folder_series_file(path)
        return path

    def _read_inside(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        if abs(ds - round(ds)) < 1e-9:
            img = self._slide.read_region((round(x * ds), round(y * ds)), level, (w, h))
            return composite_on_white(np.asarray(img))
        # Non-integer downsample (e.g. 2.0005): OpenSlide resamples at the fractional
        # level position x0 / ds, so a pixel's value would depend on where the window
        # starts. Reading on a fixed lattice of blocks makes every read agree.
        block = _LATTICE_PX
        out = np.empty((h, w, 3), np.uint8)
        for by in range(y // block * block, y + h, block):
            for bx in range(x // block * block, x + w, block):
                tile = composite_on_white(
                    np.asarray(
                        self._slide.read_region(
                            (round(bx * ds), round(by * ds)), level, (block, block)
                        )
                    )
                )
                ox0, oy0 = max(bx, x), max(by, y)
                ox1, oy1 = min(bx + block, x + w), min(by + block, y + h)
                out[oy0 - y : oy1 - y, ox0 - x : ox1 - x] = tile[
                    oy0 - by : oy1 - by, ox0 - bx : ox1 - bx
                ]
        return out


class TiffSlideReader(_WrappedSlide):
    """Reader over ``tiffslide.TiffSlide`` (TIFF-based formats, OME-TIFF, plain TIFF)."""

    backend = "tiffslide"
    _prefix = "tiffslide"

    def __init__(self, path: Path, mpp_override: float | None = None) -> None:
        super().__init__(path, mpp_override)
        import tiffslide

        self._slide: Any = tiffslide.TiffSlide(str(self.path))
        self._props = {k: str(v) for k, v in self._slide.properties.items() if v is not None}

    def _read_inside(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        arr = self._slide.read_region(
            (round(x * ds), round(y * ds)), level, (w, h), as_array=True, padding=False
        )
        arr = np.asarray(arr)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        if arr.dtype != np.uint8:
            raise TypeError(
                f"{self.path.name}: {arr.dtype} pixels are not supported (uint8 RGB only)"
            )
        if arr.shape[:2] != (h, w):
            raise OSError(
                f"{self.path.name}: short read at level {level} ({arr.shape[:2]} != {(h, w)})"
            )
        return composite_on_white(arr)


BACKENDS: dict[str, type[BaseSlideReader]] = {
    "openslide": OpenSlideReader,
    "tiffslide": TiffSlideReader,
}
