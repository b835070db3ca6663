"""Back-projection of low-resolution predictions by inverting the sampling grid.

DESIGN §1.7: for each output pixel, its fractional sample index ``(i, j)`` is found by
inverting the piecewise-bilinear map ``(i, j) -> grid[i, j]`` (bilinear between the four
samples of each grid quad), then the class probabilities are read there with bilinear
``grid_sample`` (``align_corners=True``, border padding). Exact for affine grids (an
identity grid reduces to bilinear upsampling), no holes, O(output pixels).

Inversion, vectorised:

1. For every grid row ``i`` and output column ``X_q``: the fractional ``j`` where the row's
   (monotone) x profile reaches ``X_q``, and the y there. That traces, per output
   column, the preimage of the line ``x = X_q`` through the grid rows.
2. For every output pixel ``(Y_p, X_q)``: the fractional ``i`` where that curve's y
   reaches ``Y_p``, and ``j`` interpolated along it. This is exact on grid rows and a
   close guess between them.
3. One Newton step on the bilinear map of the guess's quad; the few pixels it does not
   settle (about 1 in 3000 on the bundled model's grids) are solved in closed form in
   that quad and, when the solution lies outside it, walk to the neighbouring quad it
   points to and retry. Exact inside the hull (to float32 precision); outside it the
   walk stops at the border and the index is clamped. A step is kept only if it
   lowers the residual, so degenerate or folded quads (the saliency sampler can pile
   samples up on a clamped border, and can fold by ~1e-5 where it compresses hard)
   never make the guess worse.

Cost: O(output pixels) time and memory. Steps 1 and 2 locate values in sorted
sequences by counting (`_count_at_most`: one search per sequence entry and a cumulative
histogram) rather than one binary search per output pixel; steps 2 and 3a run over
chunks of output rows (about 64k pixels) in scratch buffers that are reused from call
to call (`_Arena`: fresh large temporaries cost a page fault per 4 KiB, and under
dask's ``MALLOC_TRIM_THRESHOLD_=65536`` every one of them is fresh); step 3b runs once
per call on the pixels left over by all chunks. Every per-pixel value is computed by
the same float32 operations as a per-pixel loop would, so the result does not depend
on the chunking, the batch or the device's vector width.
"""

from __future__ import annotations

import logging
import math
import threading

import torch
import torch.nn.functional as F
from torch import Tensor

from wsiseg.models.sampling import no_autocast

__all__ = ["invert_grid", "backproject"]

logger = logging.getLogger(__name__)

#: Most quad-walk iterations (the guess is usually in the right quad or next to it).
_MAX_WALK = 8
#: Largest move, in quads per axis, of one walk step.
_MAX_STEP = 2
#: Half-width, in quads, of the final neighbourhood search for unsettled pixels.
_SEARCH = 2
#: Tolerance on the local coordinates for "inside the quad".
_TOL = 1e-4
#: Squared residual (normalised units) below which a Newton step counts as settled.
_RES_TOL = 1e-10
#: Output pixels processed together (bounds temporaries; ~256 KiB per float32 array).
_CHUNK_PIXELS = 1 << 16
#: Alignment of arena slices, in bytes.
_ALIGN = 64


class _Arena:
    """Scratch memory of one thread on one device, handed out in slices.

    `take` hands out the next slice (a fresh tensor once the storage is exhausted);
    `release` returns every slice taken after a `mark`; `reset` starts a call and
    grows the storage to what the previous call needed, so that from the second
    call of a given size on nothing is allocated. The storage is kept for the
    thread's lifetime (about 10 MiB for the pipeline's sizes).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.used = 0
        self.needed = 0
        self._grow(0)

    def _grow(self, size: int) -> None:
        # A normal tensor even when made under inference_mode: a later call outside it
        # writes into it.
        with torch.inference_mode(False):
            storage = torch.empty(size, dtype=torch.uint8, device=self.device)
            # One flat view per dtype, so that a slice is one as_strided call.
            self.typed = {
                dt: storage[: size - size % dt.itemsize].view(dt)
                for dt in (torch.float32, torch.int32, torch.int64, torch.bool)
            }
        self.size = size

    def reset(self) -> None:
        if self.needed > self.size:
            self._grow(self.needed)
        self.used = self.needed = 0

    def take(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        start = -(-self.used // _ALIGN) * _ALIGN
        self.used = start + math.prod(shape) * dtype.itemsize
        self.needed = max(self.needed, self.used)
        if self.used > self.size:
            return torch.empty(shape, dtype=dtype, device=self.device)
        strides, step = [], 1
        for n in reversed(shape):
            strides.append(step)
            step *= n
        return self.typed[dtype].as_strided(shape, strides[::-1], start // dtype.itemsize)

    def mark(self) -> int:
        return self.used

    def release(self, mark: int) -> None:
        self.used = mark


_ARENAS = threading.local()


def _arena(device: torch.device) -> _Arena:
    """This thread's arena for ``device``, reset for a new call."""
    arenas: dict[torch.device, _Arena] = _ARENAS.__dict__.setdefault("by_device", {})
    arena = arenas.get(device)
    if arena is None:
        arena = arenas[device] = _Arena(device)
    arena.reset()
    return arena


def _count_at_most(seq: Tensor, values: Tensor, dim: int, arena: _Arena) -> Tensor:
    """``#{k : seq[.., k, ..] <= values[p]}`` for non-decreasing ``seq`` along ``dim``
    and non-decreasing 1-D ``values``: int32, shaped as ``seq`` with ``dim`` replaced
    by ``len(values)`` (a view).

    What ``searchsorted(seq, values, right=True)`` gives, with one search per entry of
    ``seq`` instead of one per value: ``seq[k] <= values[p]`` exactly when ``p`` is at
    or after ``first[k]``, the first ``p`` with ``values[p] >= seq[k]``, so the counts
    are a cumulative histogram of ``first`` (exact integers on every device).
    """
    m = values.shape[0]
    first = torch.searchsorted(values, seq, out=arena.take(tuple(seq.shape), torch.int64))
    first = first.movedim(dim, -1)  # the searched axis last (a view)
    counts = arena.take((*first.shape[:-1], m + 1), torch.int32).zero_()
    ones = torch.ones(1, dtype=torch.int32, device=seq.device).expand(first.shape)
    counts.scatter_add_(-1, first, ones)
    out = torch.cumsum(counts, -1, dtype=torch.int32, out=arena.take(counts.shape, torch.int32))
    return out[..., :m].movedim(-1, dim)


def _sorted(values: Tensor) -> bool:
    return values.numel() < 2 or bool((values[1:] >= values[:-1]).all())


def _frac_at(
    flat: Tensor,
    count: Tensor,
    base: Tensor,
    stride: int,
    n: int,
    values: Tensor,
    arena: _Arena,
) -> Tensor:
    """Fractional index along an axis at which non-decreasing sequences reach values.

    The sequences lie in ``flat``, entry ``k`` of the one for an output element at
    ``base + k * stride``; ``count`` is `_count_at_most` for each output element, and
    ``values`` broadcasts to it. Linear between entries, clamped to ``[0, n - 1]``; a
    flat run resolves to its end (the arithmetic of ``searchsorted`` and two gathers).
    """
    shape = tuple(count.shape)
    pos = arena.take(shape)
    mark = arena.mark()
    k = torch.sub(count, 1, out=arena.take(shape, torch.int32)).clamp_(0, n - 2)
    index = torch.mul(k, stride, out=arena.take(shape, torch.int32)).add_(base).view(-1)
    lo = torch.index_select(flat, 0, index, out=arena.take((index.numel(),))).view(shape)
    hi = torch.index_select(flat, 0, index.add_(stride), out=arena.take((index.numel(),)))
    span = torch.sub(hi.view(shape), lo, out=hi.view(shape))
    t = torch.sub(values, lo, out=lo).div_(torch.clamp_min(span, 1e-30, out=arena.take(shape)))
    positive = torch.gt(span, 0, out=arena.take(shape, torch.bool))
    t = torch.where(positive, t, torch.zeros((), device=t.device), out=t)
    pos.copy_(k).add_(t.clamp_(0.0, 1.0))
    arena.release(mark)
    return pos


def _lerp_at(
    flat: Tensor, pos: Tensor, base: Tensor, stride: int, n: int, arena: _Arena
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Linear interpolation along an axis at fractional ``pos`` (layout as `_frac_at`).

    Returns the values and, for reuse, the cell ``k`` (int32, ``floor(pos)`` clamped to
    ``[0, n - 2]``), ``k`` as float and the fraction ``pos - k``.
    """
    shape = tuple(pos.shape)
    out, kf, t = arena.take(shape), arena.take(shape), arena.take(shape)
    k = arena.take(shape, torch.int32)
    mark = arena.mark()
    k.copy_(torch.floor(pos, out=out)).clamp_(0, n - 2)
    torch.sub(pos, kf.copy_(k), out=t)
    index = torch.mul(k, stride, out=arena.take(shape, torch.int32)).add_(base).view(-1)
    lo = torch.index_select(flat, 0, index, out=out.view(-1)).view(shape)
    hi = torch.index_select(flat, 0, index.add_(stride), out=arena.take((index.numel(),)))
    lo.add_(torch.sub(hi.view(shape), lo, out=hi.view(shape)).mul_(t))
    arena.release(mark)
    return out, k, kf, t


def _cross(ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor) -> Tensor:
    return ax * by - ay * bx


_Quad = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _quad_table(grid: Tensor, arena: _Arena) -> Tensor:
    """Bilinear coefficients of every quad, ``[8, B * (H - 1) * (W - 1)]``.

    Column ``(b, i, j)`` describes the quad with top-left sample ``(i, j)``; its position at
    local (s, t) (row, column) is ``p00 + t a + s (b + t e)``, stored as
    ``(x00, y00, ax, ay, bx, by, ex, ey)``.
    """
    b, h, w, _ = grid.shape
    table = arena.take((8, b, h - 1, w - 1))
    for c in range(2):
        p00, p01 = grid[:, :-1, :-1, c], grid[:, :-1, 1:, c]
        p10, p11 = grid[:, 1:, :-1, c], grid[:, 1:, 1:, c]
        table[c].copy_(p00)
        torch.sub(p01, p00, out=table[2 + c])
        torch.sub(p10, p00, out=table[4 + c])
        torch.sub(p11, p00, out=table[6 + c]).sub_(table[2 + c]).sub_(table[4 + c])
    return table.view(8, -1)


def _quads(table: Tensor, index: Tensor) -> _Quad:
    """The coefficients of the quads at flat ``index`` (one gather), as 8 tensors."""
    c = table.index_select(1, index)
    return c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]


def _residual(quad: _Quad, px: Tensor, py: Tensor, s: Tensor, t: Tensor) -> Tensor:
    """Squared distance between the quad's point at (s, t) and (px, py)."""
    x00, y00, ax, ay, bx, by, ex, ey = quad
    rx = px - x00 - t * ax - s * (bx + t * ex)
    ry = py - y00 - t * ay - s * (by + t * ey)
    return rx.square() + ry.square()


def _solve(quad: _Quad, px: Tensor, py: Tensor) -> tuple[Tensor, Tensor]:
    """Local (s, t) with quad(s, t) = (px, py), in closed form.

    ``q = t a + s (b + t e)`` gives ``(a x e) t^2 + (a x b - q x e) t - q x b = 0``; of its
    two roots the one whose (s, t) is nearest the unit square is kept. (s, t) outside
    [0, 1] means the point is not in this quad and points to where it lies.
    """
    x00, y00, ax, ay, bx, by, ex, ey = quad
    qx, qy = px - x00, py - y00
    qa = _cross(ax, ay, ex, ey)
    qb = _cross(ax, ay, bx, by) - _cross(qx, qy, ex, ey)
    qc = -_cross(qx, qy, bx, by)
    root = (qb.square() - 4.0 * qa * qc).clamp_min(0.0).sqrt()
    half = -0.5 * (qb + torch.where(qb >= 0, root, -root))  # stable form of the roots
    t1 = torch.where(qa.abs() > 1e-20, half / torch.where(qa == 0, 1.0, qa), 1e9)
    t2 = torch.where(half.abs() > 1e-20, qc / torch.where(half == 0, 1.0, half), 1e9)

    def s_of(t: Tensor) -> Tensor:
        dx, dy = bx + t * ex, by + t * ey
        norm = dx.square() + dy.square()
        num = (qx - t * ax) * dx + (qy - t * ay) * dy
        return torch.where(norm > 1e-30, num / norm.clamp_min(1e-30), 0.5)

    s1, s2 = s_of(t1), s_of(t2)
    out1 = torch.maximum((s1 - 0.5).abs(), (t1 - 0.5).abs())
    out2 = torch.maximum((s2 - 0.5).abs(), (t2 - 0.5).abs())
    pick1 = out1 < out2
    return torch.where(pick1, s1, s2), torch.where(pick1, t1, t2)


def _newton(
    table: Tensor,
    shape: tuple[int, int],
    offset: Tensor,
    px: Tensor,
    py: Tensor,
    i: Tensor,
    j: Tensor,
    cell: tuple[Tensor, Tensor, Tensor],
    arena: _Arena,
) -> tuple[Tensor, Tensor, Tensor]:
    """Step 3a: one Newton step from the guesses ``(i, j)`` in their quads, in place.

    ``i``, ``j`` are ``[B, rows, Wo]``; ``px``, ``py`` and ``offset`` (int32, the batch
    item's first quad) broadcast to that shape; ``cell`` is ``i``'s quad row ``i0``
    (int32, ``floor(i)`` clamped to ``[0, H - 2]``), as float and ``i - i0``, as
    `_lerp_at` made them (they are consumed). Returns the squared residual of the
    refined ``(i, j)``, whether each pixel is settled (the step landed in the quad with
    a residual below ``_RES_TOL``) and the guess's quad column ``j0`` (int32). The
    step is kept only where it lowers the residual.
    """
    h, w = shape
    dims = tuple(i.shape)
    i0, i0f, s = cell
    best = arena.take(dims)
    settled = arena.take(dims, torch.bool)
    j0 = arena.take(dims, torch.int32)
    mark = arena.mark()

    def new() -> Tensor:
        return arena.take(dims)

    j0f, tmp = new(), new()
    j0.copy_(torch.floor(j, out=tmp)).clamp_(0, w - 2)
    j0f.copy_(j0)
    index = torch.mul(i0, w - 1, out=arena.take(dims, torch.int32)).add_(j0).add_(offset)
    coef = torch.index_select(table, 1, index.view(-1), out=arena.take((8, index.numel())))
    x00, y00, ax, ay, bx, by, ex, ey = (c.view(dims) for c in coef)
    t = torch.sub(j, j0f, out=new())
    dx_t = torch.mul(s, ex, out=new()).add_(ax)  # d/dj
    dy_t = torch.mul(s, ey, out=new()).add_(ay)
    dx_s = torch.mul(t, ex, out=new()).add_(bx)  # d/di
    dy_s = torch.mul(t, ey, out=new()).add_(by)
    qx = torch.sub(px, x00, out=new())
    qy = torch.sub(py, y00, out=new())
    rx = torch.sub(qx, torch.mul(t, ax, out=tmp), out=new()).sub_(torch.mul(s, dx_s, out=tmp))
    ry = torch.sub(qy, torch.mul(t, ay, out=tmp), out=new()).sub_(torch.mul(s, dy_s, out=tmp))
    torch.mul(rx, rx, out=best).add_(torch.mul(ry, ry, out=tmp))
    det = torch.mul(dx_t, dy_s, out=new()).sub_(torch.mul(dx_s, dy_t, out=tmp))
    inv_det = torch.reciprocal(det, out=new())
    usable = torch.gt(torch.abs(det, out=tmp), 1e-20, out=arena.take(dims, torch.bool))
    torch.where(usable, inv_det, torch.zeros((), device=det.device), out=inv_det)
    step = torch.mul(dx_t, ry, out=det).sub_(torch.mul(dy_t, rx, out=tmp)).mul_(inv_det)
    s.add_(step)
    step = torch.mul(dy_s, rx, out=step).sub_(torch.mul(dx_s, ry, out=tmp)).mul_(inv_det)
    t.add_(step)
    sc = torch.clamp(s, 0.0, 1.0, out=dx_t)
    tc = torch.clamp(t, 0.0, 1.0, out=dy_t)
    # The residual at the clamped step, as `_residual` computes it.
    torch.sub(qx, torch.mul(tc, ax, out=rx), out=rx)
    rx.sub_(torch.mul(tc, ex, out=tmp).add_(bx).mul_(sc))
    torch.sub(qy, torch.mul(tc, ay, out=ry), out=ry)
    ry.sub_(torch.mul(tc, ey, out=tmp).add_(by).mul_(sc))
    res = rx.mul_(rx).add_(ry.mul_(ry))
    better = torch.lt(res, best, out=usable)
    torch.where(better, i0f.add_(sc), i, out=i)
    torch.where(better, j0f.add_(tc), j, out=j)
    torch.minimum(res, best, out=best)
    ok = torch.eq(torch.clamp(t, -_TOL, 1.0 + _TOL, out=tmp), t, out=usable)
    torch.eq(torch.clamp(s, -_TOL, 1.0 + _TOL, out=tmp), s, out=settled).logical_and_(ok)
    settled.logical_and_(torch.le(res, _RES_TOL, out=ok))
    arena.release(mark)
    return best, settled, j0


def _walk(
    table: Tensor,
    shape: tuple[int, int],
    offset: Tensor,
    px: Tensor,
    py: Tensor,
    i: Tensor,
    j: Tensor,
    best: Tensor,
    i0: Tensor,
    j0: Tensor,
) -> tuple[Tensor, Tensor]:
    """Step 3b: the pixels the Newton step did not settle (flat, any count).

    They are solved in closed form in their guess's quad and, when the solution lies
    outside it, walk to the neighbouring quad it points to (up to ``_MAX_STEP`` quads
    per axis) and retry; pixels still unsettled then try every quad within
    ``_SEARCH`` quads. A solution replaces the estimate only if its residual is
    smaller than ``best``, so degenerate quads (samples piled up on a clamped border)
    or folds never make the guess worse. Outside the hull the walk stops at the border
    and the local coordinates are clamped. ``offset`` is each pixel's first quad,
    ``(i0, j0)`` (int64) its guess's quad, ``best`` the squared residual of ``(i, j)``.
    """
    h, w = shape
    active = torch.arange(i.numel(), device=i.device)
    for _ in range(_MAX_WALK):
        if active.numel() == 0:
            break
        quad = _quads(table, offset[active] + i0 * (w - 1) + j0)
        pxa, pya = px[active], py[active]
        s, t = _solve(quad, pxa, pya)
        sc, tc = s.clamp(0.0, 1.0), t.clamp(0.0, 1.0)
        res = _residual(quad, pxa, pya, sc, tc)
        better = res < best[active]
        upd = active[better]
        i[upd] = i0[better].to(i.dtype) + sc[better]
        j[upd] = j0[better].to(j.dtype) + tc[better]
        best[upd] = res[better]
        inside = (s >= -_TOL) & (s <= 1.0 + _TOL) & (t >= -_TOL) & (t <= 1.0 + _TOL)
        inside &= res <= _RES_TOL
        step_i = torch.nan_to_num(s.floor(), nan=0.0).clamp_(-_MAX_STEP, _MAX_STEP).long()
        step_j = torch.nan_to_num(t.floor(), nan=0.0).clamp_(-_MAX_STEP, _MAX_STEP).long()
        ni0 = (i0 + step_i).clamp_(0, h - 2)
        nj0 = (j0 + step_j).clamp_(0, w - 2)
        keep = torch.nonzero(~inside & ((ni0 != i0) | (nj0 != j0))).flatten()
        active, i0, j0 = active[keep], ni0[keep], nj0[keep]

    # Last resort for the few pixels still off (a root of a strongly distorted quad can
    # land inside it without solving the equation): try every quad nearby.
    left = torch.nonzero(best > _RES_TOL).flatten()
    if left.numel() > 0:
        ci = i[left].floor().long()
        cj = j[left].floor().long()
        pxa, pya = px[left], py[left]
        for di in range(-_SEARCH, _SEARCH + 1):
            for dj in range(-_SEARCH, _SEARCH + 1):
                qi = (ci + di).clamp_(0, h - 2)
                qj = (cj + dj).clamp_(0, w - 2)
                quad = _quads(table, offset[left] + qi * (w - 1) + qj)
                s, t = _solve(quad, pxa, pya)
                sc, tc = s.clamp(0.0, 1.0), t.clamp(0.0, 1.0)
                res = _residual(quad, pxa, pya, sc, tc)
                better = res < best[left]
                upd = left[better]
                i[upd] = qi[better].to(i.dtype) + sc[better]
                j[upd] = qj[better].to(j.dtype) + tc[better]
                best[upd] = res[better]
    return i, j


def invert_grid(grid: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """Inverse of a sampling grid: where, in the sample array, each output pixel lies.

    Parameters
    ----------
    grid
        ``[B, H, W, 2]`` sample positions (x first, ``align_corners=True`` normalised
        over the region), x monotone along rows and y along columns, as made by
        :func:`~wsiseg.models.sampling.saliency_to_grid`.
    out_hw
        Output size ``(Ho, Wo)``; output pixel ``(p, q)`` is at
        ``(linspace(-1, 1, Wo)[q], linspace(-1, 1, Ho)[p])``.

    Returns
    -------
    Tensor
        float32 ``[B, Ho, Wo, 2]`` on the grid's device: normalised coordinates (x =
        column ``j``, y = row ``i``) into the ``H x W`` sample array, for
        ``grid_sample(align_corners=True, padding_mode='border')``. Output pixels
        outside the grid's hull get a border index. Not differentiable (the grid is
        detached).
    """
    if grid.ndim != 4 or grid.shape[-1] != 2:
        raise ValueError(f"grid must be [B, H, W, 2], got {tuple(grid.shape)}")
    b, h, w, _ = grid.shape
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    if min(h, w, out_h, out_w) < 2:
        raise ValueError(
            f"grid and output need >= 2 pixels per axis, got {(h, w)} -> {(out_h, out_w)}"
        )
    if b * max(h, out_h) * max(w, out_w) >= 2**31:
        raise ValueError(f"grid {(b, h, w)} -> {(out_h, out_w)} is too large to invert")
    with torch.no_grad(), no_autocast(grid.device):
        g = grid.detach().float().contiguous()
        dev = g.device
        arena = _arena(dev)
        xs = torch.linspace(-1.0, 1.0, out_w, dtype=torch.float32, device=dev)
        ys = torch.linspace(-1.0, 1.0, out_h, dtype=torch.float32, device=dev)
        if not (_sorted(xs) and _sorted(ys)):  # pragma: no cover - linspace is monotone
            raise RuntimeError("torch.linspace is not monotone on this device")
        # Step 1 (x is monotone along rows in theory; cummax guards float noise).
        gx = torch.cummax(g[..., 0], dim=-1).values
        row_base = (torch.arange(b * h, dtype=torch.int32, device=dev) * w).view(b, h, 1)
        j_of = _frac_at(
            gx.view(-1), _count_at_most(gx, xs, -1, arena), row_base, 1, w, xs, arena
        )  # [B, H, Wo]
        y_of = _lerp_at(g[..., 1].contiguous().view(-1), j_of, row_base, 1, w, arena)[0]
        curve_y = arena.take(tuple(y_of.shape))
        torch.cummax(y_of, 1, out=(curve_y, arena.take(tuple(y_of.shape), torch.int64)))
        count_y = _count_at_most(curve_y, ys, 1, arena)  # [B, Ho, Wo]
        col_base = (torch.arange(b, dtype=torch.int32, device=dev) * (h * out_w)).view(b, 1, 1)
        col_base = col_base + torch.arange(out_w, dtype=torch.int32, device=dev).view(1, 1, -1)
        table = _quad_table(g, arena)
        quads = (h - 1) * (w - 1)
        offset = (torch.arange(b, dtype=torch.int32, device=dev) * quads).view(-1, 1, 1)
        inv = torch.empty((b, out_h, out_w, 2), dtype=torch.float32, device=dev)
        # Output rows in chunks of ~_CHUNK_PIXELS pixels, in reused scratch memory.
        rows = max(1, _CHUNK_PIXELS // (out_w * b))
        left: list[tuple[Tensor, ...]] = []
        mark = arena.mark()
        for start in range(0, out_h, rows):
            arena.release(mark)
            ys_c = ys[start : start + rows]
            n_rows = ys_c.shape[0]
            px, py = xs.view(1, 1, -1), ys_c.view(1, -1, 1)
            # Step 2: the guess, exact on grid rows and close between them.
            count = count_y[:, start : start + n_rows]
            i = _frac_at(curve_y.view(-1), count, col_base, out_w, h, py, arena)
            j, i0, i0f, s = _lerp_at(j_of.view(-1), i, col_base, out_w, h, arena)
            best, settled, j0 = _newton(table, (h, w), offset, px, py, i, j, (i0, i0f, s), arena)
            rows_out = inv[:, start : start + n_rows]
            torch.mul(j, 2.0 / (w - 1), out=rows_out[..., 0]).sub_(1.0)
            torch.mul(i, 2.0 / (h - 1), out=rows_out[..., 1]).sub_(1.0)
            pick = torch.nonzero(settled.view(-1).logical_not_()).flatten()
            if pick.numel():
                # (batch item, output row, column) of each unsettled pixel and its state
                # (copies: the chunk's scratch is reused).
                bi, rq = pick // (n_rows * out_w), pick % (n_rows * out_w)
                p, q = rq // out_w + start, rq % out_w
                left.append(
                    ((bi * out_h + p) * out_w + q, bi * quads, xs[q], ys[p])
                    + tuple(v.reshape(-1)[pick] for v in (i, j, best, i0, j0))
                )
        if left:
            flat, off, px, py, i, j, best, i0, j0 = (torch.cat(v) for v in zip(*left, strict=True))
            i, j = _walk(table, (h, w), off, px, py, i, j, best, i0.long(), j0.long())
            out = inv.view(-1, 2)
            out[flat, 0] = j * (2.0 / (w - 1)) - 1.0
            out[flat, 1] = i * (2.0 / (h - 1)) - 1.0
    return inv


def backproject(probs: Tensor, grid: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """Bring predictions made on grid samples back to a regular output lattice.

    Parameters
    ----------
    probs
        ``[B, K, H, W]`` per-sample class probabilities (or logits) on the grid.
    grid
        ``[B, H, W, 2]`` grid the samples were taken at.
    out_hw
        Output size ``(Ho, Wo)`` over the same region.

    Returns
    -------
    Tensor
        float32 ``[B, K, Ho, Wo]``. With an identity grid this equals
        ``F.interpolate(probs, out_hw, mode='bilinear', align_corners=True)``.
    """
    if probs.ndim != 4 or probs.shape[0] != grid.shape[0] or probs.shape[-2:] != grid.shape[1:3]:
        raise ValueError(f"probs {tuple(probs.shape)} does not match grid {tuple(grid.shape)}")
    inv = invert_grid(grid, out_hw)
    with no_autocast(probs.device):
        return F.grid_sample(
            probs.float(), inv, mode="bilinear", padding_mode="border", align_corners=True
        )
