"""What the whole-slide benchmarks share: memory of a process tree, benchmark slides,
the commit measured and the machine's load.

Peak memory means the sum over a process and all its descendants (driver, dask
scheduler, nannies and workers), as DESIGN.md §4 defines it. Summed RSS counts
shared library pages once per process, like the earlier figures it is compared with.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from wsiseg.synthetic import SynthSpec, write_synthetic_slide

__all__ = [
    "TreeRSS",
    "bench_slide",
    "git_commit",
    "load_snapshot",
    "parse_size",
    "results_folder_ready",
    "size_key",
]


class TreeRSS:
    """Summed RSS of process ``pid`` (default: this one) and all its descendants,
    sampled every ``interval`` seconds in a thread while the context is open.

    ``peak``: the largest sum seen (bytes); ``peak_root``: the largest RSS of ``pid``
    alone; ``timeline``: ``(wall clock time, sum, root)`` per sample, so that peaks can
    be attributed to phases timed elsewhere.
    """

    def __init__(self, pid: int | None = None, interval: float = 0.2) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.interval = interval
        self.peak = 0
        self.peak_root = 0
        self.timeline: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int]:
        """(sum over the tree, root alone) now, in bytes; (0, 0) once the root is gone.

        A child with its parent's command line is a fork that has not called exec
        (on its way to a helper program, or a forked data-loader worker): it shares
        its parent's pages, counted already, so only its own pages (USS) count."""
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0, 0
        total = root_rss = 0
        for p in procs:
            try:
                if p.pid != self.pid and p.cmdline() == p.parent().cmdline():
                    rss = p.memory_full_info().uss
                else:
                    rss = p.memory_info().rss
            except (psutil.Error, AttributeError):  # ended while being read
                continue
            total += rss
            if p.pid == self.pid:
                root_rss = rss
        return total, root_rss

    def _run(self) -> None:
        while not self._stop.is_set():
            total, root = self.sample()
            self.timeline.append((time.time(), total, root))
            self.peak = max(self.peak, total)
            self.peak_root = max(self.peak_root, root)
            self._stop.wait(self.interval)

    def peak_between(self, t0: float, t1: float) -> tuple[int, int]:
        """Largest (sum, root) sampled in the wall-clock span [t0, t1]."""
        inside = [(s, r) for t, s, r in self.timeline if t0 <= t <= t1]
        if not inside:
            return 0, 0
        return max(s for s, _ in inside), max(r for _, r in inside)

    def __enter__(self) -> TreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def parse_size(text: str) -> tuple[int, int]:
    """``"30000"`` -> (30000, 30000); ``"100000x60000"`` -> (100000, 60000) (width x height)."""
    parts = text.lower().split("x")
    try:
        w, h = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise ValueError(f"size {text!r}: give N or WxH in pixels") from None
    if len(parts) > 2 or w <= 0 or h <= 0:
        raise ValueError(f"size {text!r}: give N or WxH in pixels")
    return w, h


def results_folder_ready(folder: Path) -> Path:
    """Create ``folder`` for result files before a benchmark spends its time, so a path
    that cannot hold them is refused up front, not after the measurements.

    Raises
    ------
    ValueError
        ``folder`` or a parent is a file, or it cannot be created.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"results folder {folder}: a file is in the way") from None
    except OSError as exc:
        raise ValueError(f"results folder {folder}: {exc.strerror or exc}") from None
    return folder


def size_key(width: int, height: int) -> str:
    """The key of a slide size in result files: ``"30000x30000"``."""
    return f"{width}x{height}"


def bench_slide(folder: Path, width: int, height: int) -> tuple[Path, Path]:
    """The synthetic benchmark slide of this size and its label mask, written if missing.

    Square slides are ``bench-N`` with seed 7000 + N (the slides of
    ``pipelines/benchmark_wsi.py``); others ``bench-WxH`` with seed 7000 + W. The writer
    renders tile by tile, so any size is written in bounded memory.
    """
    name = f"bench-{width}" if width == height else f"bench-{width}x{height}"
    slide, mask = folder / f"{name}.tiff", folder / f"{name}_mask.tiff"
    if not (slide.exists() and mask.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        spec = SynthSpec(width_px=width, height_px=height, seed=7000 + width)
        paths = write_synthetic_slide(folder, name, spec)
        slide, mask = Path(paths.image), Path(paths.mask)
    return slide, mask


def git_commit(repo: Path) -> str:
    """Short commit of ``repo``'s HEAD, ``+dirty`` when ``wsiseg/`` has uncommitted changes
    (then the figures are not exactly the commit's); ``unknown`` outside git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=10", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "wsiseg"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def load_snapshot(exclude: int | None = None, sample_s: float = 1.0) -> dict[str, Any]:
    """The machine and what else keeps it busy: load averages, cores, memory, and the
    processes (outside ``exclude``'s tree) using over 10 % of a core over ``sample_s``."""
    skip: set[int] = set()
    if exclude is not None:
        try:
            me = psutil.Process(exclude)
            skip = {me.pid, *(p.pid for p in me.children(recursive=True))}
        except psutil.Error:
            pass
    procs = [p for p in psutil.process_iter(["name", "nice"]) if p.pid not in skip]
    for p in procs:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(sample_s)
    busy = []
    for p in procs:
        try:
            cpu = p.cpu_percent(None)
        except psutil.Error:
            continue
        if cpu > 10:
            busy.append(
                {
                    "pid": p.pid,
                    "name": p.info["name"],
                    "nice": p.info["nice"],
                    "cpu_percent": round(cpu),
                }
            )
    vm = psutil.virtual_memory()
    return {
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "memory_gib": round(vm.total / 2**30, 1),
        "available_gib": round(vm.available / 2**30, 1),
        "busy_processes": sorted(busy, key=lambda b: -b["cpu_percent"]),
    }
