"""Inference precision: float32 on the CPU by default, bf16 autocast only for the networks,
grids and back-projection float32 always; host -> device copies."""

from __future__ import annotations

import pytest
import torch

from wsiseg.errors import InputError
from wsiseg.models.config import packaged_model_config
from wsiseg.models.deformseg import DeformSeg, MemorySource
from wsiseg.models.precision import PRECISIONS, autocast_dtype, nets_autocast, to_device

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_is_bf16_on_cuda_and_float32_on_the_cpu() -> None:
    assert PRECISIONS == ("auto", "fp32", "bf16")
    assert autocast_dtype("auto", CUDA) is torch.bfloat16
    assert autocast_dtype("auto", CPU) is None
    assert autocast_dtype("fp32", CUDA) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16


@pytest.mark.parametrize("name", ["fp16", "", "BF16"])
def test_unknown_precision_lists_the_known_ones(name: str) -> None:
    with pytest.raises(InputError, match=r"unknown precision .* \(known: auto, fp32, bf16\)"):
        autocast_dtype(name, CPU)
    model = DeformSeg(packaged_model_config("tiny")).eval()
    with pytest.raises(InputError, match="unknown precision"):
        model.predict(MemorySource(torch.rand(1, 3, 64, 64)), (32, 32), precision=name)


@pytest.mark.parametrize("sampler", ["learned", "uniform", "tiled"])
def test_cpu_default_is_float32_and_bf16_touches_only_the_networks(sampler: str) -> None:
    torch.manual_seed(0)
    model = DeformSeg(packaged_model_config("tiny").replace(sampler=sampler)).eval()
    x = torch.rand(2, 3, 256, 256)
    auto, out_auto = model.predict(MemorySource(x), (128, 128))
    fp32, out_fp32 = model.predict(MemorySource(x), (128, 128), precision="fp32")
    assert torch.equal(auto, fp32)  # "auto" on the CPU is float32
    # Even under a caller's autocast, "fp32" keeps the networks in float32.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside, _ = model.predict(MemorySource(x), (128, 128), precision="fp32")
    assert torch.equal(inside, fp32)
    bf16, out_bf16 = model.predict(MemorySource(x), (128, 128), precision="bf16")
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert not torch.equal(bf16, fp32)  # the networks did run in bf16
    assert float((bf16.argmax(1) == fp32.argmax(1)).float().mean()) > 0.9
    if out_auto is not None and out_bf16 is not None and out_fp32 is not None:
        assert out_auto.logits.dtype == torch.float32
        assert out_bf16.logits.dtype == torch.bfloat16
        assert out_bf16.grid is not None and out_bf16.grid.dtype == torch.float32
        if sampler == "learned":
            assert out_bf16.density is not None and out_bf16.density.dtype == torch.float32


def test_the_model_precision_is_the_default() -> None:
    torch.manual_seed(1)
    model = DeformSeg(packaged_model_config("tiny")).eval()
    x = torch.rand(1, 3, 256, 256)
    model.precision = "bf16"
    _, out = model.predict(MemorySource(x), (64, 64))
    assert out is not None and out.logits.dtype == torch.bfloat16
    _, out = model.predict(MemorySource(x), (64, 64), precision="fp32")
    assert out is not None and out.logits.dtype == torch.float32


def test_training_follows_the_callers_autocast() -> None:
    """The segmenter sets no autocast of its own: training precision is the loop's."""
    model = DeformSeg(packaged_model_config("tiny"))
    samples = torch.rand(2, 3, 32, 32)
    assert model.segment_samples(samples).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.segment_samples(samples).dtype == torch.bfloat16
        with nets_autocast(CPU, None):
            assert model.segment_samples(samples).dtype == torch.float32


def test_to_device_keeps_a_tensor_already_there() -> None:
    x = torch.rand(3)
    assert to_device(x, CPU) is x
