"""Stitching: region cores into the slide's label array, in any order.

Cores tile the output grid without overlap and the label array's chunks are the
cores (see :mod:`wsiseg.tiling`), so every write fills whole chunks of its own: no
read-modify-write, no blending, and the stored bytes do not depend on the order in
which regions arrive (or on a region being written twice, as a retried task may).
Every core is stored, even an all-background one, so the scratch store holds one
chunk file per core done (zarr writes it under a temporary name and renames it), and a
store left by a killed run is reopened, its cores read back (`Stitcher.stored_core`),
for a resumed slide (`wsiseg.pipeline.scratch`).
The learned sampling density is stitched the same way on a coarser grid of cells.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import Store

from wsiseg.tiling import Region, RegionPlan

__all__ = ["Stitcher", "core_of", "density_cells_of"]

log = logging.getLogger(__name__)


def core_of(plan: RegionPlan, region: Region, region_labels: np.ndarray) -> np.ndarray:
    """The core of a region's output (``[region_out_px, region_out_px]``), clipped to the grid."""
    n = plan.region_out_px
    if region_labels.shape[:2] != (n, n):
        raise ValueError(f"region output is {region_labels.shape[:2]}, expected {(n, n)}")
    m = plan.margin_out_px
    x0, y0, x1, y1 = plan.core_box_out(region)
    return np.ascontiguousarray(region_labels[m : m + y1 - y0, m : m + x1 - x0])


def density_cells_of(plan: RegionPlan, density: np.ndarray) -> np.ndarray:
    """The cells of a region's ``[g, g]`` density map that cover its core."""
    g = density.shape[0]
    m = round(plan.margin_px * g / plan.region_px)
    return density[m : g - m, m : g - m]


class Stitcher:
    """The slide's label array (zarr, chunks = cores) and optional density map.

    Parameters
    ----------
    plan
        The region plan; fixes the output grid and the cores.
    store
        Folder of the zarr label array (scratch, not an output): created, or reopened
        when it holds an array of this grid (a killed run's, to resume).
    density_grid
        Cells per region side of the sampling density (the model's saliency grid),
        or None for no density map.
    """

    def __init__(self, plan: RegionPlan, store: Path, density_grid: int | None = None) -> None:
        self.plan = plan
        self.store = store
        ow, oh = plan.output_size
        core = plan.core_out_px
        self.labels = _label_array(store, (oh, ow), core)
        self.density: np.ndarray | None = None
        if density_grid is not None:
            # Output pixels per density cell: a core spans (g - 2 x margin) cells.
            g, r = density_grid, plan.region_px
            cell = core / g * (r / (r - 2 * plan.margin_px))
            shape = (math.ceil(oh / cell), math.ceil(ow / cell))
            self.density = np.zeros(shape, np.float32)

    def add_core(self, region: Region, core: np.ndarray) -> None:
        """Write one region's core labels (as :func:`core_of` gives them)."""
        x0, y0, x1, y1 = self.plan.core_box_out(region)
        if core.shape != (y1 - y0, x1 - x0):
            raise ValueError(
                f"core of region {region.index} is {core.shape}, expected {(y1 - y0, x1 - x0)}"
            )
        self.labels[y0:y1, x0:x1] = core  # whole chunks: no read-modify-write

    def stored_core(self, region: Region) -> np.ndarray | None:
        """A region's core as stored, or None when its chunk file is missing or not whole."""
        x0, y0, x1, y1 = self.plan.core_box_out(region)
        core = self.plan.core_out_px
        chunk = self.store / self.labels.metadata.encode_chunk_key((y0 // core, x0 // core))
        try:
            if chunk.stat().st_size != core * core:  # uint8, uncompressed
                return None
        except OSError:
            return None
        return np.asarray(self.labels[y0:y1, x0:x1])

    def add_density(self, region: Region, density: np.ndarray) -> None:
        """Write one region's ``[g, g]`` sampling density (its core's cells)."""
        if self.density is None:
            raise ValueError("this stitcher keeps no density map")
        cells = density_cells_of(self.plan, density)
        ch, cw = cells.shape
        y0, x0 = region.row * ch, region.col * cw
        dh = min(ch, self.density.shape[0] - y0)
        dw = min(cw, self.density.shape[1] - x0)
        if dh > 0 and dw > 0:
            self.density[y0 : y0 + dh, x0 : x0 + dw] = cells[:dh, :dw]


def _label_array(store: Path, shape: tuple[int, int], core: int) -> zarr.Array[Any]:
    """The uint8 label array at ``store``: the one there if it has exactly this layout,
    else a new one (anything else there is removed)."""

    def create(where: Store) -> zarr.Array[Any]:
        return zarr.create_array(
            store=where,
            shape=shape,
            dtype=np.uint8,
            chunks=(core, core),
            fill_value=0,
            compressors=None,
            config={"write_empty_chunks": True},  # a chunk file per core done, even all 0
        )

    if store.exists():
        try:
            found = zarr.open_array(
                store=zarr.storage.LocalStore(store),
                mode="r+",
                config={"write_empty_chunks": True},
            )
            if found.metadata == create(zarr.storage.MemoryStore()).metadata:
                return found
        except Exception:  # noqa: BLE001 - any unreadable leftover is started anew
            log.debug("label store %s unreadable", store, exc_info=True)
        log.info("%s holds no label array of this grid; started anew", store)
        shutil.rmtree(store, ignore_errors=True)
    return create(zarr.storage.LocalStore(store))
