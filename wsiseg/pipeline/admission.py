"""Admission: is a slide one that a model can read? Checked once a slide is open, before planning.

A slide is **refused** when

- it is not a brightfield (transmitted light) scan: the vendor metadata names a
  fluorescence filter cube, excitation or emission wavelength (Hamamatsu NDPI shading data,
  OME channels), or, where metadata is silent, the thumbnail has no bright background -
  in transmitted light glass, lumen and fat are the brightest parts of any slide, near
  the scanner's white; in fluorescence the glass is black;
- its pixel size is more than `MAX_MPP_RATIO` times coarser than the model's ``task_mpp``
  (it would be upsampled to be read, inventing the detail the model looks for).

Colour far from the model's training images (when its checkpoint stores `colour_stats`)
gives a **warning**. ``force`` admits a refused slide and is recorded as such.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsiseg.colour import ColourStats, colour_distance, colour_stats
from wsiseg.io.reader import SlideReader
from wsiseg.models.config import ModelConfig

__all__ = [
    "MAX_MPP_RATIO",
    "MIN_BACKGROUND_LUMA",
    "MAX_COLOUR_DISTANCE",
    "Admission",
    "admit_slide",
    "fluorescence_evidence",
    "dark_background",
]

log = logging.getLogger(__name__)

#: Refuse a slide whose pixel size is more than this times the model's task_mpp.
MAX_MPP_RATIO = 2.0
#: Brightfield: the brightest 2 % of the thumbnail are at least this bright (0-255 luma).
MIN_BACKGROUND_LUMA = 100.0
#: Warn when a slide's tissue OD mean is this many training spreads from the training mean.
MAX_COLOUR_DISTANCE = 2.0
_THUMB_PX = 512  # long side of the thumbnail looked at (at most 8 µm/px)
_MIN_TISSUE_PX = 200  # fewer tissue pixels than this: no colour comparison

# Hamamatsu NDPI "NDP Shading Data" and similar text: a filter cube or a wavelength in nm.
# (The AHEX[n].fluorescence calibration keys alone say nothing: brightfield NDPI files
# carry them too, as all-zero tables.)
_WAVELENGTH = re.compile(r"(Excitation|Emission)\s*Wave\s*Length\s*[=:]\s*\"?(\d+(?:\.\d+)?)", re.I)
_CUBE = re.compile(r"CubeName\s*=\s*([^\r\n;]+)", re.I)
_FLUO_WORDS = ("fluorescence", "epifluorescence")


@dataclass
class Admission:
    """The outcome of `admit_slide`.

    ``refusals`` say why the model cannot read the slide, ``warnings`` what may go
    wrong; ``forced`` is true when refusals were overridden; ``slide_mpp``: the pixel
    size the checks read (metadata or ``--mpp``).
    """

    refusals: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    forced: bool = False
    slide_mpp: float | None = None

    @property
    def admitted(self) -> bool:
        return not self.refusals or self.forced

    @property
    def reason(self) -> str:
        """All refusals on one line."""
        return "; ".join(self.refusals)

    def to_dict(self) -> dict[str, Any]:
        return {
            "admitted": self.admitted,
            "refusals": list(self.refusals),
            "warnings": list(self.warnings),
            "forced": self.forced,
        }


def _ome_evidence(xml_text: str) -> str | None:
    try:
        root = ET.fromstring(xml_text.encode("utf-8", "replace"))
    except ET.ParseError:
        return None
    for el in root.iter():
        if not el.tag.endswith("Channel"):
            continue
        a = el.attrib
        for key in ("IlluminationType", "ContrastMethod", "AcquisitionMode"):
            value = a.get(key, "")
            if "fluorescence" in value.lower():
                return f"OME channel {a.get('Name') or a.get('ID', '?')}: {key}={value}"
        for key in ("ExcitationWavelength", "EmissionWavelength"):
            if key in a:
                return f"OME channel {a.get('Name') or a.get('ID', '?')}: {key}={a[key]}"
    return None


def fluorescence_evidence(properties: Mapping[str, str]) -> str | None:
    """What in a slide's metadata says it is a fluorescence scan (None if nothing)."""
    for key, value in properties.items():
        low = value.lower()
        if "<ome" in low:  # OME-XML: only its channel fields count
            found = _ome_evidence(value) if "channel" in low else None
            if found:
                return found
            continue
        text = f"{key}={value}"
        wl = _WAVELENGTH.search(text)
        if wl and float(wl.group(2)) > 0:
            cube = _CUBE.search(text)
            where = f", filter cube {cube.group(1).strip()}" if cube else ""
            name = re.sub(r"[\r\n;]+", " ", key).strip()[:40]
            return f"{wl.group(1).lower()} wavelength {wl.group(2)} nm{where} in metadata {name!r}"
        if key.lower().endswith(("illuminationtype", "contrastmethod", "imaging.mode")) and any(
            w in low for w in _FLUO_WORDS
        ):
            return f"metadata {key}={value}"
    return None


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def dark_background(thumbnail: np.ndarray) -> str | None:
    """Why the thumbnail is not brightfield (None if it may be): no bright background."""
    luma = _luma(thumbnail).ravel()
    if luma.size == 0:
        return None
    bright = float(np.percentile(luma, 98))
    if bright < MIN_BACKGROUND_LUMA:
        return (
            f"dark background: the brightest 2 % of the thumbnail reach only {bright:.0f}/255 "
            "(brightfield glass is near white): not a brightfield scan"
        )
    return None


def _thumbnail(reader: SlideReader) -> np.ndarray:
    mpp0 = reader.mpp[0]
    w, h = reader.level_dimensions[0]
    mpp = max(mpp0, min(8.0, max(w, h) * mpp0 / _THUMB_PX))
    return reader.thumbnail(mpp)


def admit_slide(
    reader: SlideReader,
    model_config: ModelConfig,
    model_metadata: Mapping[str, Any] | None,
    force: bool = False,
    *,
    thumbnail: np.ndarray | None = None,
) -> Admission:
    """Check an open slide against a model before it is segmented.

    Parameters
    ----------
    reader : SlideReader
        The open slide (its pixel size resolved, ``--mpp`` applied).
    model_config : ModelConfig
        The model's config (``task_mpp``).
    model_metadata : mapping or None
        The checkpoint's config JSON; its ``colour_stats`` (if any) are compared.
    force : bool
        Admit the slide even if refused (``forced`` is then true).
    thumbnail : numpy.ndarray, optional
        An RGB thumbnail of the whole slide, if one is at hand (else one is read); its
        pixels are subsampled by a whole step to at most 512 px a side for the checks.
    """
    out = Admission(slide_mpp=float(reader.mpp[0]))
    evidence = fluorescence_evidence(reader.properties)
    if evidence:
        out.refusals.append(f"not a brightfield scan (fluorescence: {evidence})")
    mpp = reader.mpp[0]
    task = model_config.task_mpp
    if mpp > MAX_MPP_RATIO * task:
        out.refusals.append(
            f"pixel size {mpp:.3g} µm/px is {mpp / task:.1f}x coarser than the model's "
            f"{task:g} µm/px (more than {MAX_MPP_RATIO:g}x): the slide lacks the detail "
            "the model reads"
        )
    if thumbnail is None:
        thumb = _thumbnail(reader)
    else:  # statistics of pixels: every step-th pixel, <= _THUMB_PX a side, will do
        step = -(-max(thumbnail.shape[:2]) // _THUMB_PX)
        thumb = thumbnail[::step, ::step]
    if not evidence:
        dark = dark_background(thumb)
        if dark:
            out.refusals.append(dark)
    reference = (model_metadata or {}).get("colour_stats")
    if reference is not None and not any("brightfield" in r for r in out.refusals):
        try:
            ref = ColourStats.from_dict(reference)
        except (KeyError, TypeError, ValueError):
            log.warning("the model's colour statistics are malformed; colour not compared")
            ref = None
        stats = colour_stats([thumb])
        if ref is not None and stats is not None and stats.pixels >= _MIN_TISSUE_PX:
            gap = colour_distance(stats, ref)
            if gap > MAX_COLOUR_DISTANCE:
                out.warnings.append(
                    f"tissue colour is far from the model's training images ({gap:.1f} "
                    f"spreads from their mean optical density; more than "
                    f"{MAX_COLOUR_DISTANCE:g}): results may be unreliable"
                )
    if out.refusals and force:
        out.forced = True
        log.info("%s: refused but forced: %s", reader.path, out.reason)
    return out
