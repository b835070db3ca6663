"""The whole-slide pipeline: plan -> read+sample -> predict -> stitch, run by dask."""

from __future__ import annotations

__all__: list[str] = []
