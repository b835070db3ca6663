"""Overlay PNG for quality control: class colours over a thumbnail, optional density panel.

Layout: ``[overlay | density]`` side by side (the density panel only when a
density map is given), then a legend strip below with a swatch and the name of
every non-background class (and a colour bar for the density). The density is
drawn with viridis (a perceptual colormap), interpolated from its 11 standard
anchor colours, so no plotting library is needed.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wsiseg.fileops import atomic_path

__all__ = ["render_overlay", "viridis", "write_overlay_png", "write_png"]

# viridis at 0, 0.1, ..., 1 (matplotlib's colormap, sampled).
_VIRIDIS_ANCHORS = np.array(
    [
        (0x44, 0x01, 0x54),
        (0x48, 0x24, 0x75),
        (0x41, 0x44, 0x87),
        (0x35, 0x5F, 0x8D),
        (0x2A, 0x78, 0x8E),
        (0x21, 0x91, 0x8C),
        (0x22, 0xA8, 0x84),
        (0x44, 0xBF, 0x70),
        (0x7A, 0xD1, 0x51),
        (0xBD, 0xDF, 0x26),
        (0xFD, 0xE7, 0x25),
    ],
    np.float64,
)
_GAP_PX = 4
_SWATCH_PX = 12
_LEGEND_ROW_PX = 18
_WHITE = (255, 255, 255)
_BAND_PIXELS = 1 << 18  # overlay pixels drawn at a time (bounds the float temporaries)


def viridis(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipped; NaN -> 0) to uint8 RGB with viridis."""
    v = np.nan_to_num(np.clip(np.asarray(values, np.float64), 0.0, 1.0), nan=0.0)
    pos = v * (len(_VIRIDIS_ANCHORS) - 1)
    lo = np.minimum(pos.astype(np.int64), len(_VIRIDIS_ANCHORS) - 2)
    frac = (pos - lo)[..., None]
    rgb = _VIRIDIS_ANCHORS[lo] * (1 - frac) + _VIRIDIS_ANCHORS[lo + 1] * frac
    out: np.ndarray = np.round(rgb).astype(np.uint8)
    return out


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise ValueError(f"thumbnail must be (h, w, 3) RGB, got shape {img.shape}")
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return img


def _nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize (pixel centres) of a 2-D array to ``shape``."""
    if labels.shape == shape:
        return labels
    rows = ((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.int64)
    cols = ((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.int64)
    out: np.ndarray = labels[np.minimum(rows, labels.shape[0] - 1)][
        :, np.minimum(cols, labels.shape[1] - 1)
    ]
    return out


def _edges(labels: np.ndarray) -> np.ndarray:
    """Pixels of a non-zero class with a 4-neighbour of another class."""
    edge = np.zeros(labels.shape, bool)
    dy = labels[1:] != labels[:-1]
    dx = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    out: np.ndarray = edge & (labels != 0)
    return out


def _blend_rows(
    thumb: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float, r0: int, r1: int
) -> np.ndarray:
    """Rows ``r0:r1`` of the overlay: class colours blended in, outlines drawn."""
    top = max(0, r0 - 1)  # outlines look one row up and down
    context = labels[top : min(labels.shape[0], r1 + 1)].astype(np.intp)
    rows = slice(r0 - top, r1 - top)
    lab = context[rows]
    part = thumb[r0:r1]
    out = part.copy()
    inside = lab != 0
    blend = (1 - alpha) * part[inside] + alpha * colours[lab[inside]]
    out[inside] = np.round(blend).astype(np.uint8)
    edge = _edges(context)[rows]
    out[edge] = colours[lab[edge]].astype(np.uint8)
    return out


@dataclass(frozen=True)
class _Density:
    """A density map drawn at another size: output row ``i`` (column ``j``) shows source
    row ``rows[i]`` (column ``cols[j]``), ``floor(i * source / output)``; ``lo``/``hi``
    are the range of the finite values shown."""

    d: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    lo: float
    hi: float

    def band(self, r0: int, r1: int) -> np.ndarray:
        out: np.ndarray = self.d[self.rows[r0:r1, None], self.cols[None, :]]
        return out


def _density_scaled(density: np.ndarray, shape: tuple[int, int]) -> _Density:
    """The density's nearest-neighbour index to ``shape`` and the range of its shown
    finite values (only the sampled rows and columns: the map is never resized whole)."""
    d = np.asarray(density, np.float32)
    if d.ndim != 2:
        raise ValueError(f"density must be 2-D, got shape {d.shape}")
    rows = np.minimum(np.arange(shape[0]) * d.shape[0] // max(1, shape[0]), d.shape[0] - 1)
    cols = np.minimum(np.arange(shape[1]) * d.shape[1] // max(1, shape[1]), d.shape[1] - 1)
    shown = d[np.unique(rows)][:, np.unique(cols)] if d.size and rows.size and cols.size else d
    finite = np.isfinite(shown)
    if not finite.any():
        return _Density(d, rows, cols, 0.0, 1.0)
    lo = float(np.min(shown, where=finite, initial=np.inf))
    return _Density(d, rows, cols, lo, float(np.max(shown, where=finite, initial=-np.inf)))


def _density_rows(d: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Rows of the density panel (viridis of the min-max normalised density)."""
    return viridis((d - lo) / (hi - lo) if hi > lo else np.zeros_like(d))


def _legend(
    width: int,
    names: Sequence[str],
    colours: np.ndarray,
    with_density: bool,
) -> np.ndarray:
    """A white strip with class swatches and names, wrapped to ``width``."""
    font = ImageFont.load_default()
    items: list[tuple[str, np.ndarray | None]] = [
        (str(n), colours[i]) for i, n in enumerate(names) if i != 0
    ]
    if with_density:
        items.append(("density (low to high)", None))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    placed: list[tuple[int, int, str, np.ndarray | None]] = []
    x, row = _GAP_PX, 0
    for text, colour in items:
        mark = 4 * _SWATCH_PX if colour is None else _SWATCH_PX
        item_w = mark + 4 + int(probe.textlength(text, font=font)) + 3 * _GAP_PX
        if x + item_w > width and x > _GAP_PX:
            x, row = _GAP_PX, row + 1
        placed.append((x, row, text, colour))
        x += item_w
    strip = Image.new("RGB", (width, (row + 1) * _LEGEND_ROW_PX + _GAP_PX), _WHITE)
    draw = ImageDraw.Draw(strip)
    for x, row, text, colour in placed:
        y = _GAP_PX + row * _LEGEND_ROW_PX
        if colour is None:
            bar = viridis(np.linspace(0, 1, 4 * _SWATCH_PX))[None].repeat(_SWATCH_PX, axis=0)
            strip.paste(Image.fromarray(bar), (x, y))
            mark = 4 * _SWATCH_PX
        else:
            fill = (int(colour[0]), int(colour[1]), int(colour[2]))
            draw.rectangle([x, y, x + _SWATCH_PX - 1, y + _SWATCH_PX - 1], fill=fill, outline=0)
            mark = _SWATCH_PX
        draw.text((x + mark + 4, y), text, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def render_overlay(
    thumbnail_rgb: np.ndarray,
    labels_small: np.ndarray,
    class_colours: Sequence[tuple[int, int, int]],
    *,
    alpha: float = 0.45,
    density: np.ndarray | None = None,
    legend: Sequence[str] | None = None,
) -> np.ndarray:
    """Blend class colours over a thumbnail, outline the classes, add panels.

    Parameters
    ----------
    thumbnail_rgb : ndarray, shape (h, w, 3)
        The slide thumbnail (uint8; grey or RGBA are converted).
    labels_small : ndarray, shape (h', w')
        Class ids (0 = background, left as is); resized to (h, w) by nearest
        neighbour when the shapes differ.
    class_colours : sequence of (r, g, b)
        Colour per class id.
    alpha : float
        Opacity of the class colour inside regions; outlines are opaque.
    density : ndarray, shape (h'', w''), optional
        A float map (e.g. sampling density) shown as a viridis panel right of
        the overlay, min-max normalised, brought to (h, w) by nearest neighbour
        (output row ``i`` shows row ``floor(i * h'' / h)``, columns alike) a band at a
        time.
    legend : sequence of str, optional
        Class names (index = class id); adds a legend strip below the panels.

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)
        ``W = w`` (or ``2 * w + 4`` with a density panel), ``H = h`` plus the
        legend strip.
    """
    (height, width), bands = _overlay_bands(
        thumbnail_rgb, labels_small, class_colours, alpha, density, legend
    )
    out = np.empty((height, width, 3), np.uint8)
    row = 0
    for band in bands:
        out[row : row + band.shape[0]] = band
        row += band.shape[0]
    return out


def write_overlay_png(
    path: str | Path,
    thumbnail_rgb: np.ndarray,
    labels_small: np.ndarray,
    class_colours: Sequence[tuple[int, int, int]],
    *,
    alpha: float = 0.45,
    density: np.ndarray | None = None,
    legend: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """`write_png` of `render_overlay` (the same file), drawn and encoded band by
    band: the whole overlay is never held."""
    (height, width), bands = _overlay_bands(
        thumbnail_rgb, labels_small, class_colours, alpha, density, legend
    )
    return _save_png(path, (height, width), bands, overwrite)


def _overlay_bands(
    thumbnail_rgb: np.ndarray,
    labels_small: np.ndarray,
    class_colours: Sequence[tuple[int, int, int]],
    alpha: float,
    density: np.ndarray | None,
    legend: Sequence[str] | None,
) -> tuple[tuple[int, int], Iterator[np.ndarray]]:
    """The overlay's (height, width) and its rows, band after band, the legend last
    (`render_overlay` describes it). The inputs are checked before the first band."""
    thumb = _as_rgb(thumbnail_rgb)
    h, w = thumb.shape[:2]
    colours = np.asarray(class_colours, np.float64).reshape(-1, 3)
    labels = _nearest(np.asarray(labels_small), (h, w))
    if labels.size and (int(labels.max()) >= len(colours) or int(labels.min()) < 0):
        raise ValueError(f"labels up to {int(labels.max())} but {len(colours)} class colours")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    scaled = _density_scaled(density, (h, w)) if density is not None else None
    if legend is not None and len(legend) != len(colours):
        raise ValueError(f"{len(legend)} legend names for {len(colours)} class colours")
    width = w if scaled is None else 2 * w + _GAP_PX
    strip = None if legend is None else _legend(width, legend, colours, scaled is not None)

    def bands() -> Iterator[np.ndarray]:
        step = max(1, _BAND_PIXELS // max(1, width))
        for r0 in range(0, h, step):
            r1 = min(h, r0 + step)
            band = np.empty((r1 - r0, width, 3), np.uint8)
            band[:, :w] = _blend_rows(thumb, labels, colours, alpha, r0, r1)
            if scaled is not None:
                band[:, w : w + _GAP_PX] = 255
                band[:, w + _GAP_PX :] = _density_rows(scaled.band(r0, r1), scaled.lo, scaled.hi)
            yield band
        if strip is not None:
            yield strip

    return (h + (0 if strip is None else strip.shape[0]), width), bands()


def write_png(path: str | Path, rgb: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write an RGB uint8 image as PNG, atomically.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    img = _as_rgb(rgb)
    step = max(1, _BAND_PIXELS // max(1, img.shape[1]))  # encoded a band at a time
    bands = (img[r0 : r0 + step] for r0 in range(0, img.shape[0], step))
    return _save_png(path, img.shape[:2], bands, overwrite)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IDAT_BYTES = 1 << 16  # compressed bytes per IDAT chunk


def _png_chunk(fh: BinaryIO, kind: bytes, data: bytes) -> None:
    fh.write(struct.pack(">I", len(data)) + kind + data)
    fh.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _save_png(
    path: str | Path, shape: tuple[int, int], bands: Iterable[np.ndarray], overwrite: bool
) -> Path:
    """An 8-bit RGB PNG of ``shape`` (height, width) from its rows, band after band
    (uint8 (rows, width, 3) each), encoded as they come: every row filtered by "up"
    (its difference to the row above), one zlib stream cut into IDAT chunks of a fixed
    size, so the file does not depend on how the rows were banded."""
    height, width = shape
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "wb") as fh:
        fh.write(_PNG_SIGNATURE)
        _png_chunk(fh, b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        deflate = zlib.compressobj(6)
        pending = bytearray()
        above = np.zeros(width * 3, np.uint8)
        rows_written = 0
        for band in bands:
            rows = np.ascontiguousarray(band, np.uint8).reshape(-1, width * 3)
            if not rows.size:
                continue
            filtered = np.empty((rows.shape[0], width * 3 + 1), np.uint8)
            filtered[:, 0] = 2  # filter type "up"; uint8 differences wrap modulo 256
            np.subtract(rows[0], above, out=filtered[0, 1:])
            np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
            above = rows[-1].copy()
            rows_written += rows.shape[0]
            pending += deflate.compress(filtered.tobytes())
            while len(pending) >= _IDAT_BYTES:
                _png_chunk(fh, b"IDAT", bytes(pending[:_IDAT_BYTES]))
                del pending[:_IDAT_BYTES]
        if rows_written != height:
            raise ValueError(f"PNG of {height} rows given {rows_written}")
        pending += deflate.flush()
        for start in range(0, len(pending), _IDAT_BYTES):
            _png_chunk(fh, b"IDAT", bytes(pending[start : start + _IDAT_BYTES]))
        _png_chunk(fh, b"IEND", b"")
    return path


class PngNotStreamable(ValueError):
    """A PNG that `read_png_bands` does not decode (another bit depth, colour type,
    interlacing or filter than `_save_png` writes); read it with PIL instead."""


def read_png_bands(
    path: str | Path, band_rows: int
) -> tuple[tuple[int, int], Iterator[np.ndarray]]:
    """The (height, width) of an 8-bit RGB PNG and its rows, ``band_rows`` at a time
    (uint8 ``(rows, width, 3)``), decoded as they are read: the PNGs `_save_png` writes
    (filters "none" and "up") are never held whole. The file is opened when the
    first band is asked for.

    Raises
    ------
    PngNotStreamable
        Not such a PNG (raised before the first band for the header; a row with
        another filter raises it while iterating).
    """
    with open(path, "rb") as fh:
        head = fh.read(33)  # signature, IHDR chunk
    if head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR" or len(head) < 33:
        raise PngNotStreamable(f"{path}: not a PNG")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    if (depth, colour, interlace) != (8, 2, 0):
        raise PngNotStreamable(f"{path}: not 8-bit RGB without interlacing")
    stride = width * 3 + 1

    def idat(fh: BinaryIO) -> Iterator[bytes]:
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return
            length, kind = struct.unpack(">I4s", head)
            data = fh.read(length)
            fh.read(4)
            if kind == b"IDAT":
                yield data

    def decode(raw: np.ndarray, above: np.ndarray) -> np.ndarray:
        if not np.isin(raw[:, 0], (0, 2)).all():
            raise PngNotStreamable(f"{path}: a row filter other than none/up")
        rows = raw[:, 1:].copy()
        for i in range(rows.shape[0]):  # "up": add the decoded row above (mod 256)
            if raw[i, 0] == 2:
                rows[i] += rows[i - 1] if i else above
        return rows

    def bands() -> Iterator[np.ndarray]:
        inflate, pending = zlib.decompressobj(), bytearray()
        above, done, limit = np.zeros(width * 3, np.uint8), 0, band_rows * stride
        with open(path, "rb") as fh:
            fh.seek(33)
            for data in idat(fh):
                while done < height:  # inflated a band at most at a time
                    out = inflate.decompress(data, max(stride, limit - len(pending)))
                    data = inflate.unconsumed_tail
                    pending += out
                    n = min(len(pending) // stride, height - done)
                    while n >= band_rows or (n and done + n == height):
                        take = min(n, band_rows)
                        raw = np.frombuffer(bytes(pending[: take * stride]), np.uint8)
                        del pending[: take * stride]
                        rows = decode(raw.reshape(take, stride), above)
                        above, done, n = rows[-1].copy(), done + take, n - take
                        yield rows.reshape(take, width, 3)
                    if not out and not data:
                        break  # the next chunk
                if done == height:
                    return
        raise PngNotStreamable(f"{path}: truncated after {done} of {height} rows")

    return (int(height), int(width)), bands()
