"""Property-based tests of region planning and stitching (random geometry, tissue, order).

``tests/test_tiling.py`` checks coverage for one region geometry; here the region
size, margin, resolutions, tissue mask and ROI vary, the coverage check is exact (a
core is kept iff its level-0 box overlaps a tissue cell), and the real stitcher of
the pipeline must give the same bytes whatever order the regions arrive in.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import box

from wsiseg.pipeline.stitch import Stitcher, core_of, density_cells_of
from wsiseg.tiling import RegionPlan, plan_regions

EPS = 1e-6


@dataclass(frozen=True)
class Geometry:
    slide_size: tuple[int, int]
    mpp: float
    task_mpp: float
    output_mpp: float
    region_px: int
    margin_px: int


@st.composite
def geometries(draw: st.DrawFn, max_cores: int = 30) -> Geometry:
    """Valid plan geometries (whole output pixels per core and margin), up to
    ``max_cores`` x ``max_cores`` cores, the last row and column often partial."""
    task_mpp = draw(st.sampled_from([0.25, 0.5, 1.0]))
    factor = draw(st.sampled_from([1, 2, 4]))  # output_mpp / task_mpp
    core_out = draw(st.integers(1, 48))
    margin_out = draw(st.integers(0, 12))
    mpp = draw(st.sampled_from([0.2, 0.2525, 0.25, 0.499, 0.5, 1.0, 2.0]))
    output_mpp = task_mpp * factor
    core_l0 = core_out * output_mpp / mpp  # level-0 pixels per core side

    def side() -> int:
        cores = draw(st.integers(0, max_cores - 1)) + draw(st.floats(0.01, 1.0))
        return max(1, math.ceil(cores * core_l0))

    return Geometry(
        slide_size=(side(), side()),
        mpp=mpp,
        task_mpp=task_mpp,
        output_mpp=output_mpp,
        region_px=(core_out + 2 * margin_out) * factor,
        margin_px=margin_out * factor,
    )


def _plan(g: Geometry, **kwargs: object) -> RegionPlan:
    return plan_regions(
        g.slide_size,
        g.mpp,
        task_mpp=g.task_mpp,
        region_px=g.region_px,
        margin_px=g.margin_px,
        output_mpp=g.output_mpp,
        **kwargs,  # type: ignore[arg-type]
    )


def _tissue(seed: int, density: float, g: Geometry, ds: float) -> np.ndarray:
    w, h = g.slide_size
    shape = (math.ceil(h / ds), math.ceil(w / ds))
    return np.random.default_rng(seed).random(shape) < density


def _cores_touching(
    tissue: np.ndarray, ds: float, g: Geometry, core_l0: float, grid: tuple[int, int], slack: float
) -> np.ndarray:
    """[rows, cols]: whether a core's level-0 box overlaps a tissue cell's by more than
    ``slack`` pixels on both axes (negative ``slack``: touching within ``-slack``)."""
    out = np.zeros(grid, bool)
    w0, h0 = g.slide_size
    for y, x in zip(*np.nonzero(tissue), strict=True):
        spans = []
        for i, size, n in ((x, w0, grid[1]), (y, h0, grid[0])):
            b0, b1 = i * ds, min((i + 1) * ds, size)
            if b1 - b0 <= 0:
                break
            lo = max(math.floor((b0 + slack) / core_l0), 0)
            hi = min(math.ceil((b1 - slack) / core_l0), n)
            spans.append(slice(lo, hi))
        else:
            out[spans[1], spans[0]] = True
    return out


@settings(max_examples=60, deadline=None)
@given(
    g=geometries(),
    seed=st.integers(0, 2**31),
    density=st.sampled_from([0.0, 0.002, 0.02, 0.3, 1.0]),
    ds=st.sampled_from([1.0, 7.5, 16.0, 33.3]),
)
def test_cores_tile_the_grid_and_are_kept_iff_they_touch_tissue(
    g: Geometry, seed: int, density: float, ds: float
) -> None:
    w0, h0 = g.slide_size
    while math.ceil(w0 / ds) * math.ceil(h0 / ds) > 40_000:
        ds *= 4  # keep the exact check cheap
    tissue = _tissue(seed, density, g, ds)
    plan = _plan(g, tissue_mask=tissue, tissue_downsample=ds)
    full = _plan(g)
    ow, oh = plan.output_size
    core = plan.core_out_px
    assert (ow, oh) == (math.ceil(w0 * g.mpp / g.output_mpp), math.ceil(h0 * g.mpp / g.output_mpp))
    # Without tissue all cores are planned: they tile the output grid exactly, in
    # row-major order, aligned to multiples of the core size (the zarr chunks).
    cover = np.zeros((oh, ow), np.int32)
    for i, r in enumerate(full.regions):
        assert r.index == i
        x0, y0, x1, y1 = full.core_box_out(r)
        assert (x0, y0) == (r.col * core, r.row * core)
        assert 0 < x1 - x0 <= core and 0 < y1 - y0 <= core
        cover[y0:y1, x0:x1] += 1
    assert (cover == 1).all()
    assert [(r.row, r.col) for r in full.regions] == sorted((r.row, r.col) for r in full.regions)
    # Each region is its core grown by the margin, in level-0 pixels, region_px at task_mpp.
    to_l0 = g.output_mpp / g.mpp
    for r in plan.regions:
        assert r.side == pytest.approx(g.region_px * g.task_mpp / g.mpp)
        assert r.x0 == pytest.approx((r.col * core - plan.margin_out_px) * to_l0)
        assert r.y0 == pytest.approx((r.row * core - plan.margin_out_px) * to_l0)
        assert plan.region_out_px * to_l0 == pytest.approx(r.side)
    assert [r.index for r in plan.regions] == list(range(len(plan.regions)))
    # Kept: every core that overlaps tissue (so every tissue pixel is in a core), and
    # no core that does not at least touch tissue (up to float rounding).
    grid = (math.ceil(oh / core), math.ceil(ow / core))
    kept = np.zeros(grid, bool)
    for r in plan.regions:
        kept[r.row, r.col] = True
    must = _cores_touching(tissue, ds, g, core * to_l0, grid, slack=1e-6)
    may = _cores_touching(tissue, ds, g, core * to_l0, grid, slack=-1e-6)
    assert not (must & ~kept).any(), "a core over tissue was dropped"
    assert not (kept & ~may).any(), "a core without tissue was kept"


@settings(max_examples=40, deadline=None)
@given(
    g=geometries(),
    roi=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0.001, 1), st.floats(0.001, 1)),
)
def test_roi_keeps_exactly_the_cores_it_touches(
    g: Geometry, roi: tuple[float, float, float, float]
) -> None:
    w0, h0 = g.slide_size
    fx, fy, fw, fh = roi
    geom = box(fx * w0, fy * h0, fx * w0 + fw * w0, fy * h0 + fh * h0)
    plan, full = _plan(g, roi=geom), _plan(g)
    to_l0 = g.output_mpp / g.mpp
    core = full.core_out_px
    want = set()
    for r in full.regions:
        cx0, cy0 = r.col * core * to_l0, r.row * core * to_l0
        cell = box(cx0, cy0, min(cx0 + core * to_l0, w0), min(cy0 + core * to_l0, h0))
        if cell.intersects(geom):
            want.add((r.row, r.col))
    assert {(r.row, r.col) for r in plan.regions} == want


def _truth(shape: tuple[int, int]) -> np.ndarray:
    """A label image with no repeats along rows/columns over short spans."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((xx * 7 + yy * 13 + (xx * yy) % 5) % 4).astype(np.uint8)


def _region_output(plan: RegionPlan, truth: np.ndarray, row: int, col: int) -> np.ndarray:
    """What a perfect model returns for a region: ``truth`` over core + margin (255 off the grid)."""
    n, m, c = plan.region_out_px, plan.margin_out_px, plan.core_out_px
    out = np.full((n, n), 255, np.uint8)
    y0, x0 = row * c - m, col * c - m
    ys, xs = (
        slice(max(y0, 0), min(y0 + n, truth.shape[0])),
        slice(max(x0, 0), min(x0 + n, truth.shape[1])),
    )
    out[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = truth[ys, xs]
    return out


def _store_digest(folder: Path) -> str:
    """Hash of every file (name and bytes) of a zarr store."""
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _stitch(
    plan: RegionPlan, order: list[int], folder: Path, grid: int
) -> tuple[np.ndarray, str, np.ndarray]:
    truth = _truth((plan.output_size[1], plan.output_size[0]))
    stitcher = Stitcher(plan, folder / "labels.zarr", density_grid=grid)
    for i in order:
        r = plan.regions[i]
        stitcher.add_core(r, core_of(plan, r, _region_output(plan, truth, r.row, r.col)))
        stitcher.add_density(r, _density(grid, r.index))
    assert stitcher.density is not None
    return (
        np.asarray(stitcher.labels[:]),
        _store_digest(folder / "labels.zarr"),
        stitcher.density,
    )


def _density(grid: int, index: int) -> np.ndarray:
    return np.arange(grid * grid, dtype=np.float32).reshape(grid, grid) + 1000 * index


@settings(max_examples=25, deadline=None)
@given(
    g=geometries(max_cores=20),
    seed=st.integers(0, 2**31),
    grid=st.integers(4, 32),
    data=st.data(),
)
def test_stitching_is_exact_and_independent_of_region_order(
    g: Geometry, seed: int, grid: int, data: st.DataObject
) -> None:
    tissue = _tissue(seed, 0.01, g, 16.0)
    plan = _plan(g, tissue_mask=tissue, tissue_downsample=16.0)
    n = len(plan.regions)
    order = data.draw(st.permutations(range(n)), label="order")
    with tempfile.TemporaryDirectory() as tmp:
        a, a_store, a_dens = _stitch(plan, list(range(n)), Path(tmp) / "a", grid)
        b, b_store, b_dens = _stitch(plan, list(order), Path(tmp) / "b", grid)
        # Writing a core twice (a retried task delivered again) changes nothing.
        c, c_store, c_dens = _stitch(
            plan, list(order) + list(order[: n // 2]), Path(tmp) / "c", grid
        )
    assert a_store == b_store == c_store
    assert a_dens.tobytes() == b_dens.tobytes() == c_dens.tobytes()
    np.testing.assert_array_equal(a, b)
    # The stitched mask is the truth on planned cores and background elsewhere.
    truth = _truth(a.shape)
    want = np.zeros_like(truth)
    for r in plan.regions:
        x0, y0, x1, y1 = plan.core_box_out(r)
        want[y0:y1, x0:x1] = truth[y0:y1, x0:x1]
    np.testing.assert_array_equal(a, want)
    # Each region's density cells sit in a block of their own (no region overwrote another).
    for r in plan.regions:
        cells = density_cells_of(plan, _density(grid, r.index))
        ch, cw = cells.shape
        block = a_dens[r.row * ch : (r.row + 1) * ch, r.col * cw : (r.col + 1) * cw]
        np.testing.assert_array_equal(block, cells[: block.shape[0], : block.shape[1]])


def test_core_of_refuses_a_wrong_shape(tmp_path: Path) -> None:
    plan = plan_regions((1000, 800), 0.5, task_mpp=0.5, region_px=64, margin_px=8, output_mpp=2.0)
    r = plan.regions[0]
    with pytest.raises(ValueError, match="expected"):
        core_of(plan, r, np.zeros((plan.region_out_px + 1, plan.region_out_px), np.uint8))
    stitcher = Stitcher(plan, tmp_path / "l.zarr")
    with pytest.raises(ValueError, match="expected"):
        stitcher.add_core(r, np.zeros((1, 1), np.uint8))
