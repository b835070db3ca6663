"""The model on CUDA: same predictions as on the CPU (skips without a GPU)."""

from __future__ import annotations

import pytest
import torch

from wsiseg.models.config import packaged_model_config
from wsiseg.models.deformseg import DeformSeg, MemorySource

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _need_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


@pytest.mark.parametrize("sampler", ["learned", "uniform", "tiled"])
def test_cuda_matches_cpu(sampler: str) -> None:
    torch.manual_seed(0)
    cfg = packaged_model_config("tiny").replace(sampler=sampler)
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
