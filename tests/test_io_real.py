"""Every slide in ../shared/data opened with each backend that supports it (see SOURCES.md)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from wsiseg.errors import MppError, RegionError, SlideOpenError
from wsiseg.io import open_slide
from wsiseg.io.pyramid import level_array

pytestmark = pytest.mark.realdata

# name -> {backend: (level count, level-0 size)}; None = that backend must refuse it.
EXPECTED: dict[str, dict[str, tuple[int, tuple[int, int]] | None]] = {
    "CMU-1-Small-Region.svs": {"openslide": (1, (2220, 2967)), "tiffslide": (1, (2220, 2967))},
    "dicom-jpeg": {"openslide": (1, (957, 715)), "tiffslide": None},
    "kidney-48-5.tif": {"openslide": None, "tiffslide": (1, (1493, 901))},
    "small_HE_levels.tiff": {"openslide": (4, (300, 250)), "tiffslide": (4, (300, 250))},
    "tcga-cr-7395-01a-01-ts1.svs": {"openslide": (2, (4443, 3567)), "tiffslide": (2, (4443, 3567))},
    "test3-DAPI-2-387.ndpi": {"openslide": (7, (3968, 4864)), "tiffslide": (4, (3968, 4864))},
}
# Mean absolute difference allowed between backends (JPEG / JPEG 2000 decoders differ).
BACKEND_TOLERANCE = 3.0

CASES = [(name, backend) for name, per in EXPECTED.items() for backend in per]


@pytest.mark.parametrize(("name", "backend"), CASES)
def test_each_backend_opens_or_refuses(shared_data: Path, name: str, backend: str) -> None:
    expected = EXPECTED[name][backend]
    path = shared_data / "slides" / name
    if expected is None:
        with pytest.raises(SlideOpenError, match=backend):
            open_slide(path, backend=backend)
        return
    with open_slide(path, backend=backend) as r:
        assert r.backend == backend
        assert (r.level_count, r.level_dimensions[0]) == expected
        w, h = r.level_dimensions[0]
        region = r.read_region(0, w // 2 - 64, h // 2 - 64, 128, 128)
        assert region.shape == (128, 128, 3) and region.dtype == np.uint8


@pytest.mark.parametrize("name", list(EXPECTED))
def test_auto_backend_falls_back(shared_data: Path, name: str) -> None:
    with open_slide(shared_data / "slides" / name) as r:
        first_ok = next(b for b in ("openslide", "tiffslide") if EXPECTED[name][b] is not None)
        assert r.backend == first_ok


@pytest.mark.parametrize(
    "name", [n for n, per in EXPECTED.items() if all(v is not None for v in per.values())]
)
def test_backends_agree_on_pixels(shared_data: Path, name: str) -> None:
    path = shared_data / "slides" / name
    with open_slide(path, backend="openslide") as a, open_slide(path, backend="tiffslide") as b:
        w, h = a.level_dimensions[0]
        boxes = [(w // 2 - 64, h // 2 - 64, 128, 128), (-20, -10, 64, 48), (w - 30, h - 20, 64, 64)]
        for x, y, bw, bh in boxes:
            ra, rb = a.read_region(0, x, y, bw, bh), b.read_region(0, x, y, bw, bh)
            diff = np.abs(ra.astype(int) - rb.astype(int)).mean()
            assert diff <= BACKEND_TOLERANCE, (name, x, y, diff)
        # Partly outside: the outside part is white in both backends.
        edge = a.read_region(0, -20, -10, 64, 48)
        assert (edge[:10] == 255).all() and (edge[:, :20] == 255).all()


def test_levels_differ_between_backends_on_ndpi(shared_data: Path) -> None:
    path = shared_data / "slides" / "test3-DAPI-2-387.ndpi"
    with open_slide(path, backend="openslide") as a, open_slide(path, backend="tiffslide") as b:
        assert a.level_count == 7 and b.level_count == 4
        assert a.mpp == pytest.approx(b.mpp)
        assert a.mpp[0] == pytest.approx(0.2282, abs=1e-4)


def test_aperio_without_mpp_needs_override(shared_data: Path) -> None:
    path = shared_data / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
    with open_slide(path) as r, pytest.raises(MppError, match="--mpp"):
        _ = r.mpp
    with open_slide(path, mpp=0.5) as r:
        assert r.mpp == (0.5, 0.5)


def test_implausible_mpp_is_said_once_and_needs_override(
    shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import wsiseg.io.open as opening

    opening._IMPLAUSIBLE_SAID.clear()
    path = shared_data / "slides" / "small_HE_levels.tiff"
    with caplog.at_level(logging.INFO, logger="wsiseg.io.open"):
        with open_slide(path, mpp=0.5):
            pass  # --mpp given: the metadata's value is not used, nothing to warn of
        with open_slide(path) as r:
            assert r.mpp_reported[0] == pytest.approx(352.9, abs=0.1)
            with pytest.raises(MppError, match="implausible"):
                _ = r.mpp
        with open_slide(path):
            pass  # a run opens a slide more than once: said once
    said = [rec.message for rec in caplog.records if "implausible" in rec.message]
    assert len(said) == 1 and str(path) in said[0], said


def test_plausible_metadata_beats_override(shared_data: Path) -> None:
    with open_slide(shared_data / "slides" / "CMU-1-Small-Region.svs", mpp=0.25) as r:
        assert r.mpp == pytest.approx((0.499, 0.499))


@pytest.mark.parametrize("name", ["tcga-cr-7395-01a-01-ts1.svs", "test3-DAPI-2-387.ndpi"])
def test_dask_levels_equal_read_region(shared_data: Path, name: str) -> None:
    with open_slide(shared_data / "slides" / name) as r:
        for level in (0, r.level_count - 1):
            arr = level_array(r, level, chunk_px=512)
            w, h = r.level_dimensions[level]
            assert arr.shape == (h, w, 3)
            x, y = min(700, w - 50), min(300, h - 50)
            window = arr[y : y + 50, x : x + 50].compute()
            np.testing.assert_array_equal(window, r.read_region(level, x, y, 50, 50))


@pytest.mark.parametrize(
    "name", ["broken.svs", "empty.svs", "text-file.svs", "truncated-CMU-1-Small-Region.svs"]
)
@pytest.mark.parametrize("backend", ["auto", "openslide", "tiffslide"])
def test_broken_files_fail_at_open(shared_data: Path, name: str, backend: str) -> None:
    with pytest.raises(SlideOpenError) as info:
        open_slide(shared_data / "broken" / name, backend=backend)
    message = str(info.value)
    assert name in message and "\n" not in message


def test_region_wholly_outside_is_an_error(shared_data: Path) -> None:
    with open_slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as r:
        with pytest.raises(RegionError, match="wholly outside"):
            r.read_region(0, 5000, 5000, 10, 10)
        with pytest.raises(RegionError, match="level"):
            r.read_region(3, 0, 0, 10, 10)
