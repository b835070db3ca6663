"""Mip-map sampler: level choice, pre-filter, exactness on identity grids, label sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from wsiseg.models.mipmap import (
    build_mipmap,
    level_coordinates,
    mipmap_downsamples,
    prefilter_sigma,
    sample_image,
    sample_labels,
    select_level,
)
from wsiseg.models.sampling import identity_grid, saliency_to_grid


def _smooth_density(batch: int, hw: tuple[int, int], temperature: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 1, 5, 5, generator=gen)
    z = F.interpolate(z, size=hw, mode="bicubic", align_corners=True)
    return torch.softmax(temperature * z.flatten(1), dim=1).view(batch, 1, *hw)


def _ramp(batch: int, hw: tuple[int, int]) -> torch.Tensor:
    """Channels: x, y and x + 2y in pixels (linear functions survive area averaging)."""
    yy, xx = torch.meshgrid(
        torch.arange(hw[0], dtype=torch.float32),
        torch.arange(hw[1], dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xx, yy, xx + 2 * yy]).unsqueeze(0).repeat(batch, 1, 1, 1)


# -- pyramid ---------------------------------------------------------------------------


def test_build_mipmap_area_average() -> None:
    image = torch.rand(2, 3, 64, 40)
    mip = build_mipmap(image, factor=2, min_size=8)
    assert [tuple(m.shape[-2:]) for m in mip] == [(64, 40), (32, 20), (16, 10)]
    assert torch.allclose(mip[1], image.unfold(2, 2, 2).unfold(3, 2, 2).mean(dim=(-1, -2)))
    assert mipmap_downsamples(mip, 2) == [1.0, 2.0, 4.0]
    mip4 = build_mipmap(torch.rand(1, 1, 100, 70), factor=4, min_size=4)
    assert [tuple(m.shape[-2:]) for m in mip4] == [(100, 70), (25, 18), (7, 5)]
    assert mipmap_downsamples(mip4, 4) == [1.0, 4.0, 16.0]
    # odd sizes: the last pixel averages what is left (mean over real pixels only)
    odd = build_mipmap(torch.ones(1, 1, 9, 9), factor=2, min_size=2)
    assert all(bool((m == 1).all()) for m in odd)


def test_build_mipmap_is_float32_for_half_inputs() -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mip = build_mipmap(torch.rand(1, 3, 32, 32).to(torch.bfloat16))
    assert all(m.dtype == torch.float32 for m in mip)


def test_select_level() -> None:
    ds = [1.0, 4.0, 16.0, 64.0]
    spacing = torch.tensor([0.3, 1.0, 3.99, 3.9999, 4.0, 15.9, 16.0, 63.0, 1000.0])
    assert select_level(spacing, ds).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3]
    assert select_level(spacing.view(3, 3), ds).shape == (3, 3)
    with pytest.raises(ValueError):
        select_level(spacing, [1.0, 4.0, 4.0])


def test_prefilter_sigma() -> None:
    spacing = torch.tensor([0.5, 1.0, 2.0, 4.0, 9.0])
    assert prefilter_sigma(spacing, 1.0).tolist() == pytest.approx(
        [0.0, 0.0, 0.5 * math.sqrt(3), 0.5 * math.sqrt(15), 4.0]  # capped at 4
    )
    assert prefilter_sigma(
        spacing, torch.tensor([1.0, 1.0, 2.0, 4.0, 4.5])
    ).tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.5 * math.sqrt(3)])


def test_level_coordinates_pixel_centres() -> None:
    # level-0 pixel 0 and 3 (centres) fall inside level-1 pixel 0 (factor 4): x1 = -3/8, 3/8
    grid = torch.tensor([[-1.0, -1.0], [-1.0 + 2 * 3 / 63, -1.0]])
    x1, _ = level_coordinates(grid, (64, 64), 4.0)
    assert x1.tolist() == pytest.approx([-0.375, 0.375])


# -- sampling --------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(64, 48), (33, 17)])
def test_identity_grid_of_image_size_returns_the_image(hw: tuple[int, int]) -> None:
    image = torch.rand(2, 3, *hw)
    mip = build_mipmap(image, min_size=4)
    out = sample_image(mip, identity_grid(hw, batch=2), mipmap_downsamples(mip))
    assert out.dtype == torch.float32
    assert torch.allclose(out, image, atol=1e-5, rtol=0)


def test_identity_grid_equals_bilinear_resize() -> None:
    image = torch.rand(2, 3, 40, 30)
    mip = build_mipmap(image, min_size=4)
    up = sample_image(mip, identity_grid((97, 71), batch=2), mipmap_downsamples(mip))
    ref = F.interpolate(image, size=(97, 71), mode="bilinear", align_corners=True)
    assert torch.allclose(up, ref, atol=1e-5)
    # with a single level and no pre-filter, downsampling is plain bilinear too
    down = sample_image([image], identity_grid((13, 11), batch=2), [1.0], prefilter=False)
    ref = F.interpolate(image, size=(13, 11), mode="bilinear", align_corners=True)
    assert torch.allclose(down, ref, atol=1e-5)


@pytest.mark.parametrize("factor", [2, 4])
def test_levels_and_prefilter_keep_linear_images_exact(factor: int) -> None:
    """Area averaging, bilinear reading and a symmetric blur preserve linear images, so
    any misalignment between levels (e.g. a half-pixel shift) would show up here."""
    image = _ramp(2, (256, 192))
    mip = build_mipmap(image, factor=factor, min_size=4)
    ds = mipmap_downsamples(mip, factor)
    density = _smooth_density(2, (16, 16), 4.0, seed=factor)
    for n in (40, 90, 150):
        grid = saliency_to_grid(density, (n, n), 3)
        out = sample_image(mip, grid, ds)
        x0 = (grid[..., 0] + 1) / 2 * 191
        y0 = (grid[..., 1] + 1) / 2 * 255
        expected = torch.stack([x0, y0, x0 + 2 * y0], dim=1)
        # replicate borders bend the ramp within a few coarse pixels of the edge
        interior = ((x0 > 48) & (x0 < 143) & (y0 > 48) & (y0 < 207)).unsqueeze(1).expand_as(out)
        assert bool(interior.any())
        assert float((out - expected)[interior].abs().max()) < 2e-3


def test_prefilter_suppresses_aliasing() -> None:
    stripes = (torch.arange(512) % 2).float().expand(512, 512).reshape(1, 1, 512, 512)
    mip = build_mipmap(stripes, factor=4, min_size=4)  # 4x steps, like many slides
    ds = mipmap_downsamples(mip, 4)
    for n in (150, 300):  # spacing 3.4 and 1.7 px: level 0, residual pre-filter needed
        grid = identity_grid((n, n))
        naive = F.grid_sample(stripes, grid, mode="bilinear", align_corners=True)
        levels_only = sample_image(mip, grid, ds, prefilter=False)
        filtered = sample_image(mip, grid, ds)
        assert float(naive.std()) > 0.25 and float(levels_only.std()) > 0.25
        assert float(filtered.std()) < 0.5 * float(naive.std())
        assert float(filtered.mean()) == pytest.approx(0.5, abs=0.01)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(8, 96), factor=st.sampled_from([2, 4]))
def test_random_grids_sample_within_image_range(seed: int, n: int, factor: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 2, 128, 96, generator=gen)
    mip = build_mipmap(image, factor=factor, min_size=4)
    grid = saliency_to_grid(_smooth_density(2, (12, 12), 8.0, seed), (n, n), 2)
    out = sample_image(mip, grid, mipmap_downsamples(mip, factor))
    assert out.shape == (2, 2, n, n)
    assert bool(torch.isfinite(out).all())
    assert float(out.min()) >= -1e-6 and float(out.max()) <= 1 + 1e-6


def test_gradients_flow_from_samples_to_the_saliency() -> None:
    image = torch.rand(1, 3, 128, 128)
    mip = build_mipmap(image)
    ds = mipmap_downsamples(mip)
    logits = torch.randn(1, 1, 16, 16, requires_grad=True)
    density = torch.softmax(logits.flatten(1), dim=1).view_as(logits)
    for n in (24, 100):  # level reads with and without the pre-filter
        grid = saliency_to_grid(density, (n, n), 3)
        sampled = sample_image(mip, grid, ds)
        logits.grad = None
        (sampled * torch.randn_like(sampled)).sum().backward(retain_graph=True)
        assert logits.grad is not None
        assert bool(torch.isfinite(logits.grad).all())
        assert float(logits.grad.abs().sum()) > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sampling_is_float32_under_autocast(dtype: torch.dtype) -> None:
    image = torch.rand(1, 3, 64, 64)
    grid = saliency_to_grid(_smooth_density(1, (8, 8), 3.0, seed=1), (20, 20), 2)
    ref_mip = build_mipmap(image.to(dtype).float())
    ref = sample_image(ref_mip, grid.to(dtype).float(), mipmap_downsamples(ref_mip))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mip = build_mipmap(image.to(dtype))
        out = sample_image(mip, grid.to(dtype), mipmap_downsamples(mip))
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-6)  # computed in float32 despite autocast


def test_sample_image_rejects_mismatched_inputs() -> None:
    mip = build_mipmap(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError):
        sample_image(mip, identity_grid((8, 8), batch=2), [1.0])
    with pytest.raises(ValueError):
        sample_image(mip, identity_grid((8, 8), batch=3), mipmap_downsamples(mip))


# -- labels ----------------------------------------------------------------------------


def test_sample_labels_identity_and_rounding() -> None:
    labels = torch.randint(0, 5, (2, 20, 30))
    assert torch.equal(sample_labels(labels, identity_grid((20, 30), batch=2)), labels)
    row = torch.tensor([[0, 1, 2, 3]])
    line = row.view(1, 1, 4)
    # x0 = 1.5 (half-way between pixels 1 and 2) rounds up; 1.49 rounds down
    grid = torch.tensor([[[[2 * 1.5 / 3 - 1, -1.0], [2 * 1.49 / 3 - 1, -1.0], [1.0, -1.0]]]])
    assert sample_labels(line, grid).tolist() == [[[2, 1, 3]]]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 64))
def test_sample_labels_never_invents_a_class(seed: int, n: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    classes = torch.tensor([0, 3, 7, 12])
    labels = classes[torch.randint(0, 4, (2, 37, 23), generator=gen)]
    grid = saliency_to_grid(_smooth_density(2, (9, 9), 6.0, seed), (n, n), 2)
    out = sample_labels(labels, grid)
    assert out.shape == (2, n, n) and out.dtype == labels.dtype
    assert set(out.unique().tolist()) <= set(labels.unique().tolist())
    # agrees with nearest grid_sample wherever no pixel tie is involved
    ref = F.grid_sample(
        labels.unsqueeze(1).double(), grid.double(), mode="nearest", align_corners=True
    )
    x0 = (grid[..., 0].double() + 1) / 2 * 22
    y0 = (grid[..., 1].double() + 1) / 2 * 36
    clear = ((x0 - x0.floor() - 0.5).abs() > 1e-3) & ((y0 - y0.floor() - 0.5).abs() > 1e-3)
    assert torch.equal(out[clear], ref.squeeze(1).long()[clear])


def test_sample_labels_rejects_float_labels() -> None:
    with pytest.raises(TypeError):
        sample_labels(torch.zeros(1, 4, 4), identity_grid((2, 2)))
