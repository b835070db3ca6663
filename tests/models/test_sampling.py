"""Saliency -> grid: identity for uniform saliency, monotone, coverage, separable kernel."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from wsiseg.models.sampling import (
    DEFAULT_UNIFORM_FLOOR,
    coverage_bound_px,
    coverage_distance,
    gaussian_kernel_1d,
    grid_spacing,
    identity_grid,
    saliency_to_grid,
)


def _smooth_density(
    batch: int, hw: tuple[int, int], temperature: float, seed: int, coarse: int = 6
) -> torch.Tensor:
    """softmax(temperature * smooth noise), like a saliency net's output."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 1, coarse, coarse, generator=gen)
    z = F.interpolate(z, size=hw, mode="bicubic", align_corners=True)
    return torch.softmax(temperature * z.flatten(1), dim=1).view(batch, 1, *hw)


def _assert_monotone(grid: torch.Tensor, tol: float = 1e-6) -> None:
    assert bool((grid[:, :, 1:, 0] - grid[:, :, :-1, 0] >= -tol).all()), "x not monotone along rows"
    assert bool((grid[:, 1:, :, 1] - grid[:, :-1, :, 1] >= -tol).all()), "y not monotone along cols"


# -- kernel ----------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [1, 2, 4, 7])
def test_gaussian_kernel_fwhm_and_taps(radius: int) -> None:
    k = gaussian_kernel_1d(radius).double()
    assert k.shape == (2 * radius + 1,)
    assert math.isclose(float(k.sum()), 1.0, rel_tol=1e-6)
    assert torch.allclose(k, k.flip(0))
    centre = float(k[radius])
    # fwhm = r: the (continuous) Gaussian is at half maximum r / 2 from the centre, so the
    # outermost taps (r from the centre) are at 1/16 of the centre.
    assert math.isclose(float(k[0]) / centre, 1.0 / 16.0, rel_tol=1e-5)


def test_gaussian_kernel_radius_zero_is_identity() -> None:
    assert torch.equal(gaussian_kernel_1d(0), torch.ones(1))
    assert gaussian_kernel_1d(3).dtype == torch.float32
    with pytest.raises(ValueError):
        gaussian_kernel_1d(-1)


def _dense_reference(density: torch.Tensor, radius: int, floor: float) -> torch.Tensor:
    """Float64 grid from the method's formula with a dense 2-D kernel (no upsampling)."""
    d = density.double()
    _, _, h, w = d.shape
    d = d / d.sum(dim=(2, 3), keepdim=True)
    d = (1 - floor) * d + floor / (h * w)
    dp = F.pad(d, (radius,) * 4, mode="replicate")
    px = (torch.arange(-radius, w + radius, dtype=torch.float64) / (w - 1)).view(1, 1, 1, -1)
    py = (torch.arange(-radius, h + radius, dtype=torch.float64) / (h - 1)).view(1, 1, -1, 1)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k1 = torch.exp(-4 * math.log(2) * t**2 / radius**2)
    k2 = (k1[:, None] * k1[None, :]).view(1, 1, 2 * radius + 1, 2 * radius + 1)
    den = F.conv2d(dp, k2)
    u = F.conv2d(dp * px, k2) / den
    v = F.conv2d(dp * py, k2) / den
    return torch.cat([u, v], dim=1).mul(2).sub(1).clamp(-1, 1).permute(0, 2, 3, 1)


@pytest.mark.parametrize("radius", [1, 3, 5])
def test_separable_filter_matches_dense_2d_reference(radius: int) -> None:
    density = _smooth_density(2, (12, 17), temperature=3.0, seed=radius)
    grid = saliency_to_grid(density, (12, 17), radius, uniform_floor=0.05, pin_border=False)
    ref = _dense_reference(density, radius, 0.05)
    assert torch.allclose(grid.double(), ref, atol=2e-6)


# -- identity --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sal_hw", "out_hw", "radius", "floor", "pin"),
    [
        ((32, 32), (128, 128), 4, DEFAULT_UNIFORM_FLOOR, True),
        ((32, 32), (32, 32), 0, 0.0, False),
        ((16, 24), (61, 97), 3, 0.3, True),
        ((20, 12), (20, 12), 8, 0.0, True),
        ((64, 128), (64, 128), 15, 0.1, False),
        ((7, 5), (200, 3), 2, 1.0, True),
    ],
)
def test_uniform_saliency_gives_identity_lattice(
    sal_hw: tuple[int, int], out_hw: tuple[int, int], radius: int, floor: float, pin: bool
) -> None:
    density = torch.full((2, 1, *sal_hw), 1.0 / (sal_hw[0] * sal_hw[1]))
    grid = saliency_to_grid(density, out_hw, radius, uniform_floor=floor, pin_border=pin)
    assert grid.shape == (2, *out_hw, 2)
    assert grid.dtype == torch.float32
    ref = identity_grid(out_hw, batch=2)
    assert float((grid - ref).abs().max()) < 1e-6
    assert torch.allclose(ref[0, 0, :, 0], torch.linspace(-1, 1, out_hw[1]))
    assert torch.allclose(ref[0, :, 0, 1], torch.linspace(-1, 1, out_hw[0]))


def test_unnormalised_and_zero_density_are_handled() -> None:
    density = _smooth_density(1, (16, 16), 2.0, seed=1)
    a = saliency_to_grid(density, (32, 32), 3)
    b = saliency_to_grid(density * 123.0, (32, 32), 3)
    assert torch.allclose(a, b, atol=1e-6)
    zeros = torch.zeros(1, 1, 16, 16, requires_grad=True)
    zero = saliency_to_grid(zeros, (32, 32), 3)
    assert float((zero.detach() - identity_grid((32, 32))).abs().max()) < 1e-6
    zero.sum().backward()
    assert zeros.grad is not None and bool(torch.isfinite(zeros.grad).all())


def test_full_floor_ignores_saliency() -> None:
    density = _smooth_density(1, (16, 16), 10.0, seed=2)
    grid = saliency_to_grid(density, (40, 40), 4, uniform_floor=1.0)
    assert float((grid - identity_grid((40, 40))).abs().max()) < 1e-6


def test_identity_grid() -> None:
    g = identity_grid((3, 5), batch=2)
    assert g.shape == (2, 3, 5, 2)
    assert torch.equal(g[1, 2, :, 0], torch.linspace(-1, 1, 5))
    assert torch.equal(g[0, :, 4, 1], torch.linspace(-1, 1, 3))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"saliency": torch.ones(1, 2, 8, 8)},
        {"saliency": torch.ones(8, 8)},
        {"saliency": torch.ones(1, 1, 1, 8)},
        {"out_hw": (1, 10)},
        {"radius": -1},
        {"uniform_floor": 1.5},
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "saliency": torch.ones(1, 1, 8, 8),
        "out_hw": (16, 16),
        "radius": 2,
    }
    args.update(kwargs)
    with pytest.raises(ValueError):
        saliency_to_grid(**args)  # type: ignore[arg-type]


# -- shape of the grid -----------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    sal_h=st.integers(2, 24),
    sal_w=st.integers(2, 24),
    up=st.integers(1, 4),
    radius=st.integers(0, 8),
    temperature=st.floats(0.0, 30.0),
    floor=st.sampled_from([0.0, 1e-3, 0.1, 0.5]),
    pin=st.booleans(),
)
def test_random_saliency_grid_is_bounded_monotone_and_covers(
    seed: int,
    sal_h: int,
    sal_w: int,
    up: int,
    radius: int,
    temperature: float,
    floor: float,
    pin: bool,
) -> None:
    out_hw = (sal_h * up, sal_w * up)
    density = _smooth_density(2, (sal_h, sal_w), temperature, seed, coarse=4)
    grid = saliency_to_grid(density, out_hw, radius, uniform_floor=floor, pin_border=pin)
    assert grid.shape == (2, *out_hw, 2)
    assert bool(torch.isfinite(grid).all())
    assert float(grid.abs().max()) <= 1.0
    _assert_monotone(grid)
    if pin:
        assert bool((grid[:, :, 0, 0] == -1).all()) and bool((grid[:, :, -1, 0] == 1).all())
        assert bool((grid[:, 0, :, 1] == -1).all()) and bool((grid[:, -1, :, 1] == 1).all())
    region = (3 * sal_h, 3 * sal_w)
    bound = coverage_bound_px((sal_h, sal_w), out_hw, region, radius)
    assert coverage_distance(grid, region) <= bound + 1e-3  # float32 positions; r = 0 is tight


def test_peaked_saliency_concentrates_samples() -> None:
    h = w = 32
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    logits = -((xx - 20.0) ** 2 + (yy - 10.0) ** 2) / (2 * 3.0**2)
    density = torch.softmax(3.0 * logits.flatten(), 0).view(1, 1, h, w)
    grid = saliency_to_grid(density, (64, 64), 4)
    peak = torch.tensor([2 * 20 / (w - 1) - 1, 2 * 10 / (h - 1) - 1])
    near = ((grid - peak).norm(dim=-1) < 0.2).sum()
    uniform_near = ((identity_grid((64, 64)) - peak).norm(dim=-1) < 0.2).sum()
    assert int(near) > 2 * int(uniform_near)


# -- coverage --------------------------------------------------------------------------


def _one_hot_batch(hw: tuple[int, int]) -> torch.Tensor:
    h, w = hw
    return torch.eye(h * w).view(h * w, 1, h, w)


@pytest.mark.parametrize("radius", [1, 2, 3, 4])
def test_one_hot_saliency_coverage_bound(radius: int) -> None:
    """Every position of one hot cell: no region pixel farther than r / 2 + 1/2 cells.

    The measured worst case is r / 2 + 0.1 .. 0.2 cells (sampling.py notes); the
    guaranteed bound (``coverage_bound_px``) holds as well.
    """
    sal_hw, out_hw, region = (12, 12), (48, 48), (45, 45)
    grid = saliency_to_grid(_one_hot_batch(sal_hw), out_hw, radius)
    cell_px = (region[0] - 1) / (sal_hw[0] - 1)
    dist = coverage_distance(grid, region)
    assert dist <= (radius / 2 + 0.5) * cell_px
    assert dist <= coverage_bound_px(sal_hw, out_hw, region, radius)


def test_one_hot_without_floor_stays_finite_and_bounded() -> None:
    sal_hw, out_hw, region = (12, 12), (36, 36), (45, 45)
    logits = (100.0 * _one_hot_batch(sal_hw)).requires_grad_(True)  # softmax underflows
    density = torch.softmax(logits.flatten(1), dim=1).view_as(logits)
    grid = saliency_to_grid(density, out_hw, 3, uniform_floor=0.0)
    (grid * torch.randn_like(grid)).sum().backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    grid = grid.detach()
    assert bool(torch.isfinite(grid).all())
    _assert_monotone(grid)
    assert coverage_distance(grid, region) <= coverage_bound_px(sal_hw, out_hw, region, 3)


def test_two_hot_cells_adversarial_gap_within_guarantee() -> None:
    """Two hot cells 2r + 1 apart pull their neighbours apart: the 1-D worst case."""
    r, sal_hw, out_hw, region = 3, (24, 24), (24, 24), (47, 47)
    density = torch.zeros(1, 1, *sal_hw)
    density[0, 0, :, 5] = 1.0
    density[0, 0, :, 5 + 2 * r + 1] = 1.0
    grid = saliency_to_grid(density, out_hw, r, uniform_floor=0.0)
    dist = coverage_distance(grid, region)
    cell_px = (region[1] - 1) / (sal_hw[1] - 1)
    assert dist > 2.0 * cell_px  # a real hole ...
    assert dist <= coverage_bound_px(sal_hw, out_hw, region, r)  # ... within the guarantee


def test_pinning_reaches_the_border() -> None:
    density = torch.zeros(1, 1, 16, 16)
    density[0, 0, 1, 1] = 1.0  # pulls the top-left samples inwards
    free = saliency_to_grid(density, (48, 48), 4, pin_border=False)
    pinned = saliency_to_grid(density, (48, 48), 4)
    assert float(free[0, :, 0, 0].max()) > -0.95  # the free left column leaves the border
    assert bool((pinned[0, :, 0, 0] == -1).all())
    assert coverage_distance(pinned, (64, 64)) < coverage_distance(free, (64, 64))


def test_coverage_distance_of_identity() -> None:
    assert coverage_distance(identity_grid((10, 10)), (10, 10)) == pytest.approx(0.0, abs=1e-5)
    # 5 samples over 9 px: every other pixel is sampled, the others are 1 px away.
    assert coverage_distance(identity_grid((5, 5)), (9, 9)) == pytest.approx(math.sqrt(2), abs=1e-5)


# -- spacing, gradients, precision -----------------------------------------------------


def test_grid_spacing_of_uniform_grid() -> None:
    grid = identity_grid((17, 33), batch=2)
    norm = grid_spacing(grid)
    assert norm.shape == (2, 17, 33)
    assert torch.allclose(norm, torch.full_like(norm, 2 / 16))  # larger of 2/32 and 2/16
    px = grid_spacing(grid, image_hw=(161, 321))
    assert torch.allclose(px, torch.full_like(px, 10.0), atol=1e-5)


def test_gradients_flow_to_the_saliency() -> None:
    logits = torch.randn(2, 1, 16, 16, requires_grad=True)
    density = torch.softmax(logits.flatten(1), dim=1).view_as(logits)
    grid = saliency_to_grid(density, (32, 32), 3)
    weights = torch.randn(2, 32, 32, 2)
    (grid * weights).sum().backward()
    assert logits.grad is not None
    assert bool(torch.isfinite(logits.grad).all())
    assert float(logits.grad.abs().sum()) > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_grid_is_float32_under_autocast(dtype: torch.dtype) -> None:
    density = _smooth_density(1, (16, 16), 3.0, seed=3).to(dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grid = saliency_to_grid(density, (48, 48), 3)
        spacing = grid_spacing(grid)
    assert grid.dtype == torch.float32 and spacing.dtype == torch.float32
    ref = saliency_to_grid(density.float(), (48, 48), 3)
    assert torch.allclose(grid, ref, atol=1e-6)
