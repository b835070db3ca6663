"""Models: saliency net, saliency -> grid, samplers, back-projection, segmenters."""

from __future__ import annotations

__all__ = ["backproject", "mipmap", "sampling"]
