"""The one GeoJSON reader: classified areas from a file (QuPath exports), repaired.

ROIs (:func:`wsiseg.pipeline.roi.load_roi`), training labels
(:func:`wsiseg.train.datasets.read_geojson_labels`) and written annotations read
back (:func:`rasterise_geojson`) all read through :func:`read_geojson_areas`.

Accepted: a FeatureCollection, a list of Features (FeatureCollections in it are
flattened), a single Feature and, where the caller allows it, a bare geometry.
Coordinates are taken as they are (level-0 pixels for QuPath).

Repaired or skipped, with one warning per kind of repair naming the file and the
features (their 0-based position in the file): invalid polygons are made valid;
collections are flattened at any depth and their overlapping parts merged; null
and empty geometries, points and lines are skipped (points and lines inside a
collection with areas are dropped). Refused with one :class:`InputError` line
naming the file (and the feature): a file that is not readable or not JSON, not
GeoJSON, a malformed geometry, or a coordinate that is not a finite number.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import GeometryCollection, MultiPolygon, Polygon
from shapely.geometry import shape as geojson_shape
from shapely.geometry.base import BaseGeometry

from wsiseg.errors import InputError
from wsiseg.geometry import as_multipolygon, polygons_to_mask

__all__ = ["GeoJSONArea", "log_feature_notes", "rasterise_geojson", "read_geojson_areas"]

log = logging.getLogger(__name__)

_GEOMETRY_TYPES = frozenset(
    {
        "Point",
        "MultiPoint",
        "LineString",
        "MultiLineString",
        "Polygon",
        "MultiPolygon",
        "GeometryCollection",
    }
)


@dataclass(frozen=True)
class GeoJSONArea:
    """One feature's area: its position in the file, class name and repaired geometry."""

    index: int
    class_name: str | None
    geometry: MultiPolygon  # valid and not empty


def log_feature_notes(
    logger: logging.Logger, path: Path | str, notes: Mapping[str, Sequence[int]]
) -> None:
    """One warning per note: ``PATH: N feature(s) WHAT: i, j, ...`` (at most ten shown)."""
    for what, indices in notes.items():
        shown = ", ".join(map(str, indices[:10])) + (" ..." if len(indices) > 10 else "")
        logger.warning("%s: %d feature(s) %s: %s", path, len(indices), what, shown)


def _load(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: not readable ({exc.strerror or exc})") from exc
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not valid JSON ({text})") from exc


def _features(path: Path, data: Any, bare_geometry: bool) -> list[Any]:
    """The items of a document: Features (or bare geometries), collections flattened."""
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "FeatureCollection":
        data = data.get("features")
        if not isinstance(data, list):
            raise InputError(f"{path}: FeatureCollection without a 'features' list")
    elif kind == "Feature" or (bare_geometry and kind in _GEOMETRY_TYPES):
        return [data]
    elif not isinstance(data, list):
        also = ", geometry" if bare_geometry else ""
        raise InputError(
            f"{path}: not a GeoJSON FeatureCollection, Feature{also} or list of Features"
        )
    out: list[Any] = []
    for item in data:
        nested = isinstance(item, dict) and item.get("type") == "FeatureCollection"
        out.extend(_features(path, item, bare_geometry) if nested else [item])
    return out


def _class_name(feature: Any) -> str | None:
    props = feature.get("properties") if isinstance(feature, Mapping) else None
    cls = props.get("classification") if isinstance(props, Mapping) else None
    name = cls.get("name") if isinstance(cls, Mapping) else cls
    return name if isinstance(name, str) else None


def _geometry(where: str, item: Any, bare_geometry: bool) -> BaseGeometry | None:
    """The item's geometry (None where it has none); malformed ones are an error."""
    if isinstance(item, Mapping) and "geometry" in item:
        spec = item["geometry"]
    elif bare_geometry and isinstance(item, Mapping) and item.get("type") in _GEOMETRY_TYPES:
        spec = item
    else:
        raise InputError(f"{where}: not a GeoJSON Feature (no 'geometry')")
    if spec is None:
        return None
    try:
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):  # NaN: reported below
            warnings.simplefilter("ignore", RuntimeWarning)
            geom = geojson_shape(spec)
        finite = bool(np.isfinite(shapely.get_coordinates(geom)).all())  # 1e400 reads as inf
    except Exception as exc:  # noqa: BLE001 - shapely raises many types on bad input
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{where}: invalid geometry ({text})") from exc
    if not finite:
        raise InputError(f"{where}: a coordinate is not a finite number (inf or NaN)")
    return geom


def _has_non_areas(geom: BaseGeometry) -> bool:
    """Whether a collection holds points or lines (at any depth)."""
    for part in shapely.get_parts(geom):
        if isinstance(part, GeometryCollection):
            if _has_non_areas(part):
                return True
        elif not isinstance(part, Polygon | MultiPolygon) and not part.is_empty:
            return True
    return False


def read_geojson_areas(path: Path | str, *, bare_geometry: bool = True) -> list[GeoJSONArea]:
    """The areas of a GeoJSON file with their class names, repaired, in file order.

    Parameters
    ----------
    path
        A FeatureCollection, a list of Features, a Feature or a bare geometry.
    bare_geometry
        Accept geometries that are not wrapped in a Feature (they have no class).

    Returns
    -------
    list of GeoJSONArea
        One per feature with an area; the class name is ``properties.classification``
        (QuPath's ``{"name": ...}`` or a plain string), None if absent.

    Raises
    ------
    InputError
        One line naming the file (and the feature): unreadable or not JSON, not
        GeoJSON, a malformed geometry, a coordinate that is not a finite number.
    """
    path = Path(path)
    data = _load(path)
    single = bare_geometry and isinstance(data, dict) and data.get("type") in _GEOMETRY_TYPES
    notes: dict[str, list[int]] = {}  # what was repaired or skipped -> feature indices
    areas: list[GeoJSONArea] = []
    for i, item in enumerate(_features(path, data, bare_geometry)):
        fid = item.get("id") if isinstance(item, Mapping) else None
        where = f"{path}" if single else f"{path}: feature {i}"
        where += f" (id {fid})" if isinstance(fid, str | int) else ""
        geom = _geometry(where, item, bare_geometry)
        if geom is None or geom.is_empty:
            notes.setdefault("without geometry (skipped)", []).append(i)
            continue
        if not geom.is_valid:
            notes.setdefault("invalid (repaired)", []).append(i)
        area = as_multipolygon(geom)
        if area.is_empty:
            notes.setdefault(f"not areas ({geom.geom_type}; skipped)", []).append(i)
            continue
        if isinstance(geom, GeometryCollection) and _has_non_areas(geom):
            notes.setdefault("with points or lines (those parts dropped)", []).append(i)
        areas.append(GeoJSONArea(i, _class_name(item), area))
    log_feature_notes(log, path, notes)
    return areas


def rasterise_geojson(
    path: str | Path,
    shape: tuple[int, int],
    downsample: float,
    class_names: Sequence[str],
    *,
    offset: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Rasterise a GeoJSON of classified polygons (level-0 pixels) to class ids.

    Parameters
    ----------
    path : str or Path
        A FeatureCollection, a Feature array or a single Feature.
    shape : tuple of int
        (h, w) of the output raster.
    downsample : float
        Level-0 pixels per output pixel.
    class_names : sequence of str
        Output value = index of the feature's classification name; features of
        other classes (and of the first, background) are skipped with a warning.
    offset : tuple of float
        Level-0 (x, y) of the output's top-left corner.

    Returns
    -------
    ndarray of uint8, shape ``shape``
        A pixel takes a class when its centre lies inside one of its polygons;
        where classes overlap, the later class in ``class_names`` wins.
    """
    ids = {n: i for i, n in enumerate(class_names)}
    by_class: dict[int, list[Polygon]] = {}
    unknown: set[str] = set()
    for area in read_geojson_areas(path):
        k = ids.get(area.class_name) if area.class_name is not None else None
        if not k:  # unknown, unclassified or background
            unknown.add(str(area.class_name))
            continue
        by_class.setdefault(k, []).extend(area.geometry.geoms)
    if unknown:
        log.warning("%s: skipped features of classes %s", Path(path).name, sorted(unknown))
    out = np.zeros(shape, np.uint8)
    for k in sorted(by_class):
        geom: BaseGeometry = MultiPolygon(by_class[k])
        if not geom.is_valid:  # features of one class that overlap or touch
            geom = shapely.union_all(by_class[k])
        out[polygons_to_mask(geom, shape, float(downsample), offset)] = k
    return out
