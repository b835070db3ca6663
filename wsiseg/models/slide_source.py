"""`SlideRegionSource`: the `SampleSource` of regions read from a slide pyramid.

A region is a square box in level-0 pixels that the model sees as ``region_px``
pixels at its task resolution. Only what the samples need is decoded:

- the low-res view comes from the slide level nearest to the view's pixel size;
- each sample's level is the coarsest pyramid level whose pixel is no larger than
  its local spacing (`wsiseg.models.mipmap.select_level`); the finest level in use
  is decoded only in the blocks that hold its samples (plus one block of margin),
  the next level in use for the whole region; the in-memory mip-map built on that
  canvas then reads every sample at its own level with its pre-filter, exactly as
  in training (`wsiseg.models.mipmap`).

``pixels_decoded`` counts the slide pixels read, the first-class cost metric.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from wsiseg.io.reader import SlideReader
from wsiseg.models.mipmap import build_mipmap, mipmap_downsamples, sample_image, select_level
from wsiseg.models.precision import to_device
from wsiseg.models.sampling import grid_spacing

__all__ = ["SlideRegionSource", "Box"]

log = logging.getLogger(__name__)

#: A region: (x0, y0, side) in level-0 pixel-edge coordinates.
Box = tuple[float, float, float]

#: Blocks (level pixels) in which the finest needed level is decoded.
_BLOCK_PX = 32
#: How far past a sample its bilinear read and pre-filter reach (level pixels).
_MARGIN_PX = 6


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
        self.read_seconds = 0.0
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
        return self._timed_read(level, ix0, iy0, w, h), ix0, iy0

    def _timed_read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        t = time.perf_counter()
        rgb = self.reader.read_region(level, x, y, w, h)
        self.read_seconds += time.perf_counter() - t
        return rgb

    @staticmethod
    def _to_tensor(rgb: np.ndarray) -> Tensor:
        return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)

    def view(self, size_hw: tuple[int, int]) -> Tensor:
        """Each region, anti-aliased, at ``size_hw`` (read from the nearest finer level;
        on the CPU)."""
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
        """Samples at ``grid`` (region-normalised, align_corners=True), per region.

        Computed on the CPU, where the decoded pixels and their mip-maps are, from a CPU
        copy of the grid; returned on the grid's device (through pinned memory to CUDA).
        """
        device = grid.device
        grid = grid.detach().float().cpu()
        r = self.region_hw[0]
        downsamples = self.reader.level_downsamples
        out = []
        for b, box in enumerate(self.boxes):
            x0, y0, side = box
            t = side / r  # level-0 pixels per task pixel
            spacing0 = grid_spacing(grid[b : b + 1], (r, r))[0] * t
            level_of = select_level(spacing0, downsamples)
            used = sorted(set(level_of.flatten().tolist()))
            level = used[0]
            ds = downsamples[level]
            # region-normalised g -> task pixel u -> level-0 edge X -> level centre q.
            u = (grid[b].float() + 1.0) * 0.5 * (r - 1)
            fx, fy = (
                (x0 + (u[..., 0] + 0.5) * t) / ds - 0.5,
                (y0 + (u[..., 1] + 0.5) * t) / ds - 0.5,
            )
            if len(used) == 1:
                rgb, ix0, iy0 = self._read_box(box, level)
                img = self._to_tensor(rgb)
            else:
                img, ix0, iy0 = self._sparse_canvas(box, level, used[1], fx, fy, level_of == level)
            n_h, n_w = img.shape[-2:]
            qx, qy = fx - ix0, fy - iy0
            local = torch.stack([2 * qx / (n_w - 1) - 1, 2 * qy / (n_h - 1) - 1], dim=-1)
            mip = build_mipmap(img.unsqueeze(0))
            out.append(sample_image(mip, local.unsqueeze(0), mipmap_downsamples(mip)))
        return to_device(torch.cat(out), device)

    def _sparse_canvas(
        self, box: Box, fine: int, coarse: int, fx: Tensor, fy: Tensor, at_fine: Tensor
    ) -> tuple[Tensor, int, int]:
        """The region at level ``fine``, decoded only in blocks holding fine samples.

        Elsewhere the canvas is the region read at level ``coarse`` and upsampled: only
        samples read from coarser mip levels (which average it anyway) look there.
        """
        x0, y0, side = box
        ds = self.reader.level_downsamples[fine]
        ix0, iy0 = math.floor(x0 / ds), math.floor(y0 / ds)
        n_w = max(math.ceil((x0 + side) / ds) - ix0, 2)
        n_h = max(math.ceil((y0 + side) / ds) - iy0, 2)
        coarse_rgb, cx0, cy0 = self._read_box(box, coarse)
        cds = self.reader.level_downsamples[coarse]
        # Fine pixel i (centre (i + ix0 + 0.5) ds in level 0) in coarse-read pixels.
        cx = ((torch.arange(n_w) + ix0 + 0.5) * ds / cds - 0.5 - cx0).clamp(
            0, coarse_rgb.shape[1] - 1
        )
        cy = ((torch.arange(n_h) + iy0 + 0.5) * ds / cds - 0.5 - cy0).clamp(
            0, coarse_rgb.shape[0] - 1
        )
        coarse_t = self._to_tensor(coarse_rgb).unsqueeze(0)
        gx = 2 * cx / max(coarse_rgb.shape[1] - 1, 1) - 1
        gy = 2 * cy / max(coarse_rgb.shape[0] - 1, 1) - 1
        sgrid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1).unsqueeze(0)
        canvas = torch.nn.functional.grid_sample(
            coarse_t, sgrid, mode="bilinear", padding_mode="border", align_corners=True
        )[0]
        blk = _BLOCK_PX
        nbx, nby = math.ceil(n_w / blk), math.ceil(n_h / blk)
        need = torch.zeros(nby, nbx, dtype=torch.bool)
        # Bilinear reads and the pre-filter (sigma < 2 level pixels for these samples)
        # look up to _MARGIN_PX past a sample.
        for dx in (-_MARGIN_PX, _MARGIN_PX):
            for dy in (-_MARGIN_PX, _MARGIN_PX):
                bx = ((fx[at_fine] - ix0 + dx) // blk).long().clamp(0, nbx - 1)
                by = ((fy[at_fine] - iy0 + dy) // blk).long().clamp(0, nby - 1)
                need[by, bx] = True
        lw, lh = self.reader.level_dimensions[fine]
        for j, i in torch.nonzero(need).tolist():
            w = min(blk, n_w - i * blk)
            h = min(blk, n_h - j * blk)
            bx0, by0 = ix0 + i * blk, iy0 + j * blk
            if bx0 >= lw or by0 >= lh or bx0 + w <= 0 or by0 + h <= 0:
                continue  # outside the slide: the canvas is already white there
            rgb = self._timed_read(fine, bx0, by0, w, h)
            self.pixels_decoded += w * h
            canvas[:, j * blk : j * blk + h, i * blk : i * blk + w] = self._to_tensor(rgb)
        return canvas, ix0, iy0

    def crop(self, y: int, x: int, h: int, w: int) -> Tensor:
        """Full-resolution window of every region (at the task resolution; on the CPU)."""
        if self._full is None:
            r = self.region_hw[0]
            full = []
            for box in self.boxes:
                level = _best_level(self.reader, box[2] / r)
                rgb, ix0, iy0 = self._read_box(box, level)
                ds = self.reader.level_downsamples[level]
                x0, y0, side = box
                crop = (
                    x0 / ds - ix0,
                    y0 / ds - iy0,
                    (x0 + side) / ds - ix0,
                    (y0 + side) / ds - iy0,
                )
                img = Image.fromarray(rgb).resize((r, r), Image.Resampling.BOX, box=crop)
                full.append(self._to_tensor(np.asarray(img)))
            self._full = torch.stack(full)
        return self._full[:, :, y : y + h, x : x + w]
