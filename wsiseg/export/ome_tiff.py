"""Pyramidal OME-TIFF label masks (uint8 class ids), written strip by strip.

Layout (what Bio-Formats, QuPath, tifffile and tiffslide read as one pyramid):

* one image series, ``uint8``, axes ``YX``, photometric min-is-black;
* tiled (tile side a multiple of 16), lossless ``zlib`` (Adobe deflate, TIFF
  compression 8: Bio-Formats reads it, unlike zstd), BigTIFF when the raw
  pixels pass 2 GiB;
* reduced levels as SubIFDs of level 0 (``subfiletype=1``), each 2x smaller
  (rounded up) until the longer side is at most ``min_level_px``; levels are
  built by a 2x2 **mode** (the most frequent class of each 2x2 block, ties to the
  top-left pixel), never by averaging, so they hold only existing class ids;
* OME-XML with ``PhysicalSizeX/Y`` in µm per pixel of level 0.

Classes are recorded three times in the OME-XML, so that every reader finds them:

* two ``MapAnnotation`` elements linked to the image, namespaces
  :data:`CLASS_NAMES_NS` (key = label value, value = class name) and
  :data:`CLASS_COLOURS_NS` (key = label value, value = ``#rrggbb``); OMERO and
  Bio-Formats (``ImageInfo -omexml``) show them;
* the image ``Description``: JSON ``{"wsiseg_classes": [{"id", "name",
  "color": [r, g, b]}, ...]}``, parsed back by :func:`read_label_classes`;
* the channel name ``labels``.

Memory: level 0 is read from ``labels`` (a numpy array, memmap or zarr array)
one row of tiles at a time; each level's 2x reduction is written
to a temporary zarr array next to the output and read back the same way when
its turn comes. Nothing larger than a strip is ever held.
"""

from __future__ import annotations

import json
import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tifffile
import zarr

from wsiseg.fileops import atomic_path, remove_path

__all__ = [
    "CLASS_COLOURS_NS",
    "CLASS_NAMES_NS",
    "read_label_classes",
    "read_label_ome_tiff",
    "write_label_ome_tiff",
]

log = logging.getLogger(__name__)

CLASS_NAMES_NS = "wsiseg.label-classes/names"
"""MapAnnotation namespace: label value -> class name."""
CLASS_COLOURS_NS = "wsiseg.label-classes/colours"
"""MapAnnotation namespace: label value -> ``#rrggbb``."""

_BIGTIFF_RAW_BYTES = 2**31  # compressed labels are far smaller; 2 GiB leaves margin
_READ_COLUMNS = 1024  # a strip is read in blocks of this many columns
_ENCODE_BUFFER_TILES = 16  # tiles queued for parallel zlib encoding


class _Sliceable(Protocol):
    """A 2-D array-like: numpy, memmap, zarr."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> Any: ...

    def __getitem__(self, key: Any) -> Any: ...


def _level_sizes(h: int, w: int, min_level_px: int) -> list[tuple[int, int]]:
    sizes = [(h, w)]
    while max(sizes[-1]) > min_level_px:
        ph, pw = sizes[-1]
        sizes.append(((ph + 1) // 2, (pw + 1) // 2))
    return sizes


def _mode2x(block: np.ndarray) -> np.ndarray:
    """2x2 mode of a uint8 array (odd sizes: the last row/column is repeated)."""
    h, w = block.shape
    if h % 2 or w % 2:
        block = np.pad(block, ((0, h % 2), (0, w % 2)), mode="edge")
    a, b = block[0::2, 0::2], block[0::2, 1::2]
    c, d = block[1::2, 0::2], block[1::2, 1::2]
    best = a.copy()
    best_n = (a == b).astype(np.uint8) + (a == c) + (a == d)
    for v, others in ((b, (a, c, d)), (c, (a, b, d)), (d, (a, b, c))):
        n = (v == others[0]).astype(np.uint8) + (v == others[1]) + (v == others[2])
        wins = n > best_n
        best[wins] = v[wins]
        best_n[wins] = n[wins]
    return best


def _level_tiles(
    src: _Sliceable,
    size: tuple[int, int],
    tile: int,
    reduced: Any | None,
    n_classes: int | None,
) -> Iterator[np.ndarray]:
    """Tiles of one level in row-major order; writes its 2x mode reduction to ``reduced``.

    Reads one row of tiles at a time; two rows make one ``tile``-row chunk of
    ``reduced``, written once. ``n_classes`` (level 0 only) makes values outside
    the class table an error.
    """
    h, w = size
    pending: list[np.ndarray] = []
    for r0 in range(0, h, tile):
        r1 = min(h, r0 + tile)
        strip = np.empty((r1 - r0, w), np.uint8)
        for c0 in range(0, w, _READ_COLUMNS):  # bounds a chunked source's decode buffers
            strip[:, c0 : c0 + _READ_COLUMNS] = src[r0:r1, c0 : min(w, c0 + _READ_COLUMNS)]
        if n_classes is not None and int(strip.max()) >= n_classes:
            raise ValueError(
                f"label value {int(strip.max())} has no class (class_names has {n_classes})"
            )
        for c0 in range(0, w, tile):
            yield strip[:, c0 : c0 + tile]
        if reduced is not None:
            pending.append(_mode2x(strip))
            if len(pending) == 2 or r0 + tile >= h:
                top = (r0 // tile // 2) * tile
                down = np.concatenate(pending) if len(pending) > 1 else pending[0]
                reduced[top : top + down.shape[0], :] = down
                pending.clear()
        del strip


def _hex(colour: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in colour))


def _check_classes(
    class_names: Sequence[str], class_colours: Sequence[Sequence[int]]
) -> list[tuple[int, int, int]]:
    if isinstance(class_names, str) or not 1 <= len(class_names) <= 256:
        raise ValueError("class_names must be a sequence of 1 to 256 names (index = label value)")
    if len(class_colours) != len(class_names):
        raise ValueError(
            f"{len(class_colours)} colours for {len(class_names)} classes: give one per class"
        )
    colours = []
    for col in class_colours:
        rgb = tuple(int(v) for v in col)
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise ValueError(f"class colour {col!r} is not an (r, g, b) triple of 0-255")
        colours.append((rgb[0], rgb[1], rgb[2]))
    return colours


def write_label_ome_tiff(
    path: str | Path,
    labels: _Sliceable,
    mpp: float | tuple[float, float],
    class_names: Sequence[str],
    class_colours: Sequence[tuple[int, int, int]],
    *,
    tile: int = 512,
    min_level_px: int = 512,
    overwrite: bool = False,
    bigtiff: bool | None = None,
    name: str = "labels",
    maxworkers: int | None = None,
) -> Path:
    """Write a uint8 label raster as a tiled, lossless, pyramidal OME-TIFF.

    Parameters
    ----------
    path : str or Path
        Output file (conventionally ``*.ome.tif``). Written under a temporary
        name in the same folder and renamed when complete.
    labels : array-like, shape (h, w), uint8
        Class ids; anything that slices to numpy (numpy, memmap, zarr). Read one
        row of tiles at a time.
    mpp : float or (float, float)
        µm per pixel of ``labels`` as (x, y); one number for square pixels.
    class_names, class_colours : sequence
        Name and (r, g, b) of each label value (index 0 is usually background).
        Every value in ``labels`` must have an entry.
    tile : int
        Tile side in pixels, a multiple of 16.
    min_level_px : int
        Add 2x reduced levels until the longer side is at most this.
    overwrite : bool
        Replace an existing ``path`` (only once the new file is complete).
    bigtiff : bool, optional
        Force BigTIFF on or off; by default on when the raw pixels of all levels
        exceed 2 GiB.
    name : str
        OME image name.
    maxworkers : int, optional
        Threads for zlib encoding (tifffile's default when None).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    ValueError
        Bad shape, dtype, tile, mpp or class table, or a label without a class.
    """
    path = Path(path)
    shape = tuple(int(s) for s in labels.shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"labels must be a non-empty 2-D array, got shape {shape}")
    if np.dtype(labels.dtype) != np.uint8:
        raise ValueError(f"labels must be uint8, got {labels.dtype}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if isinstance(mpp, int | float):
        mpp_x = mpp_y = float(mpp)
    else:
        mpp_x, mpp_y = (float(v) for v in mpp)
    if not (math.isfinite(mpp_x) and math.isfinite(mpp_y) and mpp_x > 0 and mpp_y > 0):
        raise ValueError(f"mpp must be positive, got {mpp!r}")
    colours = _check_classes(class_names, class_colours)
    h, w = shape
    sizes = _level_sizes(h, w, max(1, int(min_level_px)))
    if bigtiff is None:
        bigtiff = sum(a * b for a, b in sizes) > _BIGTIFF_RAW_BYTES

    classes = [
        {"id": i, "name": str(n), "color": list(c)}
        for i, (n, c) in enumerate(zip(class_names, colours, strict=True))
    ]
    metadata: dict[str, Any] = {
        "axes": "YX",
        "Name": name,
        "Description": json.dumps({"wsiseg_classes": classes}, ensure_ascii=False),
        "PhysicalSizeX": mpp_x,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": mpp_y,
        "PhysicalSizeYUnit": "µm",
        "Channel": {"Name": ["labels"]},
        "MapAnnotation": [
            {"Namespace": CLASS_NAMES_NS, **{str(c["id"]): c["name"] for c in classes}},
            {"Namespace": CLASS_COLOURS_NS, **{str(i): _hex(c) for i, c in enumerate(colours)}},
        ],
    }
    options: dict[str, Any] = {
        "dtype": np.uint8,
        "tile": (tile, tile),
        "compression": "zlib",
        "photometric": "minisblack",
        "resolutionunit": "CENTIMETER",
        "maxworkers": maxworkers,
        "buffersize": _ENCODE_BUFFER_TILES * tile * tile,
    }

    with atomic_path(path, overwrite=overwrite) as tmp:
        scratch = tmp.with_name(tmp.name + ".levels")
        try:
            with tifffile.TiffWriter(tmp, bigtiff=bigtiff, ome=True) as tif:
                src: _Sliceable = labels
                for level, (lh, lw) in enumerate(sizes):
                    reduced = None
                    if level + 1 < len(sizes):
                        nh, nw = sizes[level + 1]
                        reduced = zarr.create_array(
                            store=str(scratch / f"{level + 1}.zarr"),
                            shape=(nh, nw),
                            chunks=(tile, nw),
                            dtype=np.uint8,
                            fill_value=0,
                            config={"write_empty_chunks": True},  # no all-equal scan
                        )
                    tiles = _level_tiles(
                        src, (lh, lw), tile, reduced, len(classes) if level == 0 else None
                    )
                    factor_x, factor_y = w / lw, h / lh
                    resolution = (1e4 / (mpp_x * factor_x), 1e4 / (mpp_y * factor_y))
                    if level == 0:
                        tif.write(
                            tiles,
                            shape=(lh, lw),
                            subifds=len(sizes) - 1,
                            metadata=metadata,
                            resolution=resolution,
                            **options,
                        )
                    else:
                        tif.write(
                            tiles,
                            shape=(lh, lw),
                            subfiletype=1,
                            metadata=None,
                            resolution=resolution,
                            **options,
                        )
                    if reduced is not None:
                        src = reduced
        finally:
            remove_path(scratch)
    log.debug("wrote %s: %s levels %s", path.name, len(sizes), sizes)
    return path


def read_label_ome_tiff(path: str | Path, level: int = 0) -> np.ndarray:
    """Read one pyramid level of a label OME-TIFF as a uint8 array.

    Parameters
    ----------
    path : str or Path
        File written by :func:`write_label_ome_tiff` (or any single-series TIFF).
    level : int
        0 is full resolution; each next level is 2x smaller.

    Returns
    -------
    ndarray, shape (h, w)
    """
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        if not 0 <= level < len(levels):
            raise ValueError(f"{Path(path).name} has levels 0-{len(levels) - 1}, not {level}")
        return np.asarray(levels[level].asarray())


def read_label_classes(path: str | Path) -> list[tuple[str, tuple[int, int, int]]]:
    """Class (name, (r, g, b)) per label value, from the OME-XML of a label OME-TIFF.

    Returns an empty list when the file carries no wsiseg class table.
    """
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
    if not xml:
        return []
    for elem in ET.fromstring(xml).iter():
        if elem.tag.endswith("}Description") and elem.text and "wsiseg_classes" in elem.text:
            try:
                classes = json.loads(elem.text)["wsiseg_classes"]
                return [
                    (str(c["name"]), (int(c["color"][0]), int(c["color"][1]), int(c["color"][2])))
                    for c in sorted(classes, key=lambda c: int(c["id"]))
                ]
            except (ValueError, KeyError, TypeError, IndexError):
                log.warning("%s: unreadable class table in the OME-XML", Path(path).name)
                return []
    return []
