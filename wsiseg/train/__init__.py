"""Training and evaluation: datasets, losses, metrics, the training loop."""

from __future__ import annotations

__all__: list[str] = []
