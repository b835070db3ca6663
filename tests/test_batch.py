"""The batch of `wsiseg segment` (issue 11): resume identity, locks, argument checks,
Ctrl-C, escaped names, outputs clipped to the ROI, and outputs unchanged by the
restructure (DESIGN.md §3.8).

Each test here failed on the code before issue 11 (``BASE_SHA``): there a rerun with
another ``--mpp``, ``--roi`` or slide file was skipped as done, two runs into one OUT
both wrote the slide, ``--mpp 0`` and ``--workers 10000`` were taken, Ctrl-C printed
dask tracebacks, names were printed raw and features ran outside the ROI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
import tifffile
from shapely.geometry import box, shape

from tests.segment_helpers import error_lines, segment_cli, stderr_lines
from wsiseg.export.ome_tiff import read_label_ome_tiff
from wsiseg.io import open_slide

REPO = Path(__file__).resolve().parents[1]
#: The last commit before the batch moved out of the CLI (issue 11).
BASE_SHA = "7e98d0c12d23ab2fe85b941db6a05c2d99c23356"
SIZE = (1536, 1024)  # whole output pixels at 2 µm/px: nothing reaches past the slide


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from wsiseg.synthetic import SynthSpec, write_synthetic_slide

    tmp = tmp_path_factory.mktemp("batch-slides")
    made = {}
    for name, seed in (("s", 21), ("other", 22)):
        spec = SynthSpec(width_px=SIZE[0], height_px=SIZE[1], seed=seed)
        made[name] = write_synthetic_slide(tmp, name, spec).image
    # The same pixels without any pixel size in the file: --mpp is used.
    with open_slide(made["s"]) as reader:
        rgb = reader.read_region(0, 0, 0, *SIZE)
    bare = tmp / "bare.tiff"
    with tifffile.TiffWriter(bare) as tw:
        tw.write(rgb, tile=(256, 256), compression="jpeg", photometric="rgb")
        tw.write(rgb[::4, ::4], tile=(256, 256), compression="jpeg", subfiletype=1)
    made["bare"] = bare
    return made


def _levels(path: Path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tf:
        return [level.asarray() for level in tf.series[0].levels]


def _summary(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "summary.json").read_text())
    return data


# -- 8. outputs identical before and after the restructure ---------------------------------


def test_outputs_identical_to_pre_restructure(
    slides: dict[str, Path], model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    """The code of BASE_SHA (extracted with git archive) and this code give equal label
    arrays (every level) and equal parsed GeoJSON for the same slide and model."""
    if not (REPO / ".git").exists():
        pytest.skip("needs the git history of the repository (CI runs a full clone)")
    base = tmp_path / "base"
    base.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", BASE_SHA, "wsiseg"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
    out_old, out_new = tmp_path / "old", tmp_path / "new"
    env = dict(os.environ, PYTHONPATH=str(base), OMP_NUM_THREADS="1")
    args = [str(slides["s"]), "-o", str(out_old), "--model", str(model), "--cluster", cluster]
    code = "import sys, wsiseg; from wsiseg.cli import main; print(wsiseg.__file__); main(sys.argv[1:])"
    proc = subprocess.run(
        [sys.executable, "-c", code, "segment", *args, "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(str(base)), "the old code must be the one that ran"
    code_new, _, err = segment_cli([str(slides["s"]), "-o", str(out_new)], model, cluster, capsys)
    assert code_new == 0, err
    a, b = out_old / "s", out_new / "s"
    la, lb = _levels(a / "mask.ome.tif"), _levels(b / "mask.ome.tif")
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(x, y)
    assert len(np.unique(la[0])) > 1, "a one-class mask would make the comparison weak"
    ga = json.loads((a / "annotations.geojson").read_text())
    assert ga["features"] and ga == json.loads((b / "annotations.geojson").read_text())
    old, new = _summary(a), _summary(b)
    for key in ("classes", "tissue_area_mm2", "regions", "output_size", "features", "slide_id"):
        assert old[key] == new[key], key


# -- 1. resume identity ---------------------------------------------------------------


def test_resume_skips_only_for_the_same_inputs(
    slides: dict[str, Path], model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    slide = folder / "slide.tiff"
    shutil.copy(slides["bare"], slide)
    out = tmp_path / "out"

    def run(*extra: str) -> tuple[int, str, str]:
        return segment_cli([str(slide), "-o", str(out), *extra], model, cluster, capsys)

    code, _, err = run("--mpp", "0.5")
    assert code == 0, err
    first = _summary(out / "slide")
    assert first["slide_mpp"] == 0.5 and first["mpp_source"] == "override"
    code, stdout, _ = run("--mpp", "0.5")
    assert code == 0 and "skipped" in stdout

    # Another pixel size: areas would be 4x off. Refused, naming what differs.
    code, _, err = run("--mpp", "0.25")
    (line,) = error_lines(err)
    assert code == 1 and "--mpp" in line and "0.5 vs 0.25" in line and "--overwrite" in line
    assert _summary(out / "slide") == first

    # With an ROI: refused too.
    roi = tmp_path / "roi.geojson"
    roi.write_text(json.dumps(shapely.geometry.mapping(box(200, 200, 1200, 800))))
    code, _, err = run("--mpp", "0.5", "--roi", str(roi))
    (line,) = error_lines(err)
    assert code == 1 and "--roi differs: no ROI vs bounds (" in line

    # The slide file replaced by another one of the same name: refused.
    shutil.copy(slides["other"], slide)
    code, _, err = run("--mpp", "0.5")
    (line,) = error_lines(err)
    assert code == 1 and "slide file content differs" in line
    assert _summary(out / "slide") == first
    run_json = json.loads((out / "run.json").read_text())
    (status,) = [s["status"] for s in run_json["slides"]]
    assert status in ("done", "skipped"), "a refusal never hides that the slide is done"

    # --overwrite redoes it with the new inputs.
    code, stdout, err = run("--mpp", "0.5", "--overwrite")
    assert code == 0 and "done" in stdout, err
    redone = _summary(out / "slide")
    assert redone["slide_mpp"] == 0.5
    assert first["identity"]["slide_mpp"] == 0.5 and first["identity"]["roi_sha256"] is None
    assert redone["identity"]["slide_fingerprint"] != first["identity"]["slide_fingerprint"]


def test_identity_of_older_summaries_is_not_trusted(
    slides: dict[str, Path], model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    """A summary.json without a resume identity (older wsiseg) is refused, not skipped."""
    out = tmp_path / "out"
    code, _, err = segment_cli([str(slides["s"]), "-o", str(out)], model, cluster, capsys)
    assert code == 0, err
    data = _summary(out / "s")
    del data["identity"]
    (out / "s" / "summary.json").write_text(json.dumps(data))
    code, _, err = segment_cli([str(slides["s"]), "-o", str(out)], model, cluster, capsys)
    (line,) = error_lines(err)
    assert code == 1 and "older wsiseg" in line


# -- 2. two runs into one OUT ---------------------------------------------------------


def test_two_runs_into_one_out(slides: dict[str, Path], model: Path, tmp_path: Path) -> None:
    """Started together with different --output-mpp: one does the slide, the other refuses
    it on an error line; run.json and the report call the slide done."""
    out = tmp_path / "out"
    procs = []
    for i, output_mpp in enumerate(("2", "4")):
        args = [str(slides["s"]), "-o", str(out), "--model", str(model), "--workers", "1"]
        args += ["--device", "cpu", "--output-mpp", output_mpp]
        log = (tmp_path / f"run{i}.log").open("w")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "wsiseg.cli", "segment", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, OMP_NUM_THREADS="1"),
                text=True,
            )
        )
    codes = [p.wait(timeout=300) for p in procs]
    logs = [(tmp_path / f"run{i}.log").read_text() for i in range(2)]
    assert sorted(codes) == [0, 1], logs
    winner = codes.index(0)
    loser_errors = error_lines(logs[1 - winner])
    assert len(loser_errors) == 1 and "--output-mpp differs" in loser_errors[0], logs
    summary = _summary(out / "s")
    assert summary["output_mpp"] == (2.0, 4.0)[winner]
    run = json.loads((out / "run.json").read_text())
    assert [(s["name"], s["status"]) for s in run["slides"]] == [("s", "done")]
    assert "Failed" not in (out / "report.html").read_text()
    assert not list(out.rglob(".*")), "no lock files or temporaries left"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("run.json", '{"my": "notes"}'),
        ("run.json", '{"slides": ["a.svs"], "notes": "my study"}'),
        (
            "run.json",
            '{"schema_version": 1, "model": "m", "model_sha256": "", "slides": [], "my": 1}',
        ),
        ("run.json", ""),
        ("report.html", "<html>my report</html>"),
    ],
)
def test_files_of_the_user_named_like_run_files_are_refused(
    name: str, text: str, slides: dict[str, Path], model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    """A run.json or report.html in OUT that wsiseg did not write is the user's: the run
    stops before any slide with one error line, and the file is left as it was."""
    from tests.segment_helpers import segment_cli

    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_text(text)
    code, _, err = segment_cli([str(slides["s"]), "-o", str(out)], model, cluster, capsys)
    errors = error_lines(err)
    assert code != 0 and len(errors) == 1, err
    assert name in errors[0] and "not a wsiseg" in errors[0], errors
    assert (out / name).read_text() == text
    assert sorted(p.name for p in out.iterdir()) == [name], "no slide ran"
    # The files of an earlier wsiseg run are its own, and are merged as before.
    (out / name).unlink()
    assert segment_cli([str(slides["s"]), "-o", str(out)], model, cluster, capsys)[0] == 0
    assert segment_cli([str(slides["other"]), "-o", str(out)], model, cluster, capsys)[0] == 0
    run = json.loads((out / "run.json").read_text())
    assert sorted(s["name"] for s in run["slides"]) == ["other", "s"]


def test_a_report_edited_since_it_was_written_is_kept(
    slides: dict[str, Path], model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    """The report carries its own checksum: notes added to it (or a page saved over it)
    make it the user's file, which the next run refuses to replace."""
    from tests.segment_helpers import segment_cli
    from wsiseg.export.report import is_own_report

    out = tmp_path / "out"
    assert segment_cli([str(slides["s"]), "-o", str(out)], model, cluster, capsys)[0] == 0
    report = out / "report.html"
    assert is_own_report(report)
    edited = report.read_text(encoding="utf-8").replace("</main>", "<p>my notes</p></main>")
    report.write_text(edited, encoding="utf-8")
    assert not is_own_report(report)
    code, _, err = segment_cli([str(slides["other"]), "-o", str(out)], model, cluster, capsys)
    errors = error_lines(err)
    assert code != 0 and len(errors) == 1 and "edited since" in errors[0], err
    assert report.read_text(encoding="utf-8") == edited
    assert not (out / "other").exists()


def test_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    from wsiseg.pipeline.locks import LockBusy, file_lock

    path = tmp_path / ".x.lock"
    with file_lock(path):
        code = (
            "import sys; from pathlib import Path; from wsiseg.pipeline.locks import "
            "file_lock, LockBusy\ntry:\n    with file_lock(Path(sys.argv[1]), wait=False): "
            "print('got')\nexcept LockBusy:\n    print('busy')"
        )
        got = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
        )
        assert got.stdout.strip() == "busy", got.stderr
        with pytest.raises(LockBusy):
            with file_lock(path, wait=False):
                pass  # flock locks per open file: a second open in one process is excluded too
    assert not path.exists()
    with file_lock(path, wait=False):
        assert path.exists()


# -- 4. arguments checked when parsed ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--mpp", "0"], "--mpp"),
        (["--mpp", "-1"], "--mpp"),
        (["--mpp", "nan"], "--mpp"),
        (["--mpp", "inf"], "--mpp"),
        (["--output-mpp", "nan"], "--output-mpp"),
        (["--output-mpp", "0"], "--output-mpp"),
        (["--output-mpp", "3"], "allowed: 0.5, 0.64, 0.8, 1, 1.28, 1.6, 2, 3.2, 4"),
        (["--workers", "10000"], "this machine holds at most"),
        (["--workers", "0"], "--workers"),
        (["--shard", "2/2"], "--shard"),
    ],
)
def test_bad_arguments_one_line_before_any_worker(
    args: list[str], expect: str, slides: dict[str, Path], model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "wsiseg.cli", "segment", str(slides["s"]), "-o", str(out)]
        + ["--model", str(model), "--device", "cpu", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode != 0, proc.stdout
    lines = stderr_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], lines
    assert not out.exists(), "refused before anything was written"
    assert time.monotonic() - t0 < 60


def test_missing_model_says_not_found(tmp_path: Path, capsys) -> None:
    from tests.segment_helpers import run_cli

    for name in ("missing.pt", "missing.safetensors", "missing"):
        code, _, err = run_cli(
            ["segment", str(tmp_path), "-o", str(tmp_path / "o"), "--model", str(tmp_path / name)],
            capsys,
        )
        assert code == 1 and err.count("\n") == 1 and "not found" in err, err


# -- 7. Ctrl-C and names ---------------------------------------------------------------


def test_ctrl_c_prints_one_line(model: Path, tmp_path: Path) -> None:
    """SIGINT to the whole process group (what a terminal's Ctrl-C does) while regions
    run: one line on stderr, exit code 130, no worker left behind, no empty slide folder."""
    import psutil

    from wsiseg.synthetic import SynthSpec, write_synthetic_slide

    # Regions for several seconds: the signal lands in the region phase even when a
    # loaded machine delays this process's polling.
    spec = SynthSpec(width_px=4096, height_px=3072, seed=23)
    slide = write_synthetic_slide(tmp_path / "slide", "s", spec).image
    out = tmp_path / "out"
    args = [str(slide), "-o", str(out), "--model", str(model), "--workers", "2"]
    errlog = tmp_path / "err.log"
    # As in a terminal's foreground: a shell without job control starts background
    # commands (a CI script's `make test &`) with SIGINT ignored, which a child inherits
    # through exec, and then Python never raises KeyboardInterrupt. A handler (not an
    # ignore) is reset to the default by exec, so the child gets Ctrl-C as a user would.
    old_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with errlog.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "wsiseg.cli", "segment", *args, "--device", "cpu"],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=dict(os.environ, OMP_NUM_THREADS="1"),
                start_new_session=True,
            )
    finally:
        signal.signal(signal.SIGINT, old_handler)
    try:
        deadline = time.monotonic() + 240
        while not list(out.glob("s/.work-*/labels.zarr")):
            assert proc.poll() is None, errlog.read_text()[-3000:]
            assert time.monotonic() < deadline, "regions never started"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
        time.sleep(2)  # anything the workers print late
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    text = errlog.read_text()
    lines = stderr_lines(text)
    assert code == 130, lines
    assert lines == ["error: interrupted"], lines
    assert text == "error: interrupted\n", repr(text)  # no blank line before it
    assert out.is_dir() and not (out / "s").exists()  # the run's empty folder removed
    left = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == proc.pid and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    assert not left


def test_names_with_control_characters_are_escaped(
    slides: dict[str, Path], model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    odd = folder / "line\nbreak\x1b[31m.tiff"
    shutil.copy(slides["s"], odd)
    broken = folder / "bad\rname.svs"
    broken.write_bytes(b"not a slide")
    code, stdout, err = segment_cli(
        [str(folder), "-o", str(tmp_path / "o")], model, cluster, capsys
    )
    assert code == 1
    out_lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(out_lines) == 2, out_lines
    assert any("line\\nbreak\\x1b[31m.tiff" in line for line in out_lines), out_lines
    (line,) = error_lines(err)
    assert "bad\\rname.svs: unsupported, corrupt or truncated" in line, line
    assert "\x1b[31m" not in stdout and "\x1b[31m" not in err.replace("\x1b[A", "")


# -- 5. outputs clipped to the ROI -------------------------------------------------------


def test_outputs_and_areas_are_clipped_to_the_roi(
    slides: dict[str, Path], model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    x0, y0, x1, y1 = 300, 200, 1100, 800  # level-0 px; 0.5 µm/px
    roi = tmp_path / "roi.geojson"
    roi.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": shapely.geometry.mapping(box(x0, y0, x1, y1)),
                    }
                ],
            }
        )
    )
    out = tmp_path / "out"
    code, _, err = segment_cli(
        [str(slides["s"]), "-o", str(out), "--roi", str(roi)], model, cluster, capsys
    )
    assert code == 0, err
    summary = _summary(out / "s")
    roi_mm2 = (x1 - x0) * (y1 - y0) * (0.5 / 1000) ** 2
    areas = sum(c["area_mm2"] for c in summary["classes"].values())
    assert areas == pytest.approx(roi_mm2, rel=0.02), "class areas cover the ROI only"
    assert 0 < summary["tissue_area_mm2"] <= roi_mm2
    assert summary["detected_tissue_area_mm2"] <= roi_mm2 * 1.05
    # Labels outside the ROI are background (2 µm/px output: 4 level-0 px per pixel).
    mask = read_label_ome_tiff(out / "s" / "mask.ome.tif")
    inside = np.zeros(mask.shape, bool)
    inside[y0 // 4 : y1 // 4, x0 // 4 : x1 // 4] = True
    assert mask[~inside].max() == 0 and mask[inside].max() > 0
    # Every feature lies within the ROI.
    features = json.loads((out / "s" / "annotations.geojson").read_text())["features"]
    assert features
    area = box(x0, y0, x1, y1).buffer(0.02)
    for f in features:
        assert area.contains(shape(f["geometry"])), f["geometry"]
    # The ROI is recorded.
    assert summary["roi"]["bounds"] == [x0, y0, x1, y1]
    assert summary["roi"]["area_mm2"] == pytest.approx(roi_mm2)
    assert len(summary["roi"]["sha256"]) == 64
    assert summary["identity"]["roi_sha256"] == summary["roi"]["sha256"]


def test_roi_change_message_names_the_roi() -> None:
    """The refusal line names each differing input (unit test of ResumeIdentity)."""
    from wsiseg.pipeline.outputs import ResumeIdentity

    a = ResumeIdentity("m" * 64, "f" * 64, 0.5, 2.0, None, "openslide", "h")
    b = ResumeIdentity("m" * 64, "f" * 64, 0.25, 4.0, "r" * 64, "tiffslide", "h")
    text = "; ".join(a.differences(b))
    assert re.search(r"--mpp .*differs: 0.5 vs 0.25", text)
    assert (
        "--output-mpp differs: 2 vs 4" in text
        and "--roi differs: no ROI vs an ROI (sha256 rrrr" in text
    )
    assert "backend used differs: openslide vs tiffslide" in text
    assert ResumeIdentity.from_json(a.to_json()) == a
    assert not a.differences(a)
