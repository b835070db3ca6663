"""`DeformSeg`: low-res view -> saliency -> grid -> samples -> segmenter -> back-projection.

One class serves every sampler (`wsiseg.models.samplers`: learned, uniform, tiled), so
the learned model and its baselines share architecture, data and code paths; the
config names the sampler and the model dispatches to that object.

Pixels come from a `SampleSource` (`wsiseg.models.sources`: in memory; the whole-slide
pipeline reads the slide pyramid with the same mip-map logic).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from wsiseg.models.config import ModelConfig
from wsiseg.models.precision import autocast_dtype, to_device
from wsiseg.models.saliency import SaliencyNet
from wsiseg.models.samplers import ForwardOut, Sampler, Timings, get_sampler, tile_windows
from wsiseg.models.segmenters import build_segmenter
from wsiseg.models.sources import MemorySource, SampleSource

__all__ = ["SampleSource", "MemorySource", "DeformSeg", "ForwardOut", "tile_windows"]

log = logging.getLogger(__name__)


class DeformSeg(nn.Module):
    """Segmenter with learned (or uniform, or tiled) sampling of each region."""

    mean: Tensor
    std: Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.sampler: Sampler = get_sampler(config.sampler)
        self.segmenter = build_segmenter(config.segmenter, 3, config.num_classes)
        self.saliency: SaliencyNet | None = (
            SaliencyNet(width=config.saliency_width) if self.sampler.uses_saliency else None
        )
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)
        #: Precision of the networks in `predict` (`wsiseg.models.precision.PRECISIONS`):
        #: "auto" = bf16 autocast on CUDA, float32 on the CPU.
        self.precision = "auto"

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return next(self.segmenter.parameters()).device

    def normalise(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    @property
    def sample_hw(self) -> tuple[int, int]:
        return self.config.sample_px, self.config.sample_px

    # ------------------------------------------------------------------ forward
    def forward(self, source: SampleSource) -> ForwardOut:
        """Segment the samples of each region (training and inference share this)."""
        return self.sampler.forward(self, source)

    def _segment(self, x: Tensor) -> Tensor:
        # The caller's autocast applies: `predict` sets it from `precision`, training
        # from its own config (grids and back-projection stay float32 regardless).
        out: Tensor = self.segmenter(x)
        return out

    def forward_window(self, window: Tensor) -> Tensor:
        """Logits of a full-resolution window (the tiled model)."""
        return self._segment(self.normalise(to_device(window, self.device)))

    def segment_samples(self, samples: Tensor) -> Tensor:
        """Segmenter logits of samples ([B, 3, S, S] in [0, 1])."""
        return self._segment(self.normalise(to_device(samples, self.device)))

    @torch.no_grad()
    def predict(
        self,
        source: SampleSource,
        out_hw: tuple[int, int],
        timings: Timings | None = None,
        precision: str | None = None,
    ) -> tuple[Tensor, ForwardOut | None]:
        """Class probabilities of whole regions at ``out_hw`` ([B, K, Ho, Wo], float32).

        Parameters
        ----------
        source
            The regions.
        out_hw
            Output size.
        timings
            If given, receives seconds per phase (``saliency``, ``sampling``,
            ``segmenter``, ``backprojection``; the tiled model: ``segmenter``), not
            counting the time the source spent reading pixels.
        precision
            Autocast of the saliency net and the segmenter (``auto``: bf16 on CUDA,
            float32 on the CPU; ``fp32``; ``bf16``); default: the model's ``precision``.
            Grid maths, sampling and back-projection are float32 in every case.

        Returns
        -------
        probs, forward
            Probabilities, and the samples' logits, grid and density (None for tiled).

        Raises
        ------
        InputError
            Unknown precision.
        """
        amp = autocast_dtype(self.precision if precision is None else precision, self.device)
        return self.sampler.predict(self, source, out_hw, timings, amp)
