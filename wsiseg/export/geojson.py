"""QuPath-importable GeoJSON annotations from a label raster.

(Read back with :func:`wsiseg.io.geojson.rasterise_geojson`.)

What QuPath (0.4 - 0.7) needs, and what :func:`labels_to_features` writes
(see ``notes/anchors-pipeline.md`` §1):

* a ``FeatureCollection``; one ``Feature`` per connected region (4-connectivity,
  see :mod:`wsiseg.geometry`) per class; class 0 is background and gets none;
* ``id``: a UUID (uuid5 of :data:`FEATURE_ID_NAMESPACE` and
  ``"{slide_id}/{class_name}/{index}"``, where ``index`` counts the kept regions
  of that class in raster order of their first pixel), so the same labels give
  the same ids on every run;
* ``properties.objectType = "annotation"``, ``properties.classification =
  {"name", "color": [r, g, b]}`` (QuPath throws on a classification without a
  colour), ``properties.isLocked``, ``properties.measurements = {"Area µm^2"}``;
* ``geometry``: a Polygon (a MultiPolygon only when repair splits a region), in
  level-0 pixels, origin top-left, y down: label pixel (r, c) covers
  ``[offset_x + c * downsample, offset_x + (c + 1) * downsample]`` in x, the same
  in y. Shells are counter-clockwise, holes clockwise (RFC 7946) and holes stay
  holes.

Processing order: regions are traced on pixel edges; regions smaller than
``min_area_um2`` (their exact pixel area at ``mpp``) are dropped, and read back
as background; the rest are simplified **as one coverage** over all classes
(``shapely.coverage_simplify``: Visvalingam-Whyatt, keeps every shared edge
shared, so neighbouring classes neither overlap nor open gaps; vertices where
three labels meet are pinned so that the input is edge-matched); coordinates are
scaled to level 0, snapped to a 0.01 px grid (``shapely.set_precision``, QuPath
0.6+ does the same on import and rejects what that makes invalid) and made valid
afterwards. Simplification only removes vertices, so with an integer downsample
and offset the snapping changes nothing. Last, features are cut to the slide
(``slide_size``): the raster's last row and column may cover part of a pixel past
the slide's edge, and QuPath should measure only what is there.

Memory: the raster (numpy or zarr) is read and traced ``band_rows`` rows at a time
(:func:`wsiseg.export.trace.trace_bands`, components joined across band seams) and
the coverage is simplified edge by edge
(:func:`wsiseg.export.coverage.simplify_coverage`); both give exactly what tracing
the whole raster and one ``shapely.coverage_simplify`` call give, for any band
height. Only the kept polygons (integer arrays) are held at once; the features are
made a chunk at a time (:func:`iter_features`) and :func:`write_geojson` writes
them as they come.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from wsiseg.export.coverage import simplify_coverage
from wsiseg.export.trace import trace_bands
from wsiseg.fileops import atomic_path

__all__ = [
    "AREA_MEASUREMENT",
    "FEATURE_ID_NAMESPACE",
    "iter_features",
    "labels_to_features",
    "write_geojson",
]

log = logging.getLogger(__name__)

FEATURE_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "wsiseg:annotation")
"""uuid5 namespace of wsiseg feature ids."""
AREA_MEASUREMENT = "Area µm^2"
"""Measurement name (QuPath's own name for annotation areas)."""
_PRECISION_PX = 0.01
_CHUNK_FEATURES = 4096  # features finished (scaled, snapped, cut) at a time


def _polygonal(geom: shapely.Geometry) -> Polygon | MultiPolygon | None:
    """Valid polygonal part of ``geom``: a Polygon, a MultiPolygon if split, or None."""
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    parts = [p for p in shapely.get_parts(geom) if isinstance(p, Polygon) and not p.is_empty] + [
        q
        for p in shapely.get_parts(geom)
        if isinstance(p, MultiPolygon)
        for q in p.geoms
        if not q.is_empty
    ]
    if not parts:
        return None
    out: Polygon | MultiPolygon = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    return shapely.orient_polygons(out)


def _geojson_geometry(geom: Polygon | MultiPolygon) -> dict[str, Any]:
    def rings(p: Polygon) -> list[list[list[float]]]:
        return [np.asarray(p.exterior.coords).tolist()] + [
            np.asarray(r.coords).tolist() for r in p.interiors
        ]

    if isinstance(geom, Polygon):
        return {"type": "Polygon", "coordinates": rings(geom)}
    return {"type": "MultiPolygon", "coordinates": [rings(p) for p in geom.geoms]}


def labels_to_features(
    labels: Any,
    *,
    downsample: float,
    offset: tuple[float, float] = (0.0, 0.0),
    class_names: Sequence[str],
    class_colours: Sequence[tuple[int, int, int]],
    mpp: float,
    slide_id: str,
    min_area_um2: float = 100.0,
    simplify_px: float = 0.75,
    locked: bool = False,
    slide_size: tuple[int, int] | None = None,
    clip: shapely.Geometry | None = None,
    band_rows: int | None = None,
) -> list[dict[str, Any]]:
    """QuPath annotation features, one per connected region per non-background class.

    The list of :func:`iter_features` (same parameters); write large slides with
    ``write_geojson(path, iter_features(...))`` so that the features are never all
    held as dictionaries at once.

    Parameters
    ----------
    labels : array-like, shape (h, w), integer
        Class ids (0 = background), e.g. the whole-slide label raster at output
        resolution: a numpy or zarr array, read ``band_rows`` rows at a time.
    downsample : float
        Level-0 pixels per label pixel.
    offset : tuple of float
        Level-0 (x, y) of the raster's top-left corner.
    class_names, class_colours : sequence
        Name and (r, g, b) per label value; entry 0 (background) is not exported.
    mpp : float
        Level-0 µm per pixel (areas are reported in µm²).
    slide_id : str
        Stable slide identifier (e.g. a checksum); part of every feature id.
    min_area_um2 : float
        Regions with a smaller area are dropped (they read back as background).
    simplify_px : float
        Coverage simplification tolerance in label pixels (Visvalingam-Whyatt:
        about the square root of the largest triangle area removed); 0 keeps the
        exact pixel outlines. The default 0.75 smooths one-pixel stair steps.
    locked : bool
        Value of ``isLocked`` (locked annotations cannot be moved by accident).
    slide_size : tuple of int, optional
        Level-0 (width, height) of the slide: features are cut to ``[0, width] x
        [0, height]`` (the raster's last row and column may reach past the edge).
    clip : shapely geometry, optional
        Level-0 area the features are cut to (e.g. the ``--roi``); parts outside it
        are dropped and areas are measured inside it.
    band_rows : int, optional
        Label rows read and traced at a time; by default about 4 M pixels (whole
        chunk rows of a zarr array). The result does not depend on it.

    Returns
    -------
    list of dict
        GeoJSON Features ordered by class id, then index.
    """
    return list(
        iter_features(
            labels,
            downsample=downsample,
            offset=offset,
            class_names=class_names,
            class_colours=class_colours,
            mpp=mpp,
            slide_id=slide_id,
            min_area_um2=min_area_um2,
            simplify_px=simplify_px,
            locked=locked,
            slide_size=slide_size,
            clip=clip,
            band_rows=band_rows,
        )
    )


def iter_features(
    labels: Any,
    *,
    downsample: float,
    offset: tuple[float, float] = (0.0, 0.0),
    class_names: Sequence[str],
    class_colours: Sequence[tuple[int, int, int]],
    mpp: float,
    slide_id: str,
    min_area_um2: float = 100.0,
    simplify_px: float = 0.75,
    locked: bool = False,
    slide_size: tuple[int, int] | None = None,
    clip: shapely.Geometry | None = None,
    band_rows: int | None = None,
) -> Iterator[dict[str, Any]]:
    """The features of :func:`labels_to_features`, made one chunk at a time.

    The raster is traced and simplified when this is called (bad input raises
    here); the iterator then scales, snaps, cuts and formats the polygons a few
    thousand at a time. Held at once: one band of labels, the corners of regions
    not yet complete, and the kept polygons as integer coordinate arrays.
    """
    if not (hasattr(labels, "shape") and hasattr(labels, "dtype")):
        labels = np.asarray(labels)
    if len(labels.shape) != 2:
        raise ValueError(f"labels must be 2-D, got shape {tuple(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must hold integer class ids, got {labels.dtype}")
    if len(class_colours) != len(class_names):
        raise ValueError(f"{len(class_colours)} colours for {len(class_names)} classes")
    if downsample <= 0 or mpp <= 0:
        raise ValueError("downsample and mpp must be positive")
    px_area_um2 = (downsample * mpp) ** 2

    def keep(counts: np.ndarray) -> np.ndarray:
        # The region's exact pixel area, as shapely measures the traced polygon.
        out: np.ndarray = counts.astype(np.float64) * px_area_um2 >= min_area_um2
        if not out.all():
            log.debug("dropped %d regions < %g µm²", (~out).sum(), min_area_um2)
        return out

    traced = trace_bands(
        labels, len(class_names), band_rows=band_rows, junctions=simplify_px > 0, keep=keep
    )
    polygons = (traced.coords, traced.ring_offsets, traced.polygon_offsets)
    classes, order = traced.classes, traced.order
    if simplify_px > 0 and classes.size:
        polygons = simplify_coverage(*polygons, float(simplify_px), order)
        classes, order = classes[order], np.arange(order.size)
    del traced
    return _features(
        polygons,
        classes,
        order,
        downsample=float(downsample),
        offset=offset,
        class_names=class_names,
        class_colours=class_colours,
        mpp=mpp,
        slide_id=slide_id,
        locked=locked,
        slide_size=slide_size,
        clip=clip,
    )


def _features(
    polygons: tuple[np.ndarray, np.ndarray, np.ndarray],
    classes: np.ndarray,
    order: np.ndarray,
    *,
    downsample: float,
    offset: tuple[float, float],
    class_names: Sequence[str],
    class_colours: Sequence[tuple[int, int, int]],
    mpp: float,
    slide_id: str,
    locked: bool,
    slide_size: tuple[int, int] | None,
    clip: shapely.Geometry | None,
) -> Iterator[dict[str, Any]]:
    """Scale to level 0, snap to 0.01 px, cut to the slide and ``clip``, number, format
    the polygons ``order`` (indices into ``polygons`` and ``classes``)."""
    coords, ring_offsets, polygon_offsets = polygons
    edge = box(0, 0, *slide_size) if slide_size is not None else None
    index: dict[int, int] = {}
    for p0 in range(0, order.size, _CHUNK_FEATURES):
        ids = order[p0 : p0 + _CHUNK_FEATURES]
        n_rings = np.diff(polygon_offsets)[ids]
        rings = _spans(polygon_offsets[ids], n_rings)
        n_pts = np.diff(ring_offsets)[rings]
        geoms = shapely.from_ragged_array(
            shapely.GeometryType.POLYGON,
            coords[_spans(ring_offsets[rings], n_pts)].astype(np.float64),
            (np.concatenate([[0], np.cumsum(n_pts)]), np.concatenate([[0], np.cumsum(n_rings)])),
        )
        geoms = shapely.transform(
            geoms, lambda xy: xy * downsample + np.asarray(offset, np.float64)
        )
        geoms = shapely.set_precision(geoms, _PRECISION_PX)
        if edge is not None:
            past = ~shapely.within(geoms, edge)
            geoms[past] = shapely.set_precision(
                shapely.intersection(geoms[past], edge), _PRECISION_PX
            )
        if clip is not None:
            out = ~shapely.within(geoms, clip)
            geoms[out] = shapely.set_precision(
                shapely.intersection(geoms[out], clip), _PRECISION_PX
            )
        for geom, k in zip(geoms, classes[ids].tolist(), strict=True):
            final = _polygonal(geom)
            if final is None:
                continue
            name = str(class_names[k])
            colour = [int(v) for v in class_colours[k]]
            fid = uuid.uuid5(FEATURE_ID_NAMESPACE, f"{slide_id}/{name}/{index.get(k, 0)}")
            index[k] = index.get(k, 0) + 1
            yield {
                "type": "Feature",
                "id": str(fid),
                "geometry": _geojson_geometry(final),
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": name, "color": colour},
                    "isLocked": bool(locked),
                    "measurements": {AREA_MEASUREMENT: float(final.area) * mpp * mpp},
                },
            }


def _spans(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + n)`` for every (s, n)."""
    offs = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, np.int64) - offs, lengths) + np.arange(int(lengths.sum()))


def write_geojson(
    path: str | Path, features: Iterable[dict[str, Any]], *, overwrite: bool = False
) -> Path:
    """Write ``features`` as a GeoJSON FeatureCollection, atomically.

    ``features`` may be an iterator (e.g. :func:`iter_features`): each feature is
    written as it comes, and the file is byte for byte what one ``json.dumps`` of
    the whole collection gives. Non-ASCII characters are escaped, so the file reads
    the same under any platform charset (QuPath 0.4 on Windows reads with the
    system default).

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp, tmp.open("w", encoding="ascii") as out:
        out.write('{"type":"FeatureCollection","features":[')
        for i, feature in enumerate(features):
            if i:
                out.write(",")
            out.write(
                json.dumps(feature, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
            )
        out.write("]}")
    return path
