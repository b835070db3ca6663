"""Labeled data for training and evaluation, behind one `LabeledSource` interface.

Supported layouts (`discover_sources`):

- **synthetic** - ``NAME.tiff`` + ``NAME_mask.tiff`` pairs written by ``wsiseg synth``;
- **panda** - ``train_images/<id>.tiff`` + ``train_label_masks/<id>_mask.tiff`` (labels in
  the first channel), class map chosen per row's ``data_provider`` from ``train.csv``;
- **pairs** - image/mask tiles: ``images/X.png`` + ``masks/X.png``, or ``X.png`` beside
  ``X_mask.png`` / ``X_anno.png`` (PNG, BMP, TIFF), pixel size given by the caller;
- **geojson** - slides with a QuPath GeoJSON of the same stem (``X.svs`` + ``X.geojson``),
  polygons rasterised by class name (pixel centres inside; `read_geojson_labels` repairs
  invalid polygons, clips to the slide, skips points and lines, and keeps areas of
  unknown classes out of training, each with a warning; malformed files are errors);
- **glas** / **monuseg** - the published sets as they are (`wsiseg.train.layouts`):
  official split, per-image pixel size, patients, binary or three-class targets.

Every source reads a level-0 box resampled to a requested size: images area-averaged
from the nearest finer pyramid level, labels by nearest neighbour (never averaged).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tifffile
import zarr
from PIL import Image
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from wsiseg.errors import InputError
from wsiseg.geometry import as_multipolygon, polygons_to_mask
from wsiseg.io import open_slide
from wsiseg.io.discovery import DICOM_SUFFIXES, SLIDE_SUFFIXES
from wsiseg.io.geojson import log_feature_notes, read_geojson_areas
from wsiseg.io.reader import BaseSlideReader
from wsiseg.train.layouts import read_layout
from wsiseg.train.losses import IGNORE_INDEX

__all__ = [
    "LabeledSource",
    "SlideSource",
    "ArraySource",
    "PANDA_CLASS_MAPS",
    "discover_sources",
    "read_label_mask_window",
    "LabelMask",
    "GeoJSONLabels",
    "read_geojson_labels",
    "rasterise_labels",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")

#: PANDA label ids -> wsiseg's 4 classes (0 background, 1 stroma, 2 benign gland, 3 tumour).
#: Karolinska labels only say "benign tissue" (stroma and epithelium together): mapped
#: to stroma, so its benign glands count as stroma - a documented approximation.
PANDA_CLASS_MAPS: dict[str, tuple[int, ...]] = {
    "radboud": (0, 1, 2, 3, 3, 3),
    "karolinska": (0, 1, 3),
}


class LabeledSource(Protocol):
    """An image with labels that can be read at any scale."""

    name: str
    group: str  # split unit (the slide / patient id): splits never cut a group
    mpp: float
    size: tuple[int, int]  # level-0 (w, h)

    def read(
        self, x: int, y: int, w: int, h: int, out_hw: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 box -> (RGB uint8 [H,W,3], labels uint8 [H,W]) at ``out_hw``."""
        ...

    def label_thumbnail(self, max_px: int = 512) -> tuple[np.ndarray, float]:
        """Labels at low resolution and the level-0 pixels per thumbnail pixel."""
        ...


def _remap(labels: np.ndarray, class_map: Sequence[int] | None) -> np.ndarray:
    if class_map is None:
        return labels.astype(np.uint8, copy=False)
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[: len(class_map)] = np.asarray(class_map, np.uint8)
    return lut[labels.astype(np.uint8)]


def _resize_labels(labels: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    h, w = labels.shape
    oh, ow = out_hw
    if (h, w) == (oh, ow):
        return labels
    # Nearest neighbour at pixel centres (align_corners=False centres for a box read).
    ys = np.clip(((np.arange(oh) + 0.5) * h / oh).astype(np.int64), 0, h - 1)
    xs = np.clip(((np.arange(ow) + 0.5) * w / ow).astype(np.int64), 0, w - 1)
    out: np.ndarray = labels[ys[:, None], xs[None, :]]
    return out


def _resize_image(img: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    if img.shape[:2] == out_hw:
        return img
    return np.asarray(Image.fromarray(img).resize((out_hw[1], out_hw[0]), Image.Resampling.BOX))


class LabelMask:
    """A pyramidal label TIFF (first channel), read window by window; picklable."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._tf: tifffile.TiffFile | None = None
        self._group: Any = None
        with tifffile.TiffFile(self.path) as tf:
            self.level_sizes = [(lv.shape[1], lv.shape[0]) for lv in tf.series[0].levels]

    def _level(self, level: int) -> Any:
        if self._group is None:
            self._tf = tifffile.TiffFile(self.path)
            store = self._tf.series[0].aszarr()
            if len(self.level_sizes) == 1:
                return zarr.open_array(store, mode="r", zarr_format=2)
            self._group = zarr.open_group(store, mode="r", zarr_format=2)
        return self._group[str(level)]

    def read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Window of ``level``; pixels outside the mask are `IGNORE_INDEX`."""
        W, H = self.level_sizes[level]
        out = np.full((h, w), IGNORE_INDEX, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x0 < x1 and y0 < y1:
            win = np.asarray(self._level(level)[y0:y1, x0:x1])
            if win.ndim == 3:
                win = win[..., 0]
            out[y0 - y : y1 - y, x0 - x : x1 - x] = win
        return out

    def at_grid(self, shape: tuple[int, int]) -> np.ndarray:
        """Level-0 labels sampled at the pixel centres of a grid of ``shape`` over the slide."""
        w0, h0 = self.level_sizes[0]
        full = self.read(0, 0, 0, w0, h0)
        ys = np.minimum(((np.arange(shape[0]) + 0.5) * h0 / shape[0]).astype(int), h0 - 1)
        xs = np.minimum(((np.arange(shape[1]) + 0.5) * w0 / shape[1]).astype(int), w0 - 1)
        out: np.ndarray = full[ys[:, None], xs[None, :]]
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "level_sizes": self.level_sizes, "_tf": None, "_group": None}

    def close(self) -> None:
        if self._tf is not None:
            self._tf.close()
        self._tf, self._group = None, None


def read_label_mask_window(path: Path, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Read one window of a pyramidal label TIFF (see `LabelMask`)."""
    mask = LabelMask(path)
    try:
        return mask.read(level, x, y, w, h)
    finally:
        mask.close()


@dataclass
class SlideSource:
    """A pyramidal slide with a pyramidal label TIFF of the same geometry."""

    image: Path
    mask: Path
    class_map: tuple[int, ...] | None = None
    mpp_override: float | None = None
    name: str = ""
    group: str = ""
    _reader: BaseSlideReader | None = field(default=None, repr=False)
    _mask: LabelMask | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or self.image.stem
        self.group = self.group or self.name
        reader = self._open()
        self.mpp = reader.mpp[0]
        self.size = reader.level_dimensions[0]
        self._mask = LabelMask(self.mask)
        if self._mask.level_sizes[0] != self.size:
            raise InputError(
                f"{self.mask.name}: mask size {self._mask.level_sizes[0]} differs from "
                f"slide size {self.size}"
            )

    @property
    def _mask_levels(self) -> list[tuple[int, int]]:
        assert self._mask is not None
        return self._mask.level_sizes

    def _open(self) -> BaseSlideReader:
        if self._reader is None:
            self._reader = open_slide(self.image, mpp=self.mpp_override)
        return self._reader

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"] = None
        return state

    def _mask_level_for(self, downsample: float) -> tuple[int, float]:
        best, best_ds = 0, 1.0
        for i, (w, _) in enumerate(self._mask_levels):
            ds = self.size[0] / w
            if ds <= downsample * (1 + 1e-6):
                best, best_ds = i, ds
        return best, best_ds

    def read(
        self, x: int, y: int, w: int, h: int, out_hw: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        reader = self._open()
        ds = min(w / out_hw[1], h / out_hw[0])
        level = reader.best_level_for_downsample(ds)
        lds = reader.level_downsamples[level]
        lx, ly = int(x // lds), int(y // lds)
        lw, lh = max(1, round(w / lds)), max(1, round(h / lds))
        img = _resize_image(reader.read_region(level, lx, ly, lw, lh), out_hw)
        mlevel, mds = self._mask_level_for(ds)
        mx, my = int(x // mds), int(y // mds)
        mw, mh = max(1, round(w / mds)), max(1, round(h / mds))
        assert self._mask is not None
        lab = self._mask.read(mlevel, mx, my, mw, mh)
        return img, _resize_labels(_remap(lab, self.class_map), out_hw)

    def label_thumbnail(self, max_px: int = 512) -> tuple[np.ndarray, float]:
        level = len(self._mask_levels) - 1
        for i, (w, h) in enumerate(self._mask_levels):
            if max(w, h) <= max_px:
                level = i
                break
        w, h = self._mask_levels[level]
        assert self._mask is not None
        lab = self._mask.read(level, 0, 0, w, h)
        return _remap(lab, self.class_map), self.size[0] / w


@dataclass
class ArraySource:
    """An in-memory image with labels (tiles, rasterised annotations)."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    mpp: float
    group: str = ""

    def __post_init__(self) -> None:
        self.group = self.group or self.name
        if self.image.shape[:2] != self.labels.shape:
            raise InputError(
                f"{self.name}: image {self.image.shape[:2]} and mask {self.labels.shape} differ"
            )
        self.size = (self.image.shape[1], self.image.shape[0])

    def read(
        self, x: int, y: int, w: int, h: int, out_hw: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        H, W = self.labels.shape
        img = np.full((h, w, 3), 255, np.uint8)
        lab = np.full((h, w), IGNORE_INDEX, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x0 < x1 and y0 < y1:
            img[y0 - y : y1 - y, x0 - x : x1 - x] = self.image[y0:y1, x0:x1]
            lab[y0 - y : y1 - y, x0 - x : x1 - x] = self.labels[y0:y1, x0:x1]
        return _resize_image(img, out_hw), _resize_labels(lab, out_hw)

    def label_thumbnail(self, max_px: int = 512) -> tuple[np.ndarray, float]:
        step = max(1, int(np.ceil(max(self.labels.shape) / max_px)))
        return self.labels[::step, ::step], float(step)


def _load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        rgba = np.asarray(im.convert("RGBA"))
    alpha = rgba[..., 3:4].astype(np.uint16)
    return ((rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _load_labels(
    path: Path, class_map: Sequence[int] | None, binary: bool, n_classes: int | None
) -> np.ndarray:
    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if binary:  # instance maps (GlaS glands, CPM nuclei) -> object vs background
        return (arr > 0).astype(np.uint8)
    top = int(arr.max()) if arr.size else 0
    limit = len(class_map) if class_map is not None else n_classes
    if top > 255 or (limit is not None and top >= limit):
        raise InputError(
            f"{path.name}: label values go up to {top}, more than the {limit} classes; "
            "use --binary-labels for instance maps"
        )
    return _remap(arr, class_map)


def _pair_sources(
    root: Path,
    mpp: float | None,
    class_map: Sequence[int] | None,
    binary: bool,
    n_classes: int | None = None,
) -> list[ArraySource]:
    pairs: list[tuple[Path, Path]] = []
    if (root / "images").is_dir() and (root / "masks").is_dir():
        masks = {
            p.stem: p for p in (root / "masks").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        }
        for img in sorted((root / "images").iterdir()):
            if img.suffix.lower() in IMAGE_SUFFIXES and img.stem in masks:
                pairs.append((img, masks[img.stem]))
    else:
        files = {p.stem: p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        for stem, img in sorted(files.items()):
            for tag in ("_mask", "_anno", "_label", "_labels"):
                if stem.endswith(tag):
                    break
                if stem + tag in files:
                    pairs.append((img, files[stem + tag]))
                    break
    if not pairs:
        return []
    if mpp is None:
        if (root / "images").is_dir():
            raise InputError(
                f"{root}: images/ and masks/ without grade.csv (GlaS) or split.csv (MoNuSeg) "
                "are plain image/mask pairs, which carry no pixel size; pass --data-mpp"
            )
        raise InputError(f"{root}: image/mask tiles carry no pixel size; pass --data-mpp")
    return [
        ArraySource(img.stem, _load_rgb(img), _load_labels(m, class_map, binary, n_classes), mpp)
        for img, m in pairs
    ]


def _panda_sources(root: Path, class_maps: Mapping[str, Sequence[int]]) -> list[SlideSource]:
    providers: dict[str, str] = {}
    if (root / "train.csv").is_file():
        with open(root / "train.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                providers[row["image_id"]] = row.get("data_provider", "radboud").lower()
    out: list[SlideSource] = []
    for mask in sorted((root / "train_label_masks").glob("*_mask.tiff")):
        image_id = mask.name[: -len("_mask.tiff")]
        image = root / "train_images" / f"{image_id}.tiff"
        if not image.is_file():
            continue
        provider = providers.get(image_id, "radboud")
        if provider not in class_maps:
            raise InputError(f"{image_id}: no class map for data_provider {provider!r}")
        out.append(SlideSource(image, mask, tuple(class_maps[provider]), name=image_id))
    return out


#: Slide files looked for beside ``X.geojson``, in this order (no DICOM: a series is many files).
GEOJSON_SLIDE_SUFFIXES: tuple[str, ...] = (
    *(s for s in SLIDE_SUFFIXES if s not in DICOM_SUFFIXES),
    ".ome.tiff",
    ".ome.tif",
)


@dataclass(frozen=True)
class GeoJSONLabels:
    """Annotations of one GeoJSON file, repaired and clipped to the slide (level-0 pixels).

    ``areas`` are (class id, polygonal geometry) in file order; ``ignored`` the areas of
    features whose class the model does not know (kept out of training, not background).
    """

    areas: list[tuple[int, BaseGeometry]]
    ignored: list[BaseGeometry]


def read_geojson_labels(
    path: Path, class_ids: Mapping[str, int], slide_size: tuple[int, int]
) -> GeoJSONLabels:
    """Read QuPath-style annotations for training, repairing what can be repaired.

    Read by :func:`wsiseg.io.geojson.read_geojson_areas`: invalid polygons
    (self-intersections, bow-ties) are made valid; empty, null and non-area
    geometries (points, lines) are skipped. Here parts outside the slide are
    clipped off and unknown or missing classes kept as ignored areas. Each repair
    is logged once per file with the features it touched.

    Raises
    ------
    InputError
        Unreadable or malformed JSON, a feature that is not a Feature, a malformed
        geometry or non-finite coordinates (naming the file and feature), or a file
        without any area of a known class.
    """
    slide = box(0, 0, slide_size[0], slide_size[1])
    notes: dict[str, list[int]] = {}  # what was clipped or ignored -> feature indices
    unknown: set[str] = set()
    areas: list[tuple[int, BaseGeometry]] = []
    ignored: list[BaseGeometry] = []
    for feature in read_geojson_areas(path, bare_geometry=False):
        i, area = feature.index, feature.geometry
        if not area.within(slide):
            area = as_multipolygon(area.intersection(slide))
            if area.is_empty:
                notes.setdefault("wholly outside the slide (skipped)", []).append(i)
                continue
            notes.setdefault("clipped to the slide", []).append(i)
        name = feature.class_name
        if name is not None and name in class_ids:
            areas.append((class_ids[name], area))
        else:
            label = repr(name) if name is not None else "none"
            unknown.add(label)
            notes.setdefault(f"of unknown class {label} (ignored, not background)", []).append(i)
            ignored.append(area)
    log_feature_notes(log, path, notes)
    if not areas:
        known = ", ".join(class_ids)
        found = ", ".join(sorted(unknown)) or "none"
        raise InputError(
            f"{path}: no annotated areas of the model's classes ({known}); classes found: {found}"
        )
    return GeoJSONLabels(areas, ignored)


def rasterise_labels(labels: GeoJSONLabels, size: tuple[int, int], downsample: float) -> np.ndarray:
    """Labels on a grid of ``downsample`` level-0 pixels per pixel covering ``size`` (w, h).

    A pixel takes the class of the last area holding its centre; ignored areas are
    `IGNORE_INDEX` where no known class covers them; the rest is background (0).
    """
    w, h = max(1, round(size[0] / downsample)), max(1, round(size[1] / downsample))
    out = np.zeros((h, w), np.uint8)
    for value, geom in [(IGNORE_INDEX, g) for g in labels.ignored] + labels.areas:
        x0, y0, x1, y1 = (float(v) / downsample for v in geom.bounds)
        c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        c1, r1 = min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h)
        if c1 <= c0 or r1 <= r0:
            continue
        inside = polygons_to_mask(
            geom, (r1 - r0, c1 - c0), scale=downsample, offset=(c0 * downsample, r0 * downsample)
        )
        out[r0:r1, c0:c1][inside] = value
    return out


def _slide_beside(geojson: Path) -> Path | None:
    """The slide ``X.<suffix>`` beside ``X.geojson`` (exact names: no glob patterns)."""
    for suffix in GEOJSON_SLIDE_SUFFIXES:
        candidate = geojson.with_name(geojson.stem + suffix)
        if candidate.exists():
            return candidate
    return None


def discover_sources(
    root: Path,
    *,
    data_mpp: float | None = None,
    class_map: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    binary_labels: bool = False,
    panda_class_maps: Mapping[str, Sequence[int]] = PANDA_CLASS_MAPS,
    geojson_downsample: float = 4.0,
    split: str | None = None,
    target: str | None = None,
) -> list[LabeledSource]:
    """Find labeled images under ``root`` in any supported layout.

    For the GlaS and MoNuSeg layouts (`wsiseg.train.layouts`) ``split`` picks the
    official split (default ``all``) and ``target`` the labels (default ``binary``);
    other layouts have no split, and ``target="binary"`` means ``binary_labels``.

    Raises
    ------
    InputError
        If ``root`` is missing or holds nothing usable, or ``split``/``target`` do not
        apply to its layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such data folder")
    layout = read_layout(root, data_mpp)
    if layout is not None:
        chosen = layout.select(split or "all")
        log.info("%s: %s layout, split %s: %d images", root, layout.kind, split, len(chosen))
        return [
            ArraySource(im.name, *layout.load(im, target or "binary"), im.mpp, group=im.patient)
            for im in chosen
        ]
    if split is not None and split != "all":
        raise InputError(
            f"{root}: --split needs a layout with an official split: GlaS (images/, masks/, "
            "grade.csv) or MoNuSeg (images/, masks/, split.csv)"
        )
    if target == "three-class":
        raise InputError(f"{root}: --target three-class needs the GlaS layout (grade.csv)")
    binary_labels = binary_labels or target == "binary"
    sources: list[LabeledSource] = []
    if (root / "train_label_masks").is_dir():
        sources.extend(_panda_sources(root, panda_class_maps))
    else:
        for mask in sorted(root.glob("*_mask.tiff")):
            image = mask.with_name(mask.name[: -len("_mask.tiff")] + ".tiff")
            if image.is_file():
                sources.append(SlideSource(image, mask, tuple(class_map) if class_map else None))
        if not sources and class_names:
            ids = {n: i for i, n in enumerate(class_names)}
            for gj in sorted(root.glob("*.geojson")):
                slide = _slide_beside(gj)
                if slide is None:
                    log.warning("%s: no slide of the same name beside it; skipped", gj)
                    continue
                with open_slide(slide, mpp=data_mpp) as r:
                    size = r.level_dimensions[0]
                    labels = read_geojson_labels(gj, ids, size)
                    img = r.thumbnail(r.mpp[0] * geojson_downsample)
                    mpp = r.mpp[0] * geojson_downsample
                lab = rasterise_labels(labels, size, geojson_downsample)
                lab = lab[: img.shape[0], : img.shape[1]]
                img = img[: lab.shape[0], : lab.shape[1]]
                sources.append(ArraySource(gj.stem, img, lab, mpp))
        if not sources:
            n = len(class_names) if class_names else None
            sources.extend(_pair_sources(root, data_mpp, class_map, binary_labels, n))
    if not sources:
        raise InputError(
            f"{root}: no labeled images found (expected NAME.tiff + NAME_mask.tiff, a PANDA "
            "layout, image/mask pairs, or slides with GeoJSON)"
        )
    log.info("%s: %d labeled images", root, len(sources))
    return sources
