"""Tissue detection on a thumbnail: Otsu on saturation with a floor, morphology, polygons.

The floor keeps an image that is tissue everywhere in one piece (Otsu alone would
split it in two); a minimum object area and hole filling remove dust and lumina.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from shapely.geometry import MultiPolygon
from skimage import filters, morphology

from wsiseg.geometry import mask_to_polygons
from wsiseg.io.reader import SlideReader

__all__ = ["TissueParams", "TissueMask", "saturation", "tissue_mask_from_rgb", "detect_tissue"]

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


def _band_saturation(band: np.ndarray) -> np.ndarray:
    """HSV saturation (float64) of some rows of a uint8 RGB image, as skimage computes it."""
    f = band.astype(np.float64) * (1 / 255)  # as img_as_float
    v = f.max(axis=-1)
    delta = np.ptp(f, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s: np.ndarray = delta / v
    s[delta == 0.0] = 0.0
    return s


def saturation(rgb: np.ndarray, band_rows: int = 256) -> np.ndarray:
    """HSV saturation of a uint8 RGB image, float64, equal to
    ``skimage.color.rgb2hsv(rgb)[..., 1]`` but computed in bands of rows, so the float
    temporaries are a band's size (a whole-slide thumbnail's HSV would be gigabytes)."""
    out = np.empty(rgb.shape[:2], np.float64)
    for r0 in range(0, rgb.shape[0], band_rows):
        out[r0 : r0 + band_rows] = _band_saturation(rgb[r0 : r0 + band_rows])
    return out


def _saturation_bands(
    rgb: np.ndarray, band_rows: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first row, saturation, not-dark) of each band of rows, computed when reached:
    the whole-thumbnail float array is never held."""
    for r0 in range(0, rgb.shape[0], band_rows):
        band = rgb[r0 : r0 + band_rows]
        # Near-black pixels (pen, scanner borders) have high saturation noise: not tissue.
        yield r0, _band_saturation(band), band.max(axis=-1) >= 40


def _otsu_threshold(rgb: np.ndarray, band_rows: int) -> tuple[float, float] | None:
    """Otsu's threshold of the saturation of the not-dark pixels, and the mean of the
    values at or below it; None when they do not vary. Equal to
    ``skimage.filters.threshold_otsu`` of those values, with their 256-bin histogram
    counted band by band (the same bin edges: the values' own range)."""
    lo, hi, n = np.inf, -np.inf, 0
    for _, s_band, k_band in _saturation_bands(rgb, band_rows):
        values = s_band[k_band]
        if values.size:
            lo, hi, n = min(lo, float(values.min())), max(hi, float(values.max())), n + values.size
    if n == 0 or not hi > lo:
        return None
    counts = np.zeros(256, np.int64)
    edges = np.linspace(lo, hi, 257)  # what np.histogram uses for range=(lo, hi)
    total, below = 0.0, 0
    for _, s_band, k_band in _saturation_bands(rgb, band_rows):
        values = s_band[k_band]
        counts += np.histogram(values, bins=256, range=(lo, hi))[0]
    centers = (edges[:-1] + edges[1:]) / 2
    otsu = float(filters.threshold_otsu(hist=(counts, centers)))
    for _, s_band, k_band in _saturation_bands(rgb, band_rows):
        low = s_band[k_band]
        low = low[low <= otsu]
        total, below = total + float(low.sum()), below + low.size
    return otsu, (total / below if below else np.nan)


def tissue_mask_from_rgb(
    rgb: np.ndarray, mpp: float, params: TissueParams = TissueParams(), band_rows: int = 256
) -> tuple[np.ndarray, float]:
    """Boolean tissue mask of an RGB thumbnail at ``mpp`` µm/px, and the threshold used.

    Otsu on the saturation of the not-dark pixels, kept if the pixels below it look
    like background (else the floor); then closing and removal of small holes and
    objects. The saturation is computed band by band of ``band_rows`` rows in each
    pass (the threshold's three, the mask's one): only the boolean mask is
    thumbnail-sized.
    """
    thr = params.saturation_floor
    found = _otsu_threshold(rgb, band_rows)
    if found is not None:
        otsu, low_mean = found
        if np.isfinite(low_mean) and low_mean <= params.background_max:
            thr = max(otsu, params.saturation_floor)
    mask = np.empty(rgb.shape[:2], bool)
    for r0, s_band, k_band in _saturation_bands(rgb, band_rows):
        mask[r0 : r0 + band_rows] = (s_band > thr) & k_band
    px_area = mpp * mpp
    radius = max(1, round(params.closing_um / mpp / 2))
    mask = morphology.closing(mask, morphology.disk(radius))
    mask = morphology.remove_small_holes(
        mask, max_size=max(1, round(params.max_hole_um2 / px_area))
    )
    mask = morphology.remove_small_objects(
        mask, max_size=max(1, round(params.min_object_um2 / px_area))
    )
    return mask, thr


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
