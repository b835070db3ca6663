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
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from wsiseg.fileops import atomic_path
from wsiseg.geometry import mask_to_polygon_array

__all__ = [
    "AREA_MEASUREMENT",
    "FEATURE_ID_NAMESPACE",
    "labels_to_features",
    "write_geojson",
]

log = logging.getLogger(__name__)

FEATURE_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "wsiseg:annotation")
"""uuid5 namespace of wsiseg feature ids."""
AREA_MEASUREMENT = "Area µm^2"
"""Measurement name (QuPath's own name for annotation areas)."""
_PRECISION_PX = 0.01


def _junctions(labels: np.ndarray) -> np.ndarray:
    """Lattice vertices where at least three labels (outside = 0) meet, shape (h + 1, w + 1)."""
    pad = np.pad(labels, 1)
    a, b, c, d = pad[:-1, :-1], pad[:-1, 1:], pad[1:, :-1], pad[1:, 1:]
    n = (b != a).astype(np.uint8)
    n += (c != a) & (c != b)
    n += (d != a) & (d != b) & (d != c)
    junctions: np.ndarray = n >= 2
    return junctions


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
) -> list[dict[str, Any]]:
    """QuPath annotation features, one per connected region per non-background class.

    Parameters
    ----------
    labels : array-like, shape (h, w), integer
        Class ids (0 = background), e.g. the whole-slide label raster at output
        resolution; loaded into memory whole.
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
        exact pixel outlines. The default 1.0 smooths one-pixel stair steps.
    locked : bool
        Value of ``isLocked`` (locked annotations cannot be moved by accident).
    slide_size : tuple of int, optional
        Level-0 (width, height) of the slide: features are cut to ``[0, width] x
        [0, height]`` (the raster's last row and column may reach past the edge).
    clip : shapely geometry, optional
        Level-0 area the features are cut to (e.g. the ``--roi``); parts outside it
        are dropped and areas are measured inside it.

    Returns
    -------
    list of dict
        GeoJSON Features ordered by class id, then index.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must hold integer class ids, got {lab.dtype}")
    if len(class_colours) != len(class_names):
        raise ValueError(f"{len(class_colours)} colours for {len(class_names)} classes")
    if downsample <= 0 or mpp <= 0:
        raise ValueError("downsample and mpp must be positive")
    if lab.size and (int(lab.max()) >= len(class_names) or int(lab.min()) < 0):
        raise ValueError(
            f"label values {int(lab.min())}..{int(lab.max())} but {len(class_names)} classes"
        )
    px_area_um2 = (downsample * mpp) ** 2
    present = [int(k) for k in np.unique(lab) if k != 0]
    junctions = _junctions(lab) if simplify_px > 0 and len(present) > 1 else None

    polys: list[np.ndarray] = []
    owner: list[np.ndarray] = []
    for k in present:
        parts = mask_to_polygon_array(lab == k, junctions=junctions)
        keep = shapely.area(parts) * px_area_um2 >= min_area_um2
        if not keep.all():
            log.debug("class %s: dropped %d regions < %g µm²", k, (~keep).sum(), min_area_um2)
        polys.append(parts[keep])
        owner.append(np.full(int(keep.sum()), k))
    if not polys or not sum(p.size for p in polys):
        return []
    geoms = np.concatenate(polys)
    classes = np.concatenate(owner)
    if simplify_px > 0:
        geoms = shapely.coverage_simplify(geoms, float(simplify_px), simplify_boundary=True)
    geoms = shapely.transform(
        geoms, lambda xy: xy * float(downsample) + np.asarray(offset, np.float64)
    )
    geoms = shapely.set_precision(geoms, _PRECISION_PX)
    if slide_size is not None:
        edge = box(0, 0, *slide_size)
        past = ~shapely.within(geoms, edge)
        geoms[past] = shapely.set_precision(shapely.intersection(geoms[past], edge), _PRECISION_PX)
    if clip is not None:
        out = ~shapely.within(geoms, clip)
        geoms[out] = shapely.set_precision(shapely.intersection(geoms[out], clip), _PRECISION_PX)

    features: list[dict[str, Any]] = []
    index = dict.fromkeys(present, 0)
    for geom, k in zip(geoms, classes, strict=True):
        final = _polygonal(geom)
        if final is None:
            continue
        name = str(class_names[k])
        colour = [int(v) for v in class_colours[k]]
        fid = uuid.uuid5(FEATURE_ID_NAMESPACE, f"{slide_id}/{name}/{index[k]}")
        index[k] += 1
        features.append(
            {
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
        )
    return features


def write_geojson(
    path: str | Path, features: Sequence[dict[str, Any]], *, overwrite: bool = False
) -> Path:
    """Write ``features`` as a GeoJSON FeatureCollection, atomically.

    Non-ASCII characters are escaped, so the file reads the same under any
    platform charset (QuPath 0.4 on Windows reads with the system default).

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    text = json.dumps(
        {"type": "FeatureCollection", "features": list(features)},
        ensure_ascii=True,
        separators=(",", ":"),
        allow_nan=False,
    )
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="ascii")
    return path
