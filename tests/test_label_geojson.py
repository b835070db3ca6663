"""GeoJSON training labels: invalid or self-intersecting polygons are repaired, parts outside
the slide clipped, points/lines/empty geometries skipped, unknown classes kept out of
training (never learned as background) - each with a logged warning naming the file and
features; malformed files and features are one clear error naming the file and feature.

test_datasets.py covers a clean QuPath export read through `discover_sources`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from shapely.geometry import Polygon

from wsiseg.errors import InputError
from wsiseg.models.config import DEFAULT_CLASSES
from wsiseg.synthetic import SynthSpec, write_synthetic_slide
from wsiseg.train.datasets import discover_sources, rasterise_labels, read_geojson_labels
from wsiseg.train.losses import IGNORE_INDEX

NAMES = [n for n, _ in DEFAULT_CLASSES]  # Background, Stroma, Benign gland, Tumor
IDS = {n: i for i, n in enumerate(NAMES)}
SIZE = (512, 384)  # slide (w, h) in level-0 pixels
DS = 4.0  # level-0 pixels per label pixel

BOWTIE = [[100, 100], [300, 300], [300, 100], [100, 300], [100, 100]]


def feature(coords: Any, cls: str | None = "Tumor", kind: str = "Polygon", **extra: Any) -> dict:
    props: dict[str, Any] = {"objectType": "annotation"}
    if cls is not None:
        props["classification"] = {"name": cls, "color": [200, 0, 0]}
    geometry = None if coords is None else {"type": kind, "coordinates": coords}
    return {"type": "Feature", "geometry": geometry, "properties": props, **extra}


def square(x0: float, y0: float, x1: float, y1: float) -> list:
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def write(tmp_path: Path, features: Any, name: str = "labels.geojson") -> Path:
    path = tmp_path / name
    doc = (
        {"type": "FeatureCollection", "features": features}
        if isinstance(features, list)
        else features
    )
    path.write_text(json.dumps(doc))
    return path


def raster(path: Path) -> np.ndarray:
    return rasterise_labels(read_geojson_labels(path, IDS, SIZE), SIZE, DS)


def at(lab: np.ndarray, x: float, y: float) -> int:
    """Label at level-0 point (x, y)."""
    return int(lab[int(y / DS), int(x / DS)])


def test_bowtie_is_repaired_into_its_two_lobes(tmp_path: Path, caplog) -> None:
    path = write(tmp_path, [feature([BOWTIE])])
    with caplog.at_level(logging.WARNING):
        lab = raster(path)
    assert lab.shape == (96, 128)
    assert at(lab, 130, 200) == 3 and at(lab, 270, 200) == 3  # left and right lobes
    assert at(lab, 200, 120) == 0 and at(lab, 200, 280) == 0  # above and below the crossing
    # Two triangles of 100 x 200 / 2 level-0 px each: 20000 px = 1250 label pixels.
    assert abs(int((lab == 3).sum()) - 1250) < 60
    assert "invalid (repaired)" in caplog.text and str(path) in caplog.text


def test_self_overlapping_ring_and_overlapping_collection(tmp_path: Path) -> None:
    """A ring that loops over itself and a collection of overlapping squares: no XOR holes."""
    loop = [[100, 100], [200, 100], [200, 200], [150, 200], [150, 50], [120, 50], [120, 200]]
    loop += [[100, 200], [100, 100]]
    collection = {
        "type": "GeometryCollection",
        "geometries": [
            {"type": "Polygon", "coordinates": square(300, 100, 400, 200)},
            {"type": "Polygon", "coordinates": square(350, 150, 450, 250)},
            {"type": "LineString", "coordinates": [[0, 0], [500, 380]]},
        ],
    }
    gland = {"classification": {"name": "Benign gland"}}
    path = write(
        tmp_path,
        [
            feature([loop], "Stroma"),
            {"type": "Feature", "geometry": collection, "properties": gland},
        ],
    )
    lab = raster(path)
    assert at(lab, 110, 150) == 1 and at(lab, 180, 150) == 1
    assert at(lab, 375, 175) == 2, "the overlap of the two squares is inside, not a hole"
    assert at(lab, 320, 120) == 2 and at(lab, 440, 240) == 2
    assert int((lab == 2).sum()) == pytest.approx((2 * 100 * 100 - 50 * 50) / DS**2, rel=0.05)


def test_holes_are_kept_and_later_features_win(tmp_path: Path) -> None:
    ring = Polygon(square(50, 50, 250, 250)[0], [square(100, 100, 200, 200)[0]])
    holed = {
        "type": "Polygon",
        "coordinates": [list(map(list, r.coords)) for r in [ring.exterior, *ring.interiors]],
    }
    path = write(
        tmp_path,
        [
            {
                "type": "Feature",
                "geometry": holed,
                "properties": {"classification": {"name": "Stroma"}},
            },
            feature(square(200, 200, 300, 300), "Tumor"),
        ],
    )
    lab = raster(path)
    assert at(lab, 75, 75) == 1 and at(lab, 150, 150) == 0  # the hole stays background
    assert at(lab, 225, 225) == 3  # the later feature is drawn over the earlier one


def test_parts_outside_the_slide_are_clipped(tmp_path: Path, caplog) -> None:
    path = write(
        tmp_path,
        [
            feature(square(-100, -100, 100, 100), "Stroma"),
            feature(square(600, 400, 700, 500), "Tumor"),  # wholly outside
            feature(square(400, 300, 10_000, 10_000), "Benign gland"),
        ],
    )
    with caplog.at_level(logging.WARNING):
        labels = read_geojson_labels(path, IDS, SIZE)
    assert [c for c, _ in labels.areas] == [1, 2]
    assert labels.areas[0][1].area == pytest.approx(100 * 100)
    assert labels.areas[1][1].bounds == (400, 300, 512, 384)
    assert "2 feature(s) clipped to the slide: 0, 2" in caplog.text
    assert "1 feature(s) wholly outside the slide (skipped): 1" in caplog.text
    lab = rasterise_labels(labels, SIZE, DS)
    assert at(lab, 10, 10) == 1 and at(lab, 500, 380) == 2


def test_unknown_classes_are_ignored_not_background(tmp_path: Path, caplog) -> None:
    path = write(
        tmp_path,
        [
            feature(square(0, 0, 100, 100), "Tumour"),  # a typo of "Tumor"
            feature(square(200, 0, 300, 100), None),  # no classification
            feature(square(400, 0, 500, 100), "Stroma"),
            feature(square(50, 50, 80, 80), "Tumor"),  # known, drawn over the unknown
        ],
    )
    with caplog.at_level(logging.WARNING):
        lab = raster(path)
    assert at(lab, 20, 20) == IGNORE_INDEX and at(lab, 250, 50) == IGNORE_INDEX
    assert at(lab, 450, 50) == 1 and at(lab, 60, 60) == 3 and at(lab, 150, 200) == 0
    assert "of unknown class 'Tumour' (ignored, not background): 0" in caplog.text
    assert "of unknown class none (ignored, not background): 1" in caplog.text


@pytest.mark.parametrize(
    ("geometry", "what"),
    [
        (None, "without geometry"),
        ({"type": "Polygon", "coordinates": []}, "without geometry"),
        ({"type": "MultiPolygon", "coordinates": []}, "without geometry"),
        ({"type": "Point", "coordinates": [10, 10]}, "not areas (Point"),
        ({"type": "MultiPoint", "coordinates": [[10, 10], [20, 20]]}, "not areas (MultiPoint"),
        ({"type": "LineString", "coordinates": [[10, 10], [200, 200]]}, "not areas (LineString"),
        (
            {"type": "Polygon", "coordinates": [[[10, 10], [20, 20], [30, 30], [10, 10]]]},
            "not areas",
        ),
    ],
    ids=["null", "empty polygon", "empty multipolygon", "point", "multipoint", "line", "flat"],
)
def test_non_areas_are_skipped_with_a_warning(
    geometry: Any, what: str, tmp_path: Path, caplog
) -> None:
    path = write(
        tmp_path,
        [
            {"type": "Feature", "geometry": geometry, "properties": {"classification": "Tumor"}},
            feature(square(300, 200, 400, 300), "Stroma"),
        ],
    )
    with caplog.at_level(logging.WARNING):
        labels = read_geojson_labels(path, IDS, SIZE)
    assert [c for c, _ in labels.areas] == [1] and labels.ignored == []
    assert what in caplog.text and str(path) in caplog.text and ": 0" in caplog.text


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ('{"type": "FeatureCollection", "features": [', "not valid JSON"),
        ("\xff\xfe", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ('{"type": "Polygon", "coordinates": []}', "not a GeoJSON FeatureCollection"),
        ('"labels"', "not a GeoJSON FeatureCollection"),
        ('{"type": "FeatureCollection", "features": {}}', "without a 'features' list"),
        ('{"type": "FeatureCollection", "features": [42]}', "feature 0: not a GeoJSON Feature"),
        (
            '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}}]}',
            "feature 0: not a GeoJSON Feature",
        ),
    ],
    ids=[
        "truncated",
        "binary",
        "nested",
        "bare geometry",
        "string",
        "features",
        "number",
        "no geometry key",
    ],
)
def test_malformed_files_are_one_clear_error(content: str, pattern: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.geojson"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(InputError, match=pattern) as info:
        read_geojson_labels(path, IDS, SIZE)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("geometry", "pattern"),
    [
        ({"type": "Polygon", "coordinates": [[[1, 2], [3, 4]]]}, "invalid geometry"),
        ({"type": "Polygon", "coordinates": "square"}, "invalid geometry"),
        ({"type": "Circle", "coordinates": [10, 10], "radius": 5}, "invalid geometry"),
        ({"type": "Polygon"}, "invalid geometry"),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [1e999, 0], [0, 5], [0, 0]]]},
            "not a finite number",
        ),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [float("nan"), 0], [0, 5], [0, 0]]]},
            "not a finite number",
        ),
    ],
    ids=["two points", "string coordinates", "unknown type", "no coordinates", "infinite", "nan"],
)
def test_malformed_features_name_file_and_feature(
    geometry: Any, pattern: str, tmp_path: Path
) -> None:
    good = feature(square(0, 0, 50, 50), "Stroma")
    bad = {"type": "Feature", "id": "a1b2", "geometry": geometry, "properties": {}}
    path = write(tmp_path, [good, bad])
    with pytest.raises(InputError, match=pattern) as info:
        read_geojson_labels(path, IDS, SIZE)
    message = str(info.value)
    assert f"{path}: feature 1 (id a1b2)" in message and "\n" not in message


def test_file_without_known_areas_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path, [feature(square(0, 0, 50, 50), "Tumour"), feature([[1, 2]], kind="Point")]
    )
    with pytest.raises(InputError, match="no annotated areas of the model's classes") as info:
        read_geojson_labels(path, IDS, SIZE)
    assert "'Tumour'" in str(info.value) and str(path) in str(info.value)
    with pytest.raises(InputError, match="no annotated areas"):
        read_geojson_labels(write(tmp_path, [], "empty.geojson"), IDS, SIZE)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gjslide")
    return write_synthetic_slide(folder, "s", SynthSpec(width_px=512, height_px=384, seed=5)).image


def test_discover_sources_repairs_and_finds_exact_names(
    slide: Path, tmp_path: Path, caplog
) -> None:
    """Slides with glob characters in their names; hostile features repaired end to end."""
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(slide, root / "core [1].tiff")
    shutil.copy(slide, root / "core 1.tiff")  # what the pattern "core [1].*" would match
    features = [
        feature([BOWTIE], "Tumor"),
        feature(square(-50, -50, 60, 60), "Stroma"),
        feature(square(400, 300, 450, 350), "Tumour"),
        feature([30, 30], kind="Point"),
    ]
    write(root, features, "core [1].geojson")
    write(root, [feature(square(0, 0, 10, 10), "Stroma")], "orphan.geojson")  # no slide
    with caplog.at_level(logging.WARNING):
        (src,) = discover_sources(root, class_names=NAMES)
    assert src.name == "core [1]"
    assert src.size == (128, 96) and src.mpp == pytest.approx(0.5 * DS)  # the label grid
    _, lab = src.read(0, 0, 128, 96, (96, 128))
    assert at(lab, 130, 200) == 3 and at(lab, 200, 120) == 0
    assert at(lab, 20, 20) == 1 and at(lab, 420, 320) == IGNORE_INDEX
    for text in ("invalid (repaired)", "clipped to the slide", "unknown class 'Tumour'", "Point"):
        assert text in caplog.text, text
    assert "orphan.geojson: no slide of the same name" in caplog.text


def test_discover_sources_reports_a_bad_feature(slide: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(slide, root / "s.svs")
    bad = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0]]]}}
    path = write(root, [feature(square(0, 0, 50, 50), "Stroma"), bad], "s.geojson")
    with pytest.raises(InputError, match="feature 1: invalid geometry") as info:
        discover_sources(root, class_names=NAMES)
    assert str(path) in str(info.value)
