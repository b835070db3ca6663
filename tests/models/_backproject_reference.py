"""Reference grid inversion: `wsiseg.models.backproject.invert_grid` as of commit 5d5f712.

The straightforward version (one binary search per output pixel, the quad walk per chunk
of output rows, fresh temporaries). The fast implementation must give bit-identical
results on finite grids; tests/models/test_backproject.py compares the two. Not used by
the package.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wsiseg.models.sampling import no_autocast

__all__ = ["invert_grid"]

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
#: Output pixels processed together (bounds temporaries; ~1 MiB per float32 array).
_CHUNK_PIXELS = 1 << 16


def _frac_search(seq: Tensor, values: Tensor) -> Tensor:
    """Fractional index at which non-decreasing ``seq[..., n]`` reaches ``values[..., m]``.

    Linear between entries, clamped to ``[0, n - 1]``; a flat run resolves to its end.
    """
    n = seq.shape[-1]
    seq = seq.contiguous()
    idx = torch.searchsorted(seq, values.contiguous(), right=True)
    k = (idx - 1).clamp_(0, n - 2)
    lo = torch.gather(seq, -1, k)
    hi = torch.gather(seq, -1, k + 1)
    span = hi - lo
    t = torch.where(span > 0, (values - lo) / span.clamp_min(1e-30), 0.0).clamp_(0.0, 1.0)
    return k.to(values.dtype) + t


def _lerp_last(seq: Tensor, pos: Tensor) -> Tensor:
    """Linear interpolation of ``seq[..., n]`` at fractional positions ``pos[..., m]``."""
    n = seq.shape[-1]
    k = pos.floor().long().clamp_(0, n - 2)
    t = pos - k.to(pos.dtype)
    lo = torch.gather(seq, -1, k)
    hi = torch.gather(seq, -1, k + 1)
    return lo + t * (hi - lo)


def _row_crossings(grid: Tensor, xs: Tensor) -> tuple[Tensor, Tensor]:
    """Step 1: per output column, the crossing of ``x = X_q`` with every grid row.

    Returns ``j_of`` and ``curve_y``, each ``[B, Wo, H]``: the fractional column where row
    ``i`` reaches ``X_q`` and the y there (made non-decreasing for ``searchsorted``).
    """
    b, h, _, _ = grid.shape
    gx, gy = grid[..., 0], grid[..., 1]  # [B, H, W]
    # x is monotone along rows in theory; cummax guards float noise (searchsorted needs it).
    gx_sorted = torch.cummax(gx, dim=-1).values
    j_of = _frac_search(gx_sorted, xs.view(1, 1, -1).expand(b, h, -1))  # [B, H, Wo]
    y_of = _lerp_last(gy, j_of)
    curve_y = torch.cummax(y_of.transpose(1, 2), dim=-1).values.contiguous()
    return j_of.transpose(1, 2).contiguous(), curve_y


def _initial_guess(j_of: Tensor, curve_y: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
    """Step 2: fractional (i, j), each ``[B, len(ys), Wo]``, for output rows at ``ys``."""
    b, out_w, _ = curve_y.shape
    i_frac = _frac_search(curve_y, ys.view(1, 1, -1).expand(b, out_w, -1))  # [B, Wo, rows]
    j_frac = _lerp_last(j_of, i_frac)
    return i_frac.transpose(1, 2).contiguous(), j_frac.transpose(1, 2).contiguous()


def _cross(ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor) -> Tensor:
    return ax * by - ay * bx


_Quad = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _quad_table(grid: Tensor) -> Tensor:
    """Bilinear coefficients of every quad, ``[8, B * (H - 1) * (W - 1)]``.

    Column ``(b, i, j)`` describes the quad with top-left sample ``(i, j)``; its position at
    local (s, t) (row, column) is ``p00 + t a + s (b + t e)``, stored as
    ``(x00, y00, ax, ay, bx, by, ex, ey)``.
    """
    p00 = grid[:, :-1, :-1]
    a = grid[:, :-1, 1:] - p00
    b = grid[:, 1:, :-1] - p00
    e = grid[:, 1:, 1:] - p00 - a - b
    return torch.cat([p00, a, b, e], dim=-1).reshape(-1, 8).t().contiguous()


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


def _walk(
    table: Tensor,
    shape: tuple[int, int],
    offset: Tensor,
    px: Tensor,
    py: Tensor,
    i: Tensor,
    j: Tensor,
) -> tuple[Tensor, Tensor]:
    """Step 3: refine flat guesses (i, j) so that the grid at (i, j) is (px, py).

    One Newton step in the guess's quad settles almost every pixel (the guess is exact
    on grid rows and close between them). The rest are solved in closed form in that
    quad and, when the solution lies outside it, walk to the neighbouring quad it
    points to (up to ``_MAX_STEP`` quads per axis) and retry; pixels still unsettled
    then try every quad within ``_SEARCH`` quads. A solution replaces the estimate
    only if its residual is smaller, so degenerate quads (samples piled up on a
    clamped border) or folds never make the guess worse. Outside the hull the walk
    stops at the border and the local coordinates are clamped.
    """
    h, w = shape
    i0 = i.floor().long().clamp_(0, h - 2)
    j0 = j.floor().long().clamp_(0, w - 2)
    quad = _quads(table, offset + i0 * (w - 1) + j0)
    x00, y00, ax, ay, bx, by, ex, ey = quad
    s, t = i - i0.to(i.dtype), j - j0.to(j.dtype)
    dx_t, dy_t = ax + s * ex, ay + s * ey  # d/dj
    dx_s, dy_s = bx + t * ex, by + t * ey  # d/di
    rx = px - x00 - t * ax - s * dx_s
    ry = py - y00 - t * ay - s * dy_s
    best = rx.square() + ry.square()
    det = dx_t * dy_s - dx_s * dy_t
    inv_det = torch.where(det.abs() > 1e-20, 1.0 / torch.where(det == 0, 1.0, det), 0.0)
    s = s + (dx_t * ry - dy_t * rx) * inv_det
    t = t + (dy_s * rx - dx_s * ry) * inv_det
    sc, tc = s.clamp(0.0, 1.0), t.clamp(0.0, 1.0)
    res = _residual(quad, px, py, sc, tc)
    better = res < best
    i = torch.where(better, i0.to(i.dtype) + sc, i)
    j = torch.where(better, j0.to(j.dtype) + tc, j)
    best = torch.minimum(res, best)
    settled = (
        (s >= -_TOL) & (s <= 1.0 + _TOL) & (t >= -_TOL) & (t <= 1.0 + _TOL) & (res <= _RES_TOL)
    )
    active = torch.nonzero(~settled).flatten()
    i0, j0 = i0[active], j0[active]
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
        float32 ``[B, Ho, Wo, 2]``: normalised coordinates (x = column ``j``, y = row
        ``i``) into the ``H x W`` sample array, for ``grid_sample(align_corners=True,
        padding_mode='border')``. Output pixels outside the grid's hull get a border
        index. Not differentiable (the grid is detached).
    """
    if grid.ndim != 4 or grid.shape[-1] != 2:
        raise ValueError(f"grid must be [B, H, W, 2], got {tuple(grid.shape)}")
    b, h, w, _ = grid.shape
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    if min(h, w, out_h, out_w) < 2:
        raise ValueError(
            f"grid and output need >= 2 pixels per axis, got {(h, w)} -> {(out_h, out_w)}"
        )
    with torch.no_grad(), no_autocast(grid.device):
        g = grid.detach().float().contiguous()
        xs = torch.linspace(-1.0, 1.0, out_w, dtype=torch.float32, device=g.device)
        ys = torch.linspace(-1.0, 1.0, out_h, dtype=torch.float32, device=g.device)
        j_of, curve_y = _row_crossings(g, xs)
        table = _quad_table(g)
        # Output rows in chunks of ~_CHUNK_PIXELS pixels: temporaries stay in cache.
        rows = max(1, _CHUNK_PIXELS // (out_w * b))
        offset_b = (torch.arange(b, device=g.device) * ((h - 1) * (w - 1))).view(-1, 1, 1)
        inv = torch.empty((b, out_h, out_w, 2), dtype=torch.float32, device=g.device)
        for start in range(0, out_h, rows):
            ys_c = ys[start : start + rows]
            n_rows = ys_c.shape[0]
            i, j = _initial_guess(j_of, curve_y, ys_c)
            px = xs.view(1, 1, -1).expand(b, n_rows, -1).reshape(-1)
            py = ys_c.view(1, -1, 1).expand(b, -1, out_w).reshape(-1)
            offset = offset_b.expand(-1, n_rows, out_w).reshape(-1)
            i, j = _walk(table, (h, w), offset, px, py, i.reshape(-1), j.reshape(-1))
            rows_out = inv[:, start : start + n_rows]
            rows_out[..., 0] = j.view(b, n_rows, out_w) * (2.0 / (w - 1)) - 1.0
            rows_out[..., 1] = i.view(b, n_rows, out_w) * (2.0 / (h - 1)) - 1.0
    return inv
