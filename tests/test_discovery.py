"""Slide discovery: recursive folders, hidden files, masks, MIRAX data folders, symlink
loops, unreadable folders, duplicates, DICOM series grouping; `info` and `segment` agree."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.segment_helpers import error_lines, run_cli, segment_cli
from wsiseg.errors import InputError, SlideOpenError
from wsiseg.io import open_slide
from wsiseg.io.discovery import SLIDE_SUFFIXES, discover_slides


def _tiny_tiff(path: Path, seed: int = 0) -> Path:
    """A small tiled RGB TIFF (generic-tiff, no pixel size): a pink blob on white."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:768, :1024]
    blob = ((xx - 512) / 380) ** 2 + ((yy - 384) / 280) ** 2 < 1
    img = np.full((768, 1024, 3), 242, np.uint8)
    img[blob] = (205, 120, 175)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", compression="zlib")
    return path


def _tcga_like(root: Path) -> list[Path]:
    """One folder per slide as a TCGA download lays them out, plus files that are no slides."""
    slides = [
        _tiny_tiff(root / "0a1b-uuid" / "TCGA-AA-0001.svs", 1),
        _tiny_tiff(root / "7f3c-uuid" / "nested" / "TCGA-AA-0002.tif", 2),
    ]
    (root / "0a1b-uuid" / "logs").mkdir()
    (root / "0a1b-uuid" / "logs" / "download.log").write_text("ok\n")
    (root / "MANIFEST.txt").write_text("id\tfilename\n")
    _tiny_tiff(root / ".partial" / "TCGA-AA-0003.svs", 3)  # hidden folder
    _tiny_tiff(root / "7f3c-uuid" / ".TCGA-AA-0004.svs", 4)  # hidden file
    _tiny_tiff(root / "7f3c-uuid" / "nested" / "TCGA-AA-0002_mask.tiff", 5)  # a label mask
    return slides


def test_one_suffix_list() -> None:
    """Only wsiseg/io/discovery.py spells out slide suffixes; everything else imports them."""
    from wsiseg.train import datasets

    package = Path(__file__).resolve().parents[1] / "wsiseg"
    spelled = [
        str(p.relative_to(package))
        for p in sorted(package.rglob("*.py"))
        if '".ndpi"' in p.read_text(encoding="utf-8") or "'.ndpi'" in p.read_text(encoding="utf-8")
    ]
    assert spelled == ["io/discovery.py"]
    assert set(datasets.GEOJSON_SLIDE_SUFFIXES) >= set(SLIDE_SUFFIXES) - {".dcm"}


def test_tcga_layout_is_searched_recursively(tmp_path: Path, capsys) -> None:
    slides = _tcga_like(tmp_path / "tcga")
    assert discover_slides([tmp_path / "tcga"]) == slides
    code, out, err = run_cli(["info", "--json", str(tmp_path / "tcga")], capsys)
    assert code == 0, err
    assert [r["path"] for r in json.loads(out)] == [str(p) for p in slides]
    assert all(r["dimensions"][0] == [1024, 768] for r in json.loads(out))


def test_segment_finds_the_same_slides_as_info(
    model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    root = tmp_path / "tcga"
    _tcga_like(root)
    code, _, err = segment_cli(
        ["--mpp", "0.5", str(root), "-o", str(tmp_path / "out")], model, cluster, capsys
    )
    assert code == 0, err
    done = sorted(p.name for p in (tmp_path / "out").iterdir() if (p / "summary.json").exists())
    assert done == ["TCGA-AA-0001", "TCGA-AA-0002"]


def test_mrxs_data_folder_is_not_searched(tmp_path: Path) -> None:
    (tmp_path / "CMU-1.mrxs").write_text("[GENERAL]\n")
    data = tmp_path / "CMU-1"
    data.mkdir()
    (data / "Slidedat.ini").write_text("[GENERAL]\n")
    (data / "Data0000.dat").write_bytes(b"\0" * 64)
    _tiny_tiff(data / "preview.tif")  # would be taken for a slide if the folder were searched
    other = _tiny_tiff(tmp_path / "other" / "slide.tif")
    assert discover_slides([tmp_path]) == [tmp_path / "CMU-1.mrxs", other]


def test_symlink_loops_are_followed_once(tmp_path: Path) -> None:
    slide = _tiny_tiff(tmp_path / "a" / "x.tiff")
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "b").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "a" / "self").symlink_to(tmp_path / "a" / "self")  # a link to itself
    assert discover_slides([tmp_path]) == [slide]


def test_unreadable_subfolder_is_one_error(tmp_path: Path, capsys, monkeypatch) -> None:
    _tiny_tiff(tmp_path / "a" / "x.tiff")
    locked = tmp_path / "b" / "locked"
    locked.mkdir(parents=True)
    real_scandir = os.scandir

    def scandir(path):  # type: ignore[no-untyped-def]
        if Path(path) == locked:  # root ignores chmod 000, so refuse here
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(InputError, match="locked: cannot list the folder"):
        discover_slides([tmp_path])
    code, out, err = run_cli(["info", str(tmp_path)], capsys)
    assert code == 1 and out == ""
    assert error_lines(err) == [f"error: {locked}: cannot list the folder (Permission denied)"]


def test_same_slide_reached_twice_is_kept_once(tmp_path: Path) -> None:
    slide = _tiny_tiff(tmp_path / "sub" / "x.tiff")
    (tmp_path / "link.tiff").symlink_to(slide)
    inputs = [slide, tmp_path / "sub" / ".." / "sub" / "x.tiff", tmp_path]
    assert discover_slides(inputs) == [slide]
    missing = tmp_path / "missing.svs"
    assert discover_slides([missing, missing]) == [missing]  # open_slide names it


def test_empty_folder_is_one_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("no slides here\n")
    code, _, err = run_cli(["info", str(tmp_path)], capsys)
    assert code == 1 and error_lines(err) == ["error: no slides found in the given paths"]


# -- DICOM: the one test of the package for series grouping -----------------------------
def _dicom_variant(src: Path, dst: Path, series: str | None, image_type: str | None = None) -> Path:
    """A copy of ``src`` as a new instance, in another series or as another image type."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(src)
    if series is not None:
        ds.SeriesInstanceUID = series
    if image_type is not None:
        ds.ImageType = ["ORIGINAL", "PRIMARY", image_type, "NONE"]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst)
    return dst


def test_dicom_series_grouped_in_a_mixed_folder(shared_data: Path, tmp_path: Path, capsys) -> None:
    import pydicom
    from pydicom.uid import generate_uid

    src = shared_data / "slides" / "dicom-jpeg" / "jpeg.dcm"
    uid_a = str(pydicom.dcmread(src, stop_before_pixels=True).SeriesInstanceUID)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(src, mixed / "a-level0.dcm")
    _dicom_variant(src, mixed / "a-label.dcm", None, "LABEL")  # same series: an associated image
    uid_b = generate_uid()
    _dicom_variant(src, mixed / "b.dcm", uid_b)  # a second series in the same folder
    ct = _dicom_variant(src, mixed / "ct.dcm", generate_uid())
    ds = pydicom.dcmread(ct)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT
    ds.save_as(ct)
    (mixed / "broken.dcm").write_bytes(b"not dicom at all\n" * 20)
    shutil.copy(shared_data / "slides" / "CMU-1-Small-Region.svs", mixed / "cmu.svs")
    shutil.copy(shared_data / "broken" / "truncated-CMU-1-Small-Region.svs", mixed / "cut.svs")
    uid_c = generate_uid()
    alone = _dicom_variant(src, mixed / "series-c" / "1.dcm", uid_c).parent

    found = discover_slides([mixed])
    expected = [
        mixed / "a-level0.dcm",  # series A once, by its pyramid file (not the label)
        mixed / "b.dcm",
        mixed / "broken.dcm",  # not readable as DICOM: kept so that opening names it
        mixed / "cmu.svs",
        mixed / "cut.svs",
        alone,  # a folder holding one series and nothing else is that slide
    ]
    assert found == expected  # the CT image is skipped
    # Each discovered DICOM path opens its own series, and only that one.
    for path, uid in [(expected[0], uid_a), (expected[1], uid_b), (alone, uid_c)]:
        with open_slide(path) as r:
            assert r.vendor == "dicom" and r.level_dimensions[0] == (957, 715)
            assert r.properties["dicom.SeriesInstanceUID"] == uid
    with pytest.raises(SlideOpenError, match="holds 2 DICOM series"):
        open_slide(mixed)
    # Another file of a series already found (or its folder) is the same slide.
    assert discover_slides([mixed / "a-label.dcm", mixed]) == [mixed / "a-label.dcm", *expected[1:]]
    assert discover_slides([alone, mixed]) == [alone, *expected[:-1]]

    code, out, err = run_cli(["info", "--json", str(mixed)], capsys)
    assert code == 1
    results = json.loads(out)
    assert [r["path"] for r in results] == [str(p) for p in expected]
    failed = {r["path"] for r in results if "error" in r}
    assert failed == {str(mixed / "broken.dcm"), str(mixed / "cut.svs")}
    assert len(error_lines(err)) == 2
