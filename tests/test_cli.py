"""The command line: tables, JSON, OME-Zarr conversion, one-line errors with exit code 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.segment_helpers import run_cli
from wsiseg.cli import invoke
from wsiseg.io import open_slide


def test_info_json_describes_synthetic_slide(small_synthetic, capsys) -> None:
    code, out, _ = run_cli(["info", "--json", str(small_synthetic.image)], capsys)
    assert code == 0
    (info,) = json.loads(out)
    assert info["backend"] == "openslide" and info["vendor"] == "generic-tiff"
    assert info["dimensions"][0] == [3072, 2048]
    assert info["mpp"] == pytest.approx([0.5, 0.5], abs=1e-3)
    assert info["levels"] >= 2 and info["tile_size"] == [256, 256]


def test_info_table(small_synthetic, capsys) -> None:
    code, out, _ = run_cli(["info", str(small_synthetic.image)], capsys)
    assert code == 0
    assert "generic-tiff" in out and "3072 x 2048" in out and "0.5000 x 0.5000 µm/px" in out


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        (lambda d: d / "missing.svs", "no such file"),
        (lambda d: d, "no slides found"),
        (lambda d: _write(d / "empty.svs", b""), "empty file"),
        (lambda d: _write(d / "notes.svs", b"this is not a slide\n"), "unsupported, corrupt"),
        (lambda d: _write(d / "photo.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64), "unsupported"),
        (lambda d: _write(d / "random.ndpi", bytes(range(256)) * 40), "unsupported"),
    ],
)
def test_bad_input_gives_one_line_and_exit_1(tmp_path, capsys, make, expect) -> None:
    path = make(tmp_path)
    code, _, err = run_cli(["info", str(path)], capsys)
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0]


def test_truncated_slide_fails_cleanly(small_synthetic, tmp_path, capsys) -> None:
    data = small_synthetic.image.read_bytes()
    for cut in (100, len(data) // 3, len(data) - 5000):
        bad = tmp_path / f"cut{cut}.tiff"
        bad.write_bytes(data[:cut])
        code, _, err = run_cli(["info", str(bad)], capsys)
        assert code == 1 and err.count("\n") == 1 and "error:" in err, (cut, err)


def test_batch_reports_bad_and_good(small_synthetic, tmp_path, capsys) -> None:
    code, out, err = run_cli(
        ["info", str(tmp_path / "nope.svs"), str(small_synthetic.image)], capsys
    )
    assert code == 1
    assert "no such file" in err and "3072 x 2048" in out


def test_convert_to_omezarr(small_synthetic, tmp_path, capsys) -> None:
    out = tmp_path / "slide.zarr"
    code, _, err = run_cli(["convert", str(small_synthetic.image), str(out)], capsys)
    assert code == 0, err
    group = zarr.open_group(out, mode="r")
    ms = group.attrs["ome"]["multiscales"][0]
    assert group.attrs["ome"]["version"] == "0.5"
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx(
        [1.0, 0.5, 0.5], abs=1e-3
    )
    level0 = group["0"]
    assert level0.shape == (3, 2048, 3072)
    assert level0.compressors, "chunks must be compressed"
    with open_slide(small_synthetic.image) as r:
        ref = r.read_region(0, 1000, 500, 300, 200)
    np.testing.assert_array_equal(level0[:, 500:700, 1000:1300].transpose(1, 2, 0), ref)
    # Every level is smaller than the one before; scales grow with it.
    scales = [d["coordinateTransformations"][0]["scale"][2] for d in ms["datasets"]]
    assert scales == sorted(scales) and len(scales) == len(list(group.array_keys()))
    # An existing output is not overwritten without --overwrite, and is left intact.
    before = sorted(p.name for p in out.rglob("*"))
    code, _, err = run_cli(["convert", str(small_synthetic.image), "-o", str(out)], capsys)
    assert code == 1 and "already exists" in err
    assert sorted(p.name for p in out.rglob("*")) == before
    assert not list(tmp_path.glob(".*partial"))


def test_convert_needs_mpp(shared_data, tmp_path, capsys) -> None:
    slide = shared_data / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
    out = tmp_path / "x.zarr"
    code, _, err = run_cli(["convert", str(slide), str(out)], capsys)
    assert code == 1 and "--mpp" in err and not out.exists()


def test_thumbnail(small_synthetic, tmp_path, capsys) -> None:
    from PIL import Image

    out = tmp_path / "thumb.png"
    code, stdout, _ = run_cli(["thumbnail", str(small_synthetic.image), "-o", str(out)], capsys)
    assert code == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (2048 // 32, 3072 // 32, 3)  # 16 µm/px from 0.5 µm/px
    assert img.std() > 5, "thumbnail should show tissue, not a flat image"


def test_console_script_runs(small_synthetic) -> None:
    exe = Path(sys.executable).with_name("wsiseg")
    res = subprocess.run(
        [str(exe), "info", "--json", str(small_synthetic.image)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    res = subprocess.run(
        [str(exe), "info", "/nonexistent.svs"], capture_output=True, text=True, check=False
    )
    assert res.returncode == 1 and res.stderr.strip().startswith("error:")
    assert len(res.stderr.strip().splitlines()) == 1


def test_invoke_echoes_and_raises_only_on_failure(small_synthetic, capsys) -> None:
    invoke(["info", "--json", str(small_synthetic.image)])
    out = capsys.readouterr().out
    assert out.startswith("$ wsiseg info --json ") and '"backend"' in out
    with pytest.raises(SystemExit) as info:
        invoke(["info", "/nonexistent.svs"], echo=False)
    assert info.value.code == 1
    assert "$ wsiseg" not in capsys.readouterr().out


def test_info_out_is_written_whole(tmp_path: Path, capsys) -> None:
    """``info -o`` replaces its JSON in one rename: no temporary is left beside it."""
    from wsiseg.fileops import is_temporary_name
    from wsiseg.synthetic import SynthSpec, write_synthetic_slide

    paths = write_synthetic_slide(tmp_path, "s", SynthSpec(width_px=512, height_px=512, seed=3))
    out = tmp_path / "info.json"
    out.write_text("old\n")
    code, _, _ = run_cli(["info", str(paths.image), "-o", str(out)], capsys)
    assert code == 0
    data = json.loads(out.read_text())
    assert data[0]["dimensions"][0] == [512, 512]
    assert not [p.name for p in tmp_path.iterdir() if is_temporary_name(p.name)]


def test_ctrl_c_silences_the_cluster_libraries_teardown() -> None:
    """Below -vv the cluster libraries show errors only, and nothing once Ctrl-C came:
    distributed's teardown may log a NameError traceback of its own when interrupted
    (seen on CI), which would precede the one 'error: interrupted' line."""
    import logging
    import signal

    from wsiseg import cli as cli_mod

    def record(name: str, level: int) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "x", None, None)

    cli_mod._INTERRUPTED.clear()
    try:
        assert cli_mod._shown_record(record("tornado.application", logging.ERROR))
        assert not cli_mod._shown_record(record("distributed.worker", logging.WARNING))
        with pytest.raises(KeyboardInterrupt):
            cli_mod._on_sigint(signal.SIGINT, None)
        assert not cli_mod._shown_record(record("tornado.application", logging.ERROR))
        assert cli_mod._shown_record(record("wsiseg.pipeline.run", logging.ERROR))
        assert cli_mod._shown_record(record("wsiseg.pipeline.run", logging.WARNING))
    finally:
        cli_mod._INTERRUPTED.clear()


def test_console_script_freezes_the_collector_on_the_way_out(monkeypatch, capsys) -> None:
    """The console script (no argv) freezes the GC's objects as it ends, so the
    interpreter's exit skips traversing them (about 1 s with torch loaded); an
    in-process call with argv (tests, pipelines) leaves the collector as it is, and a
    failing command freezes too (the process ends with it)."""
    import gc

    from wsiseg import cli as cli_mod

    calls: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append(1))
    cli_mod.main(["--version"])
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["wsiseg", "--version"])
    cli_mod.main()
    assert calls == [1]
    monkeypatch.setattr(sys, "argv", ["wsiseg", "info", "/nonexistent/slide.svs"])
    with pytest.raises(SystemExit) as exc:
        cli_mod.main()
    assert exc.value.code != 0 and calls == [1, 1]
    capsys.readouterr()


@pytest.mark.parametrize("device", ["bogus", "cuda:x", "gpu"])
def test_a_device_name_torch_does_not_know_is_one_error_line(device: str, capsys) -> None:
    """--device is checked before any work (formerly a torch RuntimeError traceback from
    the workers), and the library's resolve_device names it too."""
    from wsiseg.errors import WsisegError
    from wsiseg.models.loading import resolve_device

    code, _, err = run_cli(["segment", "nowhere.svs", "-o", "out", "--device", device], capsys)
    assert code == 2 and err.count("error:") == 1 and repr(device) in err
    with pytest.raises(WsisegError, match="not a device"):
        resolve_device(device)
