"""`ModelConfig`: everything that defines a model, stored in its checkpoint's JSON."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsiseg.errors import InputError
from wsiseg.models.samplers import get_sampler
from wsiseg.resources import resolve

__all__ = [
    "ModelConfig",
    "DEFAULT_CLASSES",
    "load_config_file",
    "packaged_model_config",
]

#: wsiseg's prostate classes: (name, RGB colour). QuPath's built-in names where they fit.
DEFAULT_CLASSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("Background", (255, 255, 255)),
    ("Stroma", (150, 200, 150)),
    ("Benign gland", (20, 120, 220)),
    ("Tumor", (200, 0, 0)),
)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and geometry of a segmentation model.

    A region is ``region_px`` square at ``task_mpp`` µm/px; the segmenter sees
    ``sample_px`` square samples of it, so the pixel budget is
    ``(sample_px / region_px) ** 2``. The saliency net sees a ``saliency_input_px``
    view and predicts a ``saliency_grid_px`` density; the Gaussian radius is
    ``radius_cells`` saliency cells. The tiled model trains on ``tile_train_px`` windows
    at full resolution and predicts with ``tile_infer_px`` windows overlapping by
    ``tile_overlap_px`` (it is fully convolutional). ``sampler`` names a registered
    sampler (`wsiseg.models.samplers`: ``learned``, ``uniform``, ``tiled``).
    """

    sampler: str = "learned"
    segmenter: str = "unet-resnet18"
    classes: tuple[tuple[str, tuple[int, int, int]], ...] = DEFAULT_CLASSES
    task_mpp: float = 0.5
    region_px: int = 1024
    sample_px: int = 128
    saliency_input_px: int = 64
    saliency_grid_px: int = 32
    saliency_width: int = 24
    radius_cells: int = 4
    uniform_floor: float = 0.1
    tile_overlap_px: int = 32
    tile_infer_px: int = 512
    tile_train_px: int = 128
    mean: tuple[float, float, float] = (0.78, 0.62, 0.75)
    std: tuple[float, float, float] = (0.15, 0.18, 0.13)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        get_sampler(self.sampler)  # an unknown name lists the known ones
        for name in ("region_px", "sample_px", "saliency_input_px", "saliency_grid_px"):
            if int(getattr(self, name)) < 2:
                raise InputError(f"{name} must be >= 2")
        if max(self.sample_px, self.tile_train_px) > self.region_px:
            raise InputError("sample_px and tile_train_px must not exceed region_px")
        if not 0.05 <= self.task_mpp <= 20:
            raise InputError(f"task_mpp {self.task_mpp} is not a plausible pixel size")
        if self.tile_overlap_px * 2 >= self.tile_infer_px:
            raise InputError("tile_overlap_px must be less than half of tile_infer_px")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c[0] for c in self.classes)

    @property
    def budget(self) -> float:
        """Samples per region pixel (1 for the tiled full-resolution model)."""
        return get_sampler(self.sampler).budget(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["classes"] = [{"name": n, "color": list(c)} for n, c in self.classes]
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build from a dict (checkpoint JSON or YAML); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        kw: dict[str, Any] = dict(data)
        if "classes" in kw:
            kw["classes"] = tuple(
                (c["name"], tuple(int(v) for v in c["color"]))
                if isinstance(c, Mapping)
                else (c[0], tuple(int(v) for v in c[1]))
                for c in kw["classes"]
            )
        for key in ("mean", "std"):
            if key in kw:
                kw[key] = tuple(float(v) for v in kw[key])
        return cls(**kw)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def load_config_file(config: str | Path) -> dict[str, Any]:
    """A model YAML (a path, or the name of a packaged config) with ``model``/``train`` sections.

    Raises
    ------
    InputError
        Unknown name, unreadable file, invalid YAML or not a mapping.
    """
    import yaml

    path = resolve("models", config)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable YAML file ({first})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping with 'model' and 'train' sections")
    return data


def packaged_model_config(name: str) -> ModelConfig:
    """The ``model`` section of a packaged config (e.g. ``tiny`` for tests and smoke runs)."""
    return ModelConfig.from_dict(load_config_file(name).get("model", {}))
