"""Build, describe and load models: devices, checkpoint metadata, the bundled model."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from wsiseg import __version__
from wsiseg.errors import InputError, WsisegError
from wsiseg.models.checkpoint import (
    CheckpointError,
    check_state_fits,
    load_checkpoint,
    load_state_strict,
)
from wsiseg.models.config import ModelConfig
from wsiseg.models.deformseg import DeformSeg
from wsiseg.resources import packaged, packaged_names

__all__ = [
    "DEFAULT_MODEL",
    "resolve_device",
    "checkpoint_config",
    "default_model_path",
    "resolve_model_path",
    "bundled_models",
    "check_model",
    "load_model",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise WsisegError(
            f"--device {device!r}: not a device (auto, cpu, cuda or cuda:N)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WsisegError("--device cuda was asked for, but no CUDA GPU is available")
    return dev


def checkpoint_config(model_cfg: ModelConfig, **extra: Any) -> dict[str, Any]:
    """The JSON stored beside a checkpoint's weights."""
    return {"model": model_cfg.to_dict(), "wsiseg_version": __version__, **extra}


def default_model_path() -> Path:
    """The bundled demo model (``wsiseg/resources/models/default.safetensors``)."""
    try:
        return packaged("checkpoints", DEFAULT_MODEL)
    except InputError as exc:
        raise WsisegError("the bundled default model is missing from this installation") from exc


def bundled_models() -> list[str]:
    """Names of the models bundled with wsiseg (``--model NAME``), e.g. ``default``."""
    return packaged_names("checkpoints")


def resolve_model_path(model: str | Path) -> Path:
    """A bundled model's name (``default``, ``glas``...) -> its packaged checkpoint;
    anything else is a checkpoint path. A bare name (no folder, no suffix) that is not
    bundled and is not a file is refused with the list of bundled names."""
    text = str(model)
    if text == DEFAULT_MODEL:
        return default_model_path()
    path = Path(model)
    bare = path.name == text and not path.suffix
    if bare and not path.exists():
        try:
            return packaged("checkpoints", text)
        except InputError:
            known = ", ".join(bundled_models()) or "none"
            raise CheckpointError(
                f"{text}: not a checkpoint file or a bundled model (bundled: {known})"
            ) from None
    return path


def _checked_model(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint's config and weights, checked against each other before any model exists.

    The architecture is first built on the ``meta`` device (no memory), so a config
    that names an unknown segmenter or declares a model the weights do not fit is
    refused without allocating it.
    """
    state, meta = load_checkpoint(path)
    if not isinstance(meta.get("model"), Mapping):
        raise CheckpointError(f"{path}: checkpoint JSON has no 'model' section")
    try:
        cfg = ModelConfig.from_dict(meta["model"])
        with torch.device("meta"):
            skeleton = DeformSeg(cfg)
    except (KeyError, ValueError, TypeError, AttributeError, WsisegError) as exc:
        msg = str(exc.args[0]) if exc.args else type(exc).__name__
        raise CheckpointError(f"{path}: invalid model config: {msg}") from exc
    try:
        check_state_fits(skeleton, state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    return cfg, state, meta


def check_model(model: str | Path) -> Path:
    """Verify a model before a run: files, checksum, config and weight shapes; returns its path.

    Raises
    ------
    CheckpointError
        As `load_model`, without building the model.
    """
    path = resolve_model_path(model)
    _checked_model(path)
    return path


def load_model(model: str | Path, device: str = "auto") -> DeformSeg:
    """Load a checkpoint (safetensors + JSON) into a ready `DeformSeg` in eval mode.

    Raises
    ------
    CheckpointError
        Pickles, missing or inconsistent files, unknown architectures, wrong shapes.
    """
    path = resolve_model_path(model)
    cfg, state, meta = _checked_model(path)
    net = DeformSeg(cfg)
    load_state_strict(net, state)
    dev = resolve_device(device)
    net.to(dev).eval()
    net.checkpoint_meta = dict(meta)  # type: ignore[assignment]
    net.checkpoint_path = path  # type: ignore[assignment]
    return net
