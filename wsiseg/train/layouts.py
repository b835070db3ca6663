"""Published labeled data sets read as they are: GlaS (``glas-full``) and MoNuSeg.

Both are ``images/NAME.png`` + ``masks/NAME.png`` (0 = background, 255 = object) with a
CSV that the generic image/mask layout does not know:

- **GlaS** - ``grade.csv`` (``name,patient_id,grade_glas,...``). The official split is
  the name's prefix (``train_*``, ``testA_*`` and, where present, ``testB_*``); the pixel
  size is 0.62 µm/px unless the caller gives one. Targets: binary (gland) and
  three-class (benign / malignant gland from the mask and the image's grade).
- **MoNuSeg** - ``split.csv`` (``name,split,...,xml_microns_per_pixel``): the split and a
  pixel size per image (0.25 µm/px where blank, or the caller's). Target: binary (nucleus).
  Each image is its own TCGA participant (``TCGA-XX-YYYY``), used as the patient.

`split_by_patient` takes a deterministic, patient-disjoint validation part of the
training images.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
from PIL import Image

from wsiseg.errors import InputError

__all__ = [
    "SPLITS",
    "TARGETS",
    "GLAS_MPP",
    "MONUSEG_MPP",
    "LayoutImage",
    "DataLayout",
    "read_layout",
    "split_by_patient",
    "target_for_classes",
]

log = logging.getLogger(__name__)
_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    """A layout problem, logged once per process (a command may read a layout twice)."""
    if msg not in _warned:
        _warned.add(msg)
        log.warning("%s", msg)


def _listed_but_absent(csv_path: Path, listed: Sequence[str], found: set[str]) -> None:
    absent = sorted(set(listed) - found)
    if absent:
        more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
        _warn_once(
            f"{csv_path}: {len(absent)} listed image(s) without an image/mask pair, left out: "
            f"{', '.join(absent[:5])}{more}"
        )


#: ``--split`` values: ``test`` is GlaS test A / the MoNuSeg test images.
SPLITS = ("train", "test", "testB", "all")
TARGETS = ("binary", "three-class")
GLAS_MPP = 0.62  # Sirinukunwattana et al. 2017 (20x); not stored in the files
MONUSEG_MPP = 0.25  # 40x; where split.csv has no value
_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")
_GLAS_PREFIX = {"train": "train", "testA": "test", "testB": "testB"}

Classes = tuple[tuple[str, tuple[int, int, int]], ...]

_CLASSES: dict[tuple[str, str], Classes] = {
    ("glas", "binary"): (("Not gland", (255, 255, 255)), ("Gland", (20, 120, 220))),
    ("glas", "three-class"): (
        ("Not gland", (255, 255, 255)),
        ("Benign gland", (20, 120, 220)),
        ("Malignant gland", (200, 0, 0)),
    ),
    ("monuseg", "binary"): (("Background", (255, 255, 255)), ("Nucleus", (130, 40, 160))),
}


@dataclass(frozen=True)
class LayoutImage:
    """One image of a layout: files, official split, patient, pixel size and grade."""

    name: str
    image: Path
    mask: Path
    split: str  # "train", "test" or "testB"
    patient: str
    mpp: float
    grade: str | None = None  # GlaS: "benign" / "malignant"

    @property
    def group(self) -> str:
        """The split unit (as `LabeledSource.group`): the patient."""
        return self.patient


@dataclass(frozen=True)
class DataLayout:
    """A recognised data set folder."""

    kind: str  # "glas" or "monuseg"
    root: Path
    images: tuple[LayoutImage, ...]

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(t for t in TARGETS if (self.kind, t) in _CLASSES)

    def classes(self, target: str) -> Classes:
        """(name, colour) per label value of ``target``."""
        if (self.kind, target) not in _CLASSES:
            raise InputError(
                f"{self.root}: the {self.kind} layout has no {target!r} target "
                f"(it has: {', '.join(self.targets)})"
            )
        return _CLASSES[(self.kind, target)]

    def select(self, split: str) -> list[LayoutImage]:
        """The images of one ``--split`` (``all``: every image)."""
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
        chosen = [im for im in self.images if split == "all" or im.split == split]
        if not chosen:
            have = sorted({im.split for im in self.images})
            raise InputError(
                f"{self.root}: no images in split {split!r} "
                f"(splits here: {', '.join(have) or 'none'})"
            )
        return chosen

    def load(self, item: LayoutImage, target: str) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 [H,W,3] and labels uint8 [H,W] of ``item`` for ``target``."""
        self.classes(target)  # checks the target
        with Image.open(item.image) as im:
            rgba = np.asarray(im.convert("RGBA"))
        alpha = rgba[..., 3:4].astype(np.uint16)  # composite over white
        rgb = ((rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
        with Image.open(item.mask) as im:
            mask = np.asarray(im)
        if mask.ndim == 3:
            mask = mask[..., 0]
        if mask.shape != rgb.shape[:2]:
            raise InputError(
                f"{item.mask}: mask {mask.shape} and image {rgb.shape[:2]} differ in size"
            )
        labels = (mask > 0).astype(np.uint8)
        if target == "three-class":
            if item.grade not in ("benign", "malignant"):
                raise InputError(
                    f"{item.name}: grade {item.grade!r} is neither benign nor malignant"
                )
            labels *= 1 if item.grade == "benign" else 2
        return rgb, labels


def _csv_rows(path: Path, required: Sequence[str]) -> dict[str, dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
            return {row["name"].strip(): row for row in reader if row.get("name")}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: not a readable CSV ({exc})") from exc


def _pairs(root: Path) -> list[tuple[str, Path, Path]]:
    masks = {p.stem: p for p in (root / "masks").iterdir() if p.suffix.lower() in _SUFFIXES}
    out = []
    for img in sorted((root / "images").iterdir()):
        if img.suffix.lower() not in _SUFFIXES:
            continue
        if img.stem not in masks:
            _warn_once(f"{img}: no mask of the same name in masks/; skipped")
            continue
        out.append((img.stem, img, masks[img.stem]))
    if not out:
        raise InputError(f"{root}: no image/mask pairs in images/ and masks/")
    return out


def _checked_data_mpp(data_mpp: float | None) -> float | None:
    return None if data_mpp is None else _plausible_mpp(data_mpp, "--data-mpp")


def _plausible_mpp(value: float, where: str) -> float:
    if not 0.05 <= value <= 20:
        raise InputError(
            f"{where}: pixel size {value} µm/px is not plausible (expected 0.05 to 20 µm/px)"
        )
    return value


def _read_glas(root: Path, data_mpp: float | None) -> DataLayout:
    rows = _csv_rows(root / "grade.csv", ("name", "grade_glas"))
    mpp = _checked_data_mpp(data_mpp) or GLAS_MPP
    images = []
    pairs = _pairs(root)
    _listed_but_absent(root / "grade.csv", list(rows), {name for name, _, _ in pairs})
    for name, img, mask in pairs:
        prefix = name.split("_", 1)[0]
        if prefix not in _GLAS_PREFIX:
            _warn_once(f"{img}: name is not train_*, testA_* or testB_*; skipped")
            continue
        row = rows.get(name, {})
        if not row:
            _warn_once(f"{img}: not in grade.csv (no grade or patient)")
        patient = (row.get("patient_id") or "").strip()
        grade = (row.get("grade_glas") or "").strip().lower() or None
        images.append(
            LayoutImage(
                name,
                img,
                mask,
                _GLAS_PREFIX[prefix],
                f"patient-{patient}" if patient else name,
                mpp,
                grade,
            )
        )
    if not images:
        raise InputError(
            f"{root}: no image in images/ is named train_*, testA_* or testB_* "
            "(the GlaS split is the name's prefix; case matters)"
        )
    return DataLayout("glas", root, tuple(images))


_TCGA = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})", re.IGNORECASE)


def _read_monuseg(root: Path, data_mpp: float | None) -> DataLayout:
    csv_path = root / "split.csv"
    rows = _csv_rows(csv_path, ("name", "split"))
    given = _checked_data_mpp(data_mpp)
    fallback = given or MONUSEG_MPP
    images, blank = [], []
    pairs = _pairs(root)
    _listed_but_absent(csv_path, list(rows), {name for name, _, _ in pairs})
    for name, img, mask in pairs:
        row = rows.get(name)
        if row is None:
            _warn_once(f"{img}: not in split.csv (no split); skipped")
            continue
        split = row["split"].strip()
        if split not in ("train", "test", "testB"):
            raise InputError(f"{csv_path}: {name}: unknown split {split!r}")
        text = (row.get("xml_microns_per_pixel") or "").strip()
        if text:
            try:
                value = float(text)
            except ValueError as exc:
                raise InputError(
                    f"{csv_path}: {name}: pixel size {text!r} is not a number (µm/px)"
                ) from exc
            mpp = _plausible_mpp(value, f"{csv_path}: {name}")
        else:  # the fallback was checked above
            mpp = fallback
            blank.append(name)
        match = _TCGA.match(name)
        patient = match.group(1).upper() if match else name
        images.append(LayoutImage(name, img, mask, split, patient, mpp))
    if blank:
        source = "--data-mpp" if given else "the MoNuSeg default; --data-mpp sets another"
        msg = (
            f"{csv_path}: {len(blank)} of {len(images)} images without a pixel size "
            f"(xml_microns_per_pixel) are read at {fallback} µm/px ({source})"
        )
        if "xml_microns_per_pixel" not in next(iter(rows.values()), {}) and given is None:
            _warn_once(msg + "; the file has no xml_microns_per_pixel column")
        else:
            log.info("%s", msg)
    return DataLayout("monuseg", root, tuple(images))


def read_layout(root: Path, data_mpp: float | None = None) -> DataLayout | None:
    """The GlaS or MoNuSeg layout of ``root``, or None when ``root`` is neither.

    ``data_mpp`` replaces GlaS's 0.62 µm/px and stands in for MoNuSeg images whose
    pixel size ``split.csv`` does not give.

    Raises
    ------
    InputError
        A recognised layout with an unreadable CSV, missing columns, unknown splits or
        implausible pixel sizes, or without any image/mask pair.
    """
    root = Path(root)
    lacking = [f"{d}/" for d in ("images", "masks") if not (root / d).is_dir()]
    for table, kind in (("grade.csv", "GlaS"), ("split.csv", "MoNuSeg")):
        if lacking and (root / table).is_file():
            raise InputError(
                f"{root}: {table} makes this a {kind} folder, but "
                f"{' and '.join(lacking)} {'is' if len(lacking) == 1 else 'are'} missing "
                "(expected images/, masks/ and the CSV)"
            )
    if lacking:
        return None
    if (root / "grade.csv").is_file():
        return _read_glas(root, data_mpp)
    if (root / "split.csv").is_file():
        return _read_monuseg(root, data_mpp)
    return None


class _Grouped(Protocol):
    name: str
    group: str


G = TypeVar("G", bound=_Grouped)


def split_by_patient(
    items: Sequence[G], val_fraction: float, seed: int = 0
) -> tuple[list[G], list[G]]:
    """(train, val): about ``val_fraction`` of ``items`` for validation, whole patients only.

    Patients (``group``) are shuffled with ``seed`` and taken in that order while they fit
    in the target count (at least one patient, never all of them). Deterministic for a
    given set of items and seed, whatever their order.

    Raises
    ------
    InputError
        A fraction outside (0, 1), or fewer than two patients.
    """
    if not 0 < val_fraction < 1:
        raise InputError(f"--val-fraction {val_fraction} is not between 0 and 1")
    sizes: dict[str, int] = {}
    for it in items:
        sizes[it.group] = sizes.get(it.group, 0) + 1
    if len(sizes) < 2:
        raise InputError(
            f"a patient-disjoint validation split needs two or more patients ({len(sizes)} here)"
        )
    groups = sorted(sizes)
    order = np.random.default_rng(seed).permutation(len(groups))
    target = val_fraction * len(items)
    val: set[str] = set()
    count = 0
    for i in order:
        g = groups[int(i)]
        if len(val) == len(groups) - 1:
            break
        if not val or count + sizes[g] <= target + 0.5:
            val.add(g)
            count += sizes[g]
    train = [it for it in items if it.group not in val]
    return train, [it for it in items if it.group in val]


def target_for_classes(layout: DataLayout, class_names: Sequence[str]) -> str:
    """The layout's target whose class names are ``class_names`` (a model's)."""
    for t in layout.targets:
        if tuple(n for n, _ in layout.classes(t)) == tuple(class_names):
            return t
    offered = "; ".join(
        f"{t}: {', '.join(n for n, _ in layout.classes(t))}" for t in layout.targets
    )
    raise InputError(
        f"the model's classes ({', '.join(class_names)}) are none of the {layout.kind} "
        f"targets ({offered})"
    )
