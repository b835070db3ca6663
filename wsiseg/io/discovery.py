"""Slide discovery: the one list of slide suffixes; folders searched recursively.

What counts as a slide in a folder: a file whose suffix is in `SLIDE_SUFFIXES`, except
hidden names (``.name``), label masks (``*_mask.tif(f)``) and the data folder ``X/`` of a
MIRAX slide ``X.mrxs``. DICOM files are grouped by SeriesInstanceUID (header only, never
the pixels): one slide per whole-slide series, wherever its files lie. A series whose
folder holds nothing but it is named by that folder (``open_slide`` opens such a folder);
otherwise by one of its files (OpenSlide finds the others of the series beside it).
DICOM files of other kinds (annotations, radiology images) are skipped with an info log;
files that cannot be read as DICOM are kept, so that opening them names the problem.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wsiseg.errors import InputError

__all__ = [
    "DICOM_SUFFIXES",
    "SLIDE_SUFFIXES",
    "WSI_SOP_CLASS_UID",
    "DicomSeries",
    "dicom_series",
    "discover_slides",
    "folder_series_file",
    "is_label_mask",
]

log = logging.getLogger(__name__)

#: Suffixes of slide files (lower case), in the order a slide is looked for beside a label file.
SLIDE_SUFFIXES: tuple[str, ...] = (
    ".svs",
    ".tiff",
    ".tif",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".bif",
    ".vms",
    ".vmu",
    ".svslide",
    ".dcm",
)
DICOM_SUFFIXES: tuple[str, ...] = (".dcm",)
#: SOP Class UID of DICOM "VL Whole Slide Microscopy Image Storage".
WSI_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.77.1.6"
_MASK_ENDINGS = ("_mask.tif", "_mask.tiff")


@dataclass(frozen=True)
class DicomSeries:
    """The files of one DICOM whole-slide series (sorted), and the one to open it by."""

    uid: str
    files: tuple[Path, ...]
    volume: tuple[Path, ...]  # the files holding pyramid levels (ImageType VOLUME)

    @property
    def file(self) -> Path:
        """The file OpenSlide is given: the first pyramid level file, else the first file."""
        return (self.volume or self.files)[0]


def is_label_mask(path: Path) -> bool:
    """Whether ``path`` is named like a label mask (``*_mask.tif`` / ``*_mask.tiff``)."""
    return path.name.lower().endswith(_MASK_ENDINGS)


def _is_dicom_name(path: Path) -> bool:
    return path.suffix.lower() in DICOM_SUFFIXES


def _read_header(path: Path) -> tuple[str, str, bool] | None:
    """(SOP class, series UID, is a pyramid level) of a DICOM file; None if unreadable."""
    import pydicom
    from pydicom.tag import Tag

    tags = [Tag(0x0008, 0x0016), Tag(0x0020, 0x000E), Tag(0x0008, 0x0008)]
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
        sop = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
        uid = str(ds.get("SeriesInstanceUID", ""))
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on bad files
        log.debug("%s: not readable as DICOM: %s", path, exc)
        return None
    return sop, uid, "VOLUME" in image_type


def dicom_series(files: Iterable[Path]) -> tuple[list[DicomSeries], list[Path]]:
    """Group DICOM files into whole-slide series by SeriesInstanceUID.

    Returns the series (ordered by their first file) and the files that could not be
    read as DICOM (to be reported by whoever opens them). Files of other SOP classes are
    left out with an info log.
    """
    groups: dict[str, list[Path]] = {}
    volumes: dict[str, list[Path]] = {}
    unreadable: list[Path] = []
    for path in sorted(files):
        header = _read_header(path)
        if header is None or not header[1]:
            unreadable.append(path)
            continue
        sop, uid, is_volume = header
        if sop != WSI_SOP_CLASS_UID:
            log.info(
                "%s: skipped, a DICOM file but not a whole-slide image (SOP class %s)", path, sop
            )
            continue
        groups.setdefault(uid, []).append(path)
        if is_volume:
            volumes.setdefault(uid, []).append(path)
    series = [
        DicomSeries(uid, tuple(fs), tuple(volumes.get(uid, ()))) for uid, fs in groups.items()
    ]
    return sorted(series, key=lambda s: s.files[0]), unreadable


def folder_series_file(folder: Path) -> Path:
    """The file to open the one DICOM whole-slide series in ``folder`` by.

    Raises
    ------
    InputError
        If the folder holds no DICOM whole-slide series, or more than one.
    """
    files = [c for c in _scan(folder) if not c.name.startswith(".") and _is_dicom_name(c)]
    series, _ = dicom_series(f for f in files if f.is_file())
    if not series:
        raise InputError(f"{folder}: is a folder, not a slide (only a DICOM series folder is)")
    if len(series) > 1:
        raise InputError(
            f"{folder}: holds {len(series)} DICOM series; give one file of the series to open"
        )
    return series[0].file


def _scan(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            return sorted(Path(e.path) for e in it)
    except OSError as exc:
        raise InputError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from exc


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # e.g. a name too long for the file system
        return False


def _folder_slides(root: Path) -> list[tuple[Path, object]]:
    """Slides under ``root`` with their identity (recursive, sorted by path)."""
    found: list[tuple[Path, object]] = []
    dicom_files: list[Path] = []
    plain_in: dict[Path, int] = {}  # folder -> number of non-DICOM slide files in it
    visited: set[tuple[int, int]] = set()

    def walk(folder: Path) -> None:
        try:
            st = folder.stat()
        except OSError as exc:
            raise InputError(f"{folder}: cannot read ({exc.strerror or exc})") from exc
        if (st.st_dev, st.st_ino) in visited:  # a symlink loop or a folder reached twice
            return
        visited.add((st.st_dev, st.st_ino))
        children = _scan(folder)
        mrxs_data = {c.with_suffix("") for c in children if c.suffix.lower() == ".mrxs"}
        for child in children:
            if child.name.startswith("."):
                continue
            if _is_dir(child):
                if child in mrxs_data:
                    continue  # a MIRAX slide's data files, opened through X.mrxs
                walk(child)
            elif child.suffix.lower() in SLIDE_SUFFIXES and not is_label_mask(child):
                if _is_dicom_name(child):
                    dicom_files.append(child)
                else:
                    found.append((child, _resolved(child)))
                    plain_in[folder] = plain_in.get(folder, 0) + 1

    walk(root)
    if dicom_files:
        series, unreadable = dicom_series(dicom_files)
        found.extend((f, _resolved(f)) for f in unreadable)
        per_folder: dict[Path, int] = {}
        for f in unreadable:
            per_folder[f.parent] = per_folder.get(f.parent, 0) + 1
        for s in series:
            for folder in {f.parent for f in s.files}:
                per_folder[folder] = per_folder.get(folder, 0) + 1
        for s in series:
            folder = s.file.parent
            alone = per_folder[folder] == 1 and not plain_in.get(folder)
            alone = alone and all(f.parent == folder for f in s.files)
            key = ("dicom", _resolved(folder), s.uid)
            found.append((folder if alone else s.file, key))
    return sorted(found, key=lambda item: item[0].parts)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # e.g. a symlink loop
        return Path(os.path.abspath(path))


def _identity(path: Path) -> object:
    """What makes a path given by the user the same slide as a discovered one."""
    try:
        if _is_dicom_name(path) and path.is_file():
            header = _read_header(path)
            if header is not None and header[0] == WSI_SOP_CLASS_UID and header[1]:
                return ("dicom", _resolved(path.parent), header[1])
    except OSError:
        pass
    return _resolved(path)


def _inode(path: Path) -> list[object]:
    """The file's (device, inode) as a key, to tell hard links apart (none if unreadable)."""
    try:
        st = path.stat()
    except OSError:
        return []
    return [("inode", st.st_dev, st.st_ino)]


def discover_slides(inputs: Sequence[Path]) -> list[Path]:
    """The slides named by ``inputs``: files as given, folders searched recursively.

    A slide reached twice (``slide.tiff`` and ``sub/../slide.tiff``, a symlink and its
    target, two hard links to one file, a file and its folder, two files of one DICOM
    series) is kept once, where
    it first appears, with a warning naming both paths when they differ. Paths
    that are neither files nor folders are kept, so that opening them names the problem.

    Raises
    ------
    InputError
        If a folder (or one below it) cannot be listed.
    """
    found: list[tuple[Path, object]] = []
    for p in inputs:
        found.extend(_folder_slides(p) if _is_dir(p) else [(p, _identity(p))])
    out: list[Path] = []
    seen: dict[object, Path] = {}
    for path, key in found:
        keys = [key] if isinstance(key, tuple) else [key, *_inode(path)]
        first = next((seen[k] for k in keys if k in seen), None)
        for k in keys:
            seen.setdefault(k, first or path)
        if first is None:
            out.append(path)
        elif first != path:
            what = "slide" if isinstance(key, tuple) else "file"  # DICOM: a series
            log.warning("%s is the same %s as %s: segmented once", path, what, first)
    return out
