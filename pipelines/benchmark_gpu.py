"""A large slide through ``wsiseg segment`` on one CUDA device: regions/s, pixels decoded,
phase times, wall (issue 13's GPU goal: 100000 x 60000 px in < 60 s on one H100-class GPU).

    python pipelines/benchmark_gpu.py                           # cuda, 100000x60000, 1 worker
    python pipelines/benchmark_gpu.py --device cpu --size 8192  # what CI runs (small)

The synthetic slide (0.5 µm/px) is written first if missing (a few minutes at
100000 x 60000 on 2 cores; not timed), then segmented in a child process with the
driver's phases timed (``pipelines/benchmark_scale.py``'s `measure_segment`); the run
is stopped after ``--timeout`` seconds (default 600 on cuda: the issue's 10 minutes)
and recorded as timed out. GPU memory in use is sampled with ``nvidia-smi`` where it
exists. Results: ``RESULTS/<commit>-<device>-<size>.json`` (default
``docs/results/gpu``). Importing this file or running its CPU mode needs no GPU; only
options that ``wsiseg segment`` has are used.

What the pipeline has for a GPU today (read from ``wsiseg/models`` and
``wsiseg/pipeline``, not measured on a GPU: none was available):

- batched regions: yes, fixed at 4 regions per dask task (``SegmentConfig.batch_regions``,
  not a CLI option); the saliency net and the segmenter see one [4, ...] batch, while
  reading, mip-mapping and sampling loop over the regions one by one;
- bf16 autocast at inference: yes, for the saliency net and the segmenter only
  (``DeformSeg.predict(precision="auto")``: bf16 on CUDA, float32 on the CPU; grids,
  sampling and back-projection stay float32); the bundled checkpoint is stored in
  float16 but loaded as float32;
- pinned host memory: yes for the host -> device copies of the low-res views, samples
  and windows (``wsiseg.models.precision.to_device``: ``pin_memory`` + ``non_blocking``);
- decoding overlapped with compute: no, within a worker: a task reads, samples,
  predicts and back-projects in sequence; only separate dask workers overlap
  (``--workers``: threads of the command's process sharing one copy of the model;
  with ``wsiseg segment --cluster local``, processes with a copy each);
- torch threads per worker: 1 (``SegmentConfig.threads_per_worker``), also for the CPU
  side of a GPU run (decoding, mip-maps, sampling);
- device placement: ``SlideRegionSource.sample`` builds each region's mip-map and
  samples on the CPU from a CPU copy of the model's grid, then moves the samples to
  the model's device; the grid inversion runs on the model's device. Not yet run on
  CUDA (tests/models/test_gpu.py has the checks, skipped without a GPU): the first GPU
  run of this script will tell (an error is recorded in the JSON).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmark_scale import REPO, measure_segment, table

from wsiseg.bench.wholeslide import (
    bench_slide,
    git_commit,
    parse_size,
    results_folder_ready,
    size_key,
)


class GpuMemory:
    """Peak GPU memory in use (MiB, summed over devices) from ``nvidia-smi``, sampled
    every second; ``peak`` stays None where ``nvidia-smi`` is missing."""

    def __init__(self) -> None:
        self.peak: int | None = None
        self.tool = shutil.which("nvidia-smi")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        assert self.tool is not None
        while not self._stop.is_set():
            try:
                text = subprocess.run(
                    [self.tool, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
                used = sum(int(v) for v in text.split())
                self.peak = max(self.peak or 0, used)
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self._stop.wait(1.0)

    def __enter__(self) -> GpuMemory:
        if self.tool:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--size", default="100000x60000", help="N or WxH px")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="dask workers (threads of wsiseg segment's process, its default cluster)",
    )
    p.add_argument("--model", default="default")
    p.add_argument(
        "--slides",
        type=Path,
        default=REPO / "runs" / "bench-slides",
        help="synthetic slides, written once and shared by the benchmarks (git-ignored)",
    )
    p.add_argument("--work", type=Path, default=REPO / "runs" / "bench-gpu")
    p.add_argument("--results", type=Path, default=REPO / "docs" / "results" / "gpu")
    p.add_argument("--timeout", type=float, default=None, help="seconds (cuda default 600)")
    p.add_argument("--note", default="")
    a = p.parse_args(argv)
    try:
        w, h = parse_size(a.size)
        results_folder_ready(a.results)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.device.startswith("cuda") and not _cuda_available():  # before writing the slide
        print(f"error: --device {a.device}: no CUDA GPU is available here", file=sys.stderr)
        return 1
    timeout = a.timeout if a.timeout is not None else (600.0 if a.device == "cuda" else None)
    slide, _ = bench_slide(a.slides, w, h)
    out = a.work / f"out-{a.device}-{size_key(w, h)}-{int(time.time())}"
    with GpuMemory() as gpu:
        r = measure_segment(
            slide, out, model=a.model, workers=a.workers, device=a.device, timeout_s=timeout
        )
    shutil.rmtree(out / slide.stem, ignore_errors=True)
    commit = git_commit(REPO)
    result: dict[str, Any] = {
        "commit": commit,
        "script": "pipelines/benchmark_gpu.py",
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": a.device,
        "size_px": [w, h],
        "workers": a.workers,
        "model": a.model,
        "timeout_s": timeout,
        "gpu_memory_peak_mib": gpu.peak,
        "note": a.note,
        **r,
    }
    path = a.results / f"{commit.replace('+', '-')}-{a.device}-{size_key(w, h)}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    status = "ok" if r["exit_code"] == 0 else f"FAILED (exit {r['exit_code']})"
    if r["timed_out"]:
        status = f"TIMED OUT after {timeout} s"
    print(f"{a.device} {size_key(w, h)}: {status}; results: {path}")
    print(table({size_key(w, h): r}))
    if r["exit_code"] != 0:
        print(r.get("error", ""), file=sys.stderr)
    return 0 if r["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
