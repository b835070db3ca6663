"""`SlideRegionSource`: the `SampleSource` of regions read from a slide pyramid.

A region is a square box in level-0 pixels that the model sees as ``region_px``
pixels at its task resolution. Only what the samples need is decoded:

- the low-res view comes from the slide level nearest to the view's pixel size;
- for the samples, the finest pyramid level any sample needs is chosen (the
  coarsest level whose pixel is no larger than the smallest local sample spacing);
  the region is read at that level only, and the in-memory mip-map built on it picks
  each sample's own level and pre-filter, exactly as in training
  (`wsiseg.models.mipmap`).

``pixels_decoded`` counts the slide pixels read, the first-class cost metric.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from wsiseg.io.reader import SlideReader
from wsiseg.models.mipmap import build_mipmap, mipmap_downsamples, sample_image, select_level
from wsiseg.models.sampling import grid_spacing

__all__ = ["SlideRegionSource", "Box"]

log = logging.getLogger(__name__)

#: A region: (x0, y0, side) in level-0 pixel-edge coordinates.
Box = tuple[float, float, float]


def _best_level(reader: SlideReader, downsample: float) -> int:
    best = 0
    for i, d in enumerate(reader.level_downsamples):
        if d <= downsample * (1 + 1e-4):
            best = i
    return best


class SlideRegionSource:
    """Regions of one slide behind the `SampleSource` interface (float RGB in [0, 1])."""

    def __init__(self, reader: SlideReader, boxes: Sequence[Box], region_px: int) -> None:
        self.reader = reader
        self.boxes = list(boxes)
        self.batch = len(self.boxes)
        self.region_hw = (region_px, region_px)
        self.pixels_decoded = 0
        self._full: Tensor | None = None

    # -- reading -------------------------------------------------------------------
    def _read_box(self, box: Box, level: int) -> tuple[np.ndarray, int, int]:
        """Whole pixels of ``level`` covering ``box``: (rgb, ix0, iy0) in level pixels."""
        x0, y0, side = box
        ds = self.reader.level_downsamples[level]
        ix0, iy0 = math.floor(x0 / ds), math.floor(y0 / ds)
        ix1, iy1 = math.ceil((x0 + side) / ds), math.ceil((y0 + side) / ds)
        w, h = max(ix1 - ix0, 2), max(iy1 - iy0, 2)
        self.pixels_decoded += w * h
        return self.reader.read_region(level, ix0, iy0, w, h), ix0, iy0

    @staticmethod
    def _to_tensor(rgb: np.ndarray) -> Tensor:
        return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)

    def view(self, size_hw: tuple[int, int]) -> Tensor:
        """Each region, anti-aliased, at ``size_hw`` (read from the nearest finer level)."""
        out = []
        for box in self.boxes:
            level = _best_level(self.reader, box[2] / max(size_hw))
            rgb, ix0, iy0 = self._read_box(box, level)
            ds = self.reader.level_downsamples[level]
            x0, y0, side = box
            crop = (x0 / ds - ix0, y0 / ds - iy0, (x0 + side) / ds - ix0, (y0 + side) / ds - iy0)
            img = Image.fromarray(rgb).resize(
                (size_hw[1], size_hw[0]), Image.Resampling.BOX, box=crop
            )
            out.append(self._to_tensor(np.asarray(img)))
        return torch.stack(out)

    def sample(self, grid: Tensor) -> Tensor:
        """Samples at ``grid`` (region-normalised, align_corners=True), per region."""
        r = self.region_hw[0]
        out = []
        for b, box in enumerate(self.boxes):
            x0, y0, side = box
            t = side / r  # level-0 pixels per task pixel
            spacing0 = grid_spacing(grid[b : b + 1], (r, r)) * t
            level = int(select_level(spacing0.min().reshape(1), self.reader.level_downsamples))
            ds = self.reader.level_downsamples[level]
            rgb, ix0, iy0 = self._read_box(box, level)
            img = self._to_tensor(rgb).unsqueeze(0)
            n_h, n_w = img.shape[-2:]
            # region-normalised g -> task pixel u -> level-0 edge X -> level centre q.
            g = grid[b : b + 1].float()
            u = (g + 1.0) * 0.5 * (r - 1)
            qx = (x0 + (u[..., 0] + 0.5) * t) / ds - 0.5 - ix0
            qy = (y0 + (u[..., 1] + 0.5) * t) / ds - 0.5 - iy0
            local = torch.stack([2 * qx / (n_w - 1) - 1, 2 * qy / (n_h - 1) - 1], dim=-1)
            mip = build_mipmap(img)
            out.append(sample_image(mip, local.to(img.dtype), mipmap_downsamples(mip)))
        return torch.cat(out)

    def crop(self, y: int, x: int, h: int, w: int) -> Tensor:
        """Full-resolution window of every region (at the task resolution)."""
        if self._full is None:
            r = self.region_hw[0]
            full = []
            for box in self.boxes:
                level = _best_level(self.reader, box[2] / r)
                rgb, ix0, iy0 = self._read_box(box, level)
                ds = self.reader.level_downsamples[level]
                x0, y0, side = box
                crop = (x0 / ds - ix0, y0 / ds - iy0, (x0 + side) / ds - ix0, (y0 + side) / ds - iy0)
                img = Image.fromarray(rgb).resize((r, r), Image.Resampling.BOX, box=crop)
                full.append(self._to_tensor(np.asarray(img)))
            self._full = torch.stack(full)
        return self._full[:, :, y : y + h, x : x + w]


