"""Segment slides: plan regions, run them on a dask cluster, stitch, write the outputs.

Per slide ``OUT/<name>/``: ``mask.ome.tif``, ``annotations.geojson``, ``summary.json``,
``overlay.png``. Each is written under a temporary name and renamed, and
``summary.json`` is written last: a slide counts as done only when it exists. A rerun
skips slides done with the same model and settings, and refuses to replace slides
done with others unless ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from distributed import Client, Future, as_completed
from distributed.scheduler import KilledWorker

from wsiseg import __version__
from wsiseg.errors import InputError, WsisegError
from wsiseg.export.geojson import labels_to_features, write_geojson
from wsiseg.export.ome_tiff import write_label_ome_tiff
from wsiseg.export.overlay import render_overlay, write_png
from wsiseg.io import open_slide
from wsiseg.io.fileops import atomic_path, remove_stale_temporaries
from wsiseg.io.names import folder_claim, safe_name, slide_checksum
from wsiseg.io.reader import is_plausible_mpp
from wsiseg.models.checkpoint import read_checkpoint_metadata
from wsiseg.models.config import ModelConfig
from wsiseg.models.loading import resolve_model_path
from wsiseg.pipeline.cluster import task_resources
from wsiseg.pipeline.config import SegmentConfig
from wsiseg.pipeline.roi import clip_roi_to_slide
from wsiseg.pipeline.stitch import Stitcher
from wsiseg.pipeline.worker import BatchResult, predict_batch
from wsiseg.tiling import RegionPlan, plan_regions
from wsiseg.tissue import TissueParams, detect_tissue

__all__ = ["SlideOutcome", "ModelInfo", "model_info", "segment_slide", "safe_name", "OUTPUT_FILES"]

log = logging.getLogger(__name__)

OUTPUT_FILES = (
    "mask.ome.tif",
    "annotations.geojson",
    "overlay.png",
    "thumbnail.png",
    "summary.json",
)


@dataclass(frozen=True)
class ModelInfo:
    """What the driver needs to know about a model without loading its weights."""

    path: Path
    sha256: str
    config: ModelConfig


def model_info(model: str | Path) -> ModelInfo:
    path = resolve_model_path(model)
    meta = read_checkpoint_metadata(path)
    cfg = ModelConfig.from_dict(meta.config["model"])
    return ModelInfo(path=meta.weights_path, sha256=meta.sha256, config=cfg)


@dataclass
class SlideOutcome:
    """How one slide went."""

    slide: str
    status: str  # "done", "skipped", "no tissue", "failed"
    out_dir: Path | None = None
    message: str = ""
    summary: dict[str, Any] = field(default_factory=dict)


def _done_summary(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _versions() -> dict[str, str]:
    import openslide
    import tiffslide
    import torch

    return {
        "wsiseg": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "openslide": getattr(openslide, "__library_version__", "?"),
        "tiffslide": tiffslide.__version__,
    }


def _batches(plan: RegionPlan, size: int) -> list[list[Any]]:
    regs = list(plan.regions)
    return [regs[i : i + size] for i in range(0, len(regs), size)]


def segment_slide(
    slide: Path,
    out_root: Path,
    model: ModelInfo,
    config: SegmentConfig,
    client: Client,
    *,
    backend: str = "auto",
    mpp: float | None = None,
    roi: Any = None,
    overwrite: bool = False,
    on_region: Callable[[int, int], None] | None = None,
    name: str | None = None,
) -> SlideOutcome:
    """Segment one slide into ``out_root/<name>/``; errors become a failed outcome.

    ``name`` defaults to the slide's `safe_name`; a folder holding another slide's
    results or other files is never written into, even with ``overwrite``.
    """
    t_start = time.perf_counter()
    name = name or safe_name(slide)
    out_dir = out_root / name
    try:
        if folder_claim(out_dir, slide, OUTPUT_FILES) == "other":
            raise InputError(f"{out_dir} holds another slide's results or other files")
        cfg = model.config
        output_mpp = config.output_mpp or cfg.task_mpp * 4
        settings = {
            "model_sha256": model.sha256,
            "settings_hash": config.output_hash(),
            "output_mpp": output_mpp,
        }
        done = _done_summary(out_dir)
        if done is not None:
            same = all(done.get(k) == v for k, v in settings.items())
            if same and not overwrite:
                return SlideOutcome(str(slide), "skipped", out_dir, "already done", done)
            if not same and not overwrite:
                raise InputError(
                    f"{out_dir} holds results of another model or settings (use --overwrite)"
                )
        with open_slide(slide, backend=backend, mpp=mpp) as reader:
            mpp0 = reader.mpp[0]
            mpp_source = "metadata" if is_plausible_mpp(reader.mpp_reported[0]) else "override"
            if roi is not None:  # only its part on the slide; none is an error
                roi = clip_roi_to_slide(roi, reader.level_dimensions[0])
            ref = reader.ref()
            tissue = detect_tissue(reader, TissueParams(thumb_mpp=config.thumb_mpp))
            thumb = reader.thumbnail(config.thumb_mpp)
            plan = plan_regions(
                reader.level_dimensions[0],
                mpp0,
                task_mpp=cfg.task_mpp,
                region_px=cfg.region_px,
                margin_px=config.margin_px,
                output_mpp=output_mpp,
                tissue_mask=tissue.mask,
                tissue_downsample=tissue.downsample,
                roi=roi,
            )
        if not plan.regions:
            return SlideOutcome(str(slide), "no tissue", None, "no tissue found on the slide")
        slide_id = slide_checksum(slide)
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(".work-*"):  # scratch of a killed run on this slide
            shutil.rmtree(stale, ignore_errors=True)
        remove_stale_temporaries(out_dir)  # and its half-written outputs
        work = out_dir / f".work-{uuid.uuid4().hex[:8]}"
        try:
            result = _run_regions(ref, model, config, plan, client, work, on_region)
            # Replacing results (--overwrite): the slide stops counting as done before its
            # first output is replaced, so a kill part-way never leaves a mix marked done.
            if overwrite and (out_dir / "summary.json").exists():
                (out_dir / "summary.json").unlink()
            summary = _write_outputs(
                slide,
                out_dir,
                work,
                model,
                config,
                plan,
                tissue,
                thumb,
                result,
                slide_id,
                settings,
                overwrite,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        summary["wall_seconds"] = round(time.perf_counter() - t_start, 3)
        summary["mpp_source"] = mpp_source
        with atomic_path(out_dir / "summary.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        return SlideOutcome(str(slide), "done", out_dir, "", summary)
    except (WsisegError, OSError, ValueError) as exc:
        log.debug("%s failed", slide, exc_info=True)  # the caller reports it
        return SlideOutcome(
            str(slide), "failed", None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        )


@dataclass
class _RunResult:
    labels: Any  # zarr array on the output grid
    density: np.ndarray | None
    pixels_decoded: int
    seconds: dict[str, float]


def _submit_batches(
    ref: Any, model: ModelInfo, config: SegmentConfig, plan: RegionPlan, client: Client
) -> list[Future]:
    """One pure task per batch, retried on errors; a dead worker's tasks are rerun anyway."""
    geometry = plan.geometry()  # regions travel in their batch only
    resources = task_resources(client)
    return [
        client.submit(
            predict_batch,
            ref,
            str(model.path),
            config.device,
            geometry,
            batch,
            config.threads_per_worker,
            pure=True,
            retries=config.task_retries,
            resources=resources,
        )
        for batch in _batches(plan, config.batch_regions)
    ]


def _run_regions(
    ref: Any,
    model: ModelInfo,
    config: SegmentConfig,
    plan: RegionPlan,
    client: Client,
    work: Path,
    on_region: Callable[[int, int], None] | None,
) -> _RunResult:
    cfg = model.config
    grid = cfg.saliency_grid_px if cfg.sampler == "learned" else None
    stitcher = Stitcher(plan, work / "labels.zarr", density_grid=grid)
    futures = _submit_batches(ref, model, config, plan, client)
    total, done, decoded = len(plan.regions), 0, 0
    seconds: dict[str, float] = {}
    by_index = {r.index: r for r in plan.regions}
    try:
        for fut in as_completed(futures):
            res = _result(fut)
            for index, core_labels in res.cores:
                stitcher.add_core(by_index[index], core_labels)
            if stitcher.density is not None:
                for index, dens in res.densities:
                    stitcher.add_density(by_index[index], dens)
            decoded += res.pixels_decoded
            for k, v in res.seconds.items():
                seconds[k] = seconds.get(k, 0.0) + v
            done += len(res.cores)
            fut.release()
            if on_region is not None:
                on_region(done, total)
    finally:
        # After a failure: stop the rest and let the scheduler forget every task now (a
        # traceback that holds the futures would keep an erred one wanted until gc runs).
        pending = [f for f in futures if not f.done()]
        try:
            if pending:
                client.cancel(pending)
        except Exception:  # a lost scheduler must not hide the slide's own error
            log.debug("cancelling %d region tasks failed", len(pending), exc_info=True)
        for f in futures:
            f.release()
    return _RunResult(stitcher.labels, stitcher.density, decoded, seconds)


def _result(fut: Future) -> BatchResult:
    """A task's result; its failure (after retries) as a one-line error of the slide."""
    try:
        res: BatchResult = fut.result()
    except KilledWorker as exc:
        raise WsisegError(
            f"the worker running a region task died {exc.allowed_failures + 1} times "
            "(out of memory or a crash); giving up on the slide"
        ) from exc
    except (WsisegError, OSError, ValueError):
        raise
    except Exception as exc:
        log.debug("region task failed", exc_info=True)
        raise WsisegError(f"region task failed: {type(exc).__name__}: {exc}") from exc
    return res


def _write_outputs(
    slide: Path,
    out_dir: Path,
    work: Path,
    model: ModelInfo,
    config: SegmentConfig,
    plan: RegionPlan,
    tissue: Any,
    thumb: np.ndarray,
    result: _RunResult,
    slide_id: str,
    settings: dict[str, Any],
    overwrite: bool,
) -> dict[str, Any]:
    cfg = model.config
    t0 = time.perf_counter()
    out_mpp = plan.output_mpp
    names, colours = list(cfg.class_names), [c[1] for c in cfg.classes]
    write_label_ome_tiff(
        out_dir / "mask.ome.tif", result.labels, (out_mpp, out_mpp), names, colours, overwrite=True
    )
    labels = np.asarray(result.labels[:])
    downsample = out_mpp / plan.mpp
    features = labels_to_features(
        labels,
        downsample=downsample,
        class_names=names,
        class_colours=colours,
        mpp=plan.mpp,
        slide_id=slide_id,
        min_area_um2=config.min_area_um2,
        slide_size=plan.slide_size,
    )
    write_geojson(out_dir / "annotations.geojson", features, overwrite=True)
    # Overlay: labels and density brought to the thumbnail's grid.
    th, tw = thumb.shape[:2]
    ys = np.minimum((np.arange(th) * labels.shape[0] / th).astype(int), labels.shape[0] - 1)
    xs = np.minimum((np.arange(tw) * labels.shape[1] / tw).astype(int), labels.shape[1] - 1)
    small = labels[ys[:, None], xs[None, :]]
    dens_small = None
    if result.density is not None:
        d = result.density
        dy = np.minimum((np.arange(th) * d.shape[0] / th).astype(int), d.shape[0] - 1)
        dx = np.minimum((np.arange(tw) * d.shape[1] / tw).astype(int), d.shape[1] - 1)
        dens_small = d[dy[:, None], dx[None, :]]
    write_png(
        out_dir / "overlay.png",
        render_overlay(thumb, small, colours, density=dens_small, legend=names),
        overwrite=True,
    )
    write_png(out_dir / "thumbnail.png", thumb, overwrite=True)
    counts = np.bincount(labels.ravel(), minlength=cfg.num_classes)[: cfg.num_classes]
    px_mm2 = (out_mpp / 1000.0) ** 2
    tissue_px = int(counts[1:].sum())
    level0_tissue = float(tissue.area_level0_px)
    classes = {
        n: {
            "area_mm2": round(float(c) * px_mm2, 6),
            "fraction_of_tissue": round(float(c) / tissue_px, 6) if tissue_px and i > 0 else None,
        }
        for i, (n, c) in enumerate(zip(names, counts, strict=True))
    }
    return {
        "slide": str(slide),
        "slide_id": slide_id,
        **settings,
        "model": str(model.path),
        "sampler": cfg.sampler,
        "task_mpp": cfg.task_mpp,
        "slide_mpp": plan.mpp,
        "output_size": list(plan.output_size),
        "regions": len(plan.regions),
        "classes": classes,
        "tissue_area_mm2": round(tissue_px * px_mm2, 6),
        "detected_tissue_area_mm2": round(level0_tissue * (plan.mpp / 1000.0) ** 2, 6),
        "pixels_decoded": int(result.pixels_decoded),
        "pixels_decoded_per_tissue_pixel": round(result.pixels_decoded / level0_tissue, 6)
        if level0_tissue
        else None,
        "seconds": {
            **{k: round(v, 3) for k, v in result.seconds.items()},
            "write": round(time.perf_counter() - t0, 3),
        },
        "features": len(features),
        "config": config.to_dict(),
        "versions": _versions(),
    }


def segment_slides(
    slides: Sequence[Path],
    out_root: Path,
    model: ModelInfo,
    config: SegmentConfig,
    client: Client,
    **kwargs: Any,
) -> list[SlideOutcome]:
    """Segment every slide, going on past failures."""
    return [segment_slide(s, out_root, model, config, client, **kwargs) for s in slides]
