"""Draw training regions from tissue, and augment them."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from wsiseg.train.datasets import LabeledSource
from wsiseg.train.losses import IGNORE_INDEX

__all__ = ["RegionDrawer", "augment", "to_tensors", "grid_boxes"]

log = logging.getLogger(__name__)


class RegionDrawer:
    """Random square regions of ``region_px`` at ``task_mpp``, centred on tissue.

    Tissue is where the labels are neither background (0) nor ignored, on each
    source's label thumbnail; a source without tissue is drawn uniformly.
    """

    def __init__(self, sources: Sequence[LabeledSource], region_px: int, task_mpp: float) -> None:
        if not sources:
            raise ValueError("no sources to draw regions from")
        self.sources = list(sources)
        self.region_px = region_px
        self.task_mpp = task_mpp
        self._tissue: list[tuple[np.ndarray, float]] = []
        for src in self.sources:
            thumb, scale = src.label_thumbnail()
            ys, xs = np.nonzero((thumb != 0) & (thumb != IGNORE_INDEX))
            if ys.size == 0:
                ys, xs = np.nonzero(np.ones_like(thumb, dtype=bool))
            self._tissue.append((np.stack([xs, ys], 1), scale))

    def box_px(self, source: LabeledSource) -> int:
        """Side of a region in the source's level-0 pixels."""
        return max(1, round(self.region_px * self.task_mpp / source.mpp))

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` regions: uint8 images [n, R, R, 3] and labels [n, R, R]."""
        r = self.region_px
        images = np.empty((n, r, r, 3), np.uint8)
        labels = np.empty((n, r, r), np.uint8)
        for i in range(n):
            k = int(rng.integers(len(self.sources)))
            src = self.sources[k]
            pts, scale = self._tissue[k]
            cx, cy = pts[int(rng.integers(len(pts)))]
            side = self.box_px(src)
            x = int((cx + rng.random()) * scale - side / 2)
            y = int((cy + rng.random()) * scale - side / 2)
            images[i], labels[i] = src.read(x, y, side, side, (r, r))
        return images, labels


def grid_boxes(source: LabeledSource, side: int) -> list[tuple[int, int]]:
    """Top-left corners of a non-overlapping grid of ``side`` boxes that touch tissue."""
    thumb, scale = source.label_thumbnail()
    tissue = (thumb != 0) & (thumb != IGNORE_INDEX)
    w, h = source.size
    out = []
    for y in range(0, h, side):
        for x in range(0, w, side):
            ty0, tx0 = int(y / scale), int(x / scale)
            ty1, tx1 = max(ty0 + 1, int((y + side) / scale)), max(tx0 + 1, int((x + side) / scale))
            if tissue[ty0:ty1, tx0:tx1].any():
                out.append((x, y))
    return out


def augment(
    images: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random flips and 90° rotations, applied to images and labels alike."""
    out_i, out_l = np.empty_like(images), np.empty_like(labels)
    for i in range(images.shape[0]):
        img, lab = images[i], labels[i]
        k = int(rng.integers(4))
        img, lab = np.rot90(img, k), np.rot90(lab, k)
        if rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        out_i[i], out_l[i] = img, lab
    return out_i, out_l


def to_tensors(
    images: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator | None = None,
    jitter: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """uint8 arrays -> float [B,3,H,W] in [0, 1] (with optional colour jitter) and long labels."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if rng is not None and jitter > 0:
        b = x.shape[0]
        gain = torch.from_numpy(rng.uniform(1 - jitter, 1 + jitter, (b, 3, 1, 1))).float()
        bias = torch.from_numpy(rng.uniform(-jitter / 2, jitter / 2, (b, 1, 1, 1))).float()
        x = (x * gain + bias).clamp_(0.0, 1.0)
    y = torch.from_numpy(np.ascontiguousarray(labels)).long()
    return x, y
