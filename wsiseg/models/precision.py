"""Inference precision and host -> device copies.

``precision`` names how the saliency net and the segmenter run at inference:

- ``auto``: bf16 autocast on CUDA, float32 elsewhere (CPU outputs are the float32 ones);
- ``fp32``: float32 everywhere;
- ``bf16``: bf16 autocast on any device that has it (CPU too: faster on CPUs with bf16
  instructions, but the outputs differ from float32 ones).

Grid maths, sampling and back-projection stay float32 whatever the precision (they
switch autocast off themselves: `wsiseg.models.sampling.no_autocast`).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from wsiseg.errors import InputError

__all__ = ["PRECISIONS", "autocast_dtype", "nets_autocast", "to_device"]

#: Known inference precisions.
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: float32).

    Raises
    ------
    InputError
        Unknown precision; the message lists the known ones.
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def nets_autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[object]:
    """Autocast to ``dtype`` on ``device`` for the networks; float32 (autocast off) for
    None."""
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def to_device(x: Tensor, device: torch.device) -> Tensor:
    """``x`` on ``device``; a CPU tensor bound for CUDA goes through pinned memory
    (an asynchronous copy, ordered before the kernels that use it on the stream)."""
    if x.device == device:
        return x
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
