"""Colour of brightfield stains: optical density, the H&E(-DAB) basis, colour statistics.

Optical density (OD) is ``-ln((I + 1) / 256)`` per RGB channel of 8-bit intensities, so
white (255) is 0 and stains add up linearly (Beer-Lambert). Stain concentrations are OD
expressed in the haematoxylin / eosin / DAB basis of Ruifrok and Johnston (Anal Quant Cytol
Histol 23, 2001). Colour statistics (`colour_stats`) summarise the OD of tissue pixels of a
set of images; a model stores those of its training images, and a slide far from them gets
a warning before it is segmented.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "HED_FROM_RGB_OD",
    "RGB_OD_FROM_HED",
    "TISSUE_OD",
    "ColourStats",
    "colour_stats",
    "colour_distance",
    "rgb_to_od",
    "od_to_rgb",
]

#: Rows: optical density of one unit of haematoxylin, eosin and DAB in R, G, B (unit length).
RGB_OD_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
RGB_OD_FROM_HED /= np.linalg.norm(RGB_OD_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB_OD = np.linalg.inv(RGB_OD_FROM_HED)

#: A pixel is tissue when its mean OD over R, G, B exceeds this (about 85 % transmission).
TISSUE_OD = 0.15
_MAX_PIXELS = 20000  # per image, taken on a regular stride


def rgb_to_od(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [..., 3] -> float32 optical density (0 for white)."""
    od: np.ndarray = (-np.log((rgb.astype(np.float32) + 1.0) / 256.0)).astype(np.float32)
    return od


def od_to_rgb(od: np.ndarray) -> np.ndarray:
    """Optical density [..., 3] -> uint8 RGB (clipped, rounded)."""
    rgb = 256.0 * np.exp(-od.astype(np.float64)) - 1.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ColourStats:
    """Mean and standard deviation of the OD of tissue pixels, per RGB channel."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixels: int
    images: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": "optical density -ln((I+1)/256) of tissue pixels (mean OD > 0.15), RGB",
            "mean": [round(v, 5) for v in self.mean],
            "std": [round(v, 5) for v in self.std],
            "pixels": self.pixels,
            "images": self.images,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ColourStats:
        """Read the dict of `to_dict`; raises ValueError/KeyError/TypeError if malformed."""
        mean = tuple(float(v) for v in data["mean"])
        std = tuple(float(v) for v in data["std"])
        if len(mean) != 3 or len(std) != 3 or not all(np.isfinite(mean + std)):
            raise ValueError("colour statistics need three finite means and deviations")
        return cls(mean, std, int(data.get("pixels", 0)), int(data.get("images", 0)))  # type: ignore[arg-type]


def tissue_od(rgb: np.ndarray, max_pixels: int = _MAX_PIXELS) -> np.ndarray:
    """OD [N, 3] of up to ``max_pixels`` tissue pixels of one RGB image (regular stride)."""
    od = rgb_to_od(np.asarray(rgb)[..., :3]).reshape(-1, 3)
    tissue: np.ndarray = od[od.mean(axis=1) > TISSUE_OD]
    if len(tissue) > max_pixels:
        tissue = tissue[:: int(np.ceil(len(tissue) / max_pixels))]
    return tissue


def colour_stats(images: Iterable[np.ndarray]) -> ColourStats | None:
    """Pooled OD statistics of the tissue pixels of ``images`` (None without any tissue)."""
    parts = [tissue_od(img) for img in images]
    n_images = len(parts)
    parts = [p for p in parts if len(p)]
    if not parts:
        return None
    od = np.concatenate(parts).astype(np.float64)
    mean = od.mean(axis=0)
    std = od.std(axis=0)
    return ColourStats(
        (float(mean[0]), float(mean[1]), float(mean[2])),
        (float(std[0]), float(std[1]), float(std[2])),
        int(len(od)),
        n_images,
    )


def colour_distance(stats: ColourStats, reference: ColourStats) -> float:
    """Largest per-channel gap between mean ODs, in units of the reference's pixel spread."""
    gaps = [
        abs(m - r) / max(s, 0.05)
        for m, r, s in zip(stats.mean, reference.mean, reference.std, strict=True)
    ]
    return float(max(gaps))
