"""Models: saliency net and grid, samplers as objects, back-projection, segmenters, checkpoints."""

from __future__ import annotations

from wsiseg.models.backproject import invert_grid
from wsiseg.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from wsiseg.models.config import DEFAULT_CLASSES, ModelConfig
from wsiseg.models.deformseg import DeformSeg
from wsiseg.models.loading import load_model, resolve_device
from wsiseg.models.mipmap import build_mipmap, sample_image, sample_labels
from wsiseg.models.saliency import SaliencyNet
from wsiseg.models.samplers import Sampler, get_sampler, register_sampler, sampler_names
from wsiseg.models.sampling import identity_grid, saliency_to_grid
from wsiseg.models.segmenters import build_segmenter, known_segmenters
from wsiseg.models.sources import MemorySource, SampleSource

__all__ = [
    "DEFAULT_CLASSES",
    "CheckpointError",
    "DeformSeg",
    "MemorySource",
    "ModelConfig",
    "SaliencyNet",
    "SampleSource",
    "Sampler",
    "build_mipmap",
    "build_segmenter",
    "get_sampler",
    "identity_grid",
    "invert_grid",
    "known_segmenters",
    "load_checkpoint",
    "load_model",
    "register_sampler",
    "resolve_device",
    "sample_image",
    "sample_labels",
    "sampler_names",
    "saliency_to_grid",
    "save_checkpoint",
]
