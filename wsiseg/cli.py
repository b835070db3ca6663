"""The `wsiseg` command line. The only module that prints or configures logging."""

from __future__ import annotations

import gc
import json
import logging
import math
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from wsiseg import __version__
from wsiseg.errors import WsisegError

__all__ = ["main", "cli", "invoke"]

log = logging.getLogger("wsiseg")

F = TypeVar("F", bound=Callable[..., Any])

BACKEND_CHOICE = click.Choice(["auto", "openslide", "tiffslide"])


class _ShownFormatter(logging.Formatter):
    """Log lines with control characters in their message escaped (see `shown`); with
    ``plain``, warnings of wsiseg's own loggers as ``warning: <message>`` like the
    CLI's other warning lines."""

    def __init__(self, fmt: str, *, plain: bool) -> None:
        super().__init__(fmt)
        self.plain = plain

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = shown(record.message)
        ours = record.name == "wsiseg" or record.name.startswith("wsiseg.")
        if self.plain and ours and record.levelno == logging.WARNING:
            return f"warning: {record.message}"
        return super().formatMessage(record)


#: Set by Ctrl-C: from then on the cluster libraries' log records are dropped (at -v and
#: below), as their teardown can log errors of its own (distributed's ``sync`` cancel
#: callback raises NameError when the interrupt lands before its future exists).
_INTERRUPTED = threading.Event()
_QUIET = ("distributed", "dask", "tornado", "asyncio")


def _shown_record(record: logging.LogRecord) -> bool:
    """Handler filter below -vv: the cluster libraries' errors only, none after Ctrl-C."""
    if not record.name.startswith(_QUIET):
        return True
    return record.levelno >= logging.ERROR and not _INTERRUPTED.is_set()


def _on_sigint(signum: int, frame: Any) -> None:
    _INTERRUPTED.set()
    raise KeyboardInterrupt


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    fmt = "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=max(level, logging.DEBUG), format=fmt, force=True)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_ShownFormatter(fmt, plain=verbose == 0))
    # tifffile logs every malformed IFD it meets; our own error line says it once.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL if verbose < 2 else logging.DEBUG)
    if verbose < 2:
        # dask resets its loggers' levels when clusters close; filter at the handler.
        for handler in logging.getLogger().handlers:
            handler.addFilter(_shown_record)
    if verbose < 2:
        warnings.filterwarnings("ignore", module="tiffslide")


def _fail(message: str) -> None:
    click.echo(f"error: {shown(message)}", err=True)


def _warn(message: str) -> None:
    click.echo(f"warning: {shown(message)}", err=True)


class _Interrupted(Exception):
    """Ctrl-C in a command (click would print a blank line for a KeyboardInterrupt)."""


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsiseg")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Whole-slide segmentation with learned non-uniform downsampling."""
    _setup_logging(verbose)


# --------------------------------------------------------------------------- info
def _device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--device``: auto, cpu, cuda or cuda:N (checked before any work starts)."""
    if re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        return value
    raise click.BadParameter(f"{value!r}: give auto, cpu, cuda or cuda:N", param=param)


def _slide_info(path: Path, backend: str, mpp: float | None) -> dict[str, Any]:
    from wsiseg.io import open_slide

    with open_slide(path, backend=backend, mpp=mpp) as r:
        try:
            mpp_xy: list[float] | None = list(r.mpp)
            mpp_note = None
        except WsisegError as exc:
            mpp_xy, mpp_note = None, str(exc)
        return {
            "path": str(path),
            "backend": r.backend,
            "vendor": r.vendor,
            "levels": r.level_count,
            "dimensions": [list(d) for d in r.level_dimensions],
            "downsamples": [round(d, 4) for d in r.level_downsamples],
            "mpp": mpp_xy,
            "mpp_reported": list(r.mpp_reported),
            "mpp_problem": mpp_note,
            "objective_power": r.objective_power,
            "tile_size": list(r.tile_size) if r.tile_size else None,
        }


def _format_info(info: dict[str, Any]) -> str:
    mpp = info["mpp"]
    mpp_text = f"{mpp[0]:.4f} x {mpp[1]:.4f} µm/px" if mpp else f"unknown ({info['mpp_problem']})"
    tile = info["tile_size"]
    lines = [
        shown(info["path"]),
        f"  backend   {info['backend']}",
        f"  vendor    {shown(info['vendor'] or '-')}",
        f"  mpp       {mpp_text}",
        f"  objective {info['objective_power'] or '-'}",
        f"  tile      {f'{tile[0]} x {tile[1]}' if tile else 'untiled'}",
        "  level  width x height   downsample",
    ]
    for i, ((w, h), d) in enumerate(zip(info["dimensions"], info["downsamples"], strict=True)):
        lines.append(f"  {i:>5}  {w:>7} x {h:<8} {d:>10g}")
    return "\n".join(lines)


@cli.command()
@click.argument("slides", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--backend", type=BACKEND_CHOICE, default="auto", show_default=True)
@click.option(
    "--mpp", type=float, default=None, help="Pixel size (µm/px) where metadata lacks one."
)
@click.option(
    "-o", "--out", type=click.Path(path_type=Path), default=None, help="Also write the JSON here."
)
def info(
    slides: tuple[Path, ...], as_json: bool, backend: str, mpp: float | None, out: Path | None
) -> None:
    """Describe slides (files or folders, as `segment` finds them): levels, sizes, mpp."""
    paths = _expand_slides(slides)
    if not paths:
        raise WsisegError("no slides found in the given paths")
    results: list[dict[str, Any]] = []
    failed = 0
    for path in paths:
        try:
            results.append(_slide_info(path, backend, mpp))
        except WsisegError as exc:
            failed += 1
            _fail(str(exc))
            results.append({"path": str(path), "error": str(exc)})
    if as_json:
        click.echo(json.dumps(results, indent=2))
    elif any("error" not in r for r in results):
        click.echo("\n\n".join(_format_info(r) for r in results if "error" not in r))
    if out is not None:
        from wsiseg.fileops import atomic_path

        with atomic_path(out, overwrite=True) as tmp:
            tmp.write_text(json.dumps(results, indent=2) + "\n")
    if failed:
        sys.exit(1)


# --------------------------------------------------------------------------- convert
@cli.command()
@click.argument("slide", type=click.Path(path_type=Path))
@click.argument("out_path", required=False, type=click.Path(path_type=Path))
@click.option(
    "-o", "--out", type=click.Path(path_type=Path), default=None, help="Output .zarr folder."
)
@click.option("--backend", type=BACKEND_CHOICE, default="auto", show_default=True)
@click.option(
    "--mpp", type=float, default=None, help="Pixel size (µm/px) where metadata lacks one."
)
@click.option("--chunk", type=int, default=512, show_default=True, help="Chunk size in pixels.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def convert(
    slide: Path,
    out_path: Path | None,
    out: Path | None,
    backend: str,
    mpp: float | None,
    chunk: int,
    overwrite: bool,
) -> None:
    """Convert SLIDE to an OME-Zarr multiscale image (zarr v3, NGFF 0.5)."""
    from dask.diagnostics import ProgressBar

    from wsiseg.io import open_slide
    from wsiseg.io.omezarr import write_omezarr

    target = out or out_path
    if target is None or (out is not None and out_path is not None):
        raise click.UsageError("give the output folder once, as OUT_PATH or -o/--out")
    with open_slide(slide, backend=backend, mpp=mpp) as reader, ProgressBar(out=sys.stderr):
        if target.exists() and not overwrite:
            raise WsisegError(f"{target} already exists (use --overwrite to replace it)")
        write_omezarr(reader, target, chunk_px=chunk, overwrite=overwrite)
    click.echo(f"wrote {target}")


# --------------------------------------------------------------------------- thumbnail
@cli.command()
@click.argument("slide", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output PNG.")
@click.option("--thumb-mpp", type=float, default=16.0, show_default=True, help="Thumbnail µm/px.")
@click.option("--backend", type=BACKEND_CHOICE, default="auto", show_default=True)
@click.option(
    "--mpp", type=float, default=None, help="Pixel size (µm/px) where metadata lacks one."
)
def thumbnail(slide: Path, out: Path, thumb_mpp: float, backend: str, mpp: float | None) -> None:
    """Save a thumbnail of SLIDE at --thumb-mpp µm/px."""
    from PIL import Image

    from wsiseg.fileops import atomic_path
    from wsiseg.io import open_slide

    with open_slide(slide, backend=backend, mpp=mpp) as reader:
        img = reader.thumbnail(thumb_mpp)
    with atomic_path(out, overwrite=True) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    click.echo(f"wrote {out} ({img.shape[1]}x{img.shape[0]})")


# --------------------------------------------------------------------------- synth
@cli.command()
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--name", default="synthetic", show_default=True, help="Slide name (file stem).")
@click.option("--width", type=int, default=8192, show_default=True, help="Level-0 width (px).")
@click.option("--height", type=int, default=6144, show_default=True, help="Level-0 height (px).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mpp", type=click.Choice(["0.5", "0.25"]), default="0.5", show_default=True)
@click.option(
    "--tile", type=int, default=256, show_default=True, help="Tile size (multiple of 16)."
)
@click.option("--level-factor", type=click.Choice(["2", "4"]), default="4", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
def synth(
    out: Path,
    name: str,
    width: int,
    height: int,
    seed: int,
    mpp: str,
    tile: int,
    level_factor: str,
    overwrite: bool,
) -> None:
    """Write a synthetic prostate-biopsy slide NAME.tiff and its label mask NAME_mask.tiff."""
    from tqdm import tqdm

    from wsiseg.synthetic import SynthSpec, write_synthetic_slide

    try:
        spec = SynthSpec(
            width_px=width,
            height_px=height,
            seed=seed,
            mpp=float(mpp),
            tile_px=tile,
            level_factor=int(level_factor),
        )
    except ValueError as exc:
        raise WsisegError(str(exc)) from exc
    for suffix in (".tiff", "_mask.tiff"):
        if (out / f"{name}{suffix}").exists() and not overwrite:
            raise WsisegError(f"{out / (name + suffix)} already exists (use --overwrite)")
    bar = tqdm(total=0, unit="tile", desc=f"synth {name}", file=sys.stderr, leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    paths = write_synthetic_slide(out, name, spec, progress=progress)
    bar.close()
    click.echo(f"wrote {paths.image}\nwrote {paths.mask}")


# --------------------------------------------------------------------------- train
def _sources(  # type: ignore[no-untyped-def]
    data: Path,
    data_mpp: float | None,
    binary: bool,
    class_names: tuple[str, ...],
    split: str | None = None,
    target: str | None = None,
):
    from wsiseg.train.datasets import discover_sources

    return discover_sources(
        data,
        data_mpp=data_mpp,
        binary_labels=binary,
        class_names=class_names,
        split=split,
        target=target,
    )


_SPLIT_HELP = (
    "Official split of a GlaS (glas-full) or MoNuSeg folder: train, test (GlaS test A), "
    "testB or all"
)
_TARGET_HELP = (
    "Labels of a GlaS/MoNuSeg folder: binary (gland / nucleus) or three-class "
    "(GlaS: not gland, benign gland, malignant gland); binary also means --binary-labels"
)


@cli.command()
@click.option(
    "--config",
    "config",
    default="default",
    show_default=True,
    help="Model YAML (path or packaged name).",
)
@click.option(
    "--sampler",
    type=click.Choice(["learned", "uniform", "tiled"]),
    default=None,
    help="Override the config's sampler.",
)
@click.option(
    "--data", type=click.Path(path_type=Path), required=True, help="Training data folder."
)
@click.option(
    "--val-data", type=click.Path(path_type=Path), default=None, help="Validation data folder."
)
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Run folder.")
@click.option("--steps", type=int, default=None, help="Override the number of training steps.")
@click.option("--seed", type=int, default=None, help="Override the seed.")
@click.option(
    "--device", default="auto", show_default=True, callback=_device, help="auto, cpu or cuda."
)
@click.option(
    "--data-mpp", type=float, default=None, help="Pixel size of image tiles without metadata."
)
@click.option("--binary-labels", is_flag=True, help="Instance masks: object vs background.")
@click.option(
    "--split",
    type=click.Choice(["train", "test", "testB", "all"]),
    default=None,
    help=_SPLIT_HELP + " [default: train].",
)
@click.option(
    "--target",
    type=click.Choice(["binary", "three-class"]),
    default=None,
    help=_TARGET_HELP + " [default: binary].",
)
@click.option(
    "--val-fraction",
    type=float,
    default=0.2,
    show_default=True,
    help="Without --val-data, on a GlaS/MoNuSeg folder with --split train: this share of "
    "the training images, whole patients, is held out for validation (0: validate on "
    "training regions).",
)
@click.option(
    "--val-seed", type=int, default=0, show_default=True, help="Seed of the validation split."
)
@click.option("--resume", is_flag=True, help="Continue the run in --out.")
def train(
    config: str,
    sampler: str | None,
    data: Path,
    val_data: Path | None,
    out: Path,
    steps: int | None,
    seed: int | None,
    device: str,
    data_mpp: float | None,
    binary_labels: bool,
    split: str | None,
    target: str | None,
    val_fraction: float,
    val_seed: int,
    resume: bool,
) -> None:
    """Train a learned, uniform or tiled model on labeled slides."""
    from tqdm import tqdm

    from wsiseg.models.config import ModelConfig, load_config_file
    from wsiseg.train.layouts import read_layout, split_by_patient
    from wsiseg.train.loop import StepInfo, TrainConfig, check_out_dir
    from wsiseg.train.loop import train as run_training

    check_out_dir(out, resume=resume)  # before the data is read
    raw = load_config_file(config)
    model_cfg = ModelConfig.from_dict(raw.get("model", {}))
    if sampler:
        model_cfg = model_cfg.replace(sampler=sampler)
    train_raw = dict(raw.get("train", {}))
    if steps is not None:
        train_raw["steps"] = steps
    if seed is not None:
        train_raw["seed"] = seed
    train_cfg = TrainConfig.from_dict(train_raw)
    layout = read_layout(data, data_mpp)
    summary: dict[str, Any] = {
        "data": str(data),
        "val_data": str(val_data) if val_data else None,
        "data_mpp": data_mpp,
    }
    if layout is not None:  # the data set says what the classes are
        split, target = split or "train", target or "binary"
        classes = layout.classes(target)
        if "classes" in raw.get("model", {}) and model_cfg.class_names != tuple(
            n for n, _ in classes
        ):
            raise WsisegError(
                f"the config's classes ({', '.join(model_cfg.class_names)}) are not those of "
                f"--target {target} ({', '.join(n for n, _ in classes)})"
            )
        model_cfg = model_cfg.replace(classes=classes)
        summary.update(layout=layout.kind, split=split, target=target)
        if split != "train":
            click.echo(
                f"warning: training on split {split!r}, which holds test images: scores on "
                "them will not be test scores",
                err=True,
            )
    train_src = _sources(data, data_mpp, binary_labels, model_cfg.class_names, split, target)
    val_src = (
        _sources(val_data, data_mpp, binary_labels, model_cfg.class_names, None, target)
        if val_data
        else None
    )
    if val_src is None and layout is not None and split == "train" and val_fraction > 0:
        train_src, val_src = split_by_patient(train_src, val_fraction, val_seed)
        patients = sorted({s.group for s in val_src})
        summary.update(val_fraction=val_fraction, val_seed=val_seed, val_patients=patients)
        click.echo(
            f"validation: {len(val_src)} of {len(train_src) + len(val_src)} training images "
            f"({len(patients)} patient{'s' if len(patients) != 1 else ''}) held out "
            f"(--val-fraction {val_fraction}, "
            f"--val-seed {val_seed})"
        )
    if val_src is None:
        click.echo(
            "validation: none held out; the best checkpoint is chosen on the training "
            "images themselves (--val-data, or --split train of a GlaS/MoNuSeg folder, "
            "holds some out)"
        )
    bar = tqdm(
        total=train_cfg.steps, desc=f"train {model_cfg.sampler}", unit="step", file=sys.stderr
    )

    def on_step(info: StepInfo) -> None:
        bar.n = info.step
        post = {"loss": f"{info.loss:.3f}"}
        if info.val_miou is not None:  # on the training images when none is held out
            post["val_mIoU" if val_src is not None else "train_mIoU"] = f"{info.val_miou:.3f}"
        bar.set_postfix(post, refresh=True)

    best = run_training(
        model_cfg,
        train_cfg,
        train_src,
        out,
        val_sources=val_src,
        device=device,
        resume=resume,
        on_step=on_step,
        data_summary=summary,
    )
    bar.close()
    click.echo(f"best checkpoint: {best}")


@cli.command()
@click.option(
    "--model",
    "model",
    required=True,
    help="Checkpoint (.safetensors) or a bundled model: 'default' (synthetic demo) or "
    "'glas' (GlaS colon glands, research use).",
)
@click.option("--baseline", "baselines", multiple=True, help="Baseline checkpoint(s) to compare.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Labeled data folder.")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option(
    "--device", default="auto", show_default=True, callback=_device, help="auto, cpu or cuda."
)
@click.option(
    "--data-mpp", type=float, default=None, help="Pixel size of image tiles without metadata."
)
@click.option("--binary-labels", is_flag=True, help="Instance masks: object vs background.")
@click.option(
    "--split",
    type=click.Choice(["train", "test", "testB", "all"]),
    default=None,
    help=_SPLIT_HELP + " [default: test].",
)
@click.option(
    "--target",
    type=click.Choice(["binary", "three-class"]),
    default=None,
    help=_TARGET_HELP + " [default: the one matching the model's classes].",
)
def evaluate(
    model: str,
    baselines: tuple[str, ...],
    data: Path,
    out: Path,
    device: str,
    data_mpp: float | None,
    binary_labels: bool,
    split: str | None,
    target: str | None,
) -> None:
    """mIoU, per-class IoU and Dice, with bootstrap 95% intervals over slides or images."""
    from tqdm import tqdm

    from wsiseg.fileops import atomic_path
    from wsiseg.models.loading import load_model
    from wsiseg.train.evaluate import (
        confusion_per_image,
        confusion_per_source,
        format_markdown,
        seen_in_training,
        summarise,
    )
    from wsiseg.train.layouts import read_layout, target_for_classes

    models = [load_model(m, device=device) for m in (model, *baselines)]
    names = models[0].config.class_names
    for m in models[1:]:
        if m.config.class_names != names:
            raise WsisegError("the baselines' classes differ from the model's")
    layout = read_layout(data, data_mpp)
    if layout is not None:
        split = split or "test"
        target = target or target_for_classes(layout, names)
        if tuple(n for n, _ in layout.classes(target)) != names:
            raise WsisegError(
                f"the model's classes ({', '.join(names)}) are not those of --target {target}"
            )
    sources = _sources(data, data_mpp, binary_labels, names, split, target)
    # one label per model, as eval.json names it
    labels = [
        f"{net.config.sampler} ({Path(spec).stem})"
        for spec, net in zip((model, *baselines), models, strict=True)
    ]
    seen: dict[str, list[str]] = {}
    for label, net in zip(labels, models, strict=True):
        record = getattr(net, "checkpoint_meta", {}).get("data")
        if isinstance(record, dict):
            if found := seen_in_training(record, [s.name for s in sources], layout):
                seen[label] = found
                click.echo(
                    f"warning: {len(found)} of the {len(sources)} images "
                    f"{'was' if len(found) == 1 else 'were'} used to train or select "
                    f"{label}: its scores here are not test scores",
                    err=True,
                )
    # A labelled image folder (GlaS, MoNuSeg layout) is scored on every pixel of every
    # image once, as the real-tissue benchmark scores it; slides with label GeoJSON on
    # the tissue regions that touch a label.
    whole = layout is not None
    unit = "image" if whole else "slide"
    per_source = {}
    for label, net in zip(labels, models, strict=True):
        what = "image" if whole else "region"
        bar = tqdm(desc=f"evaluate {label}", unit=what, file=sys.stderr, leave=False)
        if whole:
            bar.total = len(sources)

            def done_image(i: int, pred: Any, truth: Any, bar: Any = bar) -> None:
                bar.update(1)

            per_source[label] = confusion_per_image(net, sources, on_image=done_image)
        else:

            def tick(done: int, total: int, bar: Any = bar) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            per_source[label] = confusion_per_source(net, sources, on_region=tick)
        bar.close()
    result = summarise([s.name for s in sources], names, per_source, unit=unit)
    result["data"] = {
        "folder": str(Path(data).resolve()),
        "layout": layout.kind if layout is not None else None,
        "split": split if layout is not None else None,
        "target": target if layout is not None else None,
        "mpp": {s.name: s.mpp for s in sources},
        "seen_in_training": seen,
    }
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "eval.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    md = format_markdown(result)
    with atomic_path(out / "eval.md", overwrite=True) as tmp:
        tmp.write_text(md)
    click.echo(md)


# --------------------------------------------------------------------------- segment
def _expand_slides(inputs: tuple[Path, ...]) -> list[Path]:
    """Files as given; folders searched recursively (see `wsiseg.io.discovery`)."""
    from wsiseg.io.discovery import discover_slides

    return discover_slides(inputs)


def _positive_mpp(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A pixel size option: None, or a finite number > 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value:g} is not a finite number > 0", ctx, param)
    return value


def _positive_int(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise click.BadParameter(f"{value} is not >= 1", ctx, param)
    return value


def _shard(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    from wsiseg.tiling import parse_shard

    if value is None:
        return None
    try:
        return parse_shard(value)
    except WsisegError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1], ctx, param) from exc


def shown(text: object) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``), for one-line output."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


class _Bars:
    """tqdm bars on stderr for `wsiseg.pipeline.batch.run_batch` (on a terminal only: a
    log file gets no cursor moves); errors and warnings printed as they come, through
    tqdm so that they start their own line."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.slides: Any = None
        self.regions: Any = None

    def _bar(self, **kwargs: Any) -> Any:
        return self._tqdm(file=sys.stderr, disable=None, **kwargs)  # None: off unless a tty

    def _say(self, kind: str, message: str) -> None:
        self._tqdm.write(f"{kind}: {shown(message)}", file=sys.stderr)

    def slide_started(self, slide: Path, index: int, total: int) -> None:
        if self.slides is None:
            self.slides = self._bar(total=total, desc="slides", unit="slide")
        self.slides.set_postfix_str(shown(slide.name))
        self.regions = self._bar(desc=f"  {shown(slide.name)}", unit="region", leave=False)

    def region_done(self, done: int, total: int) -> None:
        if self.regions is not None:
            self.regions.total = total
            self.regions.n = done
            self.regions.refresh()

    def slide_waiting(self, slide: Path) -> None:
        log.warning("%s: waiting for another run that holds its output folder", shown(slide))

    def slide_finished(self, outcome: Any) -> None:
        if self.regions is not None:
            self.regions.close()
            self.regions = None
        adm = outcome.admission
        if adm is not None and adm.admitted:  # a refused slide: its error line alone
            if adm.forced:
                msg = f"{outcome.slide}: segmented with --force although refused: {adm.reason}"
                self._say("warning", msg)
            for text in adm.warnings:
                self._say("warning", f"{outcome.slide}: {text}")
        if outcome.status in ("failed", "refused"):
            msg = outcome.message
            self._say("error", msg if outcome.slide in msg else f"{outcome.slide}: {msg}")
        elif outcome.status == "no tissue":
            log.warning("%s: no tissue found; nothing written", shown(outcome.slide))
        if self.slides is not None:
            self.slides.update(1)

    def close(self) -> None:
        for bar in (self.regions, self.slides):
            if bar is not None:
                bar.close()


@cli.command()
@click.argument("slides", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option(
    "--model",
    default="default",
    show_default=True,
    help="A bundled model ('default': synthetic demo; 'glas': GlaS colon glands, research "
    "use) or a checkpoint (.safetensors).",
)
@click.option(
    "--device", default="auto", show_default=True, callback=_device, help="auto, cpu or cuda."
)
@click.option(
    "--workers",
    type=int,
    default=None,
    callback=_positive_int,
    help="local: worker processes (default: cores; at most what cores and memory hold); "
    "SLURM: number of jobs.",
)
@click.option(
    "--cluster",
    default="threads",
    show_default=True,
    help="'threads' (worker threads in this process: less memory, quicker start), 'local' "
    "(worker processes: a crashing slide library takes down only a worker), "
    "tcp://host:port, a packaged profile (slurm-cpu, slurm-gpu) or a cluster YAML.",
)
@click.option(
    "--mpp",
    type=float,
    default=None,
    callback=_positive_mpp,
    help="Pixel size (µm/px) where metadata lacks one.",
)
@click.option("--backend", type=BACKEND_CHOICE, default="auto", show_default=True)
@click.option(
    "--roi", type=click.Path(path_type=Path), default=None, help="GeoJSON of regions to segment."
)
@click.option(
    "--shard",
    default=None,
    callback=_shard,
    help="i/N: take every N-th slide from the i-th (sbatch --array).",
)
@click.option(
    "--output-mpp",
    type=float,
    default=None,
    callback=_positive_mpp,
    help="Label output µm/px (default 4x the model's; the error lists allowed values).",
)
@click.option("--overwrite", is_flag=True, help="Replace outputs of other inputs or settings.")
@click.option(
    "--force",
    is_flag=True,
    help="Segment slides a check refuses (not brightfield, pixels too coarse for the "
    "model); the override is recorded.",
)
def segment(
    slides: tuple[Path, ...],
    out: Path,
    model: str,
    device: str,
    workers: int | None,
    cluster: str,
    mpp: float | None,
    backend: str,
    roi: Path | None,
    shard: tuple[int, int] | None,
    output_mpp: float | None,
    overwrite: bool,
    force: bool,
) -> None:
    """Segment slides (files or folders) into masks, QuPath GeoJSON and summaries."""
    from wsiseg.pipeline.memory import fixed_mmap_threshold

    fixed_mmap_threshold()  # before the regions' allocations: memory stays flat
    from wsiseg.pipeline.batch import BatchSettings, run_batch
    from wsiseg.pipeline.config import SegmentConfig

    settings = BatchSettings(
        model=model,
        config=SegmentConfig(output_mpp=output_mpp, device=device),
        cluster=cluster,
        workers=workers,
        backend=backend,
        mpp=mpp,
        roi=roi,
        shard=shard,
        overwrite=overwrite,
        force=force,
    )
    bars = _Bars()
    try:
        record = run_batch(list(slides), out, settings, progress=bars)
    finally:
        bars.close()
    for s in record.slides:
        message = s.message.removeprefix(f"{s.slide}: ").removeprefix(f"{s.status}: ")
        where = f"  -> {shown(s.out)}" if s.out else f"  ({shown(message)})"
        click.echo(f"{s.status:>9}  {shown(s.slide)}{where}")
    if any(s.status in ("failed", "refused") for s in record.slides):
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning known errors into one line and exit code 1.

    Without ``argv`` (the console script: the process ends with the command) the
    garbage collector's objects are frozen on the way out, so the interpreter's exit
    does not traverse torch's and the pipeline's millions of objects (about 1 s).
    """
    try:
        _run(argv)
    finally:
        if argv is None:
            gc.freeze()


def _run(argv: list[str] | None) -> None:
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not if ignored
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        cli.main(args=argv, prog_name="wsiseg", standalone_mode=False)
    except click.exceptions.Abort:  # click has ended the "^C" line
        _fail("interrupted")
        sys.exit(130)
    except _Interrupted:
        if sys.stderr.isatty():
            click.echo(err=True)  # ends the line of the terminal's "^C"; not in a log
        _fail("interrupted")
        sys.exit(130)
    except click.BadParameter as exc:  # a bad option value: one line
        _fail(exc.format_message())
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except WsisegError as exc:
        _fail(str(exc))
        sys.exit(1)
    except OSError as exc:  # unwritable output, full disk, a file in the way...
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or exc}" if exc.strerror else str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        _fail("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()


def invoke(args: list[str], *, echo: bool = True) -> None:
    """Run a ``wsiseg`` command from Python (pipelines); a failing command raises SystemExit.

    With ``echo`` the command line is printed first, as a shell would show it.
    """
    if echo:
        print(f"$ wsiseg {' '.join(args)}", flush=True)
    try:
        main(args)
    except SystemExit as exc:
        if exc.code:
            raise
