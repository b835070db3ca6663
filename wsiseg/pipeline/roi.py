"""Regions of interest from GeoJSON (QuPath exports), in level-0 pixels."""

from __future__ import annotations

from pathlib import Path

import shapely
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from wsiseg.errors import InputError
from wsiseg.io.geojson import read_geojson_areas

__all__ = ["MAX_ROI_COORD", "clip_roi_to_slide", "load_roi"]

#: Largest ROI coordinate taken (level-0 pixels: 1e9 px is 250 m at 0.25 µm/px).
MAX_ROI_COORD = 1e9


def load_roi(path: Path) -> BaseGeometry:
    """Union of the areas in a GeoJSON file (FeatureCollection, Feature list or geometry).

    Read and repaired by :func:`wsiseg.io.geojson.read_geojson_areas`; a file without
    areas, or one it refuses (e.g. a coordinate that is not a finite number), is an error
    starting ``--roi PATH:``; so is a coordinate beyond `MAX_ROI_COORD`.
    """
    try:
        areas = read_geojson_areas(path)
    except InputError as exc:
        raise InputError(f"--roi {exc}") from exc
    if not areas:
        raise InputError(f"--roi {path}: no polygons found")
    roi = shapely.union_all([a.geometry for a in areas])
    # Finite but huge coordinates overflow GEOS (warnings, and wrong clipped areas).
    far = max(abs(v) for v in roi.bounds)
    if not far <= MAX_ROI_COORD:
        raise InputError(
            f"--roi {path}: a coordinate ({far:.3g}) lies far beyond any slide "
            f"(level-0 pixels; at most {MAX_ROI_COORD:.0e})"
        )
    return roi


def clip_roi_to_slide(roi: BaseGeometry, size: tuple[int, int]) -> BaseGeometry:
    """The part of ``roi`` on a slide of level-0 ``size`` (width, height) in pixels.

    Raises
    ------
    InputError
        If the ROI does not overlap the slide.
    """
    width, height = size
    inside = shapely.intersection(roi, box(0, 0, width, height))
    polys = [p for p in shapely.get_parts(inside) if p.geom_type == "Polygon" and p.area > 0]
    if not polys:
        x0, y0, x1, y1 = (f"{v:g}" for v in roi.bounds)
        raise InputError(
            f"ROI does not overlap the slide (ROI bounds x {x0}-{x1}, y {y0}-{y1}; "
            f"slide {width}x{height} px)"
        )
    return shapely.union_all(polys)
