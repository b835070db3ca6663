"""Output folder names for slides: safe, deterministic, and never another slide's.

A slide's outputs go to ``OUT/<name>/``. The name comes from the file name alone
(`safe_name`): NFC-normalised, runs of anything but letters, digits and ``.+-``
replaced by ``_``, no leading or trailing dots, dashes or underscores (so never
hidden, never ``..``, never taken for an option), at most `MAX_NAME_BYTES` bytes.
Slides whose names collide (``a/s.svs`` and ``b/s.svs``, ``s.svs`` and ``s.tiff``,
names differing only in case) or whose folder already holds another slide's
results or unrelated files get the name plus ``-`` and 8 hex digits of a hash of
their absolute path (`assign_output_names`); `folder_claim` is the check. Names are
stable across batches: a slide whose results already lie in a folder of ``OUT``
(its ``summary.json`` names the same resolved path) keeps that folder, whichever
other slides the batch holds; and no two folders differ only in case.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import unicodedata
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Literal

from wsiseg.errors import InputError

__all__ = [
    "MAX_NAME_BYTES",
    "assign_output_names",
    "folder_claim",
    "path_hash",
    "resolved_path",
    "safe_name",
    "slide_checksum",
    "slide_fingerprint",
]

log = logging.getLogger(__name__)

#: Longest output name in UTF-8 bytes (file systems allow 255; room for suffixes).
MAX_NAME_BYTES = 120

# Files of a run in OUT itself (cli.py): a slide's folder must never take these names.
_RUN_FILES = re.compile(r"(run|report)(-shard-\d+-of-\d+)?\.(json|html)", re.IGNORECASE)

Claim = Literal["free", "own", "other"]


def resolved_path(path: str | os.PathLike[str]) -> Path:
    """The absolute path with symlinks resolved (lexically absolute if that fails)."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # e.g. a symlink loop
        return Path(os.path.abspath(path))


def path_hash(path: str | os.PathLike[str]) -> str:
    """8 hex digits of SHA-256 of the absolute (lexically normalised) path."""
    return hashlib.sha256(os.fsencode(os.path.abspath(path))).hexdigest()[:8]


def _truncate(name: str, limit: int) -> str:
    if len(name.encode("utf-8")) <= limit:
        return name
    tag = "-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    cut = name.encode("utf-8")[: limit - len(tag)].decode("utf-8", errors="ignore")
    return cut.rstrip("._-") + tag


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:  # e.g. a name too long for the file system: not a folder
        return False


def safe_name(path: str | os.PathLike[str]) -> str:
    """A file-system-safe output folder name from a slide path (see the module notes).

    ``sub/../slide.tiff`` and ``slide.tiff`` give the same name; a name with nothing
    usable left (``...tiff``) becomes ``slide-<path hash>``.
    """
    p = Path(os.path.abspath(path))
    name = unicodedata.normalize("NFC", p.name)
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            stem = name[: -len(suffix)]
            break
    else:
        stem = name if _is_dir(p) else Path(name).stem
    text = re.sub(r"[^\w.+-]+", "_", stem).strip("._-")
    if not text:
        return "slide-" + path_hash(p)
    return _truncate(text, MAX_NAME_BYTES)


def slide_checksum(path: Path) -> str:
    """Cheap content identity: size + hash of the first and last MiB (first file of a folder)."""
    h = hashlib.sha256()
    target = path
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        target = files[0] if files else path
    size = target.stat().st_size
    h.update(str(size).encode())
    with open(target, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 1 << 20:
            fh.seek(max(size - (1 << 20), 0))
            h.update(fh.read(1 << 20))
    return h.hexdigest()


#: Files below this size are hashed whole by `slide_fingerprint`.
FULL_HASH_BYTES = 64 << 20
_HEAD_BYTES = 4 << 20
_TAIL_BYTES = 1 << 20
_BLOCK_BYTES = 64 << 10
_BLOCKS = 16


def _hash_file(h: hashlib._Hash, path: Path, *, head_only: bool = False) -> None:
    """Feed ``path``'s size and content (or samples of it) into ``h``.

    Whole when smaller than `FULL_HASH_BYTES`; else the first 4 MiB, the last MiB and
    16 blocks of 64 KiB spread evenly in between. ``head_only``: size and first MiB.
    """
    size = path.stat().st_size
    h.update(f"{size}:".encode())
    with open(path, "rb") as fh:
        if head_only:
            h.update(fh.read(_TAIL_BYTES))
            return
        if size < FULL_HASH_BYTES:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
            return
        h.update(fh.read(_HEAD_BYTES))
        span = size - _HEAD_BYTES - _TAIL_BYTES - _BLOCK_BYTES
        for i in range(_BLOCKS):
            fh.seek(_HEAD_BYTES + span * i // (_BLOCKS - 1))
            h.update(fh.read(_BLOCK_BYTES))
        fh.seek(size - _TAIL_BYTES)
        h.update(fh.read(_TAIL_BYTES))


def _folder_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def slide_fingerprint(path: Path) -> str:
    """Content identity of a slide for resume decisions (hex SHA-256).

    A file: its size and its whole content when under `FULL_HASH_BYTES` (64 MiB),
    else its first 4 MiB, last MiB and 16 evenly spread 64 KiB blocks (a replaced
    scan differs in size, header or tiles; reading a whole multi-GB file on every
    rerun would cost more than the check is worth). A folder (DICOM series) and the
    data folder beside an ``.mrxs`` file: each file's relative name, size and first
    MiB.
    """
    h = hashlib.sha256()
    if path.is_dir():
        for f in _folder_files(path):
            h.update(os.fsencode(f.relative_to(path)) + b"\0")
            _hash_file(h, f, head_only=True)
        return h.hexdigest()
    _hash_file(h, path)
    data = path.with_suffix("")
    if path.suffix.lower() == ".mrxs" and data.is_dir():
        for f in _folder_files(data):
            h.update(os.fsencode(f.relative_to(data)) + b"\0")
            _hash_file(h, f, head_only=True)
    return h.hexdigest()


def _summary_slide(out_dir: Path) -> tuple[str | None, str | None] | None:
    """(slide path, slide checksum) from ``out_dir/summary.json``; None if there is none."""
    path = out_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return (None, None)  # unreadable: belongs to nobody we can name
    if not isinstance(data, dict):
        return (None, None)
    slide, sid = data.get("slide_path") or data.get("slide"), data.get("slide_id")
    return (slide if isinstance(slide, str) else None, sid if isinstance(sid, str) else None)


def folder_claim(out_dir: Path, slide: Path, output_files: Collection[str]) -> Claim:
    """Whose is ``out_dir``: ``free`` (missing, or only outputs of an unfinished run),
    ``own`` (results of ``slide``: same content or same path) or ``other``.

    ``other`` is a file in the way, results of another slide, or a folder holding
    anything but ``output_files`` and hidden temporaries: never written into.
    """
    if not out_dir.exists() and not out_dir.is_symlink():
        return "free"
    if out_dir.is_symlink() or not out_dir.is_dir():
        return "other"
    owner = _summary_slide(out_dir)
    if owner is not None:
        return "own" if _is_same_slide(slide, *owner) else "other"
    for child in out_dir.iterdir():
        if not child.name.startswith(".") and child.name not in output_files:
            return "other"
    return "free"


def _is_same_slide(slide: Path, recorded_path: str | None, recorded_id: str | None) -> bool:
    if recorded_path is not None and (
        os.path.abspath(recorded_path) == os.path.abspath(slide)
        or resolved_path(recorded_path) == resolved_path(slide)
    ):
        return True
    if recorded_id is None:
        return False
    try:
        return slide_checksum(slide) == recorded_id
    except OSError:
        return False


def assign_output_names(
    slides: Sequence[Path], out_root: Path, output_files: Collection[str]
) -> list[str]:
    """One output folder name per slide, unique in the batch (ignoring case) and in
    ``out_root``: the `safe_name` where that is free, else the name plus a path hash.

    Raises
    ------
    InputError
        If even the hashed name is taken (the same path given twice, or a folder of
        that name holding something else).
    """
    existing = _existing_folders(out_root)
    kept = _kept_folders(existing, out_root)
    taken: dict[str, Path] = {}
    own: dict[int, str] = {}  # slide index -> folder already holding its results
    for i, slide in enumerate(slides):
        name = kept.get(resolved_path(slide))
        if name is not None and name.casefold() not in taken:
            own[i] = name
            taken[name.casefold()] = slide
    names: list[str] = []
    for i, slide in enumerate(slides):
        if i in own:
            names.append(own[i])
            continue
        base = safe_name(slide)
        name = base
        for candidate in (base, _truncate(f"{base}-{path_hash(slide)}", MAX_NAME_BYTES + 9)):
            name = candidate
            if _usable(candidate, slide, taken, existing, out_root, output_files):
                break
        else:
            raise InputError(
                f"{slide}: no free output folder name in {out_root} ({base!r} and {name!r} "
                "are taken by other slides or files)"
            )
        if name != base:
            log.info("%s: output folder %s (%s is taken)", slide, name, base)
        taken[name.casefold()] = slide
        names.append(name)
    return names


def _existing_folders(out_root: Path) -> dict[str, list[str]]:
    """Names in ``out_root`` (not hidden) by their case-folded form."""
    found: dict[str, list[str]] = {}
    try:
        entries = sorted(os.listdir(out_root))
    except OSError:  # missing (a first run) or unreadable: nothing to reuse
        return found
    for entry in entries:
        if not entry.startswith("."):
            found.setdefault(entry.casefold(), []).append(entry)
    return found


def _kept_folders(existing: dict[str, list[str]], out_root: Path) -> dict[Path, str]:
    """Resolved slide path -> the folder of ``out_root`` holding its results."""
    kept: dict[Path, str] = {}
    for entry in sorted(e for names in existing.values() for e in names):
        folder = out_root / entry
        if folder.is_symlink() or not _is_dir(folder):
            continue
        recorded = _summary_path(folder)
        if recorded is not None:
            kept.setdefault(resolved_path(recorded), entry)
    return kept


def _summary_path(out_dir: Path) -> str | None:
    """The slide path ``out_dir/summary.json`` records (resolved if recorded so)."""
    try:
        data = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    for key in ("slide_path", "slide"):  # older summaries: the path as given
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _usable(
    name: str,
    slide: Path,
    taken: dict[str, Path],
    existing: dict[str, list[str]],
    out_root: Path,
    output_files: Collection[str],
) -> bool:
    if name.casefold() in taken or _RUN_FILES.fullmatch(name):
        return False
    if any(other != name for other in existing.get(name.casefold(), ())):
        return False  # "S" beside "s": one folder on a case-insensitive share
    return folder_claim(out_root / name, slide, output_files) != "other"
