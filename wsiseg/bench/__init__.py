"""Benchmark-only helpers: run keys, result files, locks, timing, budget curves and plots,
stain-rule labels. Used by the scripts in ``pipelines/``; nothing else depends on them."""

from __future__ import annotations

__all__: list[str] = []
