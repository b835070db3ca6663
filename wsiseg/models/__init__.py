"""Models: saliency net, saliency -> grid, samplers, back-projection, segmenters, checkpoints."""

from __future__ import annotations

from wsiseg.models.backproject import invert_grid
from wsiseg.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from wsiseg.models.config import DEFAULT_CLASSES, SAMPLERS, ModelConfig
from wsiseg.models.deformseg import DeformSeg, MemorySource, SampleSource
from wsiseg.models.loading import load_model, resolve_device
from wsiseg.models.mipmap import build_mipmap, sample_image, sample_labels
from wsiseg.models.saliency import SaliencyNet
from wsiseg.models.sampling import identity_grid, saliency_to_grid
from wsiseg.models.segmenters import build_segmenter, known_segmenters

__all__ = [
    "DEFAULT_CLASSES",
    "SAMPLERS",
    "CheckpointError",
    "DeformSeg",
    "MemorySource",
    "ModelConfig",
    "SaliencyNet",
    "SampleSource",
    "build_mipmap",
    "build_segmenter",
    "identity_grid",
    "invert_grid",
    "known_segmenters",
    "load_checkpoint",
    "load_model",
    "resolve_device",
    "sample_image",
    "sample_labels",
    "saliency_to_grid",
    "save_checkpoint",
]
