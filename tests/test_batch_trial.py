"""A new user's trial of `wsiseg segment` (issue 11 follow-up): each test failed before
its fix. Model config edits in the resume identity, output names stable across
batches and unique ignoring case, duplicate slides named, per-slide settings in
run.json, escaped `info`, --output-mpp snapped, model path messages, class areas at
the slide's edge, and one line where there were many."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.segment_helpers import error_lines, run_cli, segment_cli
from wsiseg.io.names import assign_output_names
from wsiseg.pipeline.run import OUTPUT_FILES

EDGE = (1100, 700)  # level-0 px at 0.5 µm/px: not a whole number of 4 µm output pixels


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from wsiseg.synthetic import SynthSpec, write_synthetic_slide

    tmp = tmp_path_factory.mktemp("trial-slides")
    a = write_synthetic_slide(tmp, "a", SynthSpec(width_px=EDGE[0], height_px=EDGE[1], seed=3))
    b = write_synthetic_slide(tmp, "b", SynthSpec(width_px=EDGE[0], height_px=EDGE[1], seed=4))
    return {"a": a.image, "b": b.image}


def _summary(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "summary.json").read_text())
    return data


# -- 1. the checkpoint's JSON config is part of the resume identity ---------------------


def test_editing_the_model_json_alone_is_refused(
    slides: dict[str, Path], model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    mine = tmp_path / "m" / "tiny.safetensors"
    mine.parent.mkdir()
    shutil.copy(model, mine)
    shutil.copy(model.with_suffix(".json"), mine.with_suffix(".json"))
    out = tmp_path / "out"
    args = [str(slides["a"]), "-o", str(out)]
    code, _, err = segment_cli(args, mine, cluster, capsys)
    assert code == 0, err
    first = _summary(out / "a")
    doc = json.loads(mine.with_suffix(".json").read_text())
    doc["config"]["model"]["mean"] = [0.5, 0.5, 0.5]
    doc["config"]["model"]["classes"][0]["name"] = "Glass"
    mine.with_suffix(".json").write_text(json.dumps(doc))
    code, stdout, err = segment_cli(args, mine, cluster, capsys)
    (line,) = error_lines(err)
    assert code == 1 and "skipped" not in stdout
    assert "model config differs: classes, mean" in line and "--overwrite" in line, line
    assert _summary(out / "a") == first
    code, stdout, err = segment_cli([*args, "--overwrite"], mine, cluster, capsys)
    assert code == 0 and "done" in stdout, err
    # A summary without the new field (older wsiseg): refused, not skipped.
    data = _summary(out / "a")
    del data["identity"]["model_config"]
    (out / "a" / "summary.json").write_text(json.dumps(data))
    code, _, err = segment_cli(args, mine, cluster, capsys)
    (line,) = error_lines(err)
    assert code == 1 and "model config not recorded" in line and "--overwrite" in line


# -- 2. names stable across batches, unique ignoring case --------------------------------


def _fake_results(out: Path, name: str, slide: Path) -> None:
    (out / name).mkdir(parents=True)
    summary = {"slide": str(slide), "slide_path": str(slide.resolve()), "slide_id": "x"}
    (out / name / "summary.json").write_text(json.dumps(summary))


def test_output_names_are_stable_across_batches(tmp_path: Path) -> None:
    f = tmp_path / "f"
    for rel in ("x/s.tiff", "y/s.tiff", "S.tiff"):
        (f / rel).parent.mkdir(parents=True, exist_ok=True)
        (f / rel).write_bytes(rel.encode())  # contents differ
    out = tmp_path / "out"
    batch = [f / "S.tiff", f / "x" / "s.tiff", f / "y" / "s.tiff"]
    names = assign_output_names(batch, out, OUTPUT_FILES)
    assert len({n.casefold() for n in names}) == 3, names
    for slide, name in zip(batch, names, strict=True):
        _fake_results(out, name, slide)
    # The subfolder alone: its slide keeps its folder (was: a second folder "s").
    (again,) = assign_output_names([f / "y" / "s.tiff"], out, OUTPUT_FILES)
    assert again == names[2]
    # The whole batch again, in another order: the same names.
    assert assign_output_names(batch[::-1], out, OUTPUT_FILES) == names[::-1]


def test_output_names_never_differ_only_in_case(tmp_path: Path) -> None:
    out = tmp_path / "out"
    big, small = tmp_path / "S.tiff", tmp_path / "sub" / "s.tiff"
    small.parent.mkdir()
    big.write_bytes(b"1")
    small.write_bytes(b"2")
    _fake_results(out, "S", big)
    (name,) = assign_output_names([small], out, OUTPUT_FILES)
    assert name.casefold() != "s", name


# -- 3. a duplicate slide is named once ---------------------------------------------------


def test_symlinked_duplicate_is_named(
    slides: dict[str, Path], tmp_path: Path, caplog, capsys
) -> None:
    from wsiseg.io.discovery import discover_slides

    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(slides["a"], d / "z1.tiff")
    (d / "z3.tiff").symlink_to(d / "z1.tiff")
    with caplog.at_level(logging.WARNING):
        assert discover_slides([d]) == [d / "z1.tiff"]
    (rec,) = [r for r in caplog.records if "same file" in r.getMessage()]
    assert (
        rec.getMessage() == f"{d / 'z3.tiff'} is the same file as {d / 'z1.tiff'}: segmented once"
    )
    code, _, err = run_cli(["info", str(d)], capsys)
    assert code == 0 and "z3.tiff is the same file as" in err and "segmented once" in err
    # As the CLI's other warnings (second trial §6); -v keeps the logger's name.
    line = f"warning: {d / 'z3.tiff'} is the same file as {d / 'z1.tiff'}: segmented once"
    assert line in err.splitlines(), err
    code, _, err = run_cli(["-v", "info", str(d)], capsys)
    assert code == 0 and "WARNING wsiseg.io.discovery: " in err, err


# -- 4, 7, 9. per-slide settings in run.json; --output-mpp snapped; areas at the edge ----


def test_run_json_records_each_slides_settings(
    slides: dict[str, Path], model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    code, _, err = segment_cli(
        [str(slides["a"]), "-o", str(out), "--output-mpp", "4"], model, cluster, capsys
    )
    assert code == 0, err
    # Areas count only what lies on the slide (the last output column and row reach
    # 0.5 and 0.5 px past it at 4 µm/px).
    summary = _summary(out / "a")
    assert summary["output_size"] == [138, 88]
    slide_mm2 = EDGE[0] * EDGE[1] * (0.5 / 1000) ** 2
    total = sum(c["area_mm2"] for c in summary["classes"].values())
    assert total == pytest.approx(slide_mm2, rel=1e-5) and total <= slide_mm2 * (1 + 1e-6)
    assert summary["tissue_area_mm2"] <= slide_mm2
    # A value within a relative 1e-6 of an allowed one is that one: skipped, not refused.
    code, stdout, err = segment_cli(
        [str(slides["a"]), "-o", str(out), "--output-mpp", "4.000000000000001"],
        model,
        cluster,
        capsys,
    )
    assert code == 0 and "skipped" in stdout, err
    code, _, err = segment_cli(
        [str(slides["b"]), "-o", str(out), "--output-mpp", "2"], model, cluster, capsys
    )
    assert code == 0, err
    run = json.loads((out / "run.json").read_text())
    by_name = {s["name"]: s for s in run["slides"]}
    assert by_name["a"]["output_mpp"] == 4.0 and by_name["b"]["output_mpp"] == 2.0
    assert by_name["a"]["slide_mpp"] == 0.5
    assert by_name["a"]["model_sha256"] == by_name["b"]["model_sha256"] == run["model_sha256"]
    assert by_name["a"]["model"] == run["model"]
    report = (out / "report.html").read_text()
    assert "varies: 2, 4 µm/px" in report
    # Older run.json slides (without these fields) still read.
    from wsiseg.pipeline.outputs import SlideRecord

    old = SlideRecord.from_json({"slide": "x.tiff", "status": "done", "name": "x"})
    assert old.output_mpp is None and old.model_sha256 is None


def test_output_mpp_snapped_and_shown_with_its_digits() -> None:
    from wsiseg.errors import InputError
    from wsiseg.pipeline.outputs import ResumeIdentity
    from wsiseg.tiling import check_output_mpp

    assert check_output_mpp(2.0000001, 0.5, 256, 64) == 2.0
    assert check_output_mpp(2.000000000000001, 0.5, 256, 64) == 2.0
    with pytest.raises(InputError, match=r"--output-mpp 2\.00001: "):
        check_output_mpp(2.00001, 0.5, 256, 64)
    settings = {"output_mpp": 2.0, "min_area_um2": 100.0, "margin_px": 64}
    a = ResumeIdentity("m", "f", 0.5, 2.0, None, "b", "h1", {"k": "1"}, settings)
    b = ResumeIdentity(
        "m", "f", 0.5, 2.000011, None, "b", "h2", {"k": "1"}, {**settings, "min_area_um2": 50.0}
    )
    text = "; ".join(a.differences(b))
    assert text == (
        "--output-mpp differs: 2 vs 2.000011; segment settings differ: min_area_um2 100 vs 50"
    )


# -- 5. info escapes names -------------------------------------------------------------


def test_info_escapes_names(slides: dict[str, Path], tmp_path: Path, capsys) -> None:
    odd = tmp_path / "line\nbreak\x1b[31m.tiff"
    shutil.copy(slides["a"], odd)
    code, stdout, _ = run_cli(["info", str(odd)], capsys)
    assert code == 0
    assert "\x1b" not in stdout
    assert stdout.splitlines()[0] == str(odd).replace("\n", "\\n").replace("\x1b", "\\x1b")


# -- 8. model path messages ---------------------------------------------------------------


def test_model_path_messages(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    args = ["segment", str(tmp_path), "-o", str(tmp_path / "o"), "--model"]
    code, _, err = run_cli([*args, str(folder)], capsys)
    assert code == 1 and f"error: {folder}: is a folder, not a checkpoint" in err, err
    code, _, err = run_cli([*args, "nope.safetensors"], capsys)
    assert code == 1 and err.startswith("error: nope.safetensors: not found"), err


# -- 10. one line where there were many --------------------------------------------------


def test_one_line_each(
    slides: dict[str, Path], model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    roi = tmp_path / "roi.geojson"
    ring = [[0, 0], [1e300, 0], [1e300, 1e300], [0, 0]]
    roi.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    out = tmp_path / "out"
    code, _, err = segment_cli(
        [str(slides["a"]), "-o", str(out), "--roi", str(roi)], model, cluster, capsys
    )
    (line,) = error_lines(err)
    assert code == 1 and "--roi" in line and "beyond any slide" in line
    assert "Warning" not in err and "overflow" not in err, err
    # --mpp beside plausible metadata: said once; a failing slide's error line starts
    # its own line (no progress bar fragments in a log).
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(slides["a"], folder / "a.tiff")
    (folder / "broken.svs").write_bytes(b"not a slide")
    code, _, err = segment_cli(
        [str(folder), "-o", str(tmp_path / "out2"), "--mpp", "0.25"], model, cluster, capsys
    )
    assert code == 1
    assert err.count("--mpp 0.25 ignored") == 1, err
    assert "\x1b[A" not in err and "\r" not in err, repr(err)
    errors = [ln for ln in err.split("\n") if "error:" in ln]
    assert len(errors) == 1 and errors[0].startswith("error: "), repr(err)


# -- second trial ------------------------------------------------------------------------
# 1. slides of different models in one OUT: each section its own model and notice


def _model_with_notice(model: Path, folder: Path, notice: str) -> Path:
    folder.mkdir(parents=True)
    mine = folder / model.name
    shutil.copy(model, mine)
    doc = json.loads(model.with_suffix(".json").read_text())
    doc["config"]["notice"] = notice
    mine.with_suffix(".json").write_text(json.dumps(doc))
    return mine


def _sections(report: str) -> list[str]:
    return report.split('<section class="slide card"')[1:]


def test_each_slide_shows_its_own_model_and_notice(
    slides: dict[str, Path], model: Path, cluster: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    one, two = "Model one: research use only", "Model two: not for diagnosis"
    _model_with_notice(model, tmp_path / "m1", one)
    _model_with_notice(model, tmp_path / "m2", two)
    monkeypatch.chdir(tmp_path)  # models given relative to the CWD
    m1, m2 = Path("m1") / model.name, Path("m2") / model.name
    out = tmp_path / "out"
    code, _, err = segment_cli([str(slides["a"]), "-o", str(out)], m1, cluster, capsys)
    assert code == 0, err
    # The other model on the same slide is refused; the report still says model one.
    code, _, err = segment_cli([str(slides["a"]), "-o", str(out)], m2, cluster, capsys)
    assert code == 1 and "model config differs: notice" in err, err
    report = (out / "report.html").read_text()
    assert report.count(one) == 3 and two not in report  # page foot, header, section
    assert "varies" not in report
    code, _, err = segment_cli([str(slides["b"]), "-o", str(out)], m2, cluster, capsys)
    assert code == 0, err
    report = (out / "report.html").read_text()
    sec_a, sec_b = _sections(report)
    assert one in sec_a and two not in sec_a, sec_a[:800]
    assert two in sec_b and one not in sec_b, sec_b[:800]
    header = report.split("<header", 1)[1].split("</header>", 1)[0]
    assert "Notice: varies (see each slide)" in header and one not in header
    assert "<dt>Model</dt><dd>varies <small>(see each slide)</small></dd>" in header
    assert f'title="{tmp_path.resolve() / m1}"' in sec_a
    run = json.loads((out / "run.json").read_text())
    by_name = {s["name"]: s for s in run["slides"]}
    assert by_name["a"]["notice"] == one and by_name["b"]["notice"] == two
    assert by_name["a"]["model"] == str(tmp_path.resolve() / m1)
    assert by_name["b"]["model"] == str(tmp_path.resolve() / m2)


# 2, 3. refusal lines: pixel sizes within 1e-6 equal, values as typed, ROIs and models named


def test_refusal_lines_name_what_differs(
    slides: dict[str, Path], model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    from wsiseg.errors import InputError
    from wsiseg.pipeline.outputs import ResumeIdentity, RoiRecord
    from wsiseg.tiling import check_output_mpp

    a = ResumeIdentity("8ceea18ff3ae6", "f", 0.5, 2.0, None, "b", "h", {"k": "1"}, {})
    assert a.differences(replace(a, slide_mpp=0.50000000001)) == []
    assert a.differences(replace(a, slide_mpp=0.5000001)) == []
    assert a.differences(replace(a, slide_mpp=0.5001)) == [
        "--mpp (slide pixel size used) differs: 0.5 vs 0.5001"
    ]
    with pytest.raises(InputError, match=r"^--output-mpp 1e-320: "):
        check_output_mpp(1e-320, 0.5, 256, 64)
    other = replace(a, model_sha256="4dc22f9db3391", roi_sha256="c3d99873a2f2a")
    roi = RoiRecord("c3d99873a2f2a", (100.0, 100.0, 600.0, 400.0), 150000.0, 0.0375)
    assert a.differences(other, rois=(None, roi), models=("/m/a.safetensors", "/m/b")) == [
        "model (checksum) differs: 8ceea18ff3ae (/m/a.safetensors) vs 4dc22f9db339 (/m/b)",
        "--roi differs: no ROI vs bounds (100, 100)-(600, 400) px, 0.0375 mm²",
    ]
    smaller = RoiRecord("47d67146962b1", (100.0, 100.0, 300.0, 400.0), 60000.0, 0.015)
    assert replace(other, roi_sha256=smaller.sha256).differences(other, rois=(smaller, roi)) == [
        "--roi differs: another ROI (bounds (100, 100)-(300, 400) px, 0.015 mm² "
        "vs bounds (100, 100)-(600, 400) px, 0.0375 mm²)"
    ]
    # Through the CLI: the ROI as recorded in summary.json and as given now.
    geo = tmp_path / "roi.geojson"
    ring = [[100, 100], [600, 100], [600, 400], [100, 400], [100, 100]]
    geo.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    out = tmp_path / "out"
    code, _, err = segment_cli([str(slides["a"]), "-o", str(out)], model, cluster, capsys)
    assert code == 0, err
    args = [str(slides["a"]), "-o", str(out), "--roi", str(geo)]
    code, _, err = segment_cli(args, model, cluster, capsys)
    (line,) = error_lines(err)
    assert code == 1 and "--roi differs: no ROI vs bounds (100, 100)-(600, 400) px" in line, line


# 4. hard links: one slide


def test_hard_linked_duplicate_is_named(slides: dict[str, Path], tmp_path: Path, caplog) -> None:
    from wsiseg.io.discovery import discover_slides

    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(slides["a"], d / "h1.tiff")
    os.link(d / "h1.tiff", d / "h2.tiff")
    with caplog.at_level(logging.WARNING):
        assert discover_slides([d]) == [d / "h1.tiff"]
        assert discover_slides([d / "h2.tiff", d / "h1.tiff"]) == [d / "h2.tiff"]
    messages = [r.getMessage() for r in caplog.records if "same file" in r.getMessage()]
    assert messages == [
        f"{d / 'h2.tiff'} is the same file as {d / 'h1.tiff'}: segmented once",
        f"{d / 'h1.tiff'} is the same file as {d / 'h2.tiff'}: segmented once",
    ]
