"""The `wsiseg` command line. The only module that prints or configures logging."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from wsiseg import __version__
from wsiseg.errors import WsisegError

__all__ = ["main", "cli"]

log = logging.getLogger("wsiseg")

F = TypeVar("F", bound=Callable[..., Any])

BACKEND_CHOICE = click.Choice(["auto", "openslide", "tiffslide"])


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s", force=True
    )
    # tifffile logs every malformed IFD it meets; our own error line says it once.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL if verbose < 2 else logging.DEBUG)
    if verbose < 2:
        warnings.filterwarnings("ignore", module="tiffslide")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wsiseg")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Whole-slide segmentation with learned non-uniform downsampling."""
    _setup_logging(verbose)


# --------------------------------------------------------------------------- info
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
        f"{info['path']}",
        f"  backend   {info['backend']}",
        f"  vendor    {info['vendor'] or '-'}",
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
    """Describe slides: backend, vendor, levels, sizes, mpp, tile size."""
    results: list[dict[str, Any]] = []
    failed = 0
    for path in slides:
        try:
            results.append(_slide_info(path, backend, mpp))
        except WsisegError as exc:
            failed += 1
            _fail(str(exc))
            results.append({"path": str(path), "error": str(exc)})
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        click.echo("\n\n".join(_format_info(r) for r in results if "error" not in r))
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")
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

    from wsiseg.io import open_slide
    from wsiseg.io.fileops import atomic_path

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

    from wsiseg.io.synthetic import SynthSpec, write_synthetic_slide

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


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning known errors into one line and exit code 1."""
    try:
        cli.main(args=argv, prog_name="wsiseg", standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (WsisegError, FileExistsError) as exc:
        _fail(str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        _fail("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
