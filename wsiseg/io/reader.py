"""The `SlideReader` protocol shared by every backend, and the picklable `SlideRef`.

Coordinates: ``read_region(level, x, y, w, h)`` takes ``x, y, w, h`` in the pixels of
``level`` itself (not level-0 pixels as OpenSlide does), so that reading tile-aligned
chunks of any level is exact. Everything else (tissue polygons, annotations) uses
level-0 pixels; ``level_downsamples`` converts between the two.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from wsiseg.errors import MppError, RegionError, SlideReadError, WsisegError

__all__ = [
    "MAX_THUMBNAIL_PX",
    "MPP_PLAUSIBLE_UM",
    "SlideReader",
    "SlideRef",
    "BaseSlideReader",
    "resolve_mpp",
    "is_plausible_mpp",
    "composite_on_white",
]

log = logging.getLogger(__name__)

#: Largest thumbnail (pixels) made of a slide: 185 mm square at 16 µm/px, more than
#: any glass slide; a larger one means absurd declared dimensions or pixel size.
MAX_THUMBNAIL_PX = 1 << 27

#: Range of pixel sizes (µm/px) accepted from slide metadata; outside it the
#: value is a default of the writing software (352.8 µm/px is 72 dpi), not a scan.
MPP_PLAUSIBLE_UM: tuple[float, float] = (0.05, 20.0)


def is_plausible_mpp(value: float | None) -> bool:
    """Whether ``value`` (µm/px) is in `MPP_PLAUSIBLE_UM`."""
    lo, hi = MPP_PLAUSIBLE_UM
    return value is not None and math.isfinite(value) and lo <= value <= hi


def resolve_mpp(
    reported: tuple[float | None, float | None],
    override: float | None,
    *,
    name: str = "slide",
) -> tuple[float, float]:
    """Pick the pixel size (x, y) in µm/px from metadata or the user's override.

    The slide's own plausible metadata wins; ``override`` stands in for missing or
    implausible values only.

    Raises
    ------
    MppError
        When the metadata is missing or implausible and no override is given.
    """
    mx, my = reported
    if my is None and mx is not None:
        my = mx
    if is_plausible_mpp(mx) and is_plausible_mpp(my):
        assert mx is not None and my is not None
        if override is not None and abs(override - mx) > 0.01 * mx:
            log.warning(
                "%s: --mpp %.4g ignored, the slide reports a plausible %.4g µm/px",
                name,
                override,
                mx,
            )
        return float(mx), float(my)
    if override is not None:
        if not is_plausible_mpp(override):
            lo, hi = MPP_PLAUSIBLE_UM
            raise MppError(f"--mpp {override} is outside the plausible range {lo}-{hi} µm/px")
        return float(override), float(override)
    what = "no pixel size" if mx is None else f"an implausible pixel size ({mx:.4g} µm/px)"
    raise MppError(
        f"{name} has {what} in its metadata; pass the scan resolution with --mpp "
        "(e.g. --mpp 0.5 for a 20x scan, --mpp 0.25 for 40x)"
    )


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite straight (non-premultiplied) RGBA uint8 onto white; returns RGB uint8."""
    if rgba.shape[-1] == 3:
        return np.ascontiguousarray(rgba)
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


@runtime_checkable
class SlideReader(Protocol):
    """What every slide backend offers."""

    path: Path
    backend: str

    @property
    def level_count(self) -> int: ...
    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]: ...
    @property
    def level_downsamples(self) -> tuple[float, ...]: ...
    @property
    def mpp(self) -> tuple[float, float]: ...
    @property
    def mpp_reported(self) -> tuple[float | None, float | None]: ...
    @property
    def objective_power(self) -> float | None: ...
    @property
    def vendor(self) -> str | None: ...
    @property
    def tile_size(self) -> tuple[int, int] | None: ...
    @property
    def bounds(self) -> tuple[int, int, int, int] | None: ...
    @property
    def properties(self) -> dict[str, str]: ...
    def ref(self) -> SlideRef: ...
    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray: ...
    def thumbnail(self, mpp: float) -> np.ndarray: ...
    def close(self) -> None: ...
    def __enter__(self) -> SlideReader: ...
    def __exit__(self, *exc: object) -> None: ...


@dataclass(frozen=True)
class SlideRef:
    """A picklable handle: what a dask worker needs to open its own reader.

    ``backend`` is the concrete backend chosen when the slide was first opened, so
    every process reads the slide the same way.
    """

    path: str
    backend: str = "auto"
    mpp_override: float | None = None

    def open(self) -> SlideReader:
        """Open a new reader for this slide."""
        from wsiseg.io.open import open_slide

        return open_slide(self.path, backend=self.backend, mpp=self.mpp_override)


def _float_or_none(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


class BaseSlideReader(ABC):
    """Shared logic of the backends: bounds checks, white padding, mpp, thumbnails."""

    backend: str = "base"
    _prefix: str = ""  # property prefix of the backend: "openslide" or "tiffslide"

    def __init__(self, path: Path, mpp_override: float | None = None) -> None:
        self.path = Path(path)
        self.mpp_override = mpp_override

    # -- backend hooks ---------------------------------------------------------------
    @abstractmethod
    def _read_inside(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Read a region wholly inside ``level``; returns RGB uint8 (h, w, 3)."""

    @property
    @abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]: ...

    @property
    @abstractmethod
    def level_downsamples(self) -> tuple[float, ...]: ...

    @property
    @abstractmethod
    def properties(self) -> dict[str, str]: ...

    @abstractmethod
    def close(self) -> None: ...

    # -- metadata --------------------------------------------------------------------
    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def mpp_reported(self) -> tuple[float | None, float | None]:
        p = self.properties
        return (
            _float_or_none(p.get(f"{self._prefix}.mpp-x")),
            _float_or_none(p.get(f"{self._prefix}.mpp-y")),
        )

    @property
    def mpp(self) -> tuple[float, float]:
        # Resolved once per reader: an ignored --mpp is warned about once.
        cached: tuple[float, float] | None = getattr(self, "_mpp", None)
        if cached is None:
            cached = resolve_mpp(self.mpp_reported, self.mpp_override, name=self.path.name)
            self._mpp = cached
        return cached

    @property
    def objective_power(self) -> float | None:
        return _float_or_none(self.properties.get(f"{self._prefix}.objective-power"))

    @property
    def vendor(self) -> str | None:
        v = self.properties.get(f"{self._prefix}.vendor")
        return v or None

    @property
    def tile_size(self) -> tuple[int, int] | None:
        p = self.properties
        tw = p.get(f"{self._prefix}.level[0].tile-width")
        th = p.get(f"{self._prefix}.level[0].tile-height")
        if tw and th and int(tw) > 0 and int(th) > 0:
            return int(tw), int(th)
        return None

    @property
    def bounds(self) -> tuple[int, int, int, int] | None:
        """Non-empty area (x, y, w, h) in level-0 pixels where the format states one."""
        p = self.properties
        keys = [f"openslide.bounds-{k}" for k in ("x", "y", "width", "height")]
        if all(k in p for k in keys):
            return tuple(int(p[k]) for k in keys)  # type: ignore[return-value]
        return None

    def ref(self) -> SlideRef:
        # An override the metadata makes moot stays here (workers need not warn again).
        mx, my = self.mpp_reported
        moot = is_plausible_mpp(mx) and is_plausible_mpp(my if my is not None else mx)
        return SlideRef(str(self.path), self.backend, None if moot else self.mpp_override)

    # -- pixels ----------------------------------------------------------------------
    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Read ``w x h`` pixels of ``level`` at ``(x, y)`` (that level's pixels).

        Parts outside the slide are white, the same in every backend.

        Raises
        ------
        RegionError
            If the level does not exist, the size is not positive, or the region lies
            wholly outside the slide.
        """
        if not 0 <= level < self.level_count:
            raise RegionError(
                f"{self.path.name}: level {level} does not exist (levels 0-{self.level_count - 1})"
            )
        if w <= 0 or h <= 0:
            raise RegionError(f"{self.path.name}: region size must be positive, got {w}x{h}")
        lw, lh = self.level_dimensions[level]
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, lw), min(y + h, lh)
        if x0 >= x1 or y0 >= y1:
            raise RegionError(
                f"{self.path.name}: region x={x} y={y} {w}x{h} lies wholly outside "
                f"level {level} ({lw}x{lh})"
            )
        try:
            inside = self._read_inside(level, x0, y0, x1 - x0, y1 - y0)
        except WsisegError:
            raise
        except Exception as exc:  # noqa: BLE001 - backends raise many types on bad data
            text = str(exc).strip().splitlines()
            reason = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
            raise SlideReadError(
                f"{self.path}: cannot decode level {level} at x={x0} y={y0} "
                f"{x1 - x0}x{y1 - y0} ({reason})"
            ) from exc
        if (x0, y0, x1, y1) == (x, y, x + w, y + h):
            return inside
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        out[y0 - y : y1 - y, x0 - x : x1 - x] = inside
        return out

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is no larger than ``downsample``."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-6):
                best = i
        return best

    def thumbnail(self, mpp: float) -> np.ndarray:
        """The whole slide at about ``mpp`` µm/px (RGB uint8), read with bounded memory."""
        from wsiseg.io.pyramid import downsampled_level

        mpp0 = self.mpp[0]
        target = max(mpp / mpp0, 1.0)
        w0, h0 = self.level_dimensions[0]
        tw, th = round(w0 / target), round(h0 / target)
        if tw * th > MAX_THUMBNAIL_PX:
            raise RegionError(
                f"{self.path}: {w0} x {h0} px at {mpp0:.4g} µm/px is "
                f"{w0 * mpp0 / 1000:.0f} x {h0 * mpp0 / 1000:.0f} mm, larger than any glass "
                "slide (wrong dimensions or pixel size)"
            )
        return downsampled_level(self, target)

    def validate(self) -> None:
        """Decode one small patch of the first and last level (catches truncated files)."""
        for level in sorted({0, self.level_count - 1}):
            lw, lh = self.level_dimensions[level]
            size = 16
            self._read_inside(
                level,
                max(lw // 2 - size // 2, 0),
                max(lh // 2 - size // 2, 0),
                min(size, lw),
                min(size, lh),
            )

    def __enter__(self) -> BaseSlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        dims = self.level_dimensions[0] if self.level_count else None
        return f"<{type(self).__name__} {self.path.name} {dims} levels={self.level_count}>"
