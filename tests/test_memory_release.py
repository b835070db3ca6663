"""release_freed_memory (issue 13): freed heap pages go back to the system between a
slide's phases, so RSS follows what is alive rather than what once was."""

from __future__ import annotations

import os
import platform
import sys

import pytest

from wsiseg.pipeline.memory import release_freed_memory

glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not glibc, reason="malloc_trim is a glibc function")
def test_freed_heap_memory_leaves_the_process() -> None:
    # 200 MB in blocks below glibc's mmap threshold: they live in the heap, and the
    # last block keeps its top from shrinking on its own.
    blocks = [bytearray(4000) for _ in range(50_000)]
    keep = bytearray(4000)
    del blocks
    before = _rss_bytes()
    assert release_freed_memory() is True
    assert before - _rss_bytes() > 100 * 2**20
    assert keep is not None


def test_openslide_handles_share_one_tile_cache(small_synthetic, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Every OpenSlide handle of a process (driver and worker threads) uses one tile
    cache of OPENSLIDE_CACHE_BYTES, instead of one default cache per handle."""
    import openslide

    from wsiseg.io import backends, open_slide

    cache = backends._shared_openslide_cache()
    assert cache is not None, "openslide-python >= 1.3 with OpenSlide >= 4 is installed"
    used: list[object] = []
    real = openslide.OpenSlide.set_cache
    monkeypatch.setattr(
        openslide.OpenSlide, "set_cache", lambda self, c: (used.append(c), real(self, c))[1]
    )
    with (
        open_slide(small_synthetic.image, backend="openslide") as a,
        open_slide(small_synthetic.image, backend="openslide") as b,
    ):
        pa, pb = a.read_region(0, 10, 20, 64, 48), b.read_region(0, 10, 20, 64, 48)
    assert len(used) == 2 and used[0] is used[1] is cache
    assert pa.shape == (48, 64, 3) and (pa == pb).all()


_CHURN = """
import os, sys
from wsiseg.pipeline.memory import fixed_mmap_threshold
fixed = fixed_mmap_threshold() if sys.argv[1] == "fixed" else False
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
big = b"x" * (8 << 20)  # freeing a mapped 8 MB block raises glibc's dynamic threshold
del big
before = rss()
blocks = [b"x" * (3 << 20) for _ in range(40)]  # 120 MB of 3 MB blocks
keep = b"y" * 100_000  # malloc-ed last: the heap top cannot shrink under it
del blocks
print(fixed, (rss() - before) >> 20, os.environ.get("MALLOC_MMAP_THRESHOLD_"))
"""


@pytest.mark.skipif(not glibc, reason="mallopt is a glibc function")
def test_fixed_mmap_threshold_returns_freed_region_sized_blocks() -> None:
    """After glibc has raised its mmap threshold, freed blocks of a few MB stay in the
    heap (RSS keeps them); with the threshold fixed they go back when freed, and the
    setting is passed on to child processes through the environment."""
    import subprocess

    # glibc's own defaults (dask sets MALLOC_TRIM_THRESHOLD_, which fixes them too)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = {}
    for mode in ("dynamic", "fixed"):
        proc = subprocess.run(
            [sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, env=env
        )
        assert proc.returncode == 0, proc.stderr
        out[mode] = proc.stdout.split()
    assert out["dynamic"][0] == "False" and int(out["dynamic"][1]) > 100
    assert out["fixed"] == ["True", out["fixed"][1], str(1 << 20)]
    assert int(out["fixed"][1]) < 10
