"""Where a region's pixels come from: the `SampleSource` protocol and in-memory regions.

The whole-slide pipeline reads the slide pyramid behind the same protocol
(`wsiseg.models.slide_source.SlideRegionSource`) with the same mip-map logic.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from wsiseg.models.mipmap import build_mipmap, mipmap_downsamples, sample_image
from wsiseg.models.precision import to_device
from wsiseg.models.sampling import identity_grid

__all__ = ["SampleSource", "MemorySource"]


class SampleSource(Protocol):
    """Where a region's pixels come from: float RGB in [0, 1], ``[B, 3, ...]``."""

    region_hw: tuple[int, int]
    batch: int
    #: Seconds spent reading pixels so far (phase timings leave them out).
    read_seconds: float

    def view(self, size_hw: tuple[int, int]) -> Tensor:
        """The whole region, anti-aliased, at ``size_hw``."""
        ...

    def sample(self, grid: Tensor) -> Tensor:
        """Bilinear, anti-aliased samples at ``grid`` ([B, H, W, 2], align_corners=True),
        on the grid's device."""
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
        self.read_seconds = 0.0  # nothing to read: the pixels are in memory
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
        """Samples on the grid's device (computed where the images are)."""
        samples = sample_image(self.mipmap, grid.to(self.images.device), self.downsamples)
        return to_device(samples, grid.device)

    def crop(self, y: int, x: int, h: int, w: int) -> Tensor:
        return self.images[:, :, y : y + h, x : x + w]
