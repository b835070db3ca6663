"""Slide I/O: readers (OpenSlide, tiffslide), lazy pyramids, OME-Zarr; GeoJSON in `io.geojson`."""

from __future__ import annotations

from wsiseg.io.open import open_slide
from wsiseg.io.pyramid import downsampled_level, level_array, pyramid
from wsiseg.io.reader import MPP_PLAUSIBLE_UM, SlideReader, SlideRef, resolve_mpp

__all__ = [
    "MPP_PLAUSIBLE_UM",
    "SlideReader",
    "SlideRef",
    "downsampled_level",
    "level_array",
    "open_slide",
    "pyramid",
    "resolve_mpp",
]
