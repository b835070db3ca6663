"""Bad slides: one clear error line naming the file, exit code 1, bounded memory; a batch
goes on past them and never touches earlier outputs.

Covered elsewhere: shared broken files at open (test_io_real), a few bad files and
three truncations in `info` (test_cli), a batch with three shared broken files
(test_segment). Here: every shared broken file and every file made below in both
`info` and `segment`, and a mixed batch into an OUT holding a previous good run.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.segment_helpers import (
    assert_clean_failure,
    error_lines,
    run_cli,
    segment_cli,
    snapshot,
)
from wsiseg.errors import RegionError, SlideOpenError, SlideReadError
from wsiseg.io import open_slide
from wsiseg.synthetic import SynthSpec, write_synthetic_slide

_SHORT, _LONG = 3, 4  # TIFF field types


def _tiff(tags: dict[int, tuple[int, list[int]]], payload: bytes = b"") -> bytes:
    """A little-endian classic TIFF with one directory at byte 8, then ``payload``.

    ``tags`` maps tag -> (type, values); a value of -1 is replaced by the payload's offset.
    """
    ifd_size = 2 + 12 * len(tags) + 4
    extra_at = 8 + ifd_size
    extra_len = sum(
        len(v) * (2 if t == _SHORT else 4)
        for t, v in tags.values()
        if len(v) * (2 if t == _SHORT else 4) > 4
    )
    payload_at = extra_at + extra_len
    entries, extra = [], b""
    for tag in sorted(tags):
        typ, values = tags[tag]
        fmt = "<H" if typ == _SHORT else "<I"
        data = b"".join(struct.pack(fmt, payload_at if v == -1 else v) for v in values)
        if len(data) <= 4:
            field = data.ljust(4, b"\0")
        else:
            field = struct.pack("<I", extra_at + len(extra))
            extra += data
        entries.append(struct.pack("<HHI", tag, typ, len(values)) + field)
    head = b"II*\0" + struct.pack("<IH", 8, len(tags)) + b"".join(entries) + b"\0\0\0\0"
    return head + extra + payload


def _rgb_tags(width: int, height: int, compression: int = 1) -> dict[int, tuple[int, list[int]]]:
    return {
        256: (_LONG, [width]),
        257: (_LONG, [height]),
        258: (_SHORT, [8, 8, 8]),
        259: (_SHORT, [compression]),
        262: (_SHORT, [2]),
        277: (_SHORT, [3]),
    }


def no_image_data() -> bytes:
    """Valid header and directory of a tiled 512 x 512 RGB image, but no tiles listed."""
    return _tiff({**_rgb_tags(512, 512), 322: (_SHORT, [256]), 323: (_SHORT, [256])})


def huge_tiled(side: int = 10**6) -> bytes:
    """A side x side tiled image whose directory lists one deflated tile (353 bytes)."""
    tile = zlib.compress(bytes(256 * 256 * 3))
    tags = {
        **_rgb_tags(side, side, compression=8),
        322: (_SHORT, [256]),
        323: (_SHORT, [256]),
        324: (_LONG, [-1]),
        325: (_LONG, [len(tile)]),
    }
    return _tiff(tags, tile)


def huge_strip(side: int = 10**6) -> bytes:
    """A side x side image in one deflated strip of a few hundred bytes (a decode bomb)."""
    strip = zlib.compress(bytes(1 << 16))
    tags = {
        **_rgb_tags(side, side, compression=8),
        273: (_LONG, [-1]),
        278: (_LONG, [side]),
        279: (_LONG, [len(strip)]),
    }
    return _tiff(tags, strip)


def big_sparse(side: int) -> bytes:
    """A structurally valid side x side tiled image: every tile is the same white tile."""
    tile = zlib.compress(bytes([255]) * (256 * 256 * 3))
    n = (-(-side // 256)) ** 2
    tags = {
        **_rgb_tags(side, side, compression=8),
        322: (_SHORT, [256]),
        323: (_SHORT, [256]),
        324: (_LONG, [0]),  # patched below: the arrays are too long to build by value
        325: (_LONG, [0]),
    }
    head = _tiff(tags)
    offsets_at = len(head)
    counts_at = offsets_at + 4 * n
    tile_at = counts_at + 4 * n
    data = bytearray(head)
    # Point both entries at their arrays (count n, LONG).
    for i, tag in enumerate(sorted(tags)):
        if tag in (324, 325):
            pos = 8 + 2 + 12 * i
            where = offsets_at if tag == 324 else counts_at
            data[pos : pos + 12] = struct.pack("<HHII", tag, _LONG, n, where)
    data += np.full(n, tile_at, "<u4").tobytes() + np.full(n, len(tile), "<u4").tobytes()
    return bytes(data) + tile


def garble_tiles(path: Path) -> bytes:
    """The slide at ``path`` with the tiles of every level but the last overwritten with
    noise, except at the centre of level 0 (where `open_slide` decodes a patch)."""
    spans = []
    with tifffile.TiffFile(path) as tf:
        for index, page in enumerate(tf.pages[:-1]):
            h, w = page.shape[:2]
            th, tw = page.tilelength, page.tilewidth
            keep = set()
            if index == 0:
                rows = range((h // 2 - 16) // th, (h // 2 + 16) // th + 1)
                cols = range((w // 2 - 16) // tw, (w // 2 + 16) // tw + 1)
                keep = {r * -(-w // tw) + c for r in rows for c in cols}
            pairs = zip(page.dataoffsets, page.databytecounts, strict=True)
            spans += [(o, c) for i, (o, c) in enumerate(pairs) if i not in keep]
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(5)
    for o, c in spans:
        data[o : o + c] = rng.bytes(c)
    return bytes(data)


@pytest.fixture(scope="module")
def garbled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A slide whose tiles are noise except its last level and the centre of level 0."""
    folder = tmp_path_factory.mktemp("garbled")
    spec = SynthSpec(width_px=2048, height_px=1536, seed=4, level_factor=2)
    src = write_synthetic_slide(folder, "src", spec).image
    path = folder / "garbled.tiff"
    path.write_bytes(garble_tiles(src))
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("good")
    return write_synthetic_slide(
        folder, "good", SynthSpec(width_px=1024, height_px=768, seed=3)
    ).image


def _made(good: Path) -> dict[str, Callable[[], bytes]]:
    """Bad files made here: name -> bytes."""
    src = good.read_bytes()
    n = len(src)
    rng = np.random.default_rng(0)
    with tifffile.TiffFile(good) as tf:
        last_ifd = max(p.offset for p in tf.pages)
    return {
        "zero.tiff": lambda: b"",
        "cut-header.tiff": lambda: src[:8],
        "cut-10pct.tiff": lambda: src[: n // 10],
        "cut-50pct.tiff": lambda: src[: n // 2],
        "cut-90pct.tiff": lambda: src[: n * 9 // 10],
        "cut-in-last-ifd.tiff": lambda: src[: last_ifd + 20],
        "cut-last-bytes.tiff": lambda: src[: n - 16],
        "random.svs": lambda: rng.bytes(4096),
        "random.tiff": lambda: rng.bytes(4096),
        "random.ndpi": lambda: rng.bytes(4096),
        "random-after-header.tiff": lambda: b"II*\0\x08\0\0\0" + rng.bytes(4096),
        "no-image-data.tiff": no_image_data,
        "huge-tiled.tiff": huge_tiled,
        "huge-strip.tiff": huge_strip,
        "huge-tiled.svs": huge_tiled,
    }


MADE = [
    "zero.tiff",
    "cut-header.tiff",
    "cut-10pct.tiff",
    "cut-50pct.tiff",
    "cut-90pct.tiff",
    "cut-in-last-ifd.tiff",
    "cut-last-bytes.tiff",
    "random.svs",
    "random.tiff",
    "random.ndpi",
    "random-after-header.tiff",
    "no-image-data.tiff",
    "huge-tiled.tiff",
    "huge-strip.tiff",
    "huge-tiled.svs",
]
SHARED = ["broken.svs", "empty.svs", "text-file.svs", "truncated-CMU-1-Small-Region.svs"]


@pytest.fixture(scope="module")
def bad_files(good: Path, tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A folder holding every bad file (shared and made here), nothing else."""
    folder = tmp_path_factory.mktemp("bad")
    for name, make in _made(good).items():
        (folder / name).write_bytes(make())
    for name in SHARED:
        shutil.copy(shared_data / "broken" / name, folder / name)
    assert sorted(p.name for p in folder.iterdir()) == sorted(MADE + SHARED)
    return folder


@pytest.mark.parametrize("name", MADE + SHARED)
def test_info_one_error_line(bad_files: Path, name: str, capsys) -> None:
    path = bad_files / name
    code, out, err = run_cli(["info", str(path)], capsys)
    assert code == 1
    assert out == ""
    assert_clean_failure(err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], lines


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("no-image-data.tiff", "lists none"),
        ("huge-tiled.tiff", "needs 15264649 tiles but its directory lists 1"),
        ("huge-strip.tiff", "one strip would decode to"),
        ("cut-in-last-ifd.tiff", "truncated"),
        ("cut-last-bytes.tiff", "truncated"),
        ("cut-90pct.tiff", "truncated"),
    ],
)
def test_reason_is_named(bad_files: Path, name: str, reason: str) -> None:
    with pytest.raises(SlideOpenError, match=reason) as info:
        open_slide(bad_files / name)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["huge-tiled.tiff", "huge-strip.tiff", "huge-tiled.svs"])
def test_huge_declared_size_stays_small(bad_files: Path, name: str) -> None:
    """`wsiseg info` under a 4 GiB address-space limit: refused, no MemoryError."""
    code = (
        "import resource, sys; from wsiseg.cli import main; "
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
        f"main(['info', {str(bad_files / name)!r}])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 1, proc.stderr
    assert "MemoryError" not in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


def test_sparse_but_valid_huge_slide_is_refused_before_reading(tmp_path: Path) -> None:
    """200k x 200k px at 1 µm/px (200 mm): valid TIFF, but no glass slide is that large."""
    path = tmp_path / "big.tiff"
    path.write_bytes(big_sparse(200_000))
    with open_slide(path, mpp=1.0) as reader:  # a valid file: opens, metadata only
        assert reader.level_dimensions[0] == (200_000, 200_000)
        with pytest.raises(RegionError, match="larger than any glass slide") as info:
            reader.thumbnail(8.0)
    assert "\n" not in str(info.value)


def test_garbled_tiles_fail_reads_with_one_line(garbled: Path) -> None:
    with open_slide(garbled) as reader:  # the patches decoded at open are intact
        for level in range(reader.level_count - 1):
            with pytest.raises(SlideReadError, match=f"cannot decode level {level}") as info:
                reader.read_region(level, 0, 0, 64, 64)
            assert str(garbled) in str(info.value) and "\n" not in str(info.value)


# -- segment --------------------------------------------------------------------------
@pytest.mark.parametrize("name", MADE + SHARED)
def test_segment_one_error_line(
    bad_files: Path, name: str, model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    path = bad_files / name
    out = tmp_path / "out"
    code, _, err = segment_cli([str(path), "-o", str(out)], model, cluster, capsys)
    assert code == 1
    assert_clean_failure(err)
    lines = error_lines(err)
    assert len(lines) == 1 and str(path) in lines[0], lines
    run = json.loads((out / "run.json").read_text())
    assert [s["status"] for s in run["slides"]] == ["failed"]
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "run.json"]


def test_segment_refuses_an_implausibly_large_slide(
    model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "big.tiff"
    path.write_bytes(big_sparse(200_000))
    out = tmp_path / "out"
    code, _, err = segment_cli([str(path), "-o", str(out), "--mpp", "1.0"], model, cluster, capsys)
    assert code == 1
    assert_clean_failure(err)
    lines = error_lines(err)
    assert len(lines) == 1 and "larger than any glass slide" in lines[0], lines
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "run.json"]


@pytest.fixture(scope="module")
def previous_run(
    good: Path, model: Path, cluster: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """OUT after a good run of ``good.tiff`` (and an unrelated file of the user's)."""
    out = tmp_path_factory.mktemp("out")
    (out / "notes.txt").write_text("mine\n")
    from wsiseg.cli import main

    main(["segment", str(good), "-o", str(out), "--model", str(model), "--cluster", cluster])
    assert (out / "good" / "summary.json").is_file()
    return out


def test_batch_goes_on_and_earlier_outputs_are_untouched(
    good: Path,
    bad_files: Path,
    garbled: Path,
    previous_run: Path,
    model: Path,
    cluster: str,
    tmp_path: Path,
    capsys,
) -> None:
    batch = tmp_path / "batch"
    shutil.copytree(bad_files, batch)
    shutil.copy(good, batch / "good.tiff")
    shutil.copy(garbled, batch / "garbled.tiff")  # opens, then fails in its regions' reads
    second = batch / "second.tiff"  # a good slide new to OUT: done despite the others
    shutil.copy(good, second)
    before = snapshot(previous_run / "good")
    notes = (previous_run / "notes.txt").stat().st_mtime_ns

    code, _, err = segment_cli([str(batch), "-o", str(previous_run)], model, cluster, capsys)

    assert code == 1
    assert_clean_failure(err)
    bad = {*MADE, *SHARED, "garbled.tiff"}
    lines = error_lines(err)
    assert len(lines) == len(bad), lines
    for name in bad:
        assert sum(str(batch / name) in line for line in lines) == 1, name
    run = json.loads((previous_run / "run.json").read_text())
    status = {Path(s["slide"]).name: s["status"] for s in run["slides"]}
    assert status == {"good.tiff": "skipped", "second.tiff": "done", **dict.fromkeys(bad, "failed")}
    # Earlier outputs: the same bytes and times; nothing else appeared but the new slide.
    assert snapshot(previous_run / "good") == before
    assert (previous_run / "notes.txt").stat().st_mtime_ns == notes
    assert sorted(p.name for p in previous_run.iterdir()) == [
        "good",
        "notes.txt",
        "report.html",
        "run.json",
        "second",
    ]
    assert not [p for p in previous_run.rglob(".*")], "no temporaries left"


def test_missing_and_dangling_slides_in_a_batch(
    good: Path, model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    """A listed slide that does not exist and a dangling link: one line each; the good one
    is done."""
    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copy(good, batch / "a.tiff")
    (batch / "dangling.tiff").symlink_to(batch / "nowhere.tiff")
    gone = batch / "gone.tiff"
    args = [
        str(batch / "a.tiff"),
        str(gone),
        str(batch / "dangling.tiff"),
        "-o",
        str(tmp_path / "o"),
    ]
    code, _, err = segment_cli(args, model, cluster, capsys)
    assert code == 1
    assert_clean_failure(err)
    lines = error_lines(err)
    assert len(lines) == 2 and all("no such file" in line for line in lines), lines
    assert sorted(Path(line.split(": ")[1]).name for line in lines) == [
        "dangling.tiff",
        "gone.tiff",
    ]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a", "report.html", "run.json"]


def test_unreadable_file_is_one_line(tmp_path: Path, good: Path, capsys) -> None:
    if os.geteuid() == 0:
        path = tmp_path / "fifo.tiff"
        os.mkfifo(path)  # root reads any file; a FIFO stands in for "not a slide file"
        expect = "not a regular file"
    else:
        path = tmp_path / "locked.tiff"
        shutil.copy(good, path)
        path.chmod(0)
        expect = "cannot read"
    code, out, err = run_cli(["info", str(path)], capsys)
    assert code == 1 and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and expect in lines[0] and str(path) in lines[0], lines
