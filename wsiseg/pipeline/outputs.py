"""The output contract of `wsiseg segment`: typed ``summary.json`` and ``run.json`` records.

Each record is a frozen dataclass with ``to_json()`` (a JSON-ready dict, field names as
in the files) and ``from_json()`` (tolerant: files of older versions read with defaults
for what they lack). ``SCHEMA_VERSION`` is written into both files.

`ResumeIdentity` is everything that changes a slide's results: the model checksum, the
*resolved* settings (pixel size actually used, output pixel size, ROI content hash,
backend actually used, the output-changing segment settings), the model's config (a hash
per key of the checkpoint's JSON config, so an edit of the ``.json`` sidecar alone counts)
and the slide's content identity (`wsiseg.io.names.slide_fingerprint`). A rerun skips a slide whose
recorded identity equals the new one and refuses (or, with ``--overwrite``, redoes)
one whose identity differs; `ResumeIdentity.differences` names what differs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "ClassArea",
    "ResumeIdentity",
    "RoiRecord",
    "RunRecord",
    "SlideRecord",
    "SlideSummary",
    "merge_slide_records",
]

#: Version of the summary.json / run.json layout (1: first typed version).
SCHEMA_VERSION = 1

#: Statuses of a slide in a run: done now, done earlier (same identity), no tissue,
#: refused (a slide the model cannot read, or a folder holding results of other inputs)
#: and failed.
STATUSES = ("done", "skipped", "no tissue", "refused", "failed")


def _num(value: object, default: float | None = None) -> float | None:
    """A finite float from a JSON value (bools and non-numbers give ``default``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    f = float(value)
    return f if math.isfinite(f) else default


def _int(value: object, default: int = 0) -> int:
    f = _num(value)
    return int(f) if f is not None else default


def _str(value: object, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _mapping(value: object) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _floats(value: object) -> dict[str, float]:
    return {str(k): f for k, v in _mapping(value).items() if (f := _num(v)) is not None}


def _colours(value: object) -> dict[str, tuple[int, int, int]]:
    out = {}
    for k, v in _mapping(value).items():
        if isinstance(v, list) and len(v) == 3 and all(isinstance(c, int) for c in v):
            out[str(k)] = (v[0], v[1], v[2])
    return out


def _strs(value: object) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


@dataclass(frozen=True)
class ClassArea:
    """Area of one class inside the segmented area, and its share of the tissue."""

    area_mm2: float
    fraction_of_tissue: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"area_mm2": self.area_mm2, "fraction_of_tissue": self.fraction_of_tissue}

    @classmethod
    def from_json(cls, data: object) -> ClassArea:
        d = _mapping(data)
        return cls(_num(d.get("area_mm2"), 0.0) or 0.0, _num(d.get("fraction_of_tissue")))


@dataclass(frozen=True)
class RoiRecord:
    """The ``--roi`` a slide was segmented within (level-0 pixels)."""

    sha256: str
    bounds: tuple[float, float, float, float]
    area_px: float
    area_mm2: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "bounds": list(self.bounds),
            "area_px": self.area_px,
            "area_mm2": self.area_mm2,
        }

    @classmethod
    def from_json(cls, data: object) -> RoiRecord | None:
        d = _mapping(data)
        if not d:
            return None
        raw = d.get("bounds")
        b = [_num(v, 0.0) or 0.0 for v in raw] if isinstance(raw, list) else []
        bounds = (b[0], b[1], b[2], b[3]) if len(b) == 4 else (0.0, 0.0, 0.0, 0.0)
        return cls(
            _str(d.get("sha256")),
            bounds,
            _num(d.get("area_px"), 0.0) or 0.0,
            _num(d.get("area_mm2")),
        )


# Field -> how a difference is named in the refusal line.
_IDENTITY_LABELS = {
    "model_sha256": "model (checksum)",
    "slide_fingerprint": "slide file content",
    "slide_mpp": "--mpp (slide pixel size used)",
    "output_mpp": "--output-mpp",
    "roi_sha256": "--roi",
    "backend": "backend used",
    "settings_hash": "segment settings",
    "model_config": "model config",
    "settings": "segment settings",
}


def _same(old: object, new: object) -> bool:
    """Equal; pixel sizes (floats) within a relative 1e-6, as ``--output-mpp`` snaps."""
    if isinstance(old, float) and isinstance(new, float):
        return math.isclose(old, new, rel_tol=1e-6)
    return old == new


def _roi_text(roi: RoiRecord | None, sha: str | None) -> str:
    """An ROI as a user knows it: its bounds (level-0 px) and area."""
    if not sha:
        return "no ROI"
    if roi is None:  # not recorded: only its hash is known
        return f"an ROI (sha256 {sha[:12]})"
    x0, y0, x1, y1 = (f"{v:.10g}" for v in roi.bounds)
    area = f"{roi.area_mm2:.4g} mm²" if roi.area_mm2 is not None else f"{roi.area_px:.6g} px²"
    return f"bounds ({x0}, {y0})-({x1}, {y1}) px, {area}"


def _show(value: object) -> str:
    """A recorded value in a refusal line: numbers with enough digits to tell them apart."""
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


def _setting(settings: dict[str, Any], key: str) -> str:
    """One recorded setting in a refusal line; a key the run did not record reads as such."""
    return _show(settings[key]) if key in settings else "(not recorded)"


@dataclass(frozen=True)
class ResumeIdentity:
    """What a slide's results depend on (see the module notes)."""

    model_sha256: str
    slide_fingerprint: str
    slide_mpp: float
    output_mpp: float
    roi_sha256: str | None
    backend: str
    settings_hash: str
    # key -> hash of its canonical JSON: the checkpoint config's ``model`` section and
    # other keys (`wsiseg.pipeline.run.model_config_digest`); empty in older summaries
    model_config: dict[str, str] = field(default_factory=dict)
    # the output-changing segment settings (`SegmentConfig.output_settings`)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: object) -> ResumeIdentity | None:
        d = _mapping(data)
        if not d or not isinstance(d.get("slide_fingerprint"), str):
            return None
        return cls(
            model_sha256=_str(d.get("model_sha256")),
            slide_fingerprint=_str(d.get("slide_fingerprint")),
            slide_mpp=_num(d.get("slide_mpp"), 0.0) or 0.0,
            output_mpp=_num(d.get("output_mpp"), 0.0) or 0.0,
            roi_sha256=_opt_str(d.get("roi_sha256")),
            backend=_str(d.get("backend")),
            settings_hash=_str(d.get("settings_hash")),
            model_config={str(k): str(v) for k, v in _mapping(d.get("model_config")).items()},
            settings=_mapping(d.get("settings")),
        )

    def differences(
        self,
        new: ResumeIdentity,
        *,
        rois: tuple[RoiRecord | None, RoiRecord | None] = (None, None),
        models: tuple[str, str] = ("", ""),
    ) -> list[str]:
        """One phrase per differing field, recorded value first (``--mpp ...: 0.5 vs 0.25``).

        Pixel sizes within a relative 1e-6 count as equal. The settings are named key by
        key (``output_mpp`` has its own phrase); their hash is shown only when neither
        side recorded them (older summaries). ``rois`` (recorded, new) name a differing
        ROI by its bounds and area, ``models`` (recorded, new paths) a differing model
        beside its short checksum.
        """
        out = []
        for f in fields(self):
            old, now = getattr(self, f.name), getattr(new, f.name)
            if _same(old, now):
                continue
            label = _IDENTITY_LABELS.get(f.name, f.name)
            if f.name == "model_config":
                if not old:
                    out.append(f"{label} not recorded (written by an older wsiseg)")
                else:
                    keys = sorted(k for k in old.keys() | now.keys() if old.get(k) != now.get(k))
                    out.append(f"{label} differs: {', '.join(keys)}")
            elif f.name == "settings":
                if not (old and now):
                    continue  # an older summary: its hash is compared
                keys = sorted(k for k in old.keys() | now.keys() if old.get(k) != now.get(k))
                named = [
                    f"{k} {_setting(old, k)} vs {_setting(now, k)}"
                    for k in keys
                    if k != "output_mpp"  # has its own phrase
                ]
                if named:
                    out.append(f"{label} differ: {', '.join(named)}")
            elif f.name == "settings_hash" and (
                (self.settings and new.settings) or not _same(self.output_mpp, new.output_mpp)
            ):
                continue  # named key by key, or explained by --output-mpp
            elif isinstance(old, float) and isinstance(now, float):
                out.append(f"{label} differs: {_show(old)} vs {_show(now)}")
            elif f.name == "backend":
                out.append(f"{label} differs: {old} vs {now}")
            elif f.name == "roi_sha256":
                a, b = _roi_text(rois[0], old), _roi_text(rois[1], now)
                if old and now:
                    if a == b:  # same bounds and area, other shape
                        a, b = f"sha256 {old[:12]}", f"sha256 {now[:12]}"
                    out.append(f"{label} differs: another ROI ({a} vs {b})")
                else:
                    out.append(f"{label} differs: {a} vs {b}")
            elif f.name == "model_sha256":
                a, b = (
                    f"{str(v)[:12]} ({path})" if path else str(v)[:12]
                    for v, path in ((old, models[0]), (now, models[1]))
                )
                out.append(f"{label} differs: {a} vs {b}")
            else:  # hashes: the first 12 digits, "none" for no ROI
                a, b = (str(v)[:12] if v else "none" for v in (old, now))
                out.append(f"{label} differs: {a} vs {b}")
        return out


@dataclass(frozen=True)
class SlideSummary:
    """``OUT/<name>/summary.json``: what one slide's results are and where they came from."""

    slide: str
    slide_id: str
    model: str
    model_sha256: str
    settings_hash: str
    output_mpp: float
    sampler: str
    task_mpp: float
    slide_mpp: float
    mpp_source: str
    output_size: tuple[int, int]
    regions: int
    classes: dict[str, ClassArea]
    tissue_area_mm2: float
    detected_tissue_area_mm2: float
    pixels_decoded: int
    pixels_decoded_per_tissue_pixel: float | None
    features: int
    seconds: dict[str, float] = field(default_factory=dict)
    wall_seconds: float | None = None
    backend: str = ""
    roi: RoiRecord | None = None
    identity: ResumeIdentity | None = None
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    # Admission (`wsiseg.pipeline.admission`): refusals overridden by --force (forced),
    # warnings, and the model card's notice.
    forced: bool = False
    refusals: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    notice: str = ""
    # the slide's absolute resolved path (`slide` is as given): a later batch finds the
    # folder of the same slide by it (`wsiseg.io.names.assign_output_names`)
    slide_path: str = ""
    # regions taken from a killed run's scratch instead of computed (0 in older files)
    regions_reused: int = 0
    # the model's region and sample sides (its budget); 0 in older files
    region_px: int = 0
    sample_px: int = 0
    # the model's colour of each class, [r, g, b] (empty in older files)
    colours: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "notice": self.notice,
            "slide": self.slide,
            "slide_path": self.slide_path,
            "slide_id": self.slide_id,
            "model_sha256": self.model_sha256,
            "settings_hash": self.settings_hash,
            "output_mpp": self.output_mpp,
            "model": self.model,
            "sampler": self.sampler,
            "task_mpp": self.task_mpp,
            "region_px": self.region_px,
            "sample_px": self.sample_px,
            "slide_mpp": self.slide_mpp,
            "mpp_source": self.mpp_source,
            "backend": self.backend,
            "output_size": list(self.output_size),
            "regions": self.regions,
            "regions_reused": self.regions_reused,
            "classes": {k: v.to_json() for k, v in self.classes.items()},
            "colours": {k: list(v) for k, v in self.colours.items()},
            "tissue_area_mm2": self.tissue_area_mm2,
            "detected_tissue_area_mm2": self.detected_tissue_area_mm2,
            "pixels_decoded": self.pixels_decoded,
            "pixels_decoded_per_tissue_pixel": self.pixels_decoded_per_tissue_pixel,
            "seconds": dict(self.seconds),
            "wall_seconds": self.wall_seconds,
            "features": self.features,
            "roi": self.roi.to_json() if self.roi else None,
            "identity": self.identity.to_json() if self.identity else None,
            "config": dict(self.config),
            "versions": dict(self.versions),
            "forced": self.forced,
            "refusals": list(self.refusals),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_json(cls, data: object) -> SlideSummary:
        """Read a summary; missing or malformed fields get neutral defaults."""
        d = _mapping(data)
        size = d.get("output_size")
        sz = [_int(v) for v in size] if isinstance(size, list) else []
        return cls(
            slide=_str(d.get("slide")),
            slide_id=_str(d.get("slide_id")),
            model=_str(d.get("model")),
            model_sha256=_str(d.get("model_sha256")),
            settings_hash=_str(d.get("settings_hash")),
            output_mpp=_num(d.get("output_mpp"), 0.0) or 0.0,
            sampler=_str(d.get("sampler")),
            task_mpp=_num(d.get("task_mpp"), 0.0) or 0.0,
            slide_mpp=_num(d.get("slide_mpp"), 0.0) or 0.0,
            mpp_source=_str(d.get("mpp_source")),
            output_size=(sz[0], sz[1]) if len(sz) == 2 else (0, 0),
            regions=_int(d.get("regions")),
            regions_reused=_int(d.get("regions_reused")),
            region_px=_int(d.get("region_px")),
            sample_px=_int(d.get("sample_px")),
            colours=_colours(d.get("colours")),
            classes={str(k): ClassArea.from_json(v) for k, v in _mapping(d.get("classes")).items()},
            tissue_area_mm2=_num(d.get("tissue_area_mm2"), 0.0) or 0.0,
            detected_tissue_area_mm2=_num(d.get("detected_tissue_area_mm2"), 0.0) or 0.0,
            pixels_decoded=_int(d.get("pixels_decoded")),
            pixels_decoded_per_tissue_pixel=_num(d.get("pixels_decoded_per_tissue_pixel")),
            features=_int(d.get("features")),
            seconds=_floats(d.get("seconds")),
            wall_seconds=_num(d.get("wall_seconds")),
            backend=_str(d.get("backend")),
            roi=RoiRecord.from_json(d.get("roi")),
            identity=ResumeIdentity.from_json(d.get("identity")),
            config=_mapping(d.get("config")),
            versions={str(k): str(v) for k, v in _mapping(d.get("versions")).items()},
            forced=d.get("forced") is True,
            refusals=_strs(d.get("refusals")),
            warnings=_strs(d.get("warnings")),
            notice=_str(d.get("notice")),
            slide_path=_str(d.get("slide_path")),
            schema_version=_int(d.get("schema_version"), 0),
        )

    def with_timing(self, wall_seconds: float) -> SlideSummary:
        return replace(self, wall_seconds=wall_seconds)


@dataclass(frozen=True)
class SlideRecord:
    """One slide's line in ``run.json``: its status and where its results are.

    ``refusals``: why the model cannot read the slide (status ``refused``), or, with
    ``forced``, the refusals ``--force`` overrode; ``warnings``: admission warnings.
    ``model`` (absolute path), ``model_sha256``, ``notice``, ``output_mpp`` (resolved)
    and ``slide_mpp`` (used) are those the slide's results came from (a slide done by an
    earlier run: that run's), or for a slide without results this run's (``slide_mpp``:
    the pixel size its checks read, None when the slide could not be opened); None in
    older files.
    """

    slide: str
    status: str
    message: str = ""
    out: str | None = None
    name: str | None = None  # output folder name (the merge key of run.json)
    refusals: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    forced: bool = False
    model: str | None = None
    model_sha256: str | None = None
    output_mpp: float | None = None
    slide_mpp: float | None = None
    notice: str | None = None  # the model card's notice of ``model``

    def to_json(self) -> dict[str, Any]:
        return {
            "slide": self.slide,
            "name": self.name,
            "status": self.status,
            "message": self.message,
            "out": self.out,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "notice": self.notice,
            "output_mpp": self.output_mpp,
            "slide_mpp": self.slide_mpp,
            "refusals": list(self.refusals),
            "warnings": list(self.warnings),
            "forced": self.forced,
        }

    @classmethod
    def from_json(cls, data: object) -> SlideRecord:
        d = _mapping(data)
        return cls(
            slide=_str(d.get("slide")),
            status=_str(d.get("status"), "unknown"),
            message=_str(d.get("message")),
            out=_opt_str(d.get("out")),
            name=_opt_str(d.get("name")),
            refusals=_strs(d.get("refusals")),
            warnings=_strs(d.get("warnings")),
            forced=d.get("forced") is True,
            model=_opt_str(d.get("model")),
            model_sha256=_opt_str(d.get("model_sha256")),
            output_mpp=_num(d.get("output_mpp")),
            slide_mpp=_num(d.get("slide_mpp")),
            notice=_opt_str(d.get("notice")),
        )

    @property
    def key(self) -> str:
        return self.name or self.slide


def merge_slide_records(old: list[SlideRecord], new: list[SlideRecord]) -> list[SlideRecord]:
    """``old`` updated by ``new``, keyed by output name, in first-seen order.

    A newer record replaces an older one, except that a refusal never replaces a slide
    that is done (the results are still there and still those of the older record).
    """
    merged: dict[str, SlideRecord] = {r.key: r for r in old}
    for rec in new:
        prev = merged.get(rec.key)
        if prev is not None and rec.status == "refused" and prev.status in ("done", "skipped"):
            continue
        merged[rec.key] = rec
    return list(merged.values())


@dataclass(frozen=True)
class RunRecord:
    """``OUT/run.json`` (and ``run-shard-i-of-N.json``): a run's settings and slides."""

    model: str
    model_sha256: str
    model_config: dict[str, Any]
    segment_config: dict[str, Any]
    cluster: str
    workers: int | None
    slides: tuple[SlideRecord, ...] = ()
    wall_seconds: float | None = None
    output_mpp: float | None = None  # resolved, of the newest run (each slide: its record)
    shard: tuple[int, int] | None = None
    notice: str = ""  # the model card's (`wsiseg.models.checkpoint.model_notice`)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "notice": self.notice,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "model_config": dict(self.model_config),
            "segment_config": dict(self.segment_config),
            "output_mpp": self.output_mpp,
            "cluster": self.cluster,
            "workers": self.workers,
            "shard": list(self.shard) if self.shard else None,
            "slides": [s.to_json() for s in self.slides],
            "wall_seconds": self.wall_seconds,
        }

    @classmethod
    def from_json(cls, data: object) -> RunRecord:
        d = _mapping(data)
        shard = d.get("shard")
        sh = [_int(v) for v in shard] if isinstance(shard, list) else []
        workers = d.get("workers")
        slides = d.get("slides")
        return cls(
            model=_str(d.get("model")),
            model_sha256=_str(d.get("model_sha256")),
            model_config=_mapping(d.get("model_config")),
            segment_config=_mapping(d.get("segment_config")),
            cluster=_str(d.get("cluster"), "local"),
            workers=_int(workers) if _num(workers) is not None else None,
            slides=tuple(SlideRecord.from_json(s) for s in slides)
            if isinstance(slides, list)
            else (),
            wall_seconds=_num(d.get("wall_seconds")),
            output_mpp=_num(d.get("output_mpp")),
            shard=(sh[0], sh[1]) if len(sh) == 2 else None,
            notice=_str(d.get("notice")),
            schema_version=_int(d.get("schema_version"), 0),
        )
