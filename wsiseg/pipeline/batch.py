"""The batch of `wsiseg segment`: slides in, outputs, ``run.json`` and ``report.html`` out.

`run_batch` is the one entry point (the CLI, the benchmarks and the tests call it):

1. the model is verified once (`checked_model`), ``--output-mpp`` checked against its
   geometry and ``--roi`` read, all before any worker starts;
2. slides are discovered in the inputs (`wsiseg.io.discovery`: folders recursively,
   DICOM series by SeriesInstanceUID) and sharded (``--shard i/N`` takes every N-th of
   the sorted batch); output names are assigned over the whole batch, so every shard
   agrees on them;
3. each slide runs under the lock of its output folder (`slide_lock`): a slide held by
   another run is put back and taken up again after the others (then waiting for
   the lock), so two runs never write one folder; inside, `segment_slide` decides
   skip / refuse / redo from the recorded `ResumeIdentity`, then checks the slide
   against the model (`wsiseg.pipeline.admission`: refused unless ``force``);
4. the run's record goes to ``run.json`` (or ``run-shard-i-of-N.json``) and is merged,
   under the lock of the run files, into ``OUT/run.json`` with every earlier record
   (keyed by output name; a refusal never replaces a slide's done record), and
   ``OUT/report.html`` is rendered from the merged record.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from distributed import Client
from shapely.geometry.base import BaseGeometry

from wsiseg.errors import InputError
from wsiseg.export.report import is_own_report, write_report
from wsiseg.fileops import atomic_path, remove_stale_temporaries
from wsiseg.io.discovery import discover_slides
from wsiseg.io.names import assign_output_names
from wsiseg.models.loading import resolve_device
from wsiseg.pipeline.cluster import check_workers, is_local, open_client
from wsiseg.pipeline.config import SegmentConfig
from wsiseg.pipeline.locks import LockBusy, file_lock, lock_path
from wsiseg.pipeline.outputs import RunRecord, SlideRecord, SlideSummary, merge_slide_records
from wsiseg.pipeline.roi import load_roi
from wsiseg.pipeline.run import (
    OUTPUT_FILES,
    ModelInfo,
    SlideCheck,
    SlideOutcome,
    checked_model,
    resolve_output_mpp,
    segment_slide,
)
from wsiseg.tiling import check_output_mpp, parse_shard, take_shard

__all__ = [
    "BatchProgress",
    "BatchSettings",
    "RUN_FILE",
    "merge_run_file",
    "prepare_model",
    "run_batch",
    "slide_lock",
]

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
REPORT_FILE = "report.html"
_RUN_LOCK = "run-files"


@dataclass(frozen=True)
class BatchSettings:
    """Everything a batch needs besides its inputs and output folder.

    ``workers`` are local worker threads or processes (or SLURM jobs); ``shard`` is ``(i, N)``;
    ``check`` is called with each opened slide before its regions run (extra checks:
    raise a `WsisegError` to fail the slide); ``force`` segments slides the admission
    checks refuse (recorded as ``forced`` with the refusals overridden).
    """

    model: str = "default"
    config: SegmentConfig = field(default_factory=SegmentConfig)
    cluster: str = "threads"
    workers: int | None = None
    backend: str = "auto"
    mpp: float | None = None
    roi: Path | None = None
    shard: tuple[int, int] | None = None
    overwrite: bool = False
    check: SlideCheck | None = None
    force: bool = False


class BatchProgress(Protocol):
    """What a batch tells its caller as it goes (the CLI draws bars from it)."""

    def slide_started(self, slide: Path, index: int, total: int) -> None:
        """``slide`` (the ``index``-th of ``total``) starts."""

    def region_done(self, done: int, total: int) -> None:
        """``done`` of the current slide's ``total`` regions are finished."""

    def slide_finished(self, outcome: SlideOutcome) -> None:
        """A slide ended (any status)."""

    def slide_waiting(self, slide: Path) -> None:
        """Another run holds ``slide``'s folder; the batch waits for it."""


class _Silent:
    def slide_started(self, slide: Path, index: int, total: int) -> None:
        pass

    def region_done(self, done: int, total: int) -> None:
        pass

    def slide_finished(self, outcome: SlideOutcome) -> None:
        pass

    def slide_waiting(self, slide: Path) -> None:
        pass


# -- locks and run files -----------------------------------------------------------------


@contextmanager
def slide_lock(out: Path, name: str, *, wait: bool) -> Iterator[None]:
    """The lock of ``OUT/<name>/`` (``OUT/.<name>.lock``); `LockBusy` if held and not ``wait``."""
    with file_lock(lock_path(out, name), wait=wait):
        yield


def _read_run(path: Path) -> RunRecord | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s unreadable (%s); starting it anew", path, exc)
        return None
    return RunRecord.from_json(data) if isinstance(data, dict) else None


#: The keys a run record has (older versions wrote some of them, never others).
_RUN_KEYS = frozenset(RunRecord("", "", {}, {}, "", None).to_json())


def _is_run_record(data: object) -> bool:
    """Whether ``data`` (a parsed ``run.json``) is one wsiseg wrote: its keys and no
    others, a model and a list of slide lines."""
    if not isinstance(data, dict) or not set(data) <= _RUN_KEYS:
        return False
    slides = data.get("slides")
    return (
        {"model", "model_sha256", "slides"} <= set(data)
        and isinstance(slides, list)
        and all(isinstance(s, dict) and {"slide", "status"} <= set(s) for s in slides)
    )


_KEEP = "move it away or choose another -o (a run never replaces files it did not write)"


def check_run_files(out: Path, shard: tuple[int, int] | None = None) -> None:
    """Refuse, before any slide runs, when the run files the batch rewrites in ``out``
    (``run.json``, ``report.html``, a shard's record) exist and are not wsiseg's: they
    are the user's own files, which a run never replaces.

    Raises
    ------
    InputError
        Naming the file.
    """
    names = [RUN_FILE] + ([shard_file(*shard)] if shard and shard[1] > 1 else [])
    for name in names:
        path = out / name
        if not path.exists():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if not _is_run_record(data):
            raise InputError(f"{path}: exists and is not a wsiseg run record; {_KEEP}")
    report = out / REPORT_FILE
    if report.exists() and not is_own_report(report):
        raise InputError(
            f"{report}: exists and is not a wsiseg report as wsiseg wrote it (another file, "
            f"or one edited since); {_KEEP}"
        )


def shard_file(i: int, n: int) -> str:
    """The record of shard ``i`` of ``n`` in ``OUT``."""
    return f"run-shard-{i}-of-{n}.json"


def _write_json(path: Path, record: RunRecord) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(record.to_json(), indent=2) + "\n")


def _summary_of(record: SlideRecord) -> SlideSummary | None:
    if record.out is None or record.status not in ("done", "skipped"):
        return None
    try:
        data = json.loads((Path(record.out) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return SlideSummary.from_json(data) if isinstance(data, dict) else None


def merge_run_file(out: Path, record: RunRecord) -> RunRecord:
    """Merge ``record`` into ``OUT/run.json`` and rewrite ``OUT/report.html``; the merged record.

    Under the lock of the run files, so concurrent runs and shards never lose each
    other's records. Run-level settings are the newest run's; slides are keyed by
    output name (see `merge_slide_records`).
    """
    with file_lock(lock_path(out, _RUN_LOCK)):
        # a run killed while writing these left hidden temporaries of them behind
        remove_stale_temporaries(out, names=(RUN_FILE, REPORT_FILE))
        old = _read_run(out / RUN_FILE)
        slides = merge_slide_records(list(old.slides) if old else [], list(record.slides))
        # the merged file describes OUT, not one shard
        merged = dataclasses.replace(record, slides=tuple(slides), shard=None)
        _write_json(out / RUN_FILE, merged)
        write_report(out / REPORT_FILE, merged, [(s, _summary_of(s)) for s in merged.slides])
    return merged


# -- the batch ------------------------------------------------------------------------


def prepare_model(settings: BatchSettings) -> tuple[ModelInfo, float]:
    """Verify the model once and resolve the output pixel size against its geometry
    (a value within a relative 1e-6 of an allowed one becomes that one).

    Raises
    ------
    WsisegError
        A missing or bad model, or an ``--output-mpp`` its regions cannot tile.
    """
    info = checked_model(settings.model)
    output_mpp = resolve_output_mpp(info, settings.config)
    cfg = info.config
    output_mpp = check_output_mpp(
        output_mpp, cfg.task_mpp, cfg.region_px, settings.config.margin_px
    )
    return info, output_mpp


def _remove_if_empty(folder: Path) -> None:
    """Remove a slide folder that a failed or interrupted run created and left empty."""
    try:
        folder.rmdir()
    except OSError:
        pass  # missing, or not empty: leave it


def _record(outcome: SlideOutcome, name: str, info: ModelInfo, output_mpp: float) -> SlideRecord:
    adm, summary = outcome.admission, outcome.summary
    if adm is not None:
        refusals, warnings, forced = tuple(adm.refusals), tuple(adm.warnings), adm.forced
    elif summary is not None:  # skipped: as recorded when it was done
        refusals, warnings, forced = summary.refusals, summary.warnings, summary.forced
    else:
        refusals, warnings, forced = (), (), False
    return SlideRecord(
        slide=outcome.slide,
        status=outcome.status,
        message=outcome.message,
        out=str(outcome.out_dir) if outcome.out_dir else None,
        name=name,
        refusals=refusals,
        warnings=warnings,
        forced=forced,
        # what the results came from: a skipped slide's as recorded when it was done
        model=summary.model if summary else str(info.path),
        model_sha256=summary.model_sha256 if summary else info.sha256,
        notice=summary.notice if summary else info.notice,
        output_mpp=summary.output_mpp if summary else output_mpp,
        slide_mpp=summary.slide_mpp if summary else (adm.slide_mpp if adm else None),
    )


def run_batch(
    inputs: Sequence[Path],
    out: Path,
    settings: BatchSettings,
    *,
    progress: BatchProgress | None = None,
    client: Client | None = None,
) -> RunRecord:
    """Segment every slide found in ``inputs`` into ``out``; the run's own record.

    ``client``: an open dask client to use (else one is opened for ``settings.cluster``
    and closed at the end). Slides that fail or are refused are in the record with
    their message; they do not end the batch.

    Raises
    ------
    WsisegError
        Before any slide runs: bad model, output pixel size, ROI, workers, shard,
        no slides found, or ``out`` not a folder.
    """
    t_run = time.perf_counter()
    progress = progress or _Silent()
    config = settings.config
    shard = settings.shard or (0, 1)
    parse_shard(f"{shard[0]}/{shard[1]}")  # the same checks as the CLI's --shard
    check_workers(settings.cluster, settings.workers)
    info, output_mpp = prepare_model(settings)
    if config.output_mpp is not None:  # the allowed value it was snapped to
        config = replace(config, output_mpp=output_mpp)
        settings = replace(settings, config=config)
    if is_local(settings.cluster):
        resolve_device(config.device)  # remote workers may have GPUs the driver lacks
    roi: BaseGeometry | None = load_roi(settings.roi) if settings.roi is not None else None
    every = [str(p) for p in discover_slides(list(inputs))]
    paths = [Path(p) for p in take_shard(every, shard)]
    if not paths:
        raise InputError("no slides found in the given paths")
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    check_run_files(out, settings.shard)
    # Names over the whole batch (sorted, as shards take it): every shard agrees on them.
    batch = take_shard(every, (0, 1))
    batch_names = assign_output_names([Path(p) for p in batch], out, OUTPUT_FILES)
    name_of = dict(zip(batch, batch_names, strict=True))
    queue = [(p, name_of[str(p)]) for p in paths]
    records: dict[str, SlideRecord] = {}
    if client is None:
        with open_client(settings.cluster, settings.workers) as own:
            _slide_loop(queue, out, info, output_mpp, settings, own, roi, progress, records)
    else:
        _slide_loop(queue, out, info, output_mpp, settings, client, roi, progress, records)
    record = RunRecord(
        model=str(info.path),
        model_sha256=info.sha256,
        model_config=info.config.to_dict(),
        segment_config=config.to_dict(),
        cluster=settings.cluster,
        workers=settings.workers,
        slides=tuple(records[name] for _, name in queue),
        wall_seconds=round(time.perf_counter() - t_run, 3),
        output_mpp=output_mpp,
        shard=settings.shard,
        notice=info.notice,
    )
    if settings.shard is not None:
        i, n = settings.shard
        _write_json(out / shard_file(i, n), record)
    merge_run_file(out, record)
    return record


def _slide_loop(
    queue: list[tuple[Path, str]],
    out: Path,
    info: ModelInfo,
    output_mpp: float,
    settings: BatchSettings,
    client: Client,
    roi: BaseGeometry | None,
    progress: BatchProgress,
    records: dict[str, SlideRecord],
) -> None:
    """Run the slides; one whose folder another run holds is retried after the rest."""
    total = len(queue)
    pending = list(queue)
    deferred: list[tuple[Path, str]] = []
    index = 0
    while pending or deferred:
        waiting = not pending
        path, name = pending.pop(0) if pending else deferred.pop(0)
        try:
            if waiting:
                progress.slide_waiting(path)
            with slide_lock(out, name, wait=waiting):
                index += 1
                progress.slide_started(path, index, total)
                outcome = _one_slide(path, name, out, info, settings, client, roi, progress)
        except LockBusy:
            log.info("%s: %s is in use by another run; coming back to it", path, out / name)
            deferred.append((path, name))
            continue
        records[name] = _record(outcome, name, info, output_mpp)
        progress.slide_finished(outcome)


def _one_slide(
    path: Path,
    name: str,
    out: Path,
    info: ModelInfo,
    settings: BatchSettings,
    client: Client,
    roi: BaseGeometry | None,
    progress: BatchProgress,
) -> SlideOutcome:
    existed = (out / name).exists()
    try:
        outcome = segment_slide(
            path,
            out,
            info,
            settings.config,
            client,
            backend=settings.backend,
            mpp=settings.mpp,
            roi=roi,
            overwrite=settings.overwrite,
            on_region=progress.region_done,
            name=name,
            check=settings.check,
            force=settings.force,
        )
    except Exception as exc:  # noqa: BLE001 - one slide's bug must not end the batch
        log.debug("%s: unexpected error", path, exc_info=True)
        outcome = SlideOutcome(str(path), "failed", None, f"{type(exc).__name__}: {exc}")
    except BaseException:  # Ctrl-C: no empty folder left behind
        if not existed:
            _remove_if_empty(out / name)
        raise
    if outcome.status in ("failed", "refused") and not existed:
        _remove_if_empty(out / name)
    return outcome
