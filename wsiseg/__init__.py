"""wsiseg: whole-slide segmentation with learned non-uniform downsampling."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
