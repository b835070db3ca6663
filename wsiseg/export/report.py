"""Self-contained HTML report of a ``wsiseg segment`` run, for people to look at.

One page, no network: the CSS is inline, every image is embedded as a base64
``data:`` URI read from the slide's output folder (downscaled when very large), and
there is no JavaScript. The page has a header with the run's settings, a table of
every slide with its status and class fractions, then one section per slide
(``<section class="slide" id="...">``) with its thumbnail, the overlay (mask,
learned sampling density and legend, as drawn by :mod:`wsiseg.export.overlay`),
the class areas, key figures and warnings (failures, refusals, slides segmented
with ``--force``, admission warnings, no tissue, pixel size given with ``--mpp``).
Each slide's section names the model its results came from and that model card's
notice (e.g. "not for diagnosis"; from its summary, else its ``run.json`` record);
the header and, printed, the foot of every page carry the notice of the slides with
results (the header says "varies" where their models differ). All
text is escaped; missing or unreadable images give a note.

Records in, a file out: the run, slide and summary records are read through the
protocols below (`wsiseg.pipeline.outputs` defines the records that satisfy them;
this layer does not import the pipeline).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import logging
import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from wsiseg import __version__
from wsiseg.export.overlay import PngNotStreamable, read_png_bands
from wsiseg.fileops import atomic_path
from wsiseg.models.checkpoint import DEFAULT_NOTICE

__all__ = [
    "REPORT_TITLE",
    "STATUS_LABELS",
    "ClassAreaView",
    "RunView",
    "SlideView",
    "SummaryView",
    "is_own_report",
    "render_report",
    "write_report",
]

log = logging.getLogger(__name__)

#: Status of a slide -> (label shown, CSS modifier of its badge).
STATUS_LABELS: dict[str, tuple[str, str]] = {
    "done": ("Done", "ok"),
    "skipped": ("Done earlier", "info"),
    "no tissue": ("No tissue", "warn"),
    "refused": ("Refused", "error"),
    "failed": ("Failed", "error"),
}


#: The page's title; it tells a report of wsiseg from another file of the same name.
REPORT_TITLE = "wsiseg segmentation report"
#: The report's own checksum (sha256 of the page with this tag's content empty), so a
#: later run can tell the page it wrote from one edited or saved over since.
_DIGEST_TAG = '<meta name="wsiseg-digest" content="{}">'
_DIGEST_RE = re.compile(rb'<meta name="wsiseg-digest" content="([0-9a-f]*)">')


class ClassAreaView(Protocol):
    """One class's area in a summary."""

    @property
    def area_mm2(self) -> float: ...
    @property
    def fraction_of_tissue(self) -> float | None: ...


class RoiView(Protocol):
    """The ROI a slide was segmented within."""

    @property
    def area_mm2(self) -> float | None: ...


class SummaryView(Protocol):
    """What the report reads of a slide's ``summary.json``."""

    @property
    def sampler(self) -> str: ...
    @property
    def task_mpp(self) -> float: ...
    @property
    def region_px(self) -> int: ...
    @property
    def sample_px(self) -> int: ...
    @property
    def colours(self) -> Mapping[str, Sequence[int]]: ...
    @property
    def slide_mpp(self) -> float: ...
    @property
    def mpp_source(self) -> str: ...
    @property
    def output_mpp(self) -> float: ...
    @property
    def regions(self) -> int: ...
    @property
    def features(self) -> int: ...
    @property
    def tissue_area_mm2(self) -> float: ...
    @property
    def pixels_decoded_per_tissue_pixel(self) -> float | None: ...
    @property
    def wall_seconds(self) -> float | None: ...
    @property
    def seconds(self) -> Mapping[str, float]: ...
    @property
    def classes(self) -> Mapping[str, ClassAreaView]: ...
    @property
    def roi(self) -> RoiView | None: ...
    @property
    def model(self) -> str: ...
    @property
    def model_sha256(self) -> str: ...
    @property
    def notice(self) -> str: ...


class SlideView(Protocol):
    """One slide's line of the run: path, status, message, output folder, admission."""

    @property
    def slide(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def out(self) -> str | None: ...
    @property
    def refusals(self) -> Sequence[str]: ...
    @property
    def warnings(self) -> Sequence[str]: ...
    @property
    def forced(self) -> bool: ...
    @property
    def model(self) -> str | None: ...
    @property
    def model_sha256(self) -> str | None: ...
    @property
    def notice(self) -> str | None: ...


class RunView(Protocol):
    """The run's settings."""

    @property
    def model(self) -> str: ...
    @property
    def model_sha256(self) -> str: ...
    @property
    def model_config(self) -> Mapping[str, Any]: ...
    @property
    def segment_config(self) -> Mapping[str, Any]: ...
    @property
    def output_mpp(self) -> float | None: ...
    @property
    def cluster(self) -> str: ...
    @property
    def workers(self) -> int | None: ...
    @property
    def wall_seconds(self) -> float | None: ...
    @property
    def notice(self) -> str: ...


#: A slide and its summary (None when it has no results).
SlideEntry = tuple[SlideView, SummaryView | None]

#: Largest embedded widths (px); larger images are downscaled before embedding.
_MAX_THUMB_PX = 1600
_MAX_OVERLAY_PX = 3200
_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}

_CSS = """
:root {
  --ink: #1d2733; --muted: #5f6b7a; --line: #dfe3e8; --bg: #f3f4f6; --card: #ffffff;
  --accent: #34495e; --ok: #1e7b3a; --ok-bg: #e4f4e8; --info: #2f5f8a; --info-bg: #e5eef7;
  --warn: #8a5a00; --warn-bg: #fdf3dc; --error: #a3211b; --error-bg: #fbe6e4;
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body {
  margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    "Noto Sans", "Liberation Sans", sans-serif;
}
main { max-width: 1180px; margin: 0 auto; padding: 28px 24px 40px; }
h1 { font-size: 24px; margin: 0 0 2px; letter-spacing: -0.01em; }
h2 { font-size: 19px; margin: 0; overflow-wrap: anywhere; }
h3 {
  font-size: 12px; margin: 0 0 8px; color: var(--muted); font-weight: 600;
  text-transform: uppercase; letter-spacing: 0.06em;
}
.card {
  background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 20px 24px; margin: 0 0 20px; box-shadow: 0 1px 2px rgba(16, 24, 40, 0.04);
}
.card > :last-child { margin-bottom: 0; }
.sub { color: var(--muted); margin: 0 0 16px; font-size: 13px; }
.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
  font-size: 12.5px; }
dl.settings {
  display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 12px 24px; margin: 0;
}
dl.settings div { min-width: 0; }
dl.settings dt, dl.figures dt { color: var(--muted); font-size: 12px; }
dl.settings dd { margin: 0; font-weight: 600; overflow-wrap: anywhere; }
dl.settings dd .mono, dl.settings dd small { font-weight: 400; }
dl.settings dd small { color: var(--muted); }
.counts { display: flex; gap: 8px; flex-wrap: wrap; margin: 16px 0 0; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { padding: 7px 10px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; background: #f8f9fb; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:last-child td { border-bottom: none; }
tr.total td { font-weight: 600; border-top: 2px solid var(--line); }
td.name { overflow-wrap: anywhere; min-width: 210px; }
td.name a { color: var(--ink); font-weight: 600; text-decoration: none; }
td.name a:hover { text-decoration: underline; }
td.note { color: var(--muted); font-size: 13px; overflow-wrap: break-word; min-width: 11em;
  max-width: 300px; }
.badge {
  display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px;
  font-weight: 600; white-space: nowrap; border: 1px solid transparent;
}
.badge.ok { color: var(--ok); background: var(--ok-bg); border-color: #bfe3c9; }
.badge.info { color: var(--info); background: var(--info-bg); border-color: #c3d6ea; }
.badge.warn { color: var(--warn); background: var(--warn-bg); border-color: #f0d9a0; }
.badge.error { color: var(--error); background: var(--error-bg); border-color: #f1bdb8; }
.slide-head { display: flex; align-items: center; gap: 12px; flex-wrap: wrap; }
.slide-head .idx { color: var(--muted); font-weight: 600; }
.path { color: var(--muted); font-size: 12.5px; margin: 2px 0 14px; overflow-wrap: anywhere; }
.alert { border-radius: 6px; padding: 10px 14px; margin: 0 0 14px; font-size: 14px;
  border-left: 4px solid; overflow-wrap: anywhere; }
.alert.error { background: var(--error-bg); border-color: var(--error); }
.alert.warn { background: var(--warn-bg); border-color: #d99a00; }
.alert.info { background: var(--info-bg); border-color: var(--info); }
.alert strong { margin-right: 4px; }
.alert pre { white-space: pre-wrap; margin: 6px 0 0; }
.images { display: flex; gap: 16px; align-items: flex-start; margin: 0 0 18px; }
figure { margin: 0; min-width: 0; flex: 1 1 0; }
figure img { display: block; width: 100%; height: auto; border: 1px solid var(--line);
  border-radius: 4px; background: #fff; }
figcaption { font-size: 12px; color: var(--muted); margin-top: 4px; }
.missing { border: 1px dashed #c4cad3; border-radius: 4px; padding: 18px; color: var(--muted);
  font-size: 13px; background: #fafbfc; }
.details { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 24px; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
  border: 1px solid rgba(0, 0, 0, 0.35); margin-right: 8px; vertical-align: -1px; }
.bar { position: relative; height: 8px; background: #eef0f3; border-radius: 4px;
  min-width: 80px; margin-top: 6px; }
.bar span { position: absolute; left: 0; top: 0; bottom: 0; border-radius: 4px; }
dl.figures { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 10px 18px;
  margin: 0; }
dl.figures dd { margin: 0; font-weight: 600; font-variant-numeric: tabular-nums; }
dl.figures dd small { font-weight: 400; color: var(--muted); }
.phases { font-size: 12.5px; color: var(--muted); margin: 14px 0 0; line-height: 1.7; }
.phases span { white-space: nowrap; }
.phases b { color: var(--ink); font-weight: 600; font-variant-numeric: tabular-nums; }
footer { color: var(--muted); font-size: 12px; text-align: center; margin-top: 8px; }
.notice { background: var(--warn-bg); border: 1px solid #f0d9a0; color: var(--warn);
  border-radius: 6px; padding: 6px 12px; margin: 0 0 14px; font-size: 13px; font-weight: 600; }
.notice.page { display: none; }
@media (max-width: 900px) {
  dl.settings { grid-template-columns: repeat(2, minmax(0, 1fr)); }
  .details { grid-template-columns: minmax(0, 1fr); }
}
@media print {
  body { background: #fff; }
  .card { box-shadow: none; break-inside: avoid; }
  .notice.page { display: block; position: fixed; bottom: 0; left: 0; right: 0; margin: 0; }
  main { padding-bottom: 48px; }
  table { font-size: 12px; }
  th, td { padding: 5px 6px; }
  td.name { min-width: 0; }
}
"""


def _e(value: object) -> str:
    """HTML-escape any value's text (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def _num(value: object) -> float | None:
    """A finite float from a JSON value, or None (bools and non-numbers are None)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _fmt(value: float | None, digits: int = 3) -> str:
    """A number with about ``digits`` significant digits (no exponent), or an em dash."""
    if value is None:
        return "\u2014"
    if value == 0:
        return "0"
    mag = math.floor(math.log10(abs(value)))
    decimals = max(0, min(6, digits - 1 - mag))
    return f"{value:,.{decimals}f}"


def _fmt_pct(fraction: float | None) -> str:
    """A fraction as a percentage with one decimal (``<0.1 %`` for tiny non-zero ones)."""
    if fraction is None:
        return "\u2014"
    pct = fraction * 100.0
    if 0 < pct < 0.05:
        return "&lt;0.1&#8201;%"
    return f"{pct:.1f}&#8201;%"


def _rgb(colour: object) -> str | None:
    """A CSS ``rgb()`` from a ``[r, g, b]`` list of numbers, clamped; None if malformed."""
    if not isinstance(colour, Sequence) or isinstance(colour, str) or len(colour) < 3:
        return None
    vals = [_num(c) for c in colour[:3]]
    if any(v is None for v in vals):
        return None
    r, g, b = (max(0, min(255, round(v or 0.0))) for v in vals)
    return f"rgb({r}, {g}, {b})"


def _slide_name(slide: str) -> str:
    """The file (or folder) name of a slide path, the path itself if it has none."""
    name = Path(slide).name if slide else ""
    return name or slide or "(unnamed slide)"


def _anchor(index: int, name: str) -> str:
    """A unique, URL-safe section id for the slide at ``index``."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40]
    return f"slide-{index + 1}" + (f"-{slug}" if slug else "")


@dataclass(frozen=True)
class _Embedded:
    """An image ready for an ``<img>``, or why there is none."""

    uri: str | None
    width: int = 0
    height: int = 0
    note: str = ""


def _encoded(img: Image.Image, photo: bool) -> tuple[bytes, int, int, str]:
    """``img`` as JPEG (photographic content) or PNG bytes, its size and MIME type."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=88) if photo else img.save(buf, format="PNG")
    return buf.getvalue(), img.width, img.height, "image/jpeg" if photo else "image/png"


def _box_reduced_png(path: Path, max_width: int) -> Image.Image | None:
    """A PNG wider than ``max_width`` brought to that width while it is decoded band by
    band (k x k box means, k = width // max_width, then Lanczos on the small image), so
    a large overlay is never held whole; None when the file is not such a PNG (the
    caller reads it with PIL)."""
    try:
        (h, w), bands = read_png_bands(path, band_rows=16)
        if w <= max_width or h == 0:
            return None
        k = w // max_width
        wk = w // k * k
        out = np.empty((-(-h // k), wk // k, 3), np.uint8)
        row, seen, carry = 0, 0, np.zeros((0, w, 3), np.uint8)
        for band in bands:
            seen += band.shape[0]
            buf = np.concatenate([carry, band]) if carry.size else band
            # whole boxes of k rows; after the last row, a shorter box of what is left
            n = buf.shape[0] if seen == h else buf.shape[0] // k * k
            for r0 in range(0, n, k):
                part = buf[r0 : min(n, r0 + k), :wk]
                sums = part.reshape(part.shape[0], wk // k, k, 3).sum(axis=(0, 2), dtype=np.uint32)
                cells = part.shape[0] * k
                out[row] = (sums + cells // 2) // cells
                row += 1
            carry = buf[n:]
    except (OSError, PngNotStreamable, zlib.error):
        return None
    size = (max_width, max(1, round(h * max_width / w)))
    return Image.fromarray(out[:row]).resize(size, Image.Resampling.LANCZOS)


def _embed_image(path: Path, max_width: int, *, photo: bool) -> _Embedded:
    """Read ``path`` as a base64 data URI, downscaled to ``max_width`` when wider.

    Parameters
    ----------
    path : Path
        Image file (PNG or JPEG).
    max_width : int
        Largest embedded width in pixels; wider images are resized (Lanczos).
    photo : bool
        Re-encode a downscaled image as JPEG (photographic content) instead of PNG.

    Returns
    -------
    _Embedded
        The data URI and size, or ``uri=None`` with a note when the file is missing
        or is not a readable image.
    """
    if not path.is_file():
        return _Embedded(None, note=f"{path.name} not found in {path.parent}")
    reduced = _box_reduced_png(path, max_width)
    if reduced is not None:
        return _data_uri(*_encoded(reduced, photo))
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or ""
            width, height = img.size
            if width <= max_width and fmt in _MIME:
                mime = _MIME[fmt]
            else:
                scale = min(1.0, max_width / width)
                size = (max(1, round(width * scale)), max(1, round(height * scale)))
                rgb = img if img.mode == "RGB" else img.convert("RGB")  # no second copy
                data, width, height, mime = _encoded(
                    rgb.resize(size, Image.Resampling.LANCZOS), photo
                )
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("report: cannot embed %s: %s", path, exc)
        return _Embedded(None, note=f"{path.name} could not be read ({type(exc).__name__})")
    return _data_uri(data, width, height, mime)


def _data_uri(data: bytes, width: int, height: int, mime: str) -> _Embedded:
    return _Embedded(f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}", width, height)


def _class_colours(run: RunView) -> tuple[dict[str, str], str | None]:
    """Class name -> CSS colour from the run's model config, and the background class."""
    classes = run.model_config.get("classes")
    colours: dict[str, str] = {}
    background: str | None = None
    if isinstance(classes, Sequence) and not isinstance(classes, str):
        for i, item in enumerate(classes):
            if not isinstance(item, Mapping) or "name" not in item:
                continue
            name = str(item["name"])
            if i == 0:
                background = name
            css = _rgb(item.get("color"))
            if css is not None:
                colours[name] = css
    return colours, background


def _summary_colours(summary: SummaryView | None) -> dict[str, str]:
    """Class name -> CSS colour as a slide's summary records them (none in older ones)."""
    if summary is None:
        return {}
    return {n: css for n, c in summary.colours.items() if (css := _rgb(c)) is not None}


def _tissue_classes(summary: SummaryView | None, background: str | None) -> list[str]:
    """Names of a summary's classes without its class 0 (``background``; when that is
    unknown, the summary's first class: summaries list classes in the model's order)."""
    if summary is None:
        return []
    names = list(summary.classes)
    if background is None:
        return names[1:]
    return [n for n in names if n != background]


def _class_entry(summary: SummaryView | None, name: str) -> tuple[float | None, float | None]:
    """(area in mm², fraction of tissue) of a class in a summary; None where absent."""
    entry = summary.classes.get(name) if summary is not None else None
    if entry is None:
        return None, None
    return _num(entry.area_mm2), _num(entry.fraction_of_tissue)


def _seconds(summary: SummaryView | None) -> float | None:
    """Wall time of a slide: ``wall_seconds``, else the sum of its timed steps."""
    if summary is None:
        return None
    if summary.wall_seconds is not None:
        return summary.wall_seconds
    return sum(summary.seconds.values()) if summary.seconds else None


def _budget(model_cfg: Mapping[str, Any]) -> str:
    """The sampling budget of a model config as text (e.g. ``1/256 of pixels``)."""
    sampler = model_cfg.get("sampler")
    if sampler == "tiled":
        return "full resolution"
    sample, region = _num(model_cfg.get("sample_px")), _num(model_cfg.get("region_px"))
    if not sample or not region:
        return "\u2014"
    ratio = (region / sample) ** 2
    frac = f"1/{round(ratio)}" if abs(ratio - round(ratio)) < 1e-6 else f"{1 / ratio:.4f}"
    return f"{frac} of pixels ({sample:g}\u00b2 samples per {region:g}\u00b2 region)"


@dataclass(frozen=True)
class _Model:
    """The model a slide's results came from: path, sha256 and its card's notice."""

    path: str
    sha256: str
    notice: str


def _slide_model(run: RunView, slide: SlideView, summary: SummaryView | None) -> _Model:
    """A slide's model: its summary's, else its run.json record's, else the run's (a
    notice recorded nowhere: the run's for the run's model, else the default)."""
    path = (summary.model if summary is not None else "") or slide.model or run.model
    sha = (summary.model_sha256 if summary is not None else "") or slide.model_sha256 or ""
    notice = (summary.notice if summary is not None else "") or slide.notice or ""
    if not notice and sha in ("", run.model_sha256):
        notice = run.notice
    return _Model(path or "\u2014", sha or run.model_sha256, notice or DEFAULT_NOTICE)


def _done_models(run: RunView, slides: Sequence[SlideEntry]) -> list[_Model]:
    """The distinct models of the slides with results (none: the run's), in order."""
    found = [_slide_model(run, s, m) for s, m in slides if s.status in ("done", "skipped")]
    if not found:
        found = [_Model(run.model or "\u2014", run.model_sha256, run.notice or DEFAULT_NOTICE)]
    return list(dict.fromkeys(found))


def _notice(text: str, kind: str = "") -> str:
    return f'<p class="notice{" " + kind if kind else ""}">{_e(text)}</p>'


def _model_text(model: _Model, sep: str = "<br>") -> str:
    """The model's file name (its path on hover) and short checksum."""
    path, sha = model.path, model.sha256
    return f'<span title="{_e(path)}">{_e(Path(path).name or path)}</span>' + (
        f'{sep}<span class="mono" title="sha256 {_e(sha)}">sha256 {_e(sha[:12])}</span>'
    )


def _one(values: Iterable[object]) -> object | None:
    """The value when all ``values`` agree, else None."""
    found = set(values)
    return found.pop() if len(found) == 1 else None


def _runs_model(run: RunView, models: Sequence[_Model]) -> bool:
    """Whether the results' ``models`` are all the run's own (so the run's model config
    describes them); slides kept from an earlier run may come from another."""
    return all(m.sha256 == run.model_sha256 for m in models)


def _header(run: RunView, slides: Sequence[SlideEntry], models: Sequence[_Model]) -> str:
    """The page header: title, run settings and a count of slides by status.

    ``models``: those of the slides' results (`_done_models`). Model settings come from
    the run's model config when the results came from that model; otherwise from the
    slides' summaries where they agree, else "varies"."""
    sc = run.segment_config
    notices = list(dict.fromkeys(m.notice for m in models))
    varies = "varies <small>(see each slide)</small>"
    no_task = "\u2014"
    if _runs_model(run, models):
        mc = run.model_config
        sampler = _e(mc.get("sampler", "\u2014"))
        budget = _e(_budget(mc))
        task_mpp = _num(mc.get("task_mpp"))
    else:
        done = [m for s, m in slides if m is not None and s.status in ("done", "skipped")]
        unknown = varies if done else "\u2014"  # no summary to read them from
        one_sampler = _one(m.sampler for m in done)
        sampler = _e(one_sampler) if one_sampler else unknown
        budget = _e(_summary_budget(done[0])) if _one(map(_summary_budget, done)) else unknown
        task_mpp = _num(_one(m.task_mpp for m in done)) or None  # 0: not recorded
        no_task = unknown
    out_mpp = _num(sc.get("output_mpp"))
    # Slides kept from earlier runs may have other output pixel sizes than this run's.
    per_slide = sorted({v for _, m in slides if m is not None and (v := _num(m.output_mpp))})
    if len(per_slide) > 1:
        listed = ", ".join(f"{v:.6g}" for v in per_slide)
        out_mpp_text = f"varies: {listed} µm/px <small>(see each slide)</small>"
    elif per_slide and per_slide[0] != (out_mpp or run.output_mpp):
        out_mpp_text = f"{_fmt(per_slide[0])} µm/px"
    elif out_mpp is None and run.output_mpp is not None:
        out_mpp_text = f"{_fmt(run.output_mpp)} µm/px <small>(default)</small>"
    elif out_mpp is not None:
        out_mpp_text = f"{_fmt(out_mpp)} µm/px"
    elif task_mpp is not None:
        out_mpp_text = f"{_fmt(task_mpp * 4)} µm/px <small>(default, 4\u00d7 task)</small>"
    else:
        out_mpp_text = "default"
    workers = run.workers
    cluster = run.cluster or "local"
    items: list[tuple[str, str]] = [
        (
            "Model",
            _model_text(models[0]) if len({(m.path, m.sha256) for m in models}) == 1 else varies,
        ),
        ("Sampler", sampler),
        ("Budget", budget),
        ("Task pixel size", f"{_fmt(task_mpp)} µm/px" if task_mpp is not None else no_task),
        ("Output pixel size", out_mpp_text),
        ("Cluster", _e(cluster)),
        ("Workers", _e(workers) if workers is not None else "default"),
        ("Device", _e(sc.get("device", "\u2014"))),
    ]
    wall = _num(run.wall_seconds)
    if wall is not None:
        items.append(("Last run's time", f"{_fmt(wall)} s"))
    settings = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in items)
    counts: dict[str, int] = {}
    for s, _ in slides:
        counts[s.status] = counts.get(s.status, 0) + 1
    badges = "".join(
        f'<span class="badge {STATUS_LABELS.get(st, (st, "info"))[1]}">'
        f"{n} {_e(STATUS_LABELS.get(st, (st, ''))[0].lower())}</span>"
        for st, n in counts.items()
    )
    now = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    n = len(slides)
    return (
        '<header class="card">'
        "<h1>Segmentation report</h1>"
        f'<p class="sub">{n} slide{"s" if n != 1 else ""} \u00b7 generated {_e(now)} '
        f"by wsiseg {_e(__version__)}</p>"
        + (_notice(notices[0]) if len(notices) == 1 else _notice("Notice: varies (see each slide)"))
        + f'<dl class="settings">{settings}</dl>'
        f'<div class="counts">{badges}</div>'
        "</header>"
    )


def _badge(status: str) -> str:
    label, kind = STATUS_LABELS.get(status, (status or "unknown", "info"))
    return f'<span class="badge {kind}">{_e(label)}</span>'


def _overview(
    slides: Sequence[SlideEntry],
    anchors: Sequence[str],
    class_names: Sequence[str],
    colours: Mapping[str, str],
) -> str:
    """The table of every slide: status, tissue area, class fractions, time, message."""
    head = "".join(
        f'<th class="num"><span class="swatch" style="background: {colours[c]}"></span>{_e(c)}</th>'
        if c in colours
        else f'<th class="num">{_e(c)}</th>'
        for c in class_names
    )
    rows = []
    for i, ((s, summary), anchor) in enumerate(zip(slides, anchors, strict=True)):
        status = s.status
        cells = "".join(
            f'<td class="num">{_fmt_pct(_class_entry(summary, c)[1])}</td>' for c in class_names
        )
        tissue = _num(summary.tissue_area_mm2) if summary is not None else None
        secs = _seconds(summary)
        message = s.message
        if status in ("done", "skipped"):
            notes = [f"forced: {'; '.join(s.refusals)}"] if s.forced else []
            message = "; ".join(notes + [f"warning: {w}" for w in s.warnings])
        short = message if len(message) <= 140 else message[:139] + "\u2026"
        rows.append(
            f'<tr><td class="num">{i + 1}</td>'
            f'<td class="name"><a href="#{anchor}">{_e(_slide_name(s.slide))}</a></td>'
            f"<td>{_badge(status)}</td>"
            f'<td class="num">{_fmt(tissue) if tissue is not None else chr(0x2014)}</td>'
            f"{cells}"
            f'<td class="num">{_fmt(secs) if secs is not None else chr(0x2014)}</td>'
            f'<td class="note" title="{_e(message)}">{_e(short)}</td></tr>'
        )
    return (
        '<section class="card overview"><h3>Slides</h3><table>'
        '<thead><tr><th class="num">#</th><th>Slide</th><th>Status</th>'
        f'<th class="num">Tissue mm²</th>{head}<th class="num">Time s</th><th>Note</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
        + (
            '<p class="sub" style="margin: 8px 0 0">Class columns: % of tissue area.</p>'
            if class_names
            else ""
        )
        + "</section>"
    )


def _figure(img: _Embedded, caption: str, alt: str, grow: float) -> str:
    """One ``<figure>``: the image (at most 2x its pixel size) or a note where missing."""
    if img.uri is None:
        return (
            f'<figure style="flex-grow: {grow:g}"><div class="missing">{_e(img.note)}</div>'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    return (
        f'<figure style="flex-grow: {grow:g}; max-width: {2 * img.width}px">'
        f'<img src="{img.uri}" width="{img.width}" height="{img.height}" alt="{_e(alt)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _images(out: Path | None, name: str, sampler: object) -> str:
    """Thumbnail and overlay side by side at the same scale (or notes where missing)."""
    if out is None:
        return (
            '<div class="images"><div class="missing">No output folder recorded for this '
            "slide; images cannot be shown.</div></div>"
        )
    thumb = _embed_image(out / "thumbnail.png", _MAX_THUMB_PX, photo=True)
    overlay = _embed_image(out / "overlay.png", _MAX_OVERLAY_PX, photo=False)
    # Widths in proportion to the images' pixel widths: the thumbnail and the overlay's
    # mask panel (the same pixel grid) are then drawn at the same scale.
    if thumb.uri is not None and overlay.uri is not None:
        grow_t, grow_o = float(thumb.width), float(overlay.width)
    else:
        grow_t, grow_o = 1.0, 2.0
    caption = "Segmentation over the thumbnail"
    if sampler == "learned":
        caption += " \u00b7 learned sampling density (brighter: sampled more densely)"
    return (
        '<div class="images">'
        + _figure(thumb, "Thumbnail", f"Thumbnail of {name}", grow_t)
        + _figure(overlay, caption, f"Segmentation overlay of {name}", grow_o)
        + "</div>"
    )


def _class_table(summary: SummaryView, background: str | None, colours: Mapping[str, str]) -> str:
    names = _tissue_classes(summary, background)
    if not names:
        return '<div><h3>Class areas</h3><p class="sub">No class areas in the summary.</p></div>'
    rows = []
    for c in names:
        area, frac = _class_entry(summary, c)
        colour = colours.get(c, "#9aa4b1")
        width = max(0.0, min(100.0, (frac or 0.0) * 100.0))
        rows.append(
            f'<tr><td><span class="swatch" style="background: {colour}"></span>{_e(c)}'
            f'<div class="bar"><span style="width: {width:.2f}%; background: {colour}"></span>'
            f"</div></td>"
            f'<td class="num">{_fmt(area)}</td><td class="num">{_fmt_pct(frac)}</td></tr>'
        )
    tissue = _num(summary.tissue_area_mm2)
    if tissue is not None:
        rows.append(
            f'<tr class="total"><td>Tissue</td><td class="num">{_fmt(tissue)}</td>'
            '<td class="num">100.0&#8201;%</td></tr>'
        )
    return (
        "<div><h3>Class areas</h3><table><thead><tr><th>Class</th>"
        '<th class="num">Area mm²</th><th class="num">% of tissue</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _summary_budget(summary: SummaryView) -> str:
    """The sampling budget a slide's results came from ("" when its summary predates
    the record)."""
    if summary.sampler != "tiled" and not (summary.region_px and summary.sample_px):
        return ""
    cfg = {"sampler": summary.sampler, "region_px": summary.region_px}
    return _budget({**cfg, "sample_px": summary.sample_px})


def _key_figures(summary: SummaryView) -> str:
    """Regions, decoding cost, pixel sizes and time of one slide."""
    ppt = _num(summary.pixels_decoded_per_tissue_pixel)
    ppt_text = _fmt(ppt)
    if ppt and ppt < 1:
        ppt_text += f" <small>(1 in {_fmt(1 / ppt, 2)})</small>"
    slide_mpp = _num(summary.slide_mpp) or None
    mpp_source = summary.mpp_source
    slide_mpp_text = f"{_fmt(slide_mpp)} µm/px" if slide_mpp is not None else "\u2014"
    if mpp_source == "override":
        slide_mpp_text += " <small>(--mpp)</small>"
    elif mpp_source:
        slide_mpp_text += f" <small>({_e(mpp_source)})</small>"
    out_mpp = _num(summary.output_mpp) or None
    secs = _seconds(summary)
    steps = summary.seconds
    phases = ""
    if steps:
        parts = [
            f"<span>{_e(k)} <b>{_fmt(_num(v))}&#8201;s</b></span>"
            for k, v in steps.items()
            if _num(v) is not None
        ]
        if parts:
            phases = (
                '<p class="phases">Time by phase, summed over workers: '
                + " \u00b7 ".join(parts)
                + "</p>"
            )
    regions = _num(summary.regions)
    features = _num(summary.features)
    task_mpp = _num(summary.task_mpp) or None
    sampling = ", ".join(p for p in (summary.sampler, _summary_budget(summary)) if p)
    items = [
        ("Sampling", _e(sampling) if sampling else "\u2014"),
        ("Task pixel size", f"{_fmt(task_mpp)} µm/px" if task_mpp is not None else "\u2014"),
        ("Regions", f"{regions:,.0f}" if regions is not None else "\u2014"),
        ("Pixels decoded per tissue pixel", ppt_text),
        ("Slide pixel size", slide_mpp_text),
        ("Output pixel size", f"{_fmt(out_mpp)} µm/px" if out_mpp is not None else "\u2014"),
        ("Wall time", f"{_fmt(secs)} s" if secs is not None else "\u2014"),
        ("Annotations (GeoJSON)", f"{features:,.0f}" if features is not None else "\u2014"),
    ]
    roi = summary.roi
    if roi is not None:
        area = _num(roi.area_mm2)
        items.append(("Region of interest", f"{_fmt(area)} mm²" if area is not None else "yes"))
    body = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in items)
    return f'<div><h3>Key figures</h3><dl class="figures">{body}</dl>{phases}</div>'


def _slide_section(
    index: int,
    slide: SlideView,
    summary: SummaryView | None,
    anchor: str,
    background: str | None,
    colours: Mapping[str, str],
    model: _Model,
) -> str:
    """One slide's ``<section>``: name, status, warnings, images, tables."""
    path = slide.slide
    name = _slide_name(path)
    status = slide.status
    message = slide.message
    out = Path(slide.out) if slide.out else None
    alerts = []
    if status in ("failed", "refused"):
        label = "Failed." if status == "failed" else "Refused."
        alerts.append(
            f'<div class="alert error"><strong>{label}</strong>'
            f"<pre>{_e(message or 'no message')}</pre></div>"
        )
    elif status == "no tissue":
        alerts.append(
            '<div class="alert warn"><strong>No tissue found.</strong>Nothing was segmented'
            + (f" ({_e(message)})." if message else ".")
            + "</div>"
        )
    elif status == "skipped":
        alerts.append(
            '<div class="alert info"><strong>Done earlier.</strong>Results of a previous run '
            "with the same model and settings"
            + (f" ({_e(message)})" if message and message != "already done" else "")
            + ".</div>"
        )
    elif status != "done":
        alerts.append(f'<div class="alert warn"><strong>{_e(status)}</strong>{_e(message)}</div>')
    if slide.forced and status != "refused":
        overridden = "".join(f"<li>{_e(r)}</li>" for r in slide.refusals)
        alerts.append(
            '<div class="alert error"><strong>Segmented with --force.</strong>The model '
            f"was not made for this slide; the checks refused it:<ul>{overridden}</ul>"
            "Read these results with that in mind.</div>"
        )
    for text in slide.warnings:
        alerts.append(f'<div class="alert warn"><strong>Warning.</strong>{_e(text)}</div>')
    if summary is not None and summary.mpp_source == "override":
        mpp = _num(summary.slide_mpp) or None
        alerts.append(
            '<div class="alert warn"><strong>Pixel size given by hand.</strong>'
            + (f"{_fmt(mpp)} µm/px" if mpp is not None else "The pixel size")
            + ' came from <span class="mono">--mpp</span>: the slide\'s metadata has none or '
            "an implausible one. Areas are only as right as this value.</div>"
        )
    body = ""
    if status in ("done", "skipped"):
        body = (
            _images(out, name, summary.sampler if summary is not None else None)
            + '<div class="details">'
            + (
                _class_table(summary, background, colours) + _key_figures(summary)
                if summary is not None
                else '<div><p class="sub">No summary.json for this slide.</p></div>'
            )
            + "</div>"
        )
    where = f" \u2192 {_e(out)}" if out is not None else ""
    return (
        f'<section class="slide card" id="{anchor}">'
        f'<div class="slide-head"><span class="idx">{index + 1}</span>'
        f"<h2>{_e(name)}</h2>{_badge(status)}</div>"
        f'<div class="path mono">{_e(path)}{where}</div>'
        + '<div class="path">Model '
        + _model_text(model, " \u00b7 ")
        + "</div>"
        + _notice(model.notice)
        + "".join(alerts)
        + body
        + "</section>"
    )


def render_report(run: RunView, slides: Sequence[SlideEntry]) -> str:
    """Build the report's HTML text (see :func:`write_report`)."""
    colours, background = _class_colours(run)
    models = _done_models(run, slides)
    own_model = _runs_model(run, models)
    classes = run.model_config.get("classes") if own_model else None
    class_names: list[str] = []
    if isinstance(classes, Sequence) and not isinstance(classes, str):
        class_names = [
            str(c["name"])
            for i, c in enumerate(classes)
            if i > 0 and isinstance(c, Mapping) and "name" in c
        ]
    if not class_names:  # no model config, or another model's: the summaries' classes
        for _, summary in slides:
            for c in _tissue_classes(summary, None):
                if c not in class_names:
                    class_names.append(c)
    anchors = [_anchor(i, _slide_name(s.slide)) for i, (s, _) in enumerate(slides)]
    table_colours = dict(colours) if own_model else {}
    for _, summary in slides:  # the results' own colours where their summaries have them
        for name, css in _summary_colours(summary).items():
            table_colours.setdefault(name, css)

    def section(i: int, slide: SlideView, summary: SummaryView | None, anchor: str) -> str:
        model = _slide_model(run, slide, summary)
        own = model.sha256 == run.model_sha256  # else another model's classes and colours
        known = _summary_colours(summary) or (colours if own else {})
        return _slide_section(i, slide, summary, anchor, background if own else None, known, model)

    sections = "".join(
        section(i, s, summary, a)
        for i, ((s, summary), a) in enumerate(zip(slides, anchors, strict=True))
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        + _DIGEST_TAG.format("")
        + '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<title>{REPORT_TITLE}</title>"
        f"<style>{_CSS}</style></head><body>"
        + _notice(" \u00b7 ".join(dict.fromkeys(m.notice for m in models)), "page")
        + "<main>"
        + _header(run, slides, models)
        + _overview(slides, anchors, class_names, table_colours)
        + sections
        + f"<footer>wsiseg {_e(__version__)} \u00b7 self-contained report: images embedded, "
        "no network access needed</footer>" + "</main></body></html>\n"
    )


def write_report(path: Path, run: RunView, slides: Sequence[SlideEntry]) -> Path:
    """Write a self-contained HTML report of a segmentation run.

    Parameters
    ----------
    path : Path
        The HTML file to write (replaced atomically if it exists).
    run : RunView
        The run's record (``run.json``: model, checksum, configs, cluster, workers,
        wall time).
    slides : Sequence of (SlideView, SummaryView or None)
        Per slide its line of the run (path, status ``done``, ``skipped``, ``no
        tissue``, ``refused`` or ``failed``, message, output folder) and its
        summary (None without results). Images are read from the output folder
        (``thumbnail.png``, ``overlay.png``).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    data = render_report(run, slides).encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    data = data.replace(_DIGEST_TAG.format("").encode(), _DIGEST_TAG.format(digest).encode(), 1)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_bytes(data)
    log.info("report written to %s (%d slides)", path, len(slides))
    return path


def is_own_report(path: Path) -> bool:
    """Whether the file at ``path`` is a report as wsiseg wrote it: its checksum matches
    (a report from before the checksum: it has the report's title); False for another
    file, and for a report edited or saved over since."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return False
    found = _DIGEST_RE.search(data)
    if found is None:
        return f"<title>{REPORT_TITLE}</title>".encode() in data[:4096]
    blank = data[: found.start(1)] + data[found.end(1) :]
    return hashlib.sha256(blank).hexdigest() == found.group(1).decode()
