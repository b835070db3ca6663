"""Back-projection by grid inversion: identity = bilinear upsampling, no holes, round trips;
bit-identical to the reference implementation (tests/models/_backproject_reference.py)."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.models._backproject_reference import invert_grid as reference_invert_grid
from wsiseg.models.backproject import backproject, invert_grid
from wsiseg.models.mipmap import build_mipmap, mipmap_downsamples, sample_image
from wsiseg.models.sampling import identity_grid, saliency_to_grid


def _smooth_density(batch: int, hw: tuple[int, int], temperature: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 1, 6, 6, generator=gen)
    z = F.interpolate(z, size=hw, mode="bicubic", align_corners=True)
    return torch.softmax(temperature * z.flatten(1), dim=1).view(batch, 1, *hw)


def _warped_grid(batch: int, hw: tuple[int, int], amp: float, seed: int) -> torch.Tensor:
    """Smooth, injective, border-preserving deformation of the identity grid."""
    gen = torch.Generator().manual_seed(seed)
    g = identity_grid(hw, batch=batch)
    x, y = g[..., 0], g[..., 1]
    phase = torch.rand(batch, 4, generator=gen).view(batch, 4, 1, 1) * 2 * math.pi
    # sin(pi (x + 1)) vanishes on the border; amp < 1 / pi keeps the map monotone
    dx = amp * torch.sin(math.pi * (x + 1) / 2 * 2) * torch.cos(math.pi * y + phase[:, 0]) / math.pi
    dy = amp * torch.sin(math.pi * (y + 1) / 2 * 2) * torch.cos(math.pi * x + phase[:, 1]) / math.pi
    return torch.stack([x + dx, y + dy], dim=-1)


def _round_trip_error_px(grid: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """|grid(invert_grid(p)) - p| per output pixel, in output pixels (max over x, y)."""
    inv = invert_grid(grid, out_hw)
    back = F.grid_sample(grid.permute(0, 3, 1, 2), inv, mode="bilinear", align_corners=True)
    target = identity_grid(out_hw, batch=grid.shape[0]).permute(0, 3, 1, 2)
    scale = torch.tensor([(out_hw[1] - 1) / 2, (out_hw[0] - 1) / 2]).view(1, 2, 1, 1)
    return ((back - target) * scale).abs().amax(dim=1)


# -- identity and affine ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid_hw", "out_hw"), [((32, 48), (100, 130)), ((16, 16), (16, 16)), ((20, 9), (7, 40))]
)
def test_identity_grid_is_bilinear_upsampling(
    grid_hw: tuple[int, int], out_hw: tuple[int, int]
) -> None:
    probs = torch.rand(2, 5, *grid_hw)
    out = backproject(probs, identity_grid(grid_hw, batch=2), out_hw)
    ref = F.interpolate(probs, size=out_hw, mode="bilinear", align_corners=True)
    assert out.shape == (2, 5, *out_hw) and out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5)


def test_affine_grid_is_inverted_exactly() -> None:
    theta = torch.tensor([[[0.6, 0.1, 0.05], [-0.08, 0.7, -0.1]]]).repeat(2, 1, 1)
    grid = F.affine_grid(theta, [2, 1, 40, 50], align_corners=True)
    out_hw = (64, 72)
    inv = invert_grid(grid, out_hw)
    # analytic inverse: solve theta[:, :2] @ (j', i') + theta[:, 2] = p
    p = identity_grid(out_hw, batch=2)
    a, t = theta[:, :, :2], theta[:, :, 2]
    exact = torch.linalg.solve(
        a.unsqueeze(1), (p - t.view(2, 1, 1, 2)).reshape(2, -1, 2).unsqueeze(-1)
    )
    exact = exact.squeeze(-1).view(2, *out_hw, 2)
    inside = (exact.abs() <= 1).all(dim=-1)
    assert 0.3 < float(inside.float().mean()) < 1.0
    assert float((inv - exact)[inside].abs().max()) < 1e-4
    # outside the hull the index is clamped to the border
    assert float(inv.abs().max()) <= 1.0


# -- deformed grids --------------------------------------------------------------------


@pytest.mark.parametrize("amp", [0.3, 0.8])
def test_warped_grid_round_trip_and_no_holes(amp: float) -> None:
    grid = _warped_grid(2, (48, 40), amp, seed=int(amp * 10))
    err = _round_trip_error_px(grid, (200, 170))
    assert float(err.max()) < 0.05
    probs = torch.softmax(torch.randn(2, 4, 48, 40), dim=1)
    out = backproject(probs, grid, (200, 170))
    assert bool(torch.isfinite(out).all())
    assert torch.allclose(out.sum(dim=1), torch.ones(2, 200, 170), atol=1e-5)  # no holes


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    radius=st.integers(1, 5),
    temperature=st.floats(0.0, 4.0),
    up=st.integers(2, 4),
    out_scale=st.integers(2, 4),
)
def test_saliency_grid_round_trip(
    seed: int, radius: int, temperature: float, up: int, out_scale: int
) -> None:
    sal_hw = (12, 14)
    grid_hw = (sal_hw[0] * up, sal_hw[1] * up)
    out_hw = (grid_hw[0] * out_scale, grid_hw[1] * out_scale)
    grid = saliency_to_grid(_smooth_density(2, sal_hw, temperature, seed), grid_hw, radius)
    inv = invert_grid(grid, out_hw)
    assert bool(torch.isfinite(inv).all()) and float(inv.abs().max()) <= 1.0
    # the pinned grid's hull is the whole region: every output pixel is inside
    err = _round_trip_error_px(grid, out_hw)
    assert float(err.max()) < 0.5


def test_extreme_saliency_has_no_holes_or_nan() -> None:
    density = torch.zeros(3, 1, 16, 16)
    density[0, 0, 3, 12] = 1.0  # one hot cell
    density[1, 0, :, 0] = 1.0  # a hot border column: samples pile up on the clamp
    density[2] = _smooth_density(1, (16, 16), 40.0, seed=5)[0]
    grid = saliency_to_grid(density, (64, 64), 4, uniform_floor=0.01)
    probs = torch.softmax(3 * torch.randn(3, 6, 64, 64), dim=1)
    out = backproject(probs, grid, (200, 200))
    assert bool(torch.isfinite(out).all())
    assert torch.allclose(out.sum(dim=1), torch.ones(3, 200, 200), atol=1e-5)
    assert float(out.min()) >= 0.0
    # nearly every output pixel is found exactly (folds and piles are rare and local)
    err = _round_trip_error_px(grid, (200, 200))
    assert float((err < 0.5).float().mean()) > 0.999


def test_smooth_image_survives_sampling_and_back_projection() -> None:
    h = w = 256
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    image = (torch.sin(2.5 * xx + 1.0) * torch.cos(2.0 * yy) + 0.3 * xx * yy).view(1, 1, h, w)
    image = image.repeat(2, 1, 1, 1)
    grid = saliency_to_grid(_smooth_density(2, (16, 16), 3.0, seed=11), (64, 64), 3)
    # point samples (the paper's sampler): only the interpolation error remains
    points = F.grid_sample(image, grid, mode="bilinear", align_corners=True)
    assert float((backproject(points, grid, (h, w)) - image).abs().max()) < 0.02
    # anti-aliased samples: blurred over the local spacing (up to ~40 px here, and such
    # a footprint at the region's edge is read from an area-averaged level), so compare
    # on average
    mip = build_mipmap(image)
    restored = backproject(sample_image(mip, grid, mipmap_downsamples(mip)), grid, (h, w))
    assert float((restored - image).abs().mean()) < 0.02


def test_partial_hull_reads_the_border() -> None:
    """A grid covering only the centre: outside pixels get the nearest border sample."""
    grid = identity_grid((10, 10)) * 0.5
    probs = torch.arange(100, dtype=torch.float32).view(1, 1, 10, 10)
    out = backproject(probs, grid, (41, 41))
    assert bool(torch.isfinite(out).all())
    assert float(out[0, 0, 0, 0]) == pytest.approx(0.0, abs=1e-4)  # top-left corner sample
    assert float(out[0, 0, -1, -1]) == pytest.approx(99.0, abs=1e-4)
    centre = F.interpolate(probs, size=(21, 21), mode="bilinear", align_corners=True)
    assert torch.allclose(out[..., 10:31, 10:31], centre, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_backprojection_is_float32_under_autocast(dtype: torch.dtype) -> None:
    grid = saliency_to_grid(_smooth_density(1, (8, 8), 2.0, seed=1), (32, 32), 2)
    probs = torch.rand(1, 3, 32, 32)
    ref = backproject(probs.to(dtype).float(), grid, (64, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inv = invert_grid(grid, (64, 64))
        out = backproject(probs.to(dtype), grid, (64, 64))
    assert inv.dtype == torch.float32 and out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-6)


def test_gradients_reach_the_predictions() -> None:
    grid = saliency_to_grid(_smooth_density(1, (8, 8), 2.0, seed=2), (24, 24), 2)
    probs = torch.rand(1, 2, 24, 24, requires_grad=True)
    backproject(probs, grid, (50, 50)).sum().backward()
    assert probs.grad is not None and float(probs.grad.abs().sum()) > 0


def test_bad_shapes_raise() -> None:
    grid = identity_grid((8, 8))
    with pytest.raises(ValueError):
        backproject(torch.rand(1, 2, 8, 9), grid, (16, 16))
    with pytest.raises(ValueError):
        invert_grid(grid, (1, 16))
    with pytest.raises(ValueError):
        invert_grid(grid[..., 0], (16, 16))


# -- bit-identical to the reference implementation --------------------------------------


def test_equals_reference_on_the_bundled_models_grids(small_synthetic) -> None:
    """The pipeline's sizes: the bundled model's grids (64² samples of 1024² regions,
    32² saliency, radius 4) on a synthetic slide, inverted at 256² (output_mpp = 4x the
    task's, 64 px margin), four regions per batch as the workers do."""
    from wsiseg.io.open import open_slide
    from wsiseg.models.loading import load_model
    from wsiseg.models.slide_source import SlideRegionSource
    from wsiseg.tiling import plan_regions

    model = load_model("default", device="cpu")
    cfg = model.config
    assert (cfg.sample_px, cfg.region_px, cfg.saliency_grid_px) == (64, 1024, 32)
    with open_slide(small_synthetic.image) as reader:
        plan = plan_regions(
            reader.level_dimensions[0],
            reader.mpp[0],
            task_mpp=cfg.task_mpp,
            region_px=cfg.region_px,
            margin_px=64,
            output_mpp=4 * cfg.task_mpp,
        )
        out = (plan.region_out_px, plan.region_out_px)
        assert out == (256, 256)
        regions = list(plan.regions)
        assert len(regions) >= 8
        with torch.inference_mode():
            for k in range(0, len(regions), 4):
                batch = regions[k : k + 4]
                source = SlideRegionSource(
                    reader, [(r.x0, r.y0, r.side) for r in batch], plan.region_px
                )
                grid, _ = model.sampler.grid(model, source)
                assert torch.equal(invert_grid(grid, out), reference_invert_grid(grid, out))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 5),
    sal=st.integers(4, 33),
    grid_hw=st.tuples(st.integers(2, 80), st.integers(2, 80)),
    out_hw=st.tuples(st.integers(2, 300), st.integers(2, 300)),
    temperature=st.floats(0.0, 30.0),
    radius=st.integers(1, 6),
    floor=st.sampled_from([0.0, 0.01, 0.1, 0.5]),
    pin=st.booleans(),
)
def test_equals_reference_on_saliency_grids(
    seed: int,
    batch: int,
    sal: int,
    grid_hw: tuple[int, int],
    out_hw: tuple[int, int],
    temperature: float,
    radius: int,
    floor: float,
    pin: bool,
) -> None:
    density = _smooth_density(batch, (sal, sal), temperature, seed)
    if seed % 4 == 0:  # one hot cell and a hot border column: piles and folds
        density = torch.zeros_like(density)
        density[0, 0, seed % sal, (seed // sal) % sal] = 1.0
        density[-1, 0, :, 0] = 1.0
    grid = saliency_to_grid(density, grid_hw, radius, uniform_floor=floor, pin_border=pin)
    assert torch.equal(invert_grid(grid, out_hw), reference_invert_grid(grid, out_hw))


def test_equals_reference_on_affine_noisy_and_partial_grids() -> None:
    gen = torch.Generator().manual_seed(3)
    for trial in range(20):
        hw = (2 + trial * 3, 40 - trial)
        out_hw = (7 + trial * 9, 150 - trial * 5)
        theta = torch.eye(2, 3).repeat(2, 1, 1) + 0.3 * torch.randn(2, 2, 3, generator=gen)
        grids = [
            F.affine_grid(theta, [2, 1, *hw], align_corners=True),  # partly outside
            identity_grid(hw, batch=2) * (0.2 + trial / 20),  # a hull inside the region
            identity_grid(hw, batch=2) + 0.02 * torch.randn(2, *hw, 2, generator=gen),  # folds
        ]
        for grid in grids:
            assert torch.equal(invert_grid(grid, out_hw), reference_invert_grid(grid, out_hw))


def test_threads_and_changing_sizes_share_nothing() -> None:
    """Scratch memory is per thread and grows with the sizes: concurrent calls of
    different sizes give what single calls give."""
    jobs = [
        (saliency_to_grid(_smooth_density(b, (16, 16), 3.0, seed=b), (8 * b, 40), 3), out)
        for b, out in [(1, (64, 64)), (3, (200, 90)), (2, (17, 301)), (4, (256, 256))]
    ] * 3
    alone = [reference_invert_grid(g, out) for g, out in jobs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda job: invert_grid(*job), jobs))
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(a, b)


def test_inference_mode_and_grad_mode_calls_mix() -> None:
    """Scratch memory made under inference_mode serves later calls outside it."""
    grid = saliency_to_grid(_smooth_density(2, (8, 8), 2.0, seed=4), (24, 24), 2)
    with torch.inference_mode():
        first = invert_grid(grid, (96, 96))
    bigger = saliency_to_grid(_smooth_density(3, (8, 8), 2.0, seed=5), (32, 32), 2)
    with torch.inference_mode():
        invert_grid(bigger, (128, 128))  # the scratch grows here, in inference mode
    assert torch.equal(invert_grid(grid, (96, 96)), first)
    probs = torch.rand(2, 3, 24, 24, requires_grad=True)
    backproject(probs, grid, (96, 96)).sum().backward()
    assert probs.grad is not None


def test_non_finite_grids_give_finite_indices() -> None:
    grid = identity_grid((16, 16), batch=3)
    grid[0, 3, 4, 0] = float("nan")
    grid[1, 5, 5, 1] = float("inf")
    grid[2] = float("nan")
    inv = invert_grid(grid, (50, 40))
    assert bool(torch.isfinite(inv).all()) and float(inv.abs().max()) <= 1.0
