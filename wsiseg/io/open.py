"""`open_slide`: pick a backend, validate the file, return a `SlideReader`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from wsiseg.errors import InputError, SlideOpenError
from wsiseg.io.backends import BACKENDS
from wsiseg.io.discovery import folder_series_file
from wsiseg.io.reader import BaseSlideReader, is_plausible_mpp
from wsiseg.io.tiffcheck import check_tiff_structure

__all__ = ["open_slide", "backend_order"]

log = logging.getLogger(__name__)
#: (slide, value) pairs whose implausible pixel size has been said.
_IMPLAUSIBLE_SAID: set[tuple[str, float]] = set()


def backend_order(path: Path, backend: str) -> list[str]:
    """Backends to try, in order, for ``path``."""
    if backend != "auto":
        if backend not in BACKENDS:
            known = ", ".join(["auto", *BACKENDS])
            raise SlideOpenError(f"unknown backend {backend!r} (known: {known})")
        return [backend]
    name = path.name.lower()
    if name.endswith((".ome.tif", ".ome.tiff")):
        return ["tiffslide", "openslide"]
    return ["openslide", "tiffslide"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _check_file(p: Path) -> None:
    """Raise SlideOpenError unless ``p`` is a readable, non-empty file or a DICOM folder."""
    if not p.exists():
        raise SlideOpenError(f"{p}: no such file")
    if p.is_dir():
        try:
            folder_series_file(p)
        except InputError as exc:
            raise SlideOpenError(str(exc)) from exc
        return
    if not p.is_file():
        raise SlideOpenError(f"{p}: not a regular file")
    if p.stat().st_size == 0:
        raise SlideOpenError(f"{p}: empty file (0 bytes)")
    with p.open("rb") as fh:
        fh.read(1)


def open_slide(
    path: str | os.PathLike[str], backend: str = "auto", mpp: float | None = None
) -> BaseSlideReader:
    """Open a whole-slide image.

    Parameters
    ----------
    path
        A slide file, or a folder holding one DICOM whole-slide series (a series
        in a folder with others is opened by any one of its files).
    backend
        ``"auto"`` (OpenSlide first, tiffslide where OpenSlide can't; OME-TIFF the
        other way round), ``"openslide"`` or ``"tiffslide"``.
    mpp
        Pixel size in µm/px used only where the slide's metadata is missing or
        implausible.

    Raises
    ------
    SlideOpenError
        Missing, empty, corrupt, truncated or unsupported files, with the reason.
    """
    p = Path(path)
    try:
        _check_file(p)
    except OSError as exc:  # e.g. a name too long, a folder that cannot be listed
        raise SlideOpenError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    try:
        check_tiff_structure(p)
    except OSError as exc:
        raise SlideOpenError(f"{p}: {exc}") from exc
    errors: list[str] = []
    for name in backend_order(p, backend):
        reader: BaseSlideReader | None = None
        try:
            reader = BACKENDS[name](p, mpp_override=mpp)
            if reader.level_count == 0:
                raise OSError("no image levels")
            reader.validate()
        except Exception as exc:  # noqa: BLE001 - any backend failure means "try the next"
            if reader is not None:
                reader.close()
            errors.append(f"{name}: {_first_line(exc)}")
            log.debug("%s: %s failed: %s", p, name, exc)
            continue
        log.debug("%s: opened with %s", p, name)
        mx = reader.mpp_reported[0]
        if mx is not None and not is_plausible_mpp(mx):
            said = (str(p), mx)
            # Info, not a warning: using the slide's pixel size then fails with an error
            # that names the value. Once per slide and process (a run opens a slide more
            # than once); not with --mpp, which replaces the metadata's value.
            if mpp is None and said not in _IMPLAUSIBLE_SAID:
                _IMPLAUSIBLE_SAID.add(said)
                log.info("%s: implausible pixel size %.4g µm/px in the metadata", p, mx)
        return reader
    raise SlideOpenError(f"{p}: unsupported, corrupt or truncated slide ({'; '.join(errors)})")
