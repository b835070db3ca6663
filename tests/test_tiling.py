"""Region planning: cores tile the output grid, cover all tissue, never overlap."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import box

from wsiseg.errors import InputError
from wsiseg.tiling import parse_shard, plan_regions, take_shard


@settings(max_examples=40, deadline=None)
@given(
    w=st.integers(300, 6000),
    h=st.integers(300, 6000),
    mpp=st.sampled_from([0.25, 0.5, 0.499]),
    seed=st.integers(0, 1000),
)
def test_cores_cover_all_tissue_once(w: int, h: int, mpp: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ds = 16.0
    tissue = rng.random((int(np.ceil(h / ds)), int(np.ceil(w / ds)))) > 0.97
    plan = plan_regions(
        (w, h),
        mpp,
        task_mpp=0.5,
        region_px=256,
        margin_px=32,
        output_mpp=2.0,
        tissue_mask=tissue,
        tissue_downsample=ds,
    )
    ow, oh = plan.output_size
    cover = np.zeros((oh, ow), np.int32)
    for r in plan.regions:
        x0, y0, x1, y1 = plan.core_box_out(r)
        cover[y0:y1, x0:x1] += 1
        # The region is the core plus the margin on every side, in level-0 pixels.
        assert r.side == pytest.approx(256 * 0.5 / mpp)
        assert r.x0 == pytest.approx(x0 * 2.0 / mpp - 32 * 0.5 / mpp)
    assert cover.max() <= 1, "cores overlap"
    # Every tissue pixel (in output coordinates) lies in some core.
    ty, tx = np.nonzero(tissue)
    ox = np.minimum(((tx + 0.5) * ds * mpp / 2.0).astype(int), ow - 1)
    oy = np.minimum(((ty + 0.5) * ds * mpp / 2.0).astype(int), oh - 1)
    assert (cover[oy, ox] == 1).all()


def test_roi_restricts_regions() -> None:
    full = plan_regions(
        (4000, 3000), 0.5, task_mpp=0.5, region_px=256, margin_px=32, output_mpp=2.0
    )
    roi = plan_regions(
        (4000, 3000),
        0.5,
        task_mpp=0.5,
        region_px=256,
        margin_px=32,
        output_mpp=2.0,
        roi=box(0, 0, 500, 500),
    )
    assert 0 < len(roi.regions) < len(full.regions)


def test_bad_geometry_is_refused() -> None:
    with pytest.raises(InputError, match="whole"):
        plan_regions((1000, 1000), 0.5, task_mpp=0.5, region_px=256, margin_px=30, output_mpp=2.0)
    with pytest.raises(InputError, match="finer"):
        plan_regions((1000, 1000), 0.5, task_mpp=0.5, region_px=256, margin_px=32, output_mpp=0.25)


def test_shards_partition_deterministically() -> None:
    items = [f"s{i}" for i in range(10)]
    parts = [take_shard(items[::-1], parse_shard(f"{i}/3")) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(items)
    assert parts[0] == ["s0", "s3", "s6", "s9"]
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(InputError):
            parse_shard(bad)
