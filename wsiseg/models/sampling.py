"""Saliency -> sampling grid (Recasens et al. 2018, as used by Jin et al. 2022).

Conventions (DESIGN §1): grids are ``[B, H, W, 2]`` float32 with x (width) first,
normalised so that -1 and +1 are the *centres* of the first and last pixels of the
region (``align_corners=True`` everywhere). A uniform saliency gives
``linspace(-1, 1, n)`` on both axes to within 1e-6.

The density ``d`` fed to :func:`saliency_to_grid` is the caller's softmax (any
non-negative map works; it is normalised here). It is mixed with a uniform floor,
``(1 - a) d + a / (h w)``, before the Recasens kernel.

Coverage (DESIGN §1.3). *Guarantee, for any density and any floor:* each coarse sample
is a convex combination of lattice positions within ``r`` cells of its home on each
axis (the lattice is extended linearly into the padding, the clamp only moves towards
the region; a window with no mass keeps its home), and the bilinear upsampling and the
border pinning keep that property. Every region point is within half an output step
of some sample's home, so within ``r + step / 2`` saliency cells of that sample on each
axis: :func:`coverage_bound_px`. *Typical worst case:* one hot cell collapses the
samples within ``r`` cells of it onto it and leaves a hole; with the default floor the
farthest region point is then ``r / 2 + 0.1`` to ``r / 2 + 0.2`` cells from a sample
(measured over every hot-cell position: 1.3 / 2.1 / 3.0 cells for r = 2 / 4 / 6 on a
32² grid sampled at 128²). Pinning makes the border exact (the official code reached
only x = 0.895).

Floor (default ``a = 0.1``). It is not what bounds coverage, the radius is: in 2-D a hot
cell outweighs a kernel window of floor mass unless ``a / (1 - a) >~ h w / 20``, so the
one-hot hole shrinks slowly with ``a`` (r = 4: 2.7 cells at a = 0.001, 2.1 at 0.1, 1.6 at
0.5). It keeps every kernel window's mass at least ``a / (h w)`` of its taps (no 0/0 or
exploding gradients when a sharp softmax underflows) and raises the sparsest cell to a
tenth of the mean density, while a learned map keeps 90 % of its mass (a peak at 10x
the mean still gets 9.1x).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_UNIFORM_FLOOR",
    "gaussian_kernel_1d",
    "saliency_to_grid",
    "identity_grid",
    "grid_spacing",
    "coverage_distance",
    "coverage_bound_px",
    "no_autocast",
]

logger = logging.getLogger(__name__)

#: Default share of a uniform density mixed into the saliency density; see the module
#: notes for why 0.1.
DEFAULT_UNIFORM_FLOOR: float = 0.1

_FWHM_TO_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548
#: Kernel-window mass treated as empty (keeps 1/den^2 in gradients finite in float32).
_EMPTY_MASS = 1e-30


@contextlib.contextmanager
def no_autocast(device: torch.device) -> Iterator[None]:
    """Disable autocast on ``device`` so that grid maths stays float32.

    Parameters
    ----------
    device
        Device whose autocast context is switched off.
    """
    if device.type in ("cpu", "cuda", "mps", "xpu"):
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:  # pragma: no cover - exotic devices have no autocast
        yield


def gaussian_kernel_1d(radius: int) -> Tensor:
    """1-D Gaussian with full width at half maximum ``radius``, normalised to sum 1.

    Parameters
    ----------
    radius
        Half-width ``r`` in taps; the kernel has ``2 r + 1`` taps and
        ``sigma = r / 2.3548``, so the outermost taps are 1/16 of the centre.
        ``r = 0`` gives the identity kernel ``[1.0]``.

    Returns
    -------
    Tensor
        float32 tensor of shape ``[2 r + 1]``.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if radius == 0:
        return torch.ones(1, dtype=torch.float32)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    sigma = radius / _FWHM_TO_SIGMA
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(torch.float32)


def _lattice(n: int, radius: int, device: torch.device) -> Tensor:
    """Cell-centre lattice in [0, 1] over ``n`` cells, extended linearly by ``radius``."""
    return torch.arange(-radius, n + radius, dtype=torch.float32, device=device) / (n - 1)


def saliency_to_grid(
    saliency: Tensor,
    out_hw: tuple[int, int],
    radius: int,
    *,
    uniform_floor: float = DEFAULT_UNIFORM_FLOOR,
    pin_border: bool = True,
) -> Tensor:
    """Turn a saliency density into a sampling grid (Recasens saliency sampler).

    Parameters
    ----------
    saliency
        ``[B, 1, h, w]`` non-negative density ``d`` (typically the caller's softmax over
        all positions). It is renormalised to sum 1 per item (an all-zero map counts as
        uniform; negative values are clamped to 0) and mixed with the uniform floor.
    out_hw
        Size ``(H, W)`` of the returned grid (the number of samples).
    radius
        Kernel half-width ``r`` in saliency cells (fwhm = r), the same on both axes.
    uniform_floor
        Share ``a`` in [0, 1] of a uniform density mixed in: ``(1 - a) d + a / (h w)``.
        ``a = 1`` gives the identity lattice whatever the saliency.
    pin_border
        Set the first/last column's x to -1/+1 and the first/last row's y to -1/+1
        so that the samples reach the region's edges.

    Returns
    -------
    Tensor
        float32 ``[B, H, W, 2]`` grid (x first) in [-1, 1], monotone along rows (x) and
        columns (y). Differentiable with respect to ``saliency`` (except the pinned
        ring and clamped values).
    """
    if saliency.ndim != 4 or saliency.shape[1] != 1:
        raise ValueError(f"saliency must be [B, 1, h, w], got {tuple(saliency.shape)}")
    if not 0.0 <= uniform_floor <= 1.0:
        raise ValueError(f"uniform_floor must be in [0, 1], got {uniform_floor}")
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    _, _, h, w = saliency.shape
    if min(h, w, out_h, out_w) < 2:
        raise ValueError(
            f"saliency and output grids need >= 2 cells per axis, got {(h, w)} -> {(out_h, out_w)}"
        )
    device = saliency.device
    with no_autocast(device):
        d = saliency.float().clamp_min(0.0)
        total = d.sum(dim=(2, 3), keepdim=True)
        # Safe denominators (not clamps): a masked-out 0/0 would still poison gradients.
        d = torch.where(total > 0, d / torch.where(total > 0, total, 1.0), 1.0 / (h * w))
        if uniform_floor > 0.0:
            d = (1.0 - uniform_floor) * d + uniform_floor / (h * w)

        r = radius
        dp = F.pad(d, (r, r, r, r), mode="replicate") if r > 0 else d
        px = _lattice(w, r, device).view(1, 1, 1, -1)
        py = _lattice(h, r, device).view(1, 1, -1, 1)
        stacked = torch.cat([dp, dp * px, dp * py], dim=1)  # [B, 3, h + 2r, w + 2r]

        k = gaussian_kernel_1d(r).to(device)
        kx = k.view(1, 1, 1, -1).expand(3, 1, 1, -1)
        ky = k.view(1, 1, -1, 1).expand(3, 1, -1, 1)
        # Separable "valid" correlation: O(r) per point instead of O(r^2).
        smoothed = F.conv2d(F.conv2d(stacked, kx, groups=3), ky, groups=3)  # [B, 3, h, w]
        den = smoothed[:, :1]
        # Windows without mass (only possible with uniform_floor == 0) keep their home.
        empty = den <= _EMPTY_MASS
        den = torch.where(empty, 1.0, den)
        u = torch.where(empty, px[..., r : r + w], smoothed[:, 1:2] / den)
        v = torch.where(empty, py[..., r : r + h, :], smoothed[:, 2:3] / den)
        coarse = torch.cat([u, v], dim=1).mul(2.0).sub(1.0).clamp(-1.0, 1.0)  # [B, 2, h, w]

        if (h, w) != (out_h, out_w):
            coarse = F.interpolate(coarse, size=(out_h, out_w), mode="bilinear", align_corners=True)
            coarse = coarse.clamp(-1.0, 1.0)  # interpolation rounding may overshoot by 1 ulp
        grid = coarse.permute(0, 2, 3, 1)
        if pin_border:
            grid = _pin_border(grid)
    return grid.contiguous()


def _pin_border(grid: Tensor) -> Tensor:
    """Outer ring to the region's edges (out of place, so autograd is unaffected)."""
    _, out_h, out_w, _ = grid.shape
    gx, gy = grid[..., 0], grid[..., 1]
    if out_w > 1:
        col = torch.arange(out_w, device=grid.device).view(1, 1, -1)
        gx = torch.where(col == 0, -1.0, torch.where(col == out_w - 1, 1.0, gx))
    if out_h > 1:
        row = torch.arange(out_h, device=grid.device).view(1, -1, 1)
        gy = torch.where(row == 0, -1.0, torch.where(row == out_h - 1, 1.0, gy))
    return torch.stack([gx, gy], dim=-1)


def identity_grid(
    out_hw: tuple[int, int], batch: int = 1, device: torch.device | str | None = None
) -> Tensor:
    """Uniform grid: ``linspace(-1, 1, W)`` in x and ``linspace(-1, 1, H)`` in y.

    Parameters
    ----------
    out_hw
        Grid size ``(H, W)``.
    batch
        Batch size ``B``.
    device
        Device of the result.

    Returns
    -------
    Tensor
        float32 ``[B, H, W, 2]`` grid, x first.
    """
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    ys = torch.linspace(-1.0, 1.0, out_h, dtype=torch.float32, device=device)
    xs = torch.linspace(-1.0, 1.0, out_w, dtype=torch.float32, device=device)
    if out_h == 1:
        ys = torch.zeros_like(ys)
    if out_w == 1:
        xs = torch.zeros_like(xs)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).unsqueeze(0).expand(batch, -1, -1, -1).contiguous()


def grid_spacing(grid: Tensor, image_hw: tuple[int, int] | None = None) -> Tensor:
    """Local sample spacing: the larger of the row and column steps at each sample.

    Steps are central differences (one-sided on the border) of the sample positions
    along the grid's columns and rows, measured as Euclidean lengths.

    Parameters
    ----------
    grid
        ``[B, H, W, 2]`` grid, x first.
    image_hw
        When given, positions are first converted to pixels of an image of this size
        (x scaled by ``(W - 1) / 2``, y by ``(H - 1) / 2``), so the spacing is in
        pixels. Otherwise it is in normalised units (2 = the whole region).

    Returns
    -------
    Tensor
        float32 ``[B, H, W]`` spacing, detached from autograd.
    """
    g = grid.detach().float()
    if image_hw is not None:
        scale = torch.tensor(
            [(image_hw[1] - 1) / 2.0, (image_hw[0] - 1) / 2.0], dtype=torch.float32, device=g.device
        )
        g = g * scale
    _, h, w, _ = g.shape
    zeros = torch.zeros(g.shape[:3], dtype=torch.float32, device=g.device)
    step_x = torch.linalg.vector_norm(torch.gradient(g, dim=2)[0], dim=-1) if w > 1 else zeros
    step_y = torch.linalg.vector_norm(torch.gradient(g, dim=1)[0], dim=-1) if h > 1 else zeros
    return torch.maximum(step_x, step_y)


def coverage_distance(grid: Tensor, region_hw: tuple[int, int]) -> float:
    """Largest distance, in region pixels, from a region pixel centre to its nearest sample.

    Parameters
    ----------
    grid
        ``[B, H, W, 2]`` grid, x first, over a region of ``region_hw`` pixels.
    region_hw
        Region size ``(H_r, W_r)`` in pixels.

    Returns
    -------
    float
        The maximum over the batch and over all region pixels.
    """
    from scipy.spatial import cKDTree

    rh, rw = int(region_hw[0]), int(region_hw[1])
    g = grid.detach().float().cpu().numpy().astype(np.float64)
    yy, xx = np.meshgrid(
        np.arange(rh, dtype=np.float64), np.arange(rw, dtype=np.float64), indexing="ij"
    )
    pixels = np.stack([xx.ravel(), yy.ravel()], axis=1)
    worst = 0.0
    for item in g:
        pts = np.stack(
            [
                (item[..., 0].ravel() + 1.0) / 2.0 * (rw - 1),
                (item[..., 1].ravel() + 1.0) / 2.0 * (rh - 1),
            ],
            axis=1,
        )
        dist, _ = cKDTree(pts).query(pixels, k=1)
        worst = max(worst, float(dist.max()))
    return worst


def coverage_bound_px(
    saliency_hw: tuple[int, int], out_hw: tuple[int, int], region_hw: tuple[int, int], radius: int
) -> float:
    """Guaranteed bound on :func:`coverage_distance` for a :func:`saliency_to_grid` grid.

    Every sample lies within ``r`` saliency cells of its home on each axis, and every
    region point lies within half an output-lattice step of some home, hence the
    distance to the nearest sample is at most ``(r + step / 2)`` cells on each axis.

    Parameters
    ----------
    saliency_hw
        Saliency grid size ``(h, w)``.
    out_hw
        Sample grid size ``(H, W)``.
    region_hw
        Region size in pixels.
    radius
        Kernel half-width ``r`` in saliency cells.

    Returns
    -------
    float
        The bound in region pixels (Euclidean).
    """
    per_axis = []
    for n_sal, n_out, n_reg in zip(saliency_hw, out_hw, region_hw, strict=True):
        cell_px = (n_reg - 1) / (n_sal - 1)
        step_cells = (n_sal - 1) / (n_out - 1)
        per_axis.append(min((radius + 0.5 * step_cells) * cell_px, n_reg - 1))
    return math.hypot(*per_axis)
