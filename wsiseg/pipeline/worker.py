"""What a dask task runs: predict a batch of regions of one slide.

Only picklable things travel: the slide reference, the model path, the plan's
geometry and the regions. Each worker process opens the slide and loads the model
once (cached), with a fixed number of torch threads.

A task is pure: its result depends only on its arguments and it has no side
effects, so the scheduler may rerun it (on another worker, after a worker died or
an error) and the driver may receive it from any attempt.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from wsiseg.io.pyramid import file_stamp
from wsiseg.io.reader import SlideRef
from wsiseg.models.deformseg import DeformSeg
from wsiseg.models.loading import load_model
from wsiseg.models.slide_source import SlideRegionSource
from wsiseg.pipeline.stitch import core_of
from wsiseg.tiling import Region, RegionPlan

__all__ = ["BatchResult", "predict_batch", "cached_model", "cached_reader"]

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """Cores of a batch of regions (uint8 labels on the output grid) and costs."""

    cores: list[tuple[int, np.ndarray]]  # (region index, labels [h, w])
    densities: list[tuple[int, np.ndarray]] = field(default_factory=list)  # learned only
    pixels_decoded: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


#: Worker threads of one process (``--cluster threads``) that start together would each
#: miss the cache and build their own copy; with the lock the others wait for the first.
_MODEL_LOCK = threading.Lock()


def cached_model(model_path: str, device: str, threads: int) -> DeformSeg:
    """The model of ``model_path``, loaded once per process (and again if the file changed)."""
    with _MODEL_LOCK:
        return _cached_model(model_path, device, threads, file_stamp(model_path))


@functools.lru_cache(maxsize=2)
def _cached_model(
    model_path: str, device: str, threads: int, stamp: tuple[int, int, int]
) -> DeformSeg:
    if threads > 0:
        torch.set_num_threads(threads)
    return load_model(model_path, device=device)


def cached_reader(ref: SlideRef):  # type: ignore[no-untyped-def]
    """The opened slide of ``ref``, kept per thread (worker threads of ``--cluster
    threads`` share no file handle) and reopened if the file changed."""
    return _cached_reader(ref, file_stamp(ref.path), threading.get_ident())


@functools.lru_cache(maxsize=8)
def _cached_reader(ref: SlideRef, stamp: tuple[int, int, int], thread: int):  # type: ignore[no-untyped-def]
    return ref.open()


def predict_batch(
    ref: SlideRef,
    model_path: str,
    device: str,
    plan: RegionPlan,
    regions: list[Region],
    threads: int = 1,
) -> BatchResult:
    """Predict ``regions`` and return their cores at the plan's output resolution."""
    t0 = time.perf_counter()
    model = cached_model(model_path, device, threads)
    reader = cached_reader(ref)
    source = SlideRegionSource(reader, [(r.x0, r.y0, r.side) for r in regions], plan.region_px)
    out_px = plan.region_out_px
    seconds: dict[str, float] = {"load": time.perf_counter() - t0}
    with torch.inference_mode():
        probs, fwd = model.predict(source, (out_px, out_px), timings=seconds)
    seconds["read"] = source.read_seconds
    labels = probs.argmax(1).to(torch.uint8).cpu().numpy()
    cores = [(r.index, core_of(plan, r, lab)) for r, lab in zip(regions, labels, strict=True)]
    densities = []
    if fwd is not None and fwd.density is not None:
        dens = fwd.density.float().cpu().numpy()[:, 0]
        densities = [(r.index, d * d.size) for r, d in zip(regions, dens, strict=True)]
    return BatchResult(
        cores=cores,
        densities=densities,
        pixels_decoded=source.pixels_decoded,
        seconds=seconds,
    )
