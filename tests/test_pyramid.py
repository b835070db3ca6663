"""Lazy pyramids over synthetic slides: laziness, equality with read_region, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from wsiseg.errors import RegionError
from wsiseg.io import SlideRef, open_slide, pyramid
from wsiseg.io.pyramid import LevelSource, chunk_shape


def test_levels_are_lazy_and_tile_aligned(small_synthetic, monkeypatch) -> None:
    calls: list[tuple[int, ...]] = []
    original = LevelSource.__getitem__

    def spy(self, key):  # type: ignore[no-untyped-def]
        calls.append((self.level,))
        return original(self, key)

    monkeypatch.setattr(LevelSource, "__getitem__", spy)
    with open_slide(small_synthetic.image) as r:
        levels = pyramid(r, chunk_px=512)
        assert not calls, "building the pyramid must not decode pixels"
        assert [a.shape[:2] for a in levels] == [(h, w) for w, h in r.level_dimensions]
        ch, cw = chunk_shape(r, 512)
        assert ch % 256 == 0 and cw % 256 == 0
        assert levels[0].chunksize[:2] == (ch, cw)
        levels[0][:10, :10].compute(scheduler="sync")
        assert len(calls) == 1, "a small window decodes one chunk"


def test_dask_levels_equal_read_region(small_synthetic) -> None:
    with open_slide(small_synthetic.image) as r:
        for level, arr in enumerate(pyramid(r, chunk_px=512)):
            w, h = r.level_dimensions[level]
            x, y = w // 3, h // 4
            ww, hh = min(600, w - x), min(300, h - y)
            np.testing.assert_array_equal(
                arr[y : y + hh, x : x + ww].compute(), r.read_region(level, x, y, ww, hh)
            )


def test_slide_ref_pickles_and_reopens(small_synthetic) -> None:
    with open_slide(small_synthetic.image, mpp=0.5) as r:
        ref = r.ref()
        arr = pyramid(r)[0]
    ref2 = pickle.loads(pickle.dumps(ref))
    # the slide's own plausible pixel size makes --mpp moot: workers are not told it
    assert ref2 == SlideRef(str(small_synthetic.image), "openslide", None)
    with ref2.open() as r2:
        assert r2.level_dimensions[0] == (3072, 2048)
    arr2 = pickle.loads(pickle.dumps(arr))
    np.testing.assert_array_equal(arr2[:64, :64].compute(), arr[:64, :64].compute())


def test_partly_outside_is_white_in_both_backends(small_synthetic) -> None:
    for backend in ("openslide", "tiffslide"):
        with open_slide(small_synthetic.image, backend=backend) as r:
            patch = r.read_region(0, 3072 - 32, -16, 64, 64)
            assert (patch[:16] == 255).all() and (patch[:, 32:] == 255).all()
            with pytest.raises(RegionError):
                r.read_region(0, 4000, 0, 8, 8)


def test_thumbnail_is_antialiased_average(small_synthetic) -> None:
    with open_slide(small_synthetic.image) as r:
        thumb = r.thumbnail(4.0)  # 8x down from 0.5 µm/px
        assert thumb.shape == (256, 384, 3)
        block = r.read_region(0, 800, 800, 8, 8).reshape(-1, 3).mean(0)
        assert np.abs(thumb[100, 100].astype(float) - block).max() <= 12
