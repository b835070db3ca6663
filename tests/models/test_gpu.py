"""The model on CUDA: same predictions as on the CPU (skips without a GPU).

bf16 autocast of the networks ("auto" precision) makes CUDA labels differ from CPU ones
at a few pixels; in float32 they agree to cuDNN's rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


# -- devices: samples made on the CPU, moved to the model's device ---------------------


def test_slide_source_samples_a_cuda_grid_on_the_cpu(small_synthetic) -> None:
    """A grid from the model on CUDA: the same samples as from the grid on the CPU
    (computed there from a CPU copy), returned on CUDA; the low-res view stays on the CPU."""
    from wsiseg.io import open_slide
    from wsiseg.models.sampling import saliency_to_grid
    from wsiseg.models.slide_source import SlideRegionSource

    density = torch.ones(2, 1, 32, 32)
    density[:, 0, 4:8, 4:8] = 300.0
    grid = saliency_to_grid(density, (64, 64), 4)
    boxes = [(1024.0, 512.0, 1024.0), (0.0, 0.0, 1024.0)]
    with open_slide(small_synthetic.image) as reader:
        cpu = SlideRegionSource(reader, boxes, 1024).sample(grid)
        src = SlideRegionSource(reader, boxes, 1024)
        gpu = src.sample(grid.cuda())
        assert src.view((64, 64)).device.type == "cpu"
    assert gpu.device.type == "cuda"
    assert torch.equal(gpu.cpu(), cpu)


def test_memory_source_on_the_cpu_serves_a_cuda_grid() -> None:
    from wsiseg.models.sampling import identity_grid

    src = MemorySource(torch.rand(2, 3, 128, 128))
    grid = identity_grid((32, 32), batch=2)
    out = src.sample(grid.cuda())
    assert out.device.type == "cuda" and torch.equal(out.cpu(), src.sample(grid))


def test_grid_inversion_on_cuda_matches_the_cpu() -> None:
    from wsiseg.models.backproject import invert_grid
    from wsiseg.models.sampling import saliency_to_grid

    gen = torch.Generator().manual_seed(0)
    density = torch.softmax(3 * torch.randn(4, 1024, generator=gen), 1).view(4, 1, 32, 32)
    grid = saliency_to_grid(density, (64, 64), 4, uniform_floor=0.1)
    cpu = invert_grid(grid, (256, 256))
    for _ in range(2):  # the second call reuses the scratch memory
        gpu = invert_grid(grid.cuda(), (256, 256))
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    assert float((gpu.cpu() - cpu).abs().max()) < 1e-5


# -- precision: bf16 autocast for the networks only ------------------------------------


@pytest.mark.parametrize("sampler", ["learned", "uniform", "tiled"])
def test_cuda_precision_auto_is_bf16_and_fp32_matches_cpu(sampler: str) -> None:
    torch.manual_seed(0)
    cfg = packaged_model_config("tiny").replace(sampler=sampler)
    model = DeformSeg(cfg).eval()
    x = torch.rand(2, 3, 256, 256)
    cpu, _ = model.predict(MemorySource(x), (128, 128))
    model.cuda()
    auto, out = model.predict(MemorySource(x.cuda()), (128, 128))
    fp32, _ = model.predict(MemorySource(x.cuda()), (128, 128), precision="fp32")
    assert auto.dtype == fp32.dtype == torch.float32 and auto.device.type == "cuda"
    if out is not None:
        assert out.logits.dtype == torch.bfloat16
        assert out.grid is not None and out.grid.dtype == torch.float32
    assert float((fp32.argmax(1).cpu() == cpu.argmax(1)).float().mean()) > 0.999
    assert float((fp32.cpu() - cpu).abs().max()) < 1e-3
    assert float((auto.argmax(1).cpu() == cpu.argmax(1)).float().mean()) > 0.98


# -- the pipeline on CUDA: predict_batch and `wsiseg segment --device cuda` ------------


def test_predict_batch_on_cuda_matches_cpu(small_synthetic) -> None:
    from wsiseg.io.open import open_slide
    from wsiseg.models.loading import load_model, resolve_model_path
    from wsiseg.pipeline.worker import predict_batch
    from wsiseg.tiling import plan_regions

    cfg = load_model("default", device="cpu").config
    path = str(resolve_model_path("default"))
    with open_slide(small_synthetic.image) as reader:
        ref = reader.ref()
        plan = plan_regions(
            reader.level_dimensions[0],
            reader.mpp[0],
            task_mpp=cfg.task_mpp,
            region_px=cfg.region_px,
            margin_px=64,
            output_mpp=4 * cfg.task_mpp,
        )
    regions = list(plan.regions)[:8]
    for k in range(0, len(regions), 4):
        batch = regions[k : k + 4]
        cpu = predict_batch(ref, path, "cpu", plan.geometry(), batch)
        gpu = predict_batch(ref, path, "cuda", plan.geometry(), batch)
        assert [i for i, _ in gpu.cores] == [i for i, _ in cpu.cores]
        assert gpu.pixels_decoded == cpu.pixels_decoded  # same grids within bf16 noise
        for (_, a), (_, b) in zip(cpu.cores, gpu.cores, strict=True):
            assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape
            assert float((a == b).mean()) > 0.98


def test_segment_cli_on_cuda_matches_cpu(tmp_path: Path) -> None:
    from wsiseg.cli import main
    from wsiseg.export.ome_tiff import read_label_ome_tiff
    from wsiseg.synthetic import SynthSpec, write_synthetic_slide

    slides = tmp_path / "slides"
    write_synthetic_slide(slides, "tiny", SynthSpec(width_px=4096, height_px=3072, seed=903))
    masks = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        try:
            main(["segment", str(slides), "-o", str(out), "--workers", "1", "--device", device])
        except SystemExit as exc:
            assert not exc.code, f"wsiseg segment --device {device} failed"
        masks[device] = read_label_ome_tiff(out / "tiny" / "mask.ome.tif")
    assert masks["cpu"].shape == masks["cuda"].shape
    assert len(np.unique(masks["cpu"])) > 1
    assert float((masks["cpu"] == masks["cuda"]).mean()) > 0.98
