"""Segment slides: plan regions, run them on a dask cluster, stitch, write the outputs.

Per slide ``OUT/<name>/``: ``mask.ome.tif``, ``annotations.geojson``, ``summary.json``,
``overlay.png``. Each is written under a temporary name and renamed, and
``summary.json`` (a `SlideSummary`) is written last: a slide counts as done only when
it exists. A rerun skips slides done with the same `ResumeIdentity` and refuses to
replace slides done with other inputs unless ``overwrite``. A slide the model cannot
read (`wsiseg.pipeline.admission`) is refused before its tissue is looked for, and
nothing is written for it, unless ``force``. A slide killed part-way resumes from its
finished regions (`wsiseg.pipeline.scratch`). The batch around this (discovery, names,
locks, run.json) is `wsiseg.pipeline.batch`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from distributed import Client, Future, as_completed
from distributed.scheduler import KilledWorker
from shapely.geometry.base import BaseGeometry

from wsiseg import __version__
from wsiseg.errors import InputError, WsisegError
from wsiseg.export.geojson import iter_features, write_geojson
from wsiseg.export.ome_tiff import write_label_ome_tiff
from wsiseg.export.overlay import write_overlay_png, write_png
from wsiseg.fileops import atomic_path, remove_stale_temporaries
from wsiseg.geometry import count_values, polygons_to_mask
from wsiseg.io import open_slide
from wsiseg.io.names import (
    folder_claim,
    resolved_path,
    safe_name,
    slide_checksum,
    slide_fingerprint,
)
from wsiseg.io.reader import BaseSlideReader, SlideRef, is_plausible_mpp
from wsiseg.models.checkpoint import model_notice, read_checkpoint_metadata
from wsiseg.models.config import ModelConfig
from wsiseg.models.loading import check_model, resolve_model_path
from wsiseg.pipeline.admission import Admission, admit_slide
from wsiseg.pipeline.cluster import task_resources
from wsiseg.pipeline.config import SegmentConfig
from wsiseg.pipeline.memory import release_freed_memory
from wsiseg.pipeline.off_tissue import OffTissue, clears_off_tissue
from wsiseg.pipeline.outputs import ClassArea, ResumeIdentity, RoiRecord, SlideSummary
from wsiseg.pipeline.roi import clip_roi_to_slide
from wsiseg.pipeline.scratch import BatchRecord, Scratch, core_sha256, open_scratch, scratch_key
from wsiseg.pipeline.stitch import Stitcher
from wsiseg.pipeline.worker import BatchResult, predict_batch
from wsiseg.tiling import Region, RegionPlan, plan_regions
from wsiseg.tissue import TissueMask, TissueParams, detect_tissue

__all__ = [
    "OUTPUT_FILES",
    "ModelInfo",
    "Refused",
    "checked_model",
    "class_areas",
    "SlideCheck",
    "SlideOutcome",
    "WRITE_BAND_PIXELS",
    "model_config_digest",
    "model_info",
    "resolve_output_mpp",
    "roi_sha256",
    "safe_name",
    "segment_slide",
]

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
    """What the driver needs to know about a model without loading its weights.

    ``metadata`` is the checkpoint's config JSON (read once per run: the admission
    checks compare its ``colour_stats``); ``notice`` its model card's notice.
    """

    path: Path
    sha256: str
    config: ModelConfig
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)
    notice: str = ""
    config_digest: dict[str, str] = field(default_factory=dict, compare=False)


def checked_model(model: str | Path) -> ModelInfo:
    """Verify a model once for a run (files, checksum, config, weight shapes: `check_model`)
    and return what the driver needs; workers then only load it."""
    return model_info(check_model(model))


def model_info(model: str | Path) -> ModelInfo:
    """A model's path (absolute: records name it wherever they are read), checksum and
    config from its JSON (the weights are not verified)."""
    path = resolve_model_path(model)
    meta = read_checkpoint_metadata(path)
    cfg = ModelConfig.from_dict(meta.config["model"])
    return ModelInfo(
        path=resolved_path(meta.weights_path),
        sha256=meta.sha256,
        config=cfg,
        metadata=meta.config,
        notice=model_notice(meta.config),
        config_digest=model_config_digest(meta.config, half=meta.half),
    )


def model_config_digest(config: Mapping[str, Any], *, half: bool = False) -> dict[str, str]:
    """Key -> 16 hex digits of SHA-256 of the value's canonical JSON, for a checkpoint's
    config: each key of its ``model`` section (``classes``, ``mean``...), then its other
    keys (``config.KEY`` where a name repeats) and ``half``. Part of the resume identity,
    so editing the checkpoint's ``.json`` alone is noticed, and named."""

    def digest(value: object) -> str:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    section = config.get("model")
    out = {str(k): digest(v) for k, v in (section.items() if isinstance(section, Mapping) else ())}
    rest = {k: v for k, v in config.items() if k != "model"}
    if not isinstance(section, Mapping):
        rest["model"] = section
    for k, v in {**rest, "half": half}.items():
        out["config." + str(k) if str(k) in out else str(k)] = digest(v)
    return out


@dataclass
class SlideOutcome:
    """How one slide went: ``done``, ``skipped``, ``no tissue``, ``refused`` or ``failed``.

    ``admission``: the admission checks' outcome, when they ran (not for a skipped slide:
    its summary records them).
    """

    slide: str
    status: str
    out_dir: Path | None = None
    message: str = ""
    summary: SlideSummary | None = None
    admission: Admission | None = None


class Refused(InputError):
    """A slide's folder holds results of other inputs, or another slide's files."""


#: Called with the opened slide before any region runs; raises to refuse the slide.
SlideCheck = Callable[[BaseSlideReader], None]


def _done_summary(out_dir: Path) -> SlideSummary | None:
    path = out_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return SlideSummary.from_json(data) if isinstance(data, dict) else None


def _summary_state(out_dir: Path) -> bytes | None:
    """The bytes of ``summary.json`` (None if missing), to notice a change by another run."""
    try:
        return (out_dir / "summary.json").read_bytes()
    except FileNotFoundError:
        return None


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


def _batches(plan: RegionPlan, size: int) -> list[list[Region]]:
    regs = list(plan.regions)
    return [regs[i : i + size] for i in range(0, len(regs), size)]


def resolve_output_mpp(model: ModelInfo, config: SegmentConfig) -> float:
    """The output pixel size a run uses: ``config.output_mpp`` or 4x the model's."""
    return config.output_mpp or model.config.task_mpp * 4


def roi_sha256(roi: BaseGeometry) -> str:
    """Content hash of an ROI geometry (normalised WKB: the file's formatting is ignored)."""
    return hashlib.sha256(shapely.to_wkb(shapely.normalize(roi))).hexdigest()


def _roi_record(roi: BaseGeometry | None, mpp: float) -> RoiRecord | None:
    if roi is None:
        return None
    x0, y0, x1, y1 = (round(float(v), 3) for v in roi.bounds)
    area = float(roi.area)
    return RoiRecord(
        roi_sha256(roi), (x0, y0, x1, y1), round(area, 3), round(area * (mpp / 1000) ** 2, 6)
    )


def _first_line(message: str, slide: Path) -> str:
    """The first line of an error message; line breaks in the slide's own name are kept
    (the CLI prints them escaped)."""
    if not message:
        return "unknown error"
    marks = {str(slide): "\0p\0", slide.name: "\0n\0"}
    for text, mark in marks.items():
        message = message.replace(text, mark)
    message = message.splitlines()[0]
    for text, mark in marks.items():
        message = message.replace(mark, text)
    return message


def segment_slide(
    slide: Path,
    out_root: Path,
    model: ModelInfo,
    config: SegmentConfig,
    client: Client,
    *,
    backend: str = "auto",
    mpp: float | None = None,
    roi: BaseGeometry | None = None,
    overwrite: bool = False,
    on_region: Callable[[int, int], None] | None = None,
    name: str | None = None,
    check: SlideCheck | None = None,
    force: bool = False,
) -> SlideOutcome:
    """Segment one slide into ``out_root/<name>/``; errors become a failed outcome.

    ``name`` defaults to the slide's `safe_name`; a folder holding another slide's
    results or other files is never written into, even with ``overwrite``. Results
    with the same `ResumeIdentity` are skipped; results of other inputs are refused
    (``refused``) unless ``overwrite``. ``check`` is called with the opened slide
    before its regions run; its `WsisegError` fails the slide. Then `admit_slide`
    checks the slide against the model: a slide it refuses is ``refused`` (nothing
    written) unless ``force``; a forced slide's summary records ``forced`` and the
    refusals overridden. ``force`` is not part of the resume identity (the outputs do
    not depend on it): a slide done earlier, forced or not, is skipped.
    The caller serialises runs on one folder (`wsiseg.pipeline.batch` locks it).
    """
    t_start = time.perf_counter()
    name = name or safe_name(slide)
    out_dir = out_root / name
    try:
        if folder_claim(out_dir, slide, OUTPUT_FILES) == "other":
            raise Refused(f"{out_dir} holds another slide's results or other files")
        cfg = model.config
        output_mpp = resolve_output_mpp(model, config)
        with open_slide(slide, backend=backend, mpp=mpp) as reader:
            mpp0 = reader.mpp[0]
            mpp_source = "metadata" if is_plausible_mpp(reader.mpp_reported[0]) else "override"
            if roi is not None:  # only its part on the slide; none is an error
                roi = clip_roi_to_slide(roi, reader.level_dimensions[0])
            clears = clears_off_tissue(cfg.class_names)
            identity = ResumeIdentity(
                model_sha256=model.sha256,
                slide_fingerprint=slide_fingerprint(slide),
                slide_mpp=float(mpp0),
                output_mpp=float(output_mpp),
                roi_sha256=roi_sha256(roi) if roi is not None else None,
                backend=reader.backend,
                settings_hash=config.resolved(output_mpp).output_hash(off_tissue=clears),
                model_config=dict(model.config_digest),
                settings=config.resolved(output_mpp).output_settings(off_tissue=clears),
            )
            seen = _summary_state(out_dir)
            done = _done_summary(out_dir)
            if done is not None:
                diffs = (
                    done.identity.differences(
                        identity,
                        rois=(done.roi, _roi_record(roi, mpp0)),
                        models=(done.model, str(model.path)),
                    )
                    if done.identity is not None
                    else ["written by an older wsiseg without a resume identity"]
                )
                if not diffs and not overwrite:
                    return SlideOutcome(str(slide), "skipped", out_dir, "already done", done)
                if diffs and not overwrite:
                    raise Refused(
                        f"{out_dir} holds results of other inputs ({'; '.join(diffs)}); "
                        "use --overwrite to replace them"
                    )
            if check is not None:
                check(reader)
            # One thumbnail for the admission checks, tissue detection and the outputs.
            thumb = reader.thumbnail(config.thumb_mpp)
            admission = admit_slide(reader, cfg, model.metadata, force, thumbnail=thumb)
            if not admission.admitted:
                return SlideOutcome(
                    str(slide),
                    "refused",
                    None,
                    f"refused: {admission.reason} (--force segments it anyway)",
                    admission=admission,
                )
            ref = reader.ref()
            tissue = detect_tissue(
                reader, TissueParams(thumb_mpp=config.thumb_mpp), thumbnail=thumb
            )
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
            thumb = preview_image(thumb)  # all that is needed of it from here on
            off_tissue = OffTissue(tissue.mask, tissue.downsample, plan) if clears else None
            level0_tissue = detected_tissue_px(tissue, roi)
            del tissue  # its mask grows with the slide; only its area is needed from here on
            release_freed_memory()  # the thumbnail's and tissue detection's temporaries
        if not plan.regions:
            return SlideOutcome(
                str(slide), "no tissue", None, "no tissue found on the slide", admission=admission
            )
        slide_id = slide_checksum(slide)
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out_dir)  # half-written outputs of a killed run
        batches = _batches(plan, config.batch_regions)
        # A killed run's finished regions are reused if made for the same inputs.
        key = scratch_key(identity, plan, batches, config.device)
        scratch = open_scratch(out_dir, key, discard=overwrite)
        try:
            result = _run_regions(
                ref, model, config, plan, batches, client, scratch, on_region, off_tissue
            )
            release_freed_memory()
            # Right before the first final rename: nobody else finished this slide meanwhile.
            if _summary_state(out_dir) != seen:
                raise Refused(f"{out_dir}: another run wrote results meanwhile; not replaced")
            # Replacing results (--overwrite): the slide stops counting as done before its
            # first output is replaced, so a kill part-way never leaves a mix marked done.
            if overwrite and (out_dir / "summary.json").exists():
                (out_dir / "summary.json").unlink()
            summary = _write_outputs(
                slide,
                out_dir,
                model,
                config,
                plan,
                level0_tissue,
                thumb,
                result,
                slide_id,
                identity,
                roi,
            )
        except BaseException:
            _remove_scratch(scratch.folder, after_error=True)
            raise
        _remove_scratch(scratch.folder)
        summary = replace(
            summary,
            wall_seconds=round(time.perf_counter() - t_start, 3),
            mpp_source=mpp_source,
            forced=admission.forced,
            refusals=tuple(admission.refusals) if admission.forced else (),
            warnings=tuple(admission.warnings),
            notice=model.notice,
        )
        with atomic_path(out_dir / "summary.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(summary.to_json(), indent=2) + "\n")
        return SlideOutcome(str(slide), "done", out_dir, "", summary, admission)
    except Refused as exc:
        return SlideOutcome(str(slide), "refused", None, str(exc))
    except (WsisegError, OSError, ValueError) as exc:
        log.debug("%s failed", slide, exc_info=True)  # the caller reports it
        return SlideOutcome(str(slide), "failed", None, _first_line(str(exc), slide))


def _remove_scratch(folder: Path, *, after_error: bool = False) -> None:
    """Remove a slide's scratch. After an error or an interrupt, zarr's I/O thread may
    still be writing the store's metadata (the interrupted call no longer waits for
    it) and re-create the folder: it is removed again once such a write has landed."""
    shutil.rmtree(folder, ignore_errors=True)
    if after_error:
        time.sleep(0.25)  # a late metadata write lands within milliseconds
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class _RunResult:
    labels: Any  # zarr array on the output grid
    density: np.ndarray | None
    pixels_decoded: int
    seconds: dict[str, float]
    regions_reused: int = 0


def _submit_batches(
    ref: SlideRef,
    model: ModelInfo,
    config: SegmentConfig,
    plan: RegionPlan,
    batches: list[list[Region]],
    client: Client,
) -> list[Future[BatchResult]]:
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
        for batch in batches
    ]


def _run_regions(
    ref: SlideRef,
    model: ModelInfo,
    config: SegmentConfig,
    plan: RegionPlan,
    batches: list[list[Region]],
    client: Client,
    scratch: Scratch,
    on_region: Callable[[int, int], None] | None,
    off_tissue: OffTissue | None = None,
) -> _RunResult:
    cfg = model.config
    grid = cfg.saliency_grid_px if cfg.sampler == "learned" else None
    stitcher = Stitcher(plan, scratch.labels_path, density_grid=grid)
    by_index = {r.index: r for r in plan.regions}
    reused = scratch.reusable(stitcher, batches)
    total, done, decoded = len(plan.regions), 0, 0
    for rec in reused.values():  # their cores are in the store already
        if stitcher.density is not None:
            for index, dens in zip(rec.regions, rec.densities, strict=True):
                stitcher.add_density(by_index[index], dens)
        decoded += rec.pixels_decoded
        done += len(rec.regions)
    n_reused, where = done, scratch.folder.parent
    if n_reused:
        msg = "%s: %d of %d regions reused from an interrupted run, %d to compute"
        log.info(msg, where, n_reused, total, total - n_reused)
        if on_region is not None:
            on_region(done, total)
    else:
        log.info("%s: %d regions to compute", where, total)
    todo = [b for i, b in enumerate(batches) if i not in reused]
    batch_of = {r.index: i for i, b in enumerate(batches) for r in b}
    futures = _submit_batches(ref, model, config, plan, todo, client)
    seconds: dict[str, float] = {}
    try:
        for fut in as_completed(futures):
            res = _result(fut)
            if off_tissue is not None:  # before stitching and the scratch record
                res.cores = [(i, off_tissue.clear(by_index[i], c)) for i, c in res.cores]
            for index, core_labels in res.cores:
                stitcher.add_core(by_index[index], core_labels)
            if stitcher.density is not None:
                for index, dens in res.densities:
                    stitcher.add_density(by_index[index], dens)
            scratch.add(_batch_record(batch_of, res))  # after its cores: it may be reused
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
    return _RunResult(stitcher.labels, stitcher.density, decoded, seconds, n_reused)


def _batch_record(batch_of: Mapping[int, int], res: BatchResult) -> BatchRecord:
    """The scratch record of a finished batch."""
    return BatchRecord(
        batch=batch_of[res.cores[0][0]],
        regions=tuple(index for index, _ in res.cores),
        sha256=tuple(core_sha256(core) for _, core in res.cores),
        pixels_decoded=res.pixels_decoded,
        densities=tuple(dens for _, dens in res.densities),
    )


def _result(fut: Future[BatchResult]) -> BatchResult:
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


#: Output pixels per band when a slide's outputs are written: the label raster is read,
#: masked to the ROI, counted and subsampled one band of rows at a time (whole chunk
#: rows where the budget allows), so the driver never holds the whole raster.
WRITE_BAND_PIXELS = 1 << 24
#: Long side of ``overlay.png`` and ``thumbnail.png`` at most (larger thumbnails are
#: subsampled by a whole step): the report's images stay bounded on any slide.
PREVIEW_MAX_PX = 4096


def _band_rows(width: int, chunk_rows: int, band_pixels: int) -> int:
    """Rows per band: as many whole chunk rows as fit ``band_pixels`` (at least one),
    or fewer rows than a chunk when even one chunk row does not fit."""
    rows = max(1, band_pixels // max(1, width))
    return rows - rows % chunk_rows if rows >= chunk_rows else rows


def _band_counts(
    band: np.ndarray,
    inside: np.ndarray | None,
    row0: int,
    shape: tuple[int, int],
    num_classes: int,
) -> np.ndarray:
    """Integer class counts of a band (rows ``row0``.. of a raster of ``shape``), shape
    ``(4, num_classes)``: all its pixels; the raster's last column, its last row, both
    without their corner; the corner. ``inside``: the band's ROI pixels."""
    h, w = shape
    row1 = row0 + band.shape[0]
    out = np.zeros((4, num_classes), np.int64)

    def count(rows: slice, cols: slice) -> np.ndarray:
        part = band[rows, cols]
        return count_values(part if inside is None else part[inside[rows, cols]], num_classes)

    out[0] = count(slice(None), slice(None))
    out[1] = count(slice(0, max(0, min(row1, h - 1) - row0)), slice(w - 1, w))
    if row1 == h:
        last = slice(h - 1 - row0, h - row0)
        out[2] = count(last, slice(0, w - 1))
        out[3] = count(last, slice(w - 1, w))
    return out


def _weighted_counts(parts: np.ndarray, plan: RegionPlan, shape: tuple[int, int]) -> np.ndarray:
    """Output pixels per class from `_band_counts` summed over a raster of ``shape``, the
    last row and column weighted by the share of them on the slide (they reach past its
    edge when its size is not a whole number of output pixels), so areas never exceed
    the slide's."""
    h, w = shape
    scale = plan.mpp / plan.output_mpp
    fx = min(max(plan.slide_size[0] * scale - (w - 1), 0.0), 1.0)
    fy = min(max(plan.slide_size[1] * scale - (h - 1), 0.0), 1.0)
    counts: np.ndarray = parts[0].astype(float)
    counts += (fx - 1.0) * parts[1].astype(float)  # last column, corner excluded
    counts += (fy - 1.0) * parts[2].astype(float)  # last row, corner excluded
    counts += (fx * fy - 1.0) * parts[3].astype(float)  # the corner
    return counts


def detected_tissue_px(tissue: TissueMask, roi: BaseGeometry | None) -> float:
    """Level-0 pixels of detected tissue (inside ``roi`` when one is given)."""
    if roi is None:
        return tissue.area_level0_px
    in_roi = polygons_to_mask(roi, tissue.mask.shape, scale=tissue.downsample)
    return float((tissue.mask & in_roi).sum()) * tissue.downsample**2


def preview_image(thumb: np.ndarray) -> np.ndarray:
    """The thumbnail for ``overlay.png`` and ``thumbnail.png``: subsampled by the
    smallest whole step that brings its long side to ``PREVIEW_MAX_PX`` or less (a
    copy, so the full thumbnail can be freed); unchanged when it is that small."""
    step = -(-max(thumb.shape[:2]) // PREVIEW_MAX_PX)
    return np.ascontiguousarray(thumb[::step, ::step]) if step > 1 else thumb


@dataclass
class _LabelScan:
    counts: np.ndarray  # output pixels per class (`_weighted_counts`), ROI only
    small: np.ndarray  # the labels on the thumbnail's grid (nearest neighbour)


def _scan_labels(
    labels: Any,
    roi: BaseGeometry | None,
    plan: RegionPlan,
    num_classes: int,
    thumb_shape: tuple[int, int],
    band_pixels: int | None = None,
) -> _LabelScan:
    """One pass over the zarr label raster, band by band (`WRITE_BAND_PIXELS`): pixels
    outside ``roi`` set to background and written back, class pixels counted, and the
    raster subsampled to the thumbnail's grid for the overlay."""
    h, w = (int(v) for v in labels.shape)
    step = _band_rows(w, int(labels.chunks[0]), band_pixels or WRITE_BAND_PIXELS)
    th, tw = thumb_shape
    ys = np.minimum((np.arange(th) * h / th).astype(int), h - 1)
    xs = np.minimum((np.arange(tw) * w / tw).astype(int), w - 1)
    small = np.zeros((th, tw), labels.dtype)
    parts = np.zeros((4, num_classes), np.int64)
    downsample = plan.output_mpp / plan.mpp
    for r0 in range(0, h, step):
        r1 = min(h, r0 + step)
        band = np.asarray(labels[r0:r1])
        inside = None
        if roi is not None:
            inside = polygons_to_mask(roi, (h, w), scale=downsample, rows=(r0, r1))
            band *= inside  # background outside the ROI
            labels[r0:r1] = band
        parts += _band_counts(band, inside, r0, (h, w), num_classes)
        a, b = np.searchsorted(ys, (r0, r1))
        small[a:b] = band[(ys[a:b] - r0)[:, None], xs[None, :]]
    return _LabelScan(_weighted_counts(parts, plan, (h, w)), small)


def class_areas(
    names: list[str], counts: np.ndarray, px_mm2: float, *, detected_tissue_px: float
) -> tuple[dict[str, ClassArea], float]:
    """Area of each class and its fraction of the tissue, and the tissue's pixels.

    When class 0 is ``Background`` (the demo model: glass and nothing else), the tissue
    is every other class; otherwise class 0 is tissue too (e.g. ``Not gland``: stroma
    and glass alike) and the tissue is what tissue detection found, so that a gland
    fraction is of the tissue, not of the glands."""
    if not clears_off_tissue(names):  # class 0 is Background: glass and nothing else
        tissue_px = float(counts[1:].sum())
    else:
        tissue_px = float(detected_tissue_px)
    areas = {
        n: ClassArea(
            area_mm2=round(float(c) * px_mm2, 6),
            fraction_of_tissue=round(float(c) / tissue_px, 6) if tissue_px and i > 0 else None,
        )
        for i, (n, c) in enumerate(zip(names, counts, strict=True))
    }
    return areas, tissue_px


def _write_outputs(
    slide: Path,
    out_dir: Path,
    model: ModelInfo,
    config: SegmentConfig,
    plan: RegionPlan,
    level0_tissue: float,
    thumb: np.ndarray,
    result: _RunResult,
    slide_id: str,
    identity: ResumeIdentity,
    roi: BaseGeometry | None,
) -> SlideSummary:
    """Write mask, GeoJSON and images; return the summary (written last, by the caller).

    With an ROI, labels outside it are background, features are cut to it, and class
    and tissue areas count only what lies inside it (``level0_tissue``: the detected
    tissue's level-0 pixels, inside the ROI).
    """
    cfg = model.config
    t0 = time.perf_counter()
    out_mpp = plan.output_mpp
    names, colours = list(cfg.class_names), [c[1] for c in cfg.classes]
    downsample = out_mpp / plan.mpp
    preview = preview_image(thumb)
    # The label raster stays in its zarr store; one pass of bands masks it to the ROI.
    scan = _scan_labels(result.labels, roi, plan, cfg.num_classes, preview.shape[:2])
    write_label_ome_tiff(
        out_dir / "mask.ome.tif", result.labels, (out_mpp, out_mpp), names, colours, overwrite=True
    )
    # Traced band by band from the store and written as they are made (not held).
    features = iter_features(
        result.labels,
        downsample=downsample,
        class_names=names,
        class_colours=colours,
        mpp=plan.mpp,
        slide_id=slide_id,
        min_area_um2=config.min_area_um2,
        slide_size=plan.slide_size,
        clip=roi,
    )
    n_features = 0

    def counted(items: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        nonlocal n_features
        for item in items:
            n_features += 1
            yield item

    write_geojson(out_dir / "annotations.geojson", counted(features), overwrite=True)
    release_freed_memory()  # the traced rings
    write_png(out_dir / "thumbnail.png", preview, overwrite=True)
    # Overlay: the labels are on the preview's grid; the density is sampled band by band.
    write_overlay_png(
        out_dir / "overlay.png",
        preview,
        scan.small,
        colours,
        density=result.density,
        legend=names,
        overwrite=True,
    )
    counts = scan.counts
    px_mm2 = (out_mpp / 1000.0) ** 2
    classes, tissue_px = class_areas(
        names, counts, px_mm2, detected_tissue_px=level0_tissue * (plan.mpp / out_mpp) ** 2
    )
    w, h = plan.output_size
    return SlideSummary(
        slide=str(slide),
        slide_path=str(resolved_path(slide)),
        slide_id=slide_id,
        model=str(model.path),
        model_sha256=model.sha256,
        settings_hash=identity.settings_hash,
        output_mpp=out_mpp,
        sampler=cfg.sampler,
        task_mpp=cfg.task_mpp,
        region_px=cfg.region_px,
        sample_px=cfg.sample_px,
        colours={n: (int(c[0]), int(c[1]), int(c[2])) for n, c in cfg.classes},
        slide_mpp=plan.mpp,
        mpp_source="",
        output_size=(w, h),
        regions=len(plan.regions),
        regions_reused=result.regions_reused,
        classes=classes,
        tissue_area_mm2=round(tissue_px * px_mm2, 6),
        detected_tissue_area_mm2=round(level0_tissue * (plan.mpp / 1000.0) ** 2, 6),
        pixels_decoded=int(result.pixels_decoded),
        pixels_decoded_per_tissue_pixel=round(result.pixels_decoded / level0_tissue, 6)
        if level0_tissue
        else None,
        features=n_features,
        seconds={
            **{k: round(v, 3) for k, v in result.seconds.items()},
            "write": round(time.perf_counter() - t0, 3),
        },
        backend=identity.backend,
        roi=_roi_record(roi, plan.mpp),
        identity=identity,
        config=config.to_dict(),
        versions=_versions(),
    )
