"""`DeformSeg`: low-res view -> saliency -> grid -> samples -> segmenter -> back-projection.

One class serves the three samplers, so the learned model and its baselines share
architecture, data and code paths:

- ``learned`` - the saliency net predicts a density; the Recasens sampler turns it into
  a grid; predictions are back-projected by inverting the grid;
- ``uniform`` - the identity grid (plain anti-aliased downsampling); logits are
  upsampled bilinearly;
- ``tiled`` - the segmenter runs on overlapping full-resolution windows of the region
  (the accuracy upper bound and the speed baseline).

Pixels come from a `SampleSource` (in memory here; the whole-slide pipeline reads the
slide pyramid with the same mip-map logic).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsiseg.models.backproject import backproject
from wsiseg.models.config import ModelConfig
from wsiseg.models.mipmap import build_mipmap, mipmap_downsamples, sample_image
from wsiseg.models.saliency import SaliencyNet
from wsiseg.models.sampling import identity_grid, saliency_to_grid
from wsiseg.models.segmenters import build_segmenter

__all__ = ["SampleSource", "MemorySource", "DeformSeg", "ForwardOut", "tile_windows"]

log = logging.getLogger(__name__)


class SampleSource(Protocol):
    """Where a region's pixels come from: float RGB in [0, 1], ``[B, 3, ...]``."""

    region_hw: tuple[int, int]
    batch: int

    def view(self, size_hw: tuple[int, int]) -> Tensor:
        """The whole region, anti-aliased, at ``size_hw``."""
        ...

    def sample(self, grid: Tensor) -> Tensor:
        """Bilinear, anti-aliased samples at ``grid`` ([B, H, W, 2], align_corners=True)."""
        ...

    def crop(self, y: int, x: int, h: int, w: int) -> Tensor:
        """Full-resolution window of the region."""
        ...


class MemorySource:
    """A batch of in-memory regions ``[B, 3, H, W]`` (float in [0, 1]) behind a mip-map."""

    def __init__(self, images: Tensor, factor: int = 2) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        self.images = images.float()
        self.region_hw = (int(images.shape[2]), int(images.shape[3]))
        self.batch = int(images.shape[0])
        self._factor = factor
        self._mip: list[Tensor] | None = None

    @property
    def mipmap(self) -> list[Tensor]:
        if self._mip is None:
            self._mip = build_mipmap(self.images, factor=self._factor)
        return self._mip

    @property
    def downsamples(self) -> list[float]:
        return mipmap_downsamples(self.mipmap, self._factor)

    def view(self, size_hw: tuple[int, int]) -> Tensor:
        grid = identity_grid(size_hw, batch=self.images.shape[0], device=self.images.device)
        return self.sample(grid)

    def sample(self, grid: Tensor) -> Tensor:
        return sample_image(self.mipmap, grid, self.downsamples)

    def crop(self, y: int, x: int, h: int, w: int) -> Tensor:
        return self.images[:, :, y : y + h, x : x + w]


@dataclass
class ForwardOut:
    """What one pass over a batch of regions produced."""

    logits: Tensor  # [B, K, S, S] at the samples (or per window for tiled)
    grid: Tensor | None  # [B, S, S, 2] sample positions (None for tiled)
    density: Tensor | None  # [B, 1, g, g] saliency density (learned only)


def tile_windows(size: int, window: int, overlap: int) -> list[int]:
    """Start offsets of windows of ``window`` px covering ``size`` px with >= ``overlap``."""
    if window >= size:
        return [0]
    stride = window - overlap
    n = math.ceil((size - window) / stride) + 1
    starts = [round(i * (size - window) / (n - 1)) for i in range(n)]
    return sorted(set(starts))


class DeformSeg(nn.Module):
    """Segmenter with learned (or uniform, or tiled) sampling of each region."""

    mean: Tensor
    std: Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.segmenter = build_segmenter(config.segmenter, 3, config.num_classes)
        self.saliency: SaliencyNet | None = (
            SaliencyNet(width=config.saliency_width) if config.sampler == "learned" else None
        )
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return next(self.segmenter.parameters()).device

    def normalise(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    @property
    def sample_hw(self) -> tuple[int, int]:
        return self.config.sample_px, self.config.sample_px

    def compute_grid(self, source: SampleSource) -> tuple[Tensor, Tensor | None]:
        """Sample grid (and density) for the regions in ``source``."""
        cfg = self.config
        batch = source.batch
        device = self.device
        if self.saliency is None:
            return identity_grid(self.sample_hw, batch=batch, device=device), None
        s = cfg.saliency_input_px
        low = self.normalise(source.view((s, s)).to(device))
        g = cfg.saliency_grid_px
        density = self.saliency(low, (g, g))
        grid = saliency_to_grid(
            density, self.sample_hw, cfg.radius_cells, uniform_floor=cfg.uniform_floor
        )
        return grid, density

    # ------------------------------------------------------------------ forward
    def forward(self, source: SampleSource) -> ForwardOut:
        """Segment the samples of each region (training and inference share this)."""
        if self.config.sampler == "tiled":
            raise RuntimeError("the tiled model segments windows: use forward_window/predict")
        grid, density = self.compute_grid(source)
        logits = self.segment_samples(source.sample(grid))
        return ForwardOut(logits=logits, grid=grid, density=density)

    def _segment(self, x: Tensor) -> Tensor:
        # bf16 autocast on CUDA (grids and back-projection stay float32 regardless).
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
        ):
            return self.segmenter(x)

    def forward_window(self, window: Tensor) -> Tensor:
        """Logits of a full-resolution window (the tiled model)."""
        return self._segment(self.normalise(window.to(self.device)))

    @torch.no_grad()
    def predict(
        self, source: SampleSource, out_hw: tuple[int, int]
    ) -> tuple[Tensor, ForwardOut | None]:
        """Class probabilities of whole regions at ``out_hw`` ([B, K, Ho, Wo], float32)."""
        cfg = self.config
        if cfg.sampler == "tiled":
            return self._predict_tiled(source, out_hw), None
        out = self.forward(source)
        assert out.grid is not None
        return self.project_back(out.logits, out.grid, out_hw), out

    def segment_samples(self, samples: Tensor) -> Tensor:
        """Segmenter logits of samples ([B, 3, S, S] in [0, 1])."""
        return self._segment(self.normalise(samples.to(self.device)))

    def project_back(self, logits: Tensor, grid: Tensor, out_hw: tuple[int, int]) -> Tensor:
        """Class probabilities at ``out_hw``: uniform logits are upsampled bilinearly,
        learned probabilities back-projected through the inverted grid."""
        if self.config.sampler == "uniform":
            up = F.interpolate(logits.float(), size=out_hw, mode="bilinear", align_corners=True)
            return up.softmax(1)
        return backproject(logits.float().softmax(1), grid, out_hw)

    def _predict_tiled(self, source: SampleSource, out_hw: tuple[int, int]) -> Tensor:
        cfg = self.config
        rh, rw = source.region_hw
        win = min(cfg.tile_infer_px, rh, rw)
        batch = source.batch
        acc = torch.zeros(batch, cfg.num_classes, rh, rw, device=self.device)
        weight = torch.zeros(1, 1, rh, rw, device=self.device)
        # Linear ramps over the overlap so that windows blend without seams.
        ramp = torch.ones(win)
        ov = cfg.tile_overlap_px
        if ov > 0:
            edge = torch.linspace(1.0 / (ov + 1), 1.0, ov)
            ramp[:ov], ramp[-ov:] = edge, edge.flip(0)
        w2d = (ramp[:, None] * ramp[None, :]).to(acc.device)
        for y in tile_windows(rh, win, ov):
            for x in tile_windows(rw, win, ov):
                crop = source.crop(y, x, win, win)
                logits = self.forward_window(crop).float()
                h, w = logits.shape[-2:]
                acc[:, :, y : y + h, x : x + w] += logits * w2d[:h, :w]
                weight[:, :, y : y + h, x : x + w] += w2d[:h, :w]
        logits = acc / weight
        if (rh, rw) != tuple(out_hw):
            shrink = out_hw[0] < rh or out_hw[1] < rw
            logits = (
                F.interpolate(logits, size=out_hw, mode="area")
                if shrink
                else F.interpolate(logits, size=out_hw, mode="bilinear", align_corners=True)
            )
        return logits.softmax(1)
