"""Tissue detection on a thumbnail: Otsu on saturation with a floor, morphology, polygons.

The floor keeps an image that is tissue everywhere in one piece (Otsu alone would
split it in two); a minimum object area and hole filling remove dust and lumina.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import ndimage
from shapely.geometry import MultiPolygon
from skimage import filters, morphology

from wsiseg.geometry import count_values, mask_to_polygons
from wsiseg.io.reader import SlideReader

__all__ = [
    "TissueParams",
    "TissueMask",
    "saturation",
    "tissue_mask_from_rgb",
    "remove_small_components",
    "detect_tissue",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TissueParams:
    """Settings of tissue detection (sizes in µm so they hold at any thumbnail scale)."""

    thumb_mpp: float = 8.0
    saturation_floor: float = 0.07  # glass is below this whatever Otsu says
    background_max: float = 0.06  # Otsu's lower class must look like glass to be trusted
    min_object_um2: float = 20_000.0  # about a 140 µm square
    max_hole_um2: float = 40_000.0
    closing_um: float = 24.0


@dataclass
class TissueMask:
    """Tissue on the thumbnail grid, and as polygons in level-0 pixels."""

    mask: np.ndarray  # bool [h, w] at thumb_mpp
    downsample: float  # level-0 pixels per thumbnail pixel
    polygons: MultiPolygon  # level-0 pixel coordinates
    threshold: float

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def area_level0_px(self) -> float:
        return float(self.mask.sum()) * self.downsample**2


@cache
def _saturation_table() -> np.ndarray:
    """HSV saturation by (largest, smallest) channel value of a uint8 pixel, float64,
    with skimage's arithmetic: (max/255 - min/255) / (max/255), 0 where they are equal.
    A pixel's saturation depends on these two values only, so a lookup gives the very
    floats ``rgb2hsv`` computes."""
    f = np.arange(256, dtype=np.float64) * (1 / 255)  # as img_as_float
    delta = f[:, None] - f[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        table = delta / f[:, None]
    table[delta <= 0.0] = 0.0  # equal (grey), or min > max (never looked up)
    table.flags.writeable = False
    return table


def _codes(band: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel of some rows of a uint8 RGB image: the (max, min) channel pair as one
    index into the flattened `_saturation_table`, and whether it is not dark."""
    hi = band.max(axis=-1)
    code = hi.astype(np.intp) * 256 + band.min(axis=-1)
    # Near-black pixels (pen, scanner borders) have high saturation noise: not tissue.
    return code, hi >= 40


def saturation(rgb: np.ndarray, band_rows: int = 256) -> np.ndarray:
    """HSV saturation of a uint8 RGB image, float64, equal to
    ``skimage.color.rgb2hsv(rgb)[..., 1]`` (looked up per band of rows, no float image)."""
    table = _saturation_table().ravel()
    out = np.empty(rgb.shape[:2], np.float64)
    for r0 in range(0, rgb.shape[0], band_rows):
        out[r0 : r0 + band_rows] = table[_codes(rgb[r0 : r0 + band_rows])[0]]
    return out


def _otsu_threshold(rgb: np.ndarray, band_rows: int) -> tuple[float, float] | None:
    """Otsu's threshold of the saturation of the not-dark pixels, and the mean of the
    values at or below it; None when they do not vary. Equal to
    ``skimage.filters.threshold_otsu`` of those values: one pass counts the pixels per
    (max, min) pair, whose saturations are exact, and the 256-bin histogram (bin edges:
    the values' own range) is made from those counts."""
    per_code = np.zeros(256 * 256, np.int64)
    for r0 in range(0, rgb.shape[0], band_rows):
        code, keep = _codes(rgb[r0 : r0 + band_rows])
        per_code += np.bincount(code[keep], minlength=per_code.size)
    present = np.flatnonzero(per_code)
    if present.size == 0:
        return None
    values, counts = _saturation_table().ravel()[present], per_code[present]
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return None
    hist = np.histogram(values, bins=256, range=(lo, hi), weights=counts)[0]
    edges = np.linspace(lo, hi, 257)  # what np.histogram uses for range=(lo, hi)
    centers = (edges[:-1] + edges[1:]) / 2
    otsu = float(filters.threshold_otsu(hist=(hist.astype(np.int64), centers)))
    low = values <= otsu
    below = int(counts[low].sum())
    return otsu, (float((values[low] * counts[low]).sum()) / below if below else np.nan)


def tissue_mask_from_rgb(
    rgb: np.ndarray, mpp: float, params: TissueParams = TissueParams(), band_rows: int = 256
) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of an RGB thumbnail at ``mpp`` µm/px, and the threshold used.

    Otsu on the saturation of the not-dark pixels, kept if the pixels below it look
    like background (else the floor); then closing and removal of small holes and
    objects. Two passes over bands of ``band_rows`` rows (the threshold's counts, then
    the mask) and lookups instead of a float HSV image: only the mask is thumbnail-sized.
    """
    thr = params.saturation_floor
    found = _otsu_threshold(rgb, band_rows)
    if found is not None:
        otsu, low_mean = found
        if np.isfinite(low_mean) and low_mean <= params.background_max:
            thr = max(otsu, params.saturation_floor)
    above = (_saturation_table() > thr).ravel()
    mask = np.empty(rgb.shape[:2], bool)
    for r0 in range(0, rgb.shape[0], band_rows):
        code, keep = _codes(rgb[r0 : r0 + band_rows])
        mask[r0 : r0 + band_rows] = above[code] & keep
    px_area = mpp * mpp
    radius = max(1, round(params.closing_um / mpp / 2))
    mask = morphology.closing(mask, morphology.disk(radius))
    # Holes: the small components of the background (those touching the border too).
    np.logical_not(mask, out=mask)
    remove_small_components(mask, max(1, round(params.max_hole_um2 / px_area)), band_rows)
    np.logical_not(mask, out=mask)
    remove_small_components(mask, max(1, round(params.min_object_um2 / px_area)), band_rows)
    return mask, thr


def remove_small_components(mask: np.ndarray, max_size: int, band_rows: int = 256) -> None:
    """Clear, in place, the 4-connected components of ``mask`` of at most ``max_size``
    pixels: skimage's ``remove_small_objects(mask, max_size=max_size)``, whose int64
    copy of the labels (for ``np.bincount``) is avoided by counting in pieces and
    clearing band by band, so an int32 label image is the only thumbnail-sized
    temporary."""
    labels = np.empty(mask.shape, np.int32)
    n = int(ndimage.label(mask, output=labels))
    small = count_values(labels, n + 1) <= max_size
    small[0] = False
    for r0 in range(0, mask.shape[0], band_rows):
        mask[r0 : r0 + band_rows][small[labels[r0 : r0 + band_rows]]] = False


def detect_tissue(
    reader: SlideReader,
    params: TissueParams = TissueParams(),
    *,
    thumbnail: np.ndarray | None = None,
) -> TissueMask:
    """Find tissue on a thumbnail of ``reader`` at ``params.thumb_mpp``.

    ``thumbnail``: that thumbnail (``reader.thumbnail(params.thumb_mpp)``) if the caller
    has already read it.
    """
    mpp0 = reader.mpp[0]
    thumb = thumbnail if thumbnail is not None else reader.thumbnail(params.thumb_mpp)
    w0 = reader.level_dimensions[0][0]
    downsample = w0 / thumb.shape[1]
    mask, thr = tissue_mask_from_rgb(thumb, mpp0 * downsample, params)
    polys = mask_to_polygons(mask, scale=downsample)
    log.info(
        "%s: tissue %.1f%% of the slide (threshold %.3f)", reader.path.name, 100 * mask.mean(), thr
    )
    return TissueMask(mask=mask, downsample=downsample, polygons=polys, threshold=thr)
