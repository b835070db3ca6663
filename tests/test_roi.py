"""--roi GeoJSON: polygons in level-0 pixels, repaired when invalid, clear errors otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.segment_helpers import assert_clean_failure, error_lines, segment_cli
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
        ("{not json", "not valid JSON"),
        (json.dumps({"type": "Point", "coordinates": [1, 2]}), "no polygons"),
        (json.dumps({"type": "Polygon", "coordinates": "x"}), "invalid geometry"),
    ],
)
def test_bad_roi_is_one_clear_error(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(InputError, match=match):
        load_roi(path)


# -- through the CLI ----------------------------------------------------------------------
def _box_geojson(x0: float, y0: float, x1: float, y1: float) -> str:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return json.dumps({"type": "Polygon", "coordinates": [ring]})


@pytest.mark.parametrize("number", ["1e400", "-1e400", "NaN", "Infinity"])
def test_non_finite_roi_is_one_error_line(
    number: str, small_synthetic, model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    roi = tmp_path / "roi.geojson"
    roi.write_text(_box_geojson(100, 100, 900, 900).replace("900, 900", f"{number}, 900", 1))
    assert number in roi.read_text()
    out = tmp_path / "out"
    args = ["--roi", str(roi), str(small_synthetic.image), "-o", str(out)]
    code, _, err = segment_cli(args, model, cluster, capsys)
    assert code != 0
    assert error_lines(err) == [
        f"error: --roi {roi}: a coordinate is not a finite number (inf or NaN)"
    ]
    assert_clean_failure(err)
    assert not (out / "small").exists()


def test_roi_off_the_slide_says_so(
    small_synthetic, model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    roi = tmp_path / "roi.geojson"
    roi.write_text(_box_geojson(5000, 100, 6000, 900))  # the slide is 3072 x 2048
    out = tmp_path / "out"
    args = ["--roi", str(roi), str(small_synthetic.image), "-o", str(out)]
    code, _, err = segment_cli(args, model, cluster, capsys)
    assert code != 0
    (line,) = error_lines(err)
    assert (
        "ROI does not overlap the slide (ROI bounds x 5000-6000, y 100-900; slide 3072x2048" in line
    )
    assert "no tissue" not in err
    assert_clean_failure(err)
    assert not (out / "small" / "summary.json").exists()


def test_clip_roi_to_slide_keeps_the_part_on_the_slide() -> None:
    from shapely.geometry import box

    from wsiseg.pipeline.roi import clip_roi_to_slide

    part = clip_roi_to_slide(box(-100, 500, 1000, 3000) | box(2000, -5, 4000, 10), (3072, 2048))
    assert part.bounds == (0, 0, 3072, 2048)
    assert part.area == pytest.approx(1000 * 1548 + 1072 * 10)
    with pytest.raises(InputError, match=r"does not overlap the slide .* slide 3072x2048 px"):
        clip_roi_to_slide(box(3072, 0, 4000, 100), (3072, 2048))  # touches the edge only
