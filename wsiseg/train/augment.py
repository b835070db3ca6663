"""Augmentation for real tissue: what differs between labs, scanners and sections.

`augment_real` applies, per region and in this order: a 90° rotation and flip, a small
scale change about the centre (image bilinear, labels nearest, both mirrored at the
border), stain jitter in H&E(-DAB) optical-density space (per-stain scale and shift of
the concentrations), brightness and contrast, and a Gaussian blur. Every random number
comes from the caller's `numpy.random.Generator`, drawn in a fixed order whatever is
applied, so a seed gives the same batch every time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from wsiseg.colour import HED_FROM_RGB_OD, RGB_OD_FROM_HED, od_to_rgb, rgb_to_od

__all__ = ["RealAugment", "augment_real", "hed_jitter", "rescale"]


@dataclass(frozen=True)
class RealAugment:
    """Strengths and probabilities of `augment_real` (ranges are uniform)."""

    p_scale: float = 0.5
    scale: tuple[float, float] = (0.9, 1.1)
    p_stain: float = 0.8
    stain_scale: float = 0.08  # each stain's concentration x U(1 - s, 1 + s)
    stain_shift: float = 0.02  # ... + U(-b, b) (OD units)
    p_light: float = 0.5
    brightness: float = 0.05  # + U(-b, b) x 255
    contrast: float = 0.1  # about the image mean, x U(1 - c, 1 + c)
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.2)  # pixels


def hed_jitter(rgb: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Scale and shift the H, E and DAB concentrations of a uint8 RGB image."""
    hed = rgb_to_od(rgb).astype(np.float64) @ HED_FROM_RGB_OD
    hed = hed * np.asarray(scale, np.float64) + np.asarray(shift, np.float64)
    return od_to_rgb(hed @ RGB_OD_FROM_HED)


def rescale(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Zoom by ``factor`` about the centre, same size out (image bilinear, labels nearest)."""
    h, w = labels.shape
    inv = 1.0 / factor
    cy, cx = (h - 1) / 2, (w - 1) / 2
    off = (cy - cy * inv, cx - cx * inv)
    img = ndimage.affine_transform(
        image.astype(np.float32),
        (inv, inv, 1.0),
        offset=(off[0], off[1], 0.0),
        order=1,
        mode="mirror",
    )
    lab = ndimage.affine_transform(labels, (inv, inv), offset=off, order=0, mode="mirror")
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), lab.astype(labels.dtype)


def _one(
    img: np.ndarray, lab: np.ndarray, rng: np.random.Generator, p: RealAugment
) -> tuple[np.ndarray, np.ndarray]:
    # Every draw happens whether or not its transform applies: the stream stays aligned.
    k, flip = int(rng.integers(4)), rng.random() < 0.5
    do = rng.random(4) < (p.p_scale, p.p_stain, p.p_light, p.p_blur)
    factor = rng.uniform(*p.scale)
    s_scale = rng.uniform(1 - p.stain_scale, 1 + p.stain_scale, 3)
    s_shift = rng.uniform(-p.stain_shift, p.stain_shift, 3)
    bright = rng.uniform(-p.brightness, p.brightness) * 255.0
    contrast = rng.uniform(1 - p.contrast, 1 + p.contrast)
    sigma = rng.uniform(*p.blur_sigma)

    img, lab = np.rot90(img, k), np.rot90(lab, k)
    if flip:
        img, lab = img[:, ::-1], lab[:, ::-1]
    img, lab = np.ascontiguousarray(img), np.ascontiguousarray(lab)
    if do[0]:
        img, lab = rescale(img, lab, factor)
    if do[1]:
        img = hed_jitter(img, s_scale, s_shift)
    if do[2] or do[3]:
        x = img.astype(np.float32)
        if do[2]:
            x = (x - x.mean()) * contrast + x.mean() + bright
        if do[3]:
            x = ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0.0), mode="mirror")
        img = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return img, lab


def augment_real(
    images: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    params: RealAugment | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Augment uint8 images [B,H,W,3] and labels [B,H,W] (square regions) alike."""
    p = params or RealAugment()
    out_i, out_l = np.empty_like(images), np.empty_like(labels)
    for i in range(images.shape[0]):
        out_i[i], out_l[i] = _one(images[i], labels[i], rng, p)
    return out_i, out_l
