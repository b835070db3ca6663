"""The model on CUDA: same predictions as on the CPU (skips without a GPU)."""

from __future__ import annotations

import pytest
import torch

from wsiseg.models.config import ModelConfig
from wsiseg.models.deformseg import DeformSeg, MemorySource

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _need_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


@pytest.mark.parametrize("sampler", ["learned", "uniform", "tiled"])
def test_cuda_matches_cpu(sampler: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(
        sampler=sampler,
        segmenter="unet-tiny",
        region_px=256,
        sample_px=64,
        saliency_input_px=32,
        saliency_grid_px=16,
        saliency_width=8,
        radius_cells=3,
        tile_overlap_px=16,
        tile_train_px=64,
    )
    model = DeformSeg(cfg).eval()
    x = torch.rand(2, 3, 256, 256)
    cpu, _ = model.predict(MemorySource(x), (256, 256))
    model.cuda()
    gpu, out = model.predict(MemorySource(x.cuda()), (256, 256))
    assert gpu.dtype == torch.float32
    if out is not None and out.grid is not None:
        assert out.grid.dtype == torch.float32
    agree = (gpu.argmax(1).cpu() == cpu.argmax(1)).float().mean()
    assert agree > 0.98
