"""What to generate: `SynthSpec`, the pyramid geometry, class names and colours."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "CLASS_COLOURS",
    "CLASS_NAMES",
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "SynthPaths",
    "SynthSpec",
    "level_shapes",
]


#: Written into every file (the module's first home; kept so files stay byte-identical).
GENERATOR_NAME = "wsiseg.io.synthetic"
#: Bump whenever the rendered output changes for an unchanged spec.
GENERATOR_VERSION = "1.0.0"

CLASS_NAMES: tuple[str, ...] = ("background", "stroma", "benign_gland", "tumour")
#: RGB per class id, for overlays (background is white).
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 255, 255),
    (150, 200, 150),
    (50, 120, 220),
    (200, 0, 0),
)

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
BoolA = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class SynthSpec:
    """What to generate.

    Parameters
    ----------
    width_px, height_px
        Level-0 size in pixels (positive).
    seed
        Non-negative seed; the scene depends only on the seed, the physical
        size (pixels x mpp) and the content knobs below.
    mpp
        Level-0 pixel size in µm (0.5 or 0.25 are the usual; 0.1-2 allowed).
    tile_px
        TIFF tile size, a positive multiple of 16.
    level_factor
        Downsample between pyramid levels, 2 or 4.
    jpeg_quality
        JPEG quality of the image tiles, 1-100.
    n_cores
        Number of tissue cores; ``None`` picks 1-6 from the slide size.
    core_width_um
        Range of core widths in µm (clamped so cores fit the slide).
    tumour_foci_per_mm
        Tumour foci per mm of core length; when positive, every core gets at
        least three, the first of one to a few glands.
    benign_gland_fraction
        Target fraction of core area covered by benign glands.
    """

    width_px: int
    height_px: int
    seed: int = 0
    mpp: float = 0.5
    tile_px: int = 256
    level_factor: int = 4
    jpeg_quality: int = 90
    n_cores: int | None = None
    core_width_um: tuple[float, float] = (1000.0, 1500.0)
    tumour_foci_per_mm: float = 0.8
    benign_gland_fraction: float = 0.3

    def __post_init__(self) -> None:
        def _int(name: str) -> int:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"SynthSpec.{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))
            return int(value)

        def _float(name: str, lo: float, hi: float, unit: str = "") -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ValueError(f"SynthSpec.{name} must be a number, got {value!r}")
            if not lo <= float(value) <= hi:
                raise ValueError(f"SynthSpec.{name} must be in {lo:g}..{hi:g}{unit}, got {value!r}")
            object.__setattr__(self, name, float(value))
            return float(value)

        for name in ("width_px", "height_px"):
            if _int(name) <= 0:
                raise ValueError(f"SynthSpec.{name} must be positive, got {getattr(self, name)}")
        if _int("seed") < 0:
            raise ValueError(f"SynthSpec.seed must be non-negative, got {self.seed}")
        if _int("tile_px") <= 0 or self.tile_px % 16:
            raise ValueError(
                f"SynthSpec.tile_px must be a positive multiple of 16, got {self.tile_px}"
            )
        if _int("level_factor") not in (2, 4):
            raise ValueError(f"SynthSpec.level_factor must be 2 or 4, got {self.level_factor}")
        if not 1 <= _int("jpeg_quality") <= 100:
            raise ValueError(f"SynthSpec.jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        _float("mpp", 0.1, 2.0, " µm/px")
        if self.n_cores is not None and not 1 <= _int("n_cores") <= 20:
            raise ValueError(f"SynthSpec.n_cores must be None or 1..20, got {self.n_cores}")
        try:
            lo, hi = (float(v) for v in self.core_width_um)
        except (TypeError, ValueError):
            lo = hi = math.nan
        if not 50.0 <= lo <= hi:
            raise ValueError(
                "SynthSpec.core_width_um must be (lo, hi) with 50 <= lo <= hi µm, "
                f"got {self.core_width_um!r}"
            )
        object.__setattr__(self, "core_width_um", (lo, hi))
        _float("tumour_foci_per_mm", 0.0, 10.0)
        _float("benign_gland_fraction", 0.0, 0.6)

    @property
    def width_um(self) -> float:
        """Physical width in µm."""
        return self.width_px * float(self.mpp)

    @property
    def height_um(self) -> float:
        """Physical height in µm."""
        return self.height_px * float(self.mpp)


@dataclass(frozen=True)
class SynthPaths:
    """Paths of a written synthetic slide: the image and its label mask."""

    image: Path
    mask: Path


def level_shapes(spec: SynthSpec) -> list[tuple[int, int]]:
    """Pyramid level sizes ``(height, width)`` of the files a spec produces.

    Each level is the previous one divided by ``level_factor`` (rounded up),
    until a level fits in one tile.

    Parameters
    ----------
    spec
        The slide spec.

    Returns
    -------
    list of (int, int)
        Level sizes, level 0 first.
    """
    h, w = spec.height_px, spec.width_px
    out = [(h, w)]
    while max(h, w) > spec.tile_px:
        h = -(-h // spec.level_factor)
        w = -(-w // spec.level_factor)
        out.append((h, w))
    return out


@dataclass(frozen=True)
class _SceneParams:
    """What the scene depends on: physical size, seed and content knobs (not mpp)."""

    width_um: float
    height_um: float
    seed: int
    n_cores: int | None
    core_width_um: tuple[float, float]
    tumour_foci_per_mm: float
    benign_gland_fraction: float


def _scene_params(spec: SynthSpec) -> _SceneParams:
    return _SceneParams(
        width_um=spec.width_um,
        height_um=spec.height_um,
        seed=int(spec.seed),
        n_cores=spec.n_cores,
        core_width_um=(float(spec.core_width_um[0]), float(spec.core_width_um[1])),
        tumour_foci_per_mm=float(spec.tumour_foci_per_mm),
        benign_gland_fraction=float(spec.benign_gland_fraction),
    )
