"""Pyramid-aware sampling from a slide agrees with in-memory sampling, decoding less."""

from __future__ import annotations

import numpy as np
import torch

from wsiseg.io import open_slide
from wsiseg.models.deformseg import MemorySource
from wsiseg.models.sampling import identity_grid, saliency_to_grid
from wsiseg.models.slide_source import SlideRegionSource


def _memory(reader, x: int, y: int, side: int) -> MemorySource:  # type: ignore[no-untyped-def]
    rgb = reader.read_region(0, x, y, side, side)
    return MemorySource(torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float() / 255)


def test_slide_samples_match_memory_samples(small_synthetic) -> None:
    with open_slide(small_synthetic.image) as r:
        box = (1024.0, 512.0, 1024.0)
        mem = _memory(r, 1024, 512, 1024)
        src = SlideRegionSource(r, [box], 1024)
        # Uniform 64 x 64 samples (16 px apart): read from a coarse level, pre-filtered.
        grid = identity_grid((64, 64))
        a, b = src.sample(grid), mem.sample(grid)
        assert float((a - b).abs().mean()) < 0.03
        assert src.pixels_decoded <= (1024 // 16) ** 2 * 1.1, "the coarse level must be used"
        view = src.view((32, 32))
        assert float((view - mem.view((32, 32))).abs().mean()) < 0.04


def test_peaked_grid_decodes_only_where_samples_are_dense(small_synthetic) -> None:
    with open_slide(small_synthetic.image) as r:
        box = (1024.0, 512.0, 1024.0)
        density = torch.full((1, 1, 32, 32), 1.0)
        density[0, 0, 4:8, 4:8] = 400.0  # dense corner
        grid = saliency_to_grid(density, (64, 64), 4)
        src = SlideRegionSource(r, [box], 1024)
        a = src.sample(grid)
        mem = _memory(r, 1024, 512, 1024)
        b = mem.sample(grid)
        assert float((a - b).abs().mean()) < 0.03
        full_at_finest = 1024 * 1024  # the whole region at level 0
        assert src.pixels_decoded < 0.5 * full_at_finest
