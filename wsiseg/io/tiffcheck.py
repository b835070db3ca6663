"""Structural checks of TIFF-based slides before any pixel is decoded.

A damaged TIFF often still opens: its directories come first, a truncated directory
chain silently drops levels, missing tiles decode as black, and a few bytes can
declare a 10^6 x 10^6 image whose single strip would need terabytes to decode.
`check_tiff_structure` reads only the directories and refuses such files, so the
backends never see them. Files that are not TIFF are left to the backends.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["MAX_CHUNK_BYTES", "check_tiff_structure"]

log = logging.getLogger(__name__)

#: Largest decoded tile or strip accepted (a backend decodes a whole chunk per read).
MAX_CHUNK_BYTES = 1 << 30


def check_tiff_structure(path: Path) -> None:
    """Raise OSError if a TIFF is truncated, lacks image data or declares absurd chunks.

    Checks, from the directories alone: the chain of image directories ends properly
    (a truncated file loses its last directories), every image lists one offset per
    tile or strip its size needs and holds some data, no data lies past the end of
    the file, and no single tile or strip decodes to more than `MAX_CHUNK_BYTES`.
    """
    import tifffile

    if path.is_dir():
        return
    size = path.stat().st_size
    try:
        tf = tifffile.TiffFile(path)
    except Exception:  # noqa: BLE001 - not a TIFF (or unreadable): the backends decide
        return
    with tf:
        try:
            pages = list(tf.pages)
            _check_chain_end(tf, size)
            for page in pages:
                _check_tag_values(tf, page.offset, size)
            for index, page in _images(tf, pages):
                _check_image(index, page, size)
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types on bad IFDs
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OSError(f"truncated or corrupt TIFF directories ({first})") from exc


def _check_chain_end(tf: Any, size: int) -> None:
    """The last directory read must end the chain (next offset 0), else it was cut off."""
    pos = tf.pages.next_page_offset
    if pos is None:
        return
    n = tf.tiff.offsetsize
    if pos + n > size:
        raise OSError(f"truncated file: its last image directory is cut off ({size} bytes)")
    tf.filehandle.seek(pos)
    (nxt,) = struct.unpack(tf.tiff.offsetformat, tf.filehandle.read(n))
    if nxt != 0:
        where = "past its end" if nxt >= size else "unreadable"
        raise OSError(
            f"truncated or corrupt file: the next image directory (at byte {nxt}) is "
            f"{where} ({size} bytes)"
        )


def _check_tag_values(tf: Any, ifd: int, size: int) -> None:
    """No tag value of the directory at ``ifd`` may lie past the end of the file.

    tifffile skips such tags with a log message, so a file cut inside its last
    directory's values would otherwise open with some metadata silently missing.
    NDPI stores the high bits of its offsets elsewhere; its directories are skipped.
    """
    import tifffile

    t = tf.tiff
    if t.is_ndpi:
        return
    fh = tf.filehandle
    fh.seek(ifd)
    (tagno,) = struct.unpack(t.tagnoformat, fh.read(t.tagnosize))
    data = fh.read(tagno * t.tagsize)
    head = struct.calcsize(t.tagformat1)
    for i in range(len(data) // t.tagsize):
        entry = data[i * t.tagsize : (i + 1) * t.tagsize]
        code, dtype = struct.unpack(t.tagformat1, entry[:head])
        count, value = struct.unpack(t.tagformat2, entry[head:])
        fmt = tifffile.TIFF.DATA_FORMATS.get(dtype)
        if fmt is None:
            continue  # unknown type: tifffile and the backends ignore the tag
        nbytes = count * struct.calcsize("<" + fmt)
        if nbytes <= t.tagoffsetthreshold:
            continue
        (offset,) = struct.unpack(t.offsetformat, value[: t.offsetsize])
        if offset + nbytes > size:
            raise OSError(
                f"truncated file: the values of tag {code} lie past its end ({size} bytes)"
            )


def _images(tf: Any, pages: list[Any]) -> Iterator[tuple[str, Any]]:
    """Top-level pages, then pyramid levels held elsewhere (SubIFDs), each once."""
    seen: set[int] = set()
    for i, page in enumerate(pages):
        seen.add(page.offset)
        yield str(i), page
    try:
        levels = [(s.index, j, lv) for s in tf.series for j, lv in enumerate(s.levels)]
    except Exception:  # noqa: BLE001 - an unparsable series is the backends' to judge
        return
    for si, j, level in levels:
        page = level.keyframe
        if page is not None and page.offset not in seen:
            seen.add(page.offset)
            yield f"{si}.{j}", page


def _check_image(index: str, page: Any, size: int) -> None:
    offsets = tuple(getattr(page, "dataoffsets", ()) or ())
    counts = tuple(getattr(page, "databytecounts", ()) or ())
    h, w = page.imagelength, page.imagewidth
    what = f"image {index} ({w} x {h} px)"
    unit = "tiles" if page.is_tiled else "strips"
    expected = math.prod(page.chunked)
    if len(offsets) != expected or len(counts) != expected:
        found = "none" if not offsets else f"{len(offsets)}"
        raise OSError(f"{what} needs {expected} {unit} but its directory lists {found}")
    if not any(o and c for o, c in zip(offsets, counts, strict=True)):
        raise OSError(f"{what} holds no image data")
    if max(o + c for o, c in zip(offsets, counts, strict=True)) > size:
        raise OSError(f"truncated file: image data past its end ({size} bytes)")
    bits = max(getattr(page, "bitspersample", 8) or 8, 1)
    chunk_bytes = math.prod(page.chunks) * math.ceil(bits / 8)
    if chunk_bytes > MAX_CHUNK_BYTES:
        one = "tile" if page.is_tiled else "strip"
        raise OSError(
            f"{what}: one {one} would decode to {chunk_bytes / 2**30:.3g} GiB "
            f"(limit {MAX_CHUNK_BYTES / 2**30:g} GiB); implausible for a slide"
        )
