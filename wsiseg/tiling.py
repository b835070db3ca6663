"""Region planning: square regions at the model's task resolution, over tissue.

The output mask has its own pixel grid at ``output_mpp``. It is cut into square
*cores* of ``core_out_px`` output pixels; each core is predicted from a *region*
that adds a context margin on every side. Cores never overlap, so stitching writes
each output pixel exactly once, whatever the order of the regions.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from wsiseg.errors import InputError

__all__ = [
    "Region",
    "RegionPlan",
    "allowed_output_mpps",
    "check_output_mpp",
    "parse_shard",
    "plan_regions",
    "take_shard",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Region:
    """One region: its core on the output grid and its box in level-0 pixels."""

    index: int
    row: int  # core row / column on the output grid
    col: int
    x0: float  # region box (core + margin), level-0 pixel-edge coordinates
    y0: float
    side: float  # region side in level-0 pixels


@dataclass(frozen=True)
class RegionPlan:
    """Geometry shared by every region of a slide."""

    regions: tuple[Region, ...]
    slide_size: tuple[int, int]  # level-0 (w, h)
    mpp: float  # level-0 µm/px
    task_mpp: float
    output_mpp: float
    region_px: int  # region side at task_mpp
    margin_px: int  # margin at task_mpp
    output_size: tuple[int, int]  # output grid (w, h)

    @property
    def core_out_px(self) -> int:
        return round((self.region_px - 2 * self.margin_px) * self.task_mpp / self.output_mpp)

    @property
    def margin_out_px(self) -> int:
        return round(self.margin_px * self.task_mpp / self.output_mpp)

    @property
    def region_out_px(self) -> int:
        return self.core_out_px + 2 * self.margin_out_px

    def geometry(self) -> RegionPlan:
        """This plan without its regions: what a task needs, whatever the slide's size."""
        return dataclasses.replace(self, regions=())

    def core_box_out(self, region: Region) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of the region's core on the output grid, clipped to it."""
        c = self.core_out_px
        w, h = self.output_size
        x0, y0 = region.col * c, region.row * c
        return x0, y0, min(x0 + c, w), min(y0 + c, h)


def _check_integral(value: float, what: str) -> int:
    n = round(value)
    if abs(value - n) > 1e-6 or n <= 0:
        raise InputError(f"{what} must be a positive whole number of output pixels, got {value:g}")
    return n


def allowed_output_mpps(task_mpp: float, region_px: int, margin_px: int) -> list[float]:
    """Every output pixel size (ascending) whose region core and margin are whole output
    pixels and no finer than ``task_mpp``: ``core * task_mpp / k`` for whole ``k``."""
    core = region_px - 2 * margin_px
    if core <= 0:
        return []
    return sorted(core * task_mpp / k for k in range(1, core + 1) if (margin_px * k) % core == 0)


def _as_typed(value: float) -> str:
    """A number as the user most likely typed it: the shortest text that reads back as
    it (``1e-320``, ``2.00001``, ``4`` for 4.0)."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def check_output_mpp(output_mpp: float, task_mpp: float, region_px: int, margin_px: int) -> float:
    """The allowed output pixel size ``output_mpp`` stands for (within a relative 1e-6 of
    it: that value exactly, so reruns compare equal); refuse one the model's region
    geometry cannot tile, listing the allowed values (those with at most three
    decimals; others lie between them).

    Raises
    ------
    InputError
        ``output_mpp`` not finite and positive, or not one of `allowed_output_mpps`.
    """
    typed = _as_typed(output_mpp)
    if not math.isfinite(output_mpp) or output_mpp <= 0:
        raise InputError(f"--output-mpp {typed}: must be a finite number > 0")
    allowed = allowed_output_mpps(task_mpp, region_px, margin_px)
    for a in allowed:
        if abs(a - output_mpp) <= 1e-6 * a:
            return a
    nice = [a for a in allowed if abs(round(a, 3) - a) < 1e-9] or allowed[:12]
    listed = ", ".join(f"{a:g}" for a in nice[:16])
    raise InputError(
        f"--output-mpp {typed}: the model's region core ({region_px - 2 * margin_px} px "
        f"at {task_mpp:g} µm/px) must be a whole number of output pixels; allowed: {listed}"
    )


def plan_regions(
    slide_size: tuple[int, int],
    mpp: float,
    *,
    task_mpp: float,
    region_px: int,
    margin_px: int,
    output_mpp: float,
    tissue_mask: np.ndarray | None = None,
    tissue_downsample: float = 1.0,
    roi: BaseGeometry | None = None,
) -> RegionPlan:
    """Plan regions whose cores tile the slide's output grid, keeping those over tissue.

    Parameters
    ----------
    slide_size
        Level-0 (w, h).
    mpp
        Level-0 µm/px.
    tissue_mask, tissue_downsample
        Boolean tissue mask and its level-0 pixels per mask pixel; cores that touch no
        tissue are dropped (all kept when None).
    roi
        Optional geometry in level-0 pixels; cores must intersect it too.
    """
    if output_mpp < task_mpp:
        raise InputError(f"output_mpp {output_mpp} must not be finer than task_mpp {task_mpp}")
    if not 0 <= 2 * margin_px < region_px:
        raise InputError("the margin must be smaller than half the region")
    core_out = _check_integral((region_px - 2 * margin_px) * task_mpp / output_mpp, "the core")
    margin_out_f = margin_px * task_mpp / output_mpp
    if margin_px and abs(margin_out_f - round(margin_out_f)) > 1e-6:
        raise InputError(f"the margin is {margin_out_f:g} output pixels; it must be whole")
    w0, h0 = slide_size
    out_w = max(1, math.ceil(w0 * mpp / output_mpp))
    out_h = max(1, math.ceil(h0 * mpp / output_mpp))
    out_to_l0 = output_mpp / mpp  # level-0 pixels per output pixel
    margin_l0 = margin_px * task_mpp / mpp
    side_l0 = region_px * task_mpp / mpp
    regions: list[Region] = []
    for row in range(math.ceil(out_h / core_out)):
        for col in range(math.ceil(out_w / core_out)):
            cx0, cy0 = col * core_out * out_to_l0, row * core_out * out_to_l0
            cx1 = min(cx0 + core_out * out_to_l0, w0)
            cy1 = min(cy0 + core_out * out_to_l0, h0)
            if tissue_mask is not None:
                tx0, ty0 = int(cx0 / tissue_downsample), int(cy0 / tissue_downsample)
                tx1 = max(tx0 + 1, math.ceil(cx1 / tissue_downsample))
                ty1 = max(ty0 + 1, math.ceil(cy1 / tissue_downsample))
                if not tissue_mask[ty0:ty1, tx0:tx1].any():
                    continue
            if roi is not None and not roi.intersects(box(cx0, cy0, cx1, cy1)):
                continue
            regions.append(
                Region(len(regions), row, col, cx0 - margin_l0, cy0 - margin_l0, side_l0)
            )
    log.info(
        "planned %d regions (%dx%d output grid, core %d px)", len(regions), out_w, out_h, core_out
    )
    return RegionPlan(
        regions=tuple(regions),
        slide_size=(w0, h0),
        mpp=mpp,
        task_mpp=task_mpp,
        output_mpp=output_mpp,
        region_px=region_px,
        margin_px=margin_px,
        output_size=(out_w, out_h),
    )


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/N"`` (0 <= i < N) -> (i, N); None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i_str, n_str = text.split("/")
        i, n = int(i_str), int(n_str)
    except ValueError as exc:
        raise InputError(f"--shard {text!r}: expected i/N, e.g. 0/4") from exc
    if not 0 <= i < n:
        raise InputError(f"--shard {text!r}: need 0 <= i < N")
    return i, n


def take_shard(items: list[str], shard: tuple[int, int]) -> list[str]:
    """The deterministic share ``i/N`` of ``items`` (sorted first, then every N-th)."""
    i, n = shard
    return sorted(items)[i::n]
