"""Deterministic stain-rule labels for real H&E images without annotations.

A sanity check on real texture, not ground truth: every pixel is labelled

- 0 background: little light absorbed (optical density summed over RGB below
  ``od_background``), i.e. glass;
- 2 haematoxylin-dense: tissue whose haematoxylin density (colour deconvolution,
  Ruifrok & Johnston's H&E vectors as in ``skimage.color.rgb2hed``) is above the
  image's Otsu threshold of haematoxylin over its tissue pixels (values clipped to
  their 1st-99th percentiles first; nuclei, dense epithelium);
- 1 eosin: the rest of the tissue (stroma, cytoplasm).

A small majority (mode) filter removes single-pixel speckle. The rule depends only
on the image, so the same image always gives the same labels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import color, filters

from wsiseg.train.datasets import ArraySource

__all__ = ["STAIN_CLASSES", "stain_rule_labels", "stain_rule_source"]

#: Class names of `stain_rule_labels`, by id.
STAIN_CLASSES: tuple[str, ...] = ("background", "eosin", "haematoxylin")


def stain_rule_labels(
    rgb: np.ndarray, *, od_background: float = 0.25, smooth_px: int = 3
) -> np.ndarray:
    """uint8 labels [H, W] (0 background, 1 eosin, 2 haematoxylin) of an RGB uint8 image."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {rgb.shape}")
    img = rgb.astype(np.float32)
    od = -np.log((img + 1.0) / 256.0).sum(-1)
    tissue = od >= od_background
    labels = np.zeros(rgb.shape[:2], np.uint8)
    if not tissue.any():
        return labels
    h = color.rgb2hed(rgb)[..., 0]
    # Otsu on the central 98 % of values: a few extreme pixels (pen, folds, pigment)
    # would otherwise pull the threshold far into the tail.
    lo, hi = np.percentile(h[tissue], [1, 99])
    values = np.clip(h[tissue], lo, hi)
    thr = filters.threshold_otsu(values) if hi > lo else np.inf
    labels[tissue] = 1
    labels[tissue & (h > thr)] = 2
    if smooth_px > 1:
        labels = _mode_filter(labels, smooth_px, n_classes=len(STAIN_CLASSES))
    return labels


def _mode_filter(labels: np.ndarray, size: int, n_classes: int) -> np.ndarray:
    """The most frequent class in each ``size`` x ``size`` window (ties: lowest id)."""
    counts = np.stack(
        [ndimage.uniform_filter((labels == k).astype(np.float32), size) for k in range(n_classes)]
    )
    out: np.ndarray = counts.argmax(0).astype(np.uint8)
    return out


def stain_rule_source(name: str, rgb: np.ndarray, mpp: float) -> ArraySource:
    """An `ArraySource` of ``rgb`` labelled by `stain_rule_labels`."""
    return ArraySource(name, rgb, stain_rule_labels(rgb), mpp)
