"""`wsiseg segment` killed with SIGKILL mid-run, then rerun (DESIGN.md §3.7-3.8).

Every run here is a real `wsiseg segment` process (its own session, so the whole
process group, dask workers included, can be killed) running under an audit hook
that aborts it if a final output name is ever opened for writing, created other
than by renaming a hidden temporary, moved away or deleted. While it runs, the
test polls the output folder every few milliseconds and checks that each file
under a final name is complete (it parses) when it appears and never changes in
place. The rerun must finish the slides, clean up what the killed run left, and
give outputs identical to an uninterrupted run: equal label arrays (every pyramid
level), equal parsed GeoJSON, equal images, equal summaries except for timings.

``tests/test_segment.py::test_rerun_after_interrupted_outputs`` covers a rerun over
a hand-made leftover state in-process; these tests kill real processes.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import tifffile
from PIL import Image

FINALS = ("mask.ome.tif", "annotations.geojson", "overlay.png", "thumbnail.png", "summary.json")
# Not part of the outputs: timings, and how many regions a resumed run took from its scratch.
TIMING_KEYS = ("seconds", "wall_seconds", "regions_reused")
RUN_TIMEOUT_S = 240.0

# Runs `wsiseg ARGS` with an audit hook guarding the final names under $WSISEG_TEST_OUT.
# With $WSISEG_TEST_PAUSE=REL it stops just before REL (e.g. "s1/annotations.geojson")
# is renamed into place, touches $WSISEG_TEST_MARK and waits to be killed.
GUARD = r"""
import os, sys, time
OUT = os.path.abspath(os.environ["WSISEG_TEST_OUT"])
PAUSE = os.environ.get("WSISEG_TEST_PAUSE")
MARK = os.environ.get("WSISEG_TEST_MARK")
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

def final(path):
    if isinstance(path, int):
        return None
    p = os.path.abspath(os.fsdecode(path))
    if not p.startswith(OUT + os.sep):
        return None
    rel = os.path.relpath(p, OUT)
    return None if any(part.startswith(".") for part in rel.split(os.sep)) else rel

def fail(message):
    os.write(2, ("GUARD VIOLATION: " + message + "\n").encode())
    os._exit(97)

def hook(event, args):
    if event == "open":
        flags = args[2]
        if isinstance(flags, int) and flags & WRITE and final(args[0]):
            fail("opened a final name for writing: " + final(args[0]))
    elif event in ("os.rename", "os.link", "os.symlink"):
        src, dst = final(args[0]), final(args[1])
        if src:
            fail(event + " moved a final file away: " + src)
        if dst and event != "os.rename":
            fail(event + " made a final name: " + dst)
        if dst and os.path.basename(os.fsdecode(args[0]))[:1] != ".":
            fail("a final name came from a visible file: " + dst)
        if dst and dst == PAUSE:
            os.close(os.open(MARK, os.O_WRONLY | os.O_CREAT))
            while True:
                time.sleep(1)
    elif event in ("os.remove", "shutil.rmtree", "os.truncate"):
        if final(args[0]):
            fail(event + " on a final name: " + final(args[0]))

sys.addaudithook(hook)
from wsiseg.cli import main
main(sys.argv[1:])
"""


# -- watching the output folder ------------------------------------------------------


def _validate(name: str, data: bytes) -> None:
    """Raise unless ``data`` is a complete output of kind ``name``."""
    if name.endswith(".json"):
        assert isinstance(json.loads(data), dict)
    elif name.endswith(".geojson"):
        assert json.loads(data)["type"] == "FeatureCollection"
    elif name.endswith(".png"):
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    elif name.endswith(".tif"):
        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            assert tf.is_ome
            for level in tf.series[0].levels:
                level.asarray()
    elif name.endswith(".html"):
        assert data.rstrip().endswith(b"</html>")
    else:
        raise AssertionError("unexpected file under a final name")


class FinalFileWatch(threading.Thread):
    """Polls ``root``: a visible file must be complete when seen, never change in place
    and never disappear."""

    def __init__(self, root: Path, interval_s: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval_s = interval_s
        self.seen: dict[str, tuple[int, int, int]] = {}  # rel -> (inode, size, mtime_ns)
        self.errors: list[str] = []
        self.validated = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.scan()
            time.sleep(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.scan()

    def scan(self) -> None:
        present: set[str] = set()
        self._scan_dir(self.root, "", present)
        for rel in sorted(set(self.seen) - present):
            self.errors.append(f"{rel} disappeared")
            del self.seen[rel]

    def _scan_dir(self, folder: Path, prefix: str, present: set[str]) -> None:
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                self._scan_dir(Path(entry.path), rel + "/", present)
            else:
                present.add(rel)
                self._check(rel, Path(entry.path))

    def _check(self, rel: str, path: Path) -> None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        prev = self.seen.get(rel)
        if prev == key:
            return
        if prev is not None and prev[0] == st.st_ino:
            self.errors.append(f"{rel} changed in place: {prev} -> {key}")
        try:
            with open(path, "rb") as fh:
                fst = os.fstat(fh.fileno())
                data = fh.read()
        except FileNotFoundError:
            return
        try:
            assert len(data) == fst.st_size
            _validate(path.name, data)
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            self.errors.append(f"{rel} incomplete when seen ({len(data)} bytes): {exc!r}")
        self.seen[rel] = (fst.st_ino, fst.st_size, fst.st_mtime_ns)
        self.validated += 1


# -- running `wsiseg segment` --------------------------------------------------------


class Run:
    """A guarded `wsiseg segment` process with its output folder watched."""

    def __init__(
        self,
        args: list[str],
        out: Path,
        log: Path,
        pause: str | None = None,
        options: tuple[str, ...] = (),
    ) -> None:
        """``wsiseg OPTIONS segment ARGS``."""
        env = dict(os.environ, WSISEG_TEST_OUT=str(out), OMP_NUM_THREADS="1")
        self.mark = log.with_suffix(".paused")
        if pause is not None:
            env.update(WSISEG_TEST_PAUSE=pause, WSISEG_TEST_MARK=str(self.mark))
        self.log = log
        self.watch = FinalFileWatch(out)
        self.watch.start()
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", GUARD, *options, "segment", *args],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: driver and dask workers
            )

    def output(self) -> str:
        text = self.log.read_text(errors="replace")
        return "\n".join(ln for ln in text.replace("\r", "\n").splitlines() if "/s]" not in ln)

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            self.kill()
        return code

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not condition():
            if self.proc.poll() is not None:
                self.kill()
                pytest.fail(
                    f"the run ended (code {self.proc.returncode}) before {what}:\n{self.output()[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"timed out waiting for {what}:\n{self.output()[-3000:]}")
            time.sleep(0.002)

    def kill(self) -> None:
        """SIGKILL the whole process group; wait until none of it is left."""
        pgid = self.proc.pid
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        deadline = time.monotonic() + 30
        while _group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.watch.is_alive():
            self.watch.stop()
        assert not _group_members(pgid), "processes of the killed run are still alive"


def _group_members(pgid: int) -> list[int]:
    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


# -- fixtures and comparisons --------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small synthetic slides in a folder and an untrained tiny model."""
    import torch

    from wsiseg.models.checkpoint import save_checkpoint
    from wsiseg.models.config import packaged_model_config
    from wsiseg.models.deformseg import DeformSeg
    from wsiseg.models.loading import checkpoint_config
    from wsiseg.synthetic import SynthSpec, write_synthetic_slide

    tmp = tmp_path_factory.mktemp("interrupt")
    for name, seed, size in (("s0", 21, (1536, 1024)), ("s1", 22, (2048, 1536))):
        spec = SynthSpec(width_px=size[0], height_px=size[1], seed=seed)
        write_synthetic_slide(tmp / "slides", name, spec)
    cfg = packaged_model_config("tiny")
    torch.manual_seed(0)
    model = save_checkpoint(tmp / "tiny", DeformSeg(cfg).state_dict(), checkpoint_config(cfg))
    return {"slides": tmp / "slides", "model": Path(model), "tmp": tmp}


def _args(inputs: dict[str, Path], out: Path) -> list[str]:
    model = str(inputs["model"])
    return [
        str(inputs["slides"]),
        "-o",
        str(out),
        "--model",
        model,
        "--workers",
        "1",
        "--device",
        "cpu",
    ]


def _finish(run: Run) -> None:
    """Wait for a run that must succeed with every write atomic."""
    code = run.wait()
    assert code == 0, f"exit code {code}:\n{run.output()[-3000:]}"
    assert not run.watch.errors, run.watch.errors


@pytest.fixture(scope="module")
def reference(inputs: dict[str, Path]) -> Path:
    """An uninterrupted run: the outputs every interrupted run must reproduce."""
    out = inputs["tmp"] / "ref"
    run = Run(_args(inputs, out), out, inputs["tmp"] / "ref.log")
    _finish(run)
    expected = {f"{s}/{f}" for s in ("s0", "s1") for f in FINALS} | {"run.json", "report.html"}
    assert set(run.watch.seen) == expected
    return out


def _hidden(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*"))


def _tiff_levels(path: Path) -> list[np.ndarray]:
    with tifffile.TiffFile(path) as tf:
        return [level.asarray() for level in tf.series[0].levels]


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _summary(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if k not in TIMING_KEYS}


def assert_identical(ref: Path, got: Path) -> None:
    """DESIGN.md §3.8: equal label arrays and parsed GeoJSON; timings excluded."""
    for slide in ("s0", "s1"):
        a, b = ref / slide, got / slide
        la, lb = _tiff_levels(a / "mask.ome.tif"), _tiff_levels(b / "mask.ome.tif")
        assert len(la) == len(lb)
        for x, y in zip(la, lb, strict=True):
            np.testing.assert_array_equal(x, y)
        ga = json.loads((a / "annotations.geojson").read_text())
        assert ga == json.loads((b / "annotations.geojson").read_text())
        assert ga["features"], "the tiny model must give some features for this to mean much"
        for png in ("overlay.png", "thumbnail.png"):
            np.testing.assert_array_equal(_png(a / png), _png(b / png))
        assert _summary(a / "summary.json") == _summary(b / "summary.json")
    ra, rb = (json.loads((d / "run.json").read_text()) for d in (ref, got))
    for key in ("model", "model_sha256", "model_config", "segment_config"):
        assert ra[key] == rb[key], key
    assert [s["slide"] for s in ra["slides"]] == [s["slide"] for s in rb["slides"]]


def _chunks(out: Path, slide: str) -> int:
    """Cores stored in ``slide``'s scratch (zarr writes each chunk by an atomic rename)."""
    files = out.glob(f"{slide}/.work-*/labels.zarr/c/**/*")
    return sum(1 for p in files if p.is_file() and not p.name.endswith(".partial"))


# -- tests ---------------------------------------------------------------------------


def test_uninterrupted_run_writes_only_complete_files(reference: Path) -> None:
    assert not _hidden(reference), "no temporaries or scratch may remain"
    run = json.loads((reference / "run.json").read_text())
    assert [s["status"] for s in run["slides"]] == ["done", "done"]


@pytest.mark.slow
def test_killed_runs_then_rerun_give_identical_outputs(
    inputs: dict[str, Path], reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    regions = json.loads((reference / "s1" / "summary.json").read_text())["regions"]

    # 1. Killed while s1's regions run: s0 is done, some of s1's cores are in its scratch.
    killed = Run(_args(inputs, out), out, tmp_path / "killed.log")
    killed.wait_until(lambda: _chunks(out, "s1") >= 3, "some of s1's regions were done")
    killed.kill()
    assert not killed.watch.errors, killed.watch.errors
    assert 3 <= _chunks(out, "s1") < regions, "killed part-way through s1's regions"
    assert (out / "s0" / "summary.json").is_file()
    assert sorted(p.name for p in (out / "s1").iterdir() if not p.name.startswith(".")) == []
    assert not (out / "run.json").exists()

    # 2. The rerun is killed too, just before s1's GeoJSON is renamed into place: the
    # mask is final, the GeoJSON a complete temporary, PNGs and summary not written.
    paused = Run(_args(inputs, out), out, tmp_path / "paused.log", pause="s1/annotations.geojson")
    paused.wait_until(paused.mark.exists, "s1's outputs were being written")
    paused.kill()
    assert not paused.watch.errors, paused.watch.errors
    assert (out / "s1" / "mask.ome.tif").is_file()
    assert list((out / "s1").glob(".annotations.geojson.*.partial"))
    assert not (out / "s1" / "annotations.geojson").exists()
    assert not (out / "s1" / "summary.json").exists()

    # 3. The next rerun finishes: s0 is skipped, s1 redone, nothing left behind.
    rerun = Run(_args(inputs, out), out, tmp_path / "rerun.log")
    _finish(rerun)
    status = [s["status"] for s in json.loads((out / "run.json").read_text())["slides"]]
    assert status == ["skipped", "done"]
    assert not _hidden(out), f"left behind: {_hidden(out)}"
    assert_identical(reference, out)


def test_guard_catches_a_write_in_place(inputs: dict[str, Path], tmp_path: Path) -> None:
    """The hook and the watcher are not vacuous: a file written under its final name
    is caught."""
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, WSISEG_TEST_OUT=str(out))
    code = f"{GUARD.split('from wsiseg.cli')[0]}\nopen({str(out / 'summary.json')!r}, 'w').write('{{')\n"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 97 and "opened a final name for writing" in proc.stderr
    watch = FinalFileWatch(out)
    (out / "summary.json").write_text("{")
    watch.scan()
    assert watch.errors and "incomplete" in watch.errors[0]


def test_overwrite_cut_short_leaves_the_slide_not_done(
    inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replacing a slide's results with other settings and failing part-way (here: the
    disk fills up while writing) must not leave the old summary over new outputs."""
    from wsiseg.export.ome_tiff import read_label_ome_tiff
    from wsiseg.pipeline import run as run_mod
    from wsiseg.pipeline.cluster import open_client
    from wsiseg.pipeline.config import SegmentConfig

    slide = inputs["slides"] / "s0.tiff"
    info = run_mod.model_info(inputs["model"])
    first, other = SegmentConfig(device="cpu"), SegmentConfig(device="cpu", output_mpp=4.0)
    with open_client("local", workers=1) as client:
        done = run_mod.segment_slide(slide, tmp_path, info, first, client)
        assert done.status == "done" and done.out_dir is not None
        mask = read_label_ome_tiff(done.out_dir / "mask.ome.tif")

        def disk_full(*args: Any, **kwargs: Any) -> None:
            raise OSError("No space left on device (injected)")

        with monkeypatch.context() as m:
            m.setattr(run_mod, "write_png", disk_full)
            cut = run_mod.segment_slide(slide, tmp_path, info, other, client, overwrite=True)
        assert cut.status == "failed" and "No space left" in cut.message
        assert read_label_ome_tiff(done.out_dir / "mask.ome.tif").shape != mask.shape  # replaced
        assert not (done.out_dir / "summary.json").exists(), "not done with either settings"
        # So a rerun with the first settings redoes the slide instead of skipping it.
        again = run_mod.segment_slide(slide, tmp_path, info, first, client)
    assert again.status == "done"
    np.testing.assert_array_equal(read_label_ome_tiff(done.out_dir / "mask.ome.tif"), mask)


# -- the atomic-write helper itself ----------------------------------------------------


def test_atomic_path_replaces_a_file_in_one_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsiseg import fileops

    final = tmp_path / "summary.json"
    final.write_text("old")
    calls: list[tuple[str, str]] = []
    real = os.replace

    def spy(src: Any, dst: Any) -> None:
        calls.append((Path(src).name, Path(dst).name))
        real(src, dst)

    monkeypatch.setattr(fileops.os, "replace", spy)
    with fileops.atomic_path(final, overwrite=True) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".summary.json.")
        tmp.write_text("new")
        assert final.read_text() == "old"  # untouched until the new file is complete
    assert final.read_text() == "new"
    assert len(calls) == 1 and calls[0][1] == "summary.json", "never a moment without the file"
    # An error leaves the old file and no temporary.
    with pytest.raises(RuntimeError), fileops.atomic_path(final, overwrite=True) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert final.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [final.name]
    with pytest.raises(FileExistsError), fileops.atomic_path(final):
        pass


def test_atomic_path_replaces_a_folder(tmp_path: Path) -> None:
    from wsiseg.fileops import atomic_path

    final = tmp_path / "x.zarr"
    (final / "a").mkdir(parents=True)
    with atomic_path(final, overwrite=True) as tmp:
        (tmp / "b").mkdir(parents=True)
    assert sorted(p.name for p in final.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.zarr"]


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path: Path) -> None:
    from wsiseg.fileops import remove_stale_temporaries

    stale = [
        ".mask.ome.tif.0123abcd.partial",
        ".annotations.geojson.deadbeef.partial",
        ".x.zarr.00000000.old",
    ]
    for name in stale:
        (tmp_path / name).write_text("")
    (tmp_path / ".mask.ome.tif.0123abcd.partial.levels").mkdir()  # scratch of the TIFF writer
    keep = [".DS_Store", ".work-1234abcd", "mask.ome.tif", ".notes.partial", ".a.xyz12345.partial"]
    for name in keep:
        (tmp_path / name).write_text("")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted(
        [*stale, ".mask.ome.tif.0123abcd.partial.levels"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


def test_stale_temporaries_of_named_files_only(tmp_path: Path) -> None:
    from wsiseg.fileops import remove_stale_temporaries

    mine = [".run.json.0123abcd.partial", ".report.html.89abcdef.partial"]
    other = [".run-shard-2-of-2.json.0123abcd.partial", ".mask.ome.tif.0123abcd.partial"]
    for name in mine + other:
        (tmp_path / name).write_text("")
    removed = remove_stale_temporaries(tmp_path, names=("run.json", "report.html"))
    assert sorted(p.name for p in removed) == sorted(mine)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(other)
