"""Regions of interest from GeoJSON (QuPath exports), in level-0 pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from wsiseg.errors import InputError

__all__ = ["clip_roi_to_slide", "load_roi"]


def load_roi(path: Path) -> BaseGeometry:
    """Union of the polygons in a GeoJSON file (FeatureCollection, Feature list or geometry).

    Invalid polygons are repaired; a file without polygons, or with a coordinate that is
    not a finite number, is an error.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"--roi {path}: not readable GeoJSON ({exc})") from exc
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        items = data.get("features", [])
    elif isinstance(data, list):
        items = data
    else:
        items = [data]
    geoms = []
    for item in items:
        geom = (
            item.get("geometry")
            if isinstance(item, dict) and item.get("type") == "Feature"
            else item
        )
        try:
            with np.errstate(invalid="ignore"):  # NaN: reported just below, not warned
                g = shape(geom)
        except Exception as exc:  # noqa: BLE001 - shapely raises many types on bad input
            raise InputError(f"--roi {path}: invalid geometry ({exc})") from exc
        if not np.isfinite(shapely.get_coordinates(g)).all():  # 1e400 reads as inf; NaN
            raise InputError(f"--roi {path}: a coordinate is not a finite number (inf or NaN)")
        if not g.is_valid:
            g = shapely.make_valid(g)
        polys = [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")]
        geoms.extend(polys)
    if not geoms:
        raise InputError(f"--roi {path}: no polygons found")
    return shapely.union_all(geoms)


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
