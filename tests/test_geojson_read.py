"""The one GeoJSON reader (wsiseg.io.geojson) that ROIs and training labels build on.

test_label_geojson.py and test_roi.py cover its repairs and errors through those two.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from wsiseg.errors import InputError
from wsiseg.io.geojson import read_geojson_areas
from wsiseg.pipeline.roi import load_roi


def _square(x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Polygon", "coordinates": [ring]}


def _feature(geometry: Any, cls: Any = None) -> dict[str, Any]:
    props = {} if cls is None else {"classification": cls}
    return {"type": "Feature", "geometry": geometry, "properties": props}


def _write(tmp_path: Path, doc: Any) -> Path:
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(doc))
    return path


def test_qupath_classes_nested_collections_and_file_order(tmp_path: Path, caplog) -> None:
    nested = {
        "type": "GeometryCollection",
        "geometries": [
            {"type": "GeometryCollection", "geometries": [_square(0, 0, 10, 10)]},
            {"type": "Point", "coordinates": [50, 50]},
            _square(5, 0, 20, 10),  # overlaps the first square: merged
        ],
    }
    doc = [
        {"type": "FeatureCollection", "features": [_feature(_square(0, 0, 1, 1), "Stroma")]},
        _feature(nested, {"name": "Tumor", "color": [200, 0, 0]}),
        _feature({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}, "Tumor"),
        _feature(_square(30, 30, 40, 40)),
    ]
    path = _write(tmp_path, doc)
    with caplog.at_level(logging.WARNING):
        areas = read_geojson_areas(path)
    assert [(a.index, a.class_name) for a in areas] == [(0, "Stroma"), (1, "Tumor"), (3, None)]
    assert areas[1].geometry.is_valid and areas[1].geometry.area == pytest.approx(200)
    assert f"{path}: 1 feature(s) not areas (LineString; skipped): 2" in caplog.text
    assert f"{path}: 1 feature(s) with points or lines (those parts dropped): 1" in caplog.text


def test_bare_geometry_only_where_allowed(tmp_path: Path) -> None:
    path = _write(tmp_path, _square(0, 0, 10, 20))
    (area,) = read_geojson_areas(path)
    assert area.class_name is None and area.geometry.area == pytest.approx(200)
    with pytest.raises(InputError, match="not a GeoJSON FeatureCollection, Feature or list"):
        read_geojson_areas(path, bare_geometry=False)


@pytest.mark.parametrize("number", ["1e400", "NaN", "-Infinity"])
def test_non_finite_coordinates_are_one_line_naming_the_feature(
    number: str, tmp_path: Path
) -> None:
    path = tmp_path / "a.geojson"
    good = json.dumps(_feature(_square(0, 0, 10, 10)))
    bad = json.dumps(_feature(_square(0, 0, 10, 10))).replace("10, 0", f"{number}, 0", 1)
    path.write_text(f'{{"type": "FeatureCollection", "features": [{good}, {bad}]}}')
    with pytest.raises(InputError) as info:
        read_geojson_areas(path)
    expected = f"{path}: feature 1: a coordinate is not a finite number (inf or NaN)"
    assert str(info.value) == expected


def test_roi_skips_points_with_a_warning_and_keeps_the_areas(tmp_path: Path, caplog) -> None:
    doc = {
        "type": "FeatureCollection",
        "features": [
            _feature({"type": "Point", "coordinates": [1, 2]}),
            _feature(_square(0, 0, 10, 10)),
            _feature(None),
        ],
    }
    path = _write(tmp_path, doc)
    with caplog.at_level(logging.WARNING):
        roi = load_roi(path)
    assert roi.area == pytest.approx(100)
    assert f"{path}: 1 feature(s) not areas (Point; skipped): 0" in caplog.text
    assert f"{path}: 1 feature(s) without geometry (skipped): 2" in caplog.text


def test_only_the_reader_parses_geojson_geometries() -> None:
    """One GeoJSON reader: no other module of the package builds geometries from GeoJSON."""
    package = Path(__file__).resolve().parents[1] / "wsiseg"
    spelled = re.compile(
        r"from shapely\.geometry import .*\bshape\b|geometry\.shape\(|from_geojson"
    )
    offenders = [
        f"{path.relative_to(package)}:{n}"
        for path in sorted(package.rglob("*.py"))
        if path.relative_to(package).as_posix() != "io/geojson.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if spelled.search(line)
    ]
    assert offenders == [], f"GeoJSON parsed outside wsiseg/io/geojson.py: {offenders}"
