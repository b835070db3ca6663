"""Samplers as objects: how a `DeformSeg` looks at a region, predicts it and trains on it.

- ``learned`` - the saliency net predicts a density; the Recasens sampler turns it into
  a grid; predictions are back-projected by inverting the grid;
- ``uniform`` - the identity grid (plain anti-aliased downsampling); logits are
  upsampled bilinearly;
- ``tiled`` - the segmenter runs on overlapping full-resolution windows of the region
  (the accuracy upper bound and the speed baseline).

Configs name a sampler by its string (``ModelConfig.sampler``); `get_sampler` turns the
name into the object, and an unknown name is an error listing the known ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wsiseg.errors import InputError
from wsiseg.models.backproject import backproject
from wsiseg.models.mipmap import sample_labels
from wsiseg.models.precision import nets_autocast, to_device
from wsiseg.models.sampling import identity_grid, saliency_to_grid
from wsiseg.models.sources import MemorySource, SampleSource

if TYPE_CHECKING:
    from wsiseg.models.config import ModelConfig
    from wsiseg.models.deformseg import DeformSeg

__all__ = [
    "ForwardOut",
    "TrainingOut",
    "Sampler",
    "GridSampler",
    "LearnedSampler",
    "UniformSampler",
    "TiledSampler",
    "get_sampler",
    "register_sampler",
    "sampler_names",
    "tile_windows",
]

Timings = dict[str, float]


@dataclass
class ForwardOut:
    """What one pass over a batch of regions produced."""

    logits: Tensor  # [B, K, S, S] at the samples (or per window for tiled)
    grid: Tensor | None  # [B, S, S, 2] sample positions (None for tiled)
    density: Tensor | None  # [B, 1, g, g] saliency density (learned only)


@dataclass
class TrainingOut:
    """Logits of one training batch, the labels they are scored against, the density."""

    logits: Tensor
    target: Tensor
    density: Tensor | None


class Sampler(Protocol):
    """How a model samples, predicts and trains on a batch of regions."""

    #: The name configs use.
    name: str
    #: Whether the model has a saliency net.
    uses_saliency: bool

    def budget(self, config: ModelConfig) -> float:
        """Samples per region pixel."""
        ...

    def forward(self, model: DeformSeg, source: SampleSource) -> ForwardOut:
        """Segment the samples of each region."""
        ...

    def predict(
        self,
        model: DeformSeg,
        source: SampleSource,
        out_hw: tuple[int, int],
        timings: Timings | None = None,
        amp: torch.dtype | None = None,
    ) -> tuple[Tensor, ForwardOut | None]:
        """Class probabilities at ``out_hw`` (float32, on the model's device); phase
        seconds go to ``timings`` if given; the networks run under autocast to ``amp``
        (None: float32), everything else in float32."""
        ...

    def training_outputs(
        self, model: DeformSeg, images: Tensor, labels: Tensor, rng: np.random.Generator
    ) -> TrainingOut:
        """Logits and matching labels of a batch of regions (images [B,3,R,R], labels [B,R,R])."""
        ...


@contextmanager
def _phase(timings: Timings | None, name: str, source: SampleSource) -> Iterator[None]:
    """Record a phase's wall time less the source's reading time in ``timings``."""
    if timings is None:
        yield
        return
    t, read = time.perf_counter(), source.read_seconds
    yield
    timings[name] = time.perf_counter() - t - (source.read_seconds - read)


class GridSampler:
    """A sampler that segments a grid of samples of each region (learned, uniform)."""

    name = ""
    uses_saliency = False

    def grid(self, model: DeformSeg, source: SampleSource) -> tuple[Tensor, Tensor | None]:
        """Sample grid (and density) for the regions in ``source``."""
        raise NotImplementedError

    def project_back(self, logits: Tensor, grid: Tensor, out_hw: tuple[int, int]) -> Tensor:
        """Class probabilities at ``out_hw`` from the logits at the samples."""
        raise NotImplementedError

    def budget(self, config: ModelConfig) -> float:
        return (config.sample_px / config.region_px) ** 2

    def forward(self, model: DeformSeg, source: SampleSource) -> ForwardOut:
        grid, density = self.grid(model, source)
        logits = model.segment_samples(source.sample(grid))
        return ForwardOut(logits=logits, grid=grid, density=density)

    def predict(
        self,
        model: DeformSeg,
        source: SampleSource,
        out_hw: tuple[int, int],
        timings: Timings | None = None,
        amp: torch.dtype | None = None,
    ) -> tuple[Tensor, ForwardOut | None]:
        # Only the networks follow `amp`: the grid maths inside `grid` switches autocast
        # off itself, sampling and back-projection run outside it.
        with _phase(timings, "saliency", source), nets_autocast(model.device, amp):
            grid, density = self.grid(model, source)
        with _phase(timings, "sampling", source):
            samples = source.sample(grid)
        with _phase(timings, "segmenter", source), nets_autocast(model.device, amp):
            logits = model.segment_samples(samples)
        with _phase(timings, "backprojection", source):
            probs = self.project_back(logits, grid, out_hw)
        return probs, ForwardOut(logits=logits, grid=grid, density=density)

    def training_outputs(
        self, model: DeformSeg, images: Tensor, labels: Tensor, rng: np.random.Generator
    ) -> TrainingOut:
        device = model.device
        out = model(MemorySource(images.to(device)))
        assert out.grid is not None
        target = sample_labels(labels.to(device), out.grid)
        return TrainingOut(logits=out.logits, target=target, density=out.density)


class LearnedSampler(GridSampler):
    """Saliency density -> Recasens grid; back-projection through the inverted grid."""

    name = "learned"
    uses_saliency = True

    def grid(self, model: DeformSeg, source: SampleSource) -> tuple[Tensor, Tensor | None]:
        cfg = model.config
        assert model.saliency is not None
        s = cfg.saliency_input_px
        low = model.normalise(to_device(source.view((s, s)), model.device))
        g = cfg.saliency_grid_px
        density = model.saliency(low, (g, g))
        grid = saliency_to_grid(
            density, model.sample_hw, cfg.radius_cells, uniform_floor=cfg.uniform_floor
        )
        return grid, density

    def project_back(self, logits: Tensor, grid: Tensor, out_hw: tuple[int, int]) -> Tensor:
        return backproject(logits.float().softmax(1), grid, out_hw)


class UniformSampler(GridSampler):
    """The identity grid; logits upsampled bilinearly."""

    name = "uniform"

    def grid(self, model: DeformSeg, source: SampleSource) -> tuple[Tensor, Tensor | None]:
        return identity_grid(model.sample_hw, batch=source.batch, device=model.device), None

    def project_back(self, logits: Tensor, grid: Tensor, out_hw: tuple[int, int]) -> Tensor:
        up = F.interpolate(logits.float(), size=out_hw, mode="bilinear", align_corners=True)
        return up.softmax(1)


def tile_windows(size: int, window: int, overlap: int) -> list[int]:
    """Start offsets of windows of ``window`` px covering ``size`` px with >= ``overlap``."""
    if window >= size:
        return [0]
    stride = window - overlap
    n = math.ceil((size - window) / stride) + 1
    starts = [round(i * (size - window) / (n - 1)) for i in range(n)]
    return sorted(set(starts))


class TiledSampler:
    """Full-resolution windows, blended over their overlap (budget 1)."""

    name = "tiled"
    uses_saliency = False

    def budget(self, config: ModelConfig) -> float:
        return 1.0

    def forward(self, model: DeformSeg, source: SampleSource) -> ForwardOut:
        raise RuntimeError("the tiled model segments windows: use forward_window/predict")

    def predict(
        self,
        model: DeformSeg,
        source: SampleSource,
        out_hw: tuple[int, int],
        timings: Timings | None = None,
        amp: torch.dtype | None = None,
    ) -> tuple[Tensor, ForwardOut | None]:
        with _phase(timings, "segmenter", source):
            probs = self._predict_windows(model, source, out_hw, amp)
        return probs, None

    def _predict_windows(
        self,
        model: DeformSeg,
        source: SampleSource,
        out_hw: tuple[int, int],
        amp: torch.dtype | None,
    ) -> Tensor:
        cfg = model.config
        rh, rw = source.region_hw
        win = min(cfg.tile_infer_px, rh, rw)
        batch = source.batch
        acc = torch.zeros(batch, cfg.num_classes, rh, rw, device=model.device)
        weight = torch.zeros(1, 1, rh, rw, device=model.device)
        # Linear ramps over the overlap so that windows blend without seams.
        ramp = torch.ones(win)
        ov = cfg.tile_overlap_px
        if ov > 0:
            edge = torch.linspace(1.0 / (ov + 1), 1.0, ov)
            ramp[:ov], ramp[-ov:] = edge, edge.flip(0)
        w2d = (ramp[:, None] * ramp[None, :]).to(acc.device)
        for y in tile_windows(rh, win, ov):
            for x in tile_windows(rw, win, ov):
                crop = source.crop(y, x, win, win)
                with nets_autocast(model.device, amp):
                    logits = model.forward_window(crop).float()
                h, w = logits.shape[-2:]
                acc[:, :, y : y + h, x : x + w] += logits * w2d[:h, :w]
                weight[:, :, y : y + h, x : x + w] += w2d[:h, :w]
        logits = acc / weight
        if (rh, rw) != tuple(out_hw):
            shrink = out_hw[0] < rh or out_hw[1] < rw
            logits = (
                F.interpolate(logits, size=out_hw, mode="area")
                if shrink
                else F.interpolate(logits, size=out_hw, mode="bilinear", align_corners=True)
            )
        return logits.softmax(1)

    def training_outputs(
        self, model: DeformSeg, images: Tensor, labels: Tensor, rng: np.random.Generator
    ) -> TrainingOut:
        s = model.config.tile_train_px
        r = images.shape[-1]
        crops_x, crops_y = [], []
        for i in range(images.shape[0]):
            y0, x0 = (int(v) for v in rng.integers(0, r - s + 1, size=2))
            crops_x.append(images[i, :, y0 : y0 + s, x0 : x0 + s])
            crops_y.append(labels[i, y0 : y0 + s, x0 : x0 + s])
        logits = model.forward_window(torch.stack(crops_x).to(model.device))
        target = torch.stack(crops_y).to(model.device)
        return TrainingOut(logits=logits, target=target, density=None)


_REGISTRY: dict[str, Sampler] = {}


def register_sampler(sampler: Sampler) -> Sampler:
    """Make ``sampler`` known under ``sampler.name`` (a name may be registered once)."""
    if not sampler.name or sampler.name in _REGISTRY:
        raise ValueError(f"sampler name {sampler.name!r} is empty or already registered")
    _REGISTRY[sampler.name] = sampler
    return sampler


def sampler_names() -> tuple[str, ...]:
    """Names of the known samplers, in registration order."""
    return tuple(_REGISTRY)


def get_sampler(name: str) -> Sampler:
    """The sampler called ``name``.

    Raises
    ------
    InputError
        Unknown name; the message lists the known ones.
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(_REGISTRY)
        raise InputError(f"unknown sampler {name!r} (known: {known})") from None


for _sampler in (LearnedSampler(), UniformSampler(), TiledSampler()):
    register_sampler(_sampler)
