"""`SegmentConfig`: settings of a `wsiseg segment` run (written beside its outputs)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["SegmentConfig"]


@dataclass(frozen=True)
class SegmentConfig:
    """How slides are segmented; the model's own geometry comes from its checkpoint.

    ``output_mpp`` is the pixel size of the label outputs (default: 4x the model's
    ``task_mpp``); ``margin_px`` is the context margin at ``task_mpp`` around each
    region's core; ``min_area_um2`` drops smaller specks from the GeoJSON;
    ``task_retries`` is how often a region task that raised is rerun (a task whose
    worker died is rerun by dask anyway, up to ``distributed.scheduler.allowed-failures``).
    """

    output_mpp: float | None = None
    margin_px: int = 64
    batch_regions: int = 4
    thumb_mpp: float = 8.0
    min_area_um2: float = 100.0
    device: str = "auto"
    threads_per_worker: int = 1
    task_retries: int = 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved(self, output_mpp: float) -> SegmentConfig:
        """This config with the output pixel size a run actually uses filled in."""
        return dataclasses.replace(self, output_mpp=float(output_mpp))

    def output_settings(self, *, off_tissue: bool = False) -> dict[str, Any]:
        """The settings that change the outputs (not device or parallelism); with
        ``off_tissue``, that predictions off the tissue are cleared (a model whose class
        0 is not Background: `wsiseg.pipeline.off_tissue`), so results written before
        that rule are not taken for done."""
        keys = ("output_mpp", "margin_px", "thumb_mpp", "min_area_um2", "batch_regions")
        out: dict[str, Any] = {k: getattr(self, k) for k in keys}
        if off_tissue:
            out["off_tissue"] = "cleared"
        return out

    def output_hash(self, *, off_tissue: bool = False) -> str:
        """Hash of `output_settings`."""
        text = json.dumps(self.output_settings(off_tissue=off_tissue), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
