"""Regions of interest from GeoJSON (QuPath exports), in level-0 pixels."""

from __future__ import annotations

import json
from pathlib import Path

import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from wsiseg.errors import InputError

__all__ = ["load_roi"]


def load_roi(path: Path) -> BaseGeometry:
    """Union of the polygons in a GeoJSON file (FeatureCollection, Feature list or geometry).

    Invalid polygons are repaired; a file without polygons is an error.
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
            g = shape(geom)
        except Exception as exc:  # noqa: BLE001 - shapely raises many types on bad input
            raise InputError(f"--roi {path}: invalid geometry ({exc})") from exc
        if not g.is_valid:
            g = shapely.make_valid(g)
        polys = [p for p in shapely.get_parts(g) if p.geom_type in ("Polygon", "MultiPolygon")]
        geoms.extend(polys)
    if not geoms:
        raise InputError(f"--roi {path}: no polygons found")
    return shapely.union_all(geoms)
