"""--roi GeoJSON: polygons in level-0 pixels, repaired when invalid, clear errors otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsiseg.errors import InputError
from wsiseg.pipeline.roi import load_roi


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_feature_collection_union(tmp_path: Path) -> None:
    fc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]],
                },
                "properties": {},
            },
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[20, 0], [30, 0], [30, 10], [20, 10], [20, 0]]],
                },
                "properties": {},
            },
        ],
    }
    g = load_roi(_write(tmp_path / "roi.geojson", fc))
    assert g.area == pytest.approx(200)


def test_self_intersecting_polygon_is_repaired(tmp_path: Path) -> None:
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}
    g = load_roi(_write(tmp_path / "bowtie.geojson", bowtie))
    assert g.is_valid and g.area == pytest.approx(50)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not readable"),
        (json.dumps({"type": "Point", "coordinates": [1, 2]}), "no polygons"),
        (json.dumps({"type": "Polygon", "coordinates": "x"}), "invalid geometry"),
    ],
)
def test_bad_roi_is_one_clear_error(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(InputError, match=match):
        load_roi(path)
