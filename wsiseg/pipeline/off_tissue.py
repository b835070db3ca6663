"""Predictions off the detected tissue, cleared for models whose class 0 is not glass alone.

A model whose class 0 is ``Background`` (the demo model) is trained to call glass
background. A model whose class 0 is tissue and glass alike (``Not gland``) has seen
little glass, and in regions at the tissue's border it can mark blobs on the glass as
its other classes; those would be exported and counted as areas. For such models the
cores are cleared (set to class 0) where the tissue mask, grown by one of its pixels,
has no tissue: the same mask that chose the regions. Cleared before stitching and
before the scratch record, so a resumed run reuses exactly what it wrote.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from wsiseg.tiling import Region, RegionPlan

__all__ = ["OffTissue", "clears_off_tissue"]


def clears_off_tissue(class_names: tuple[str, ...] | list[str]) -> bool:
    """Whether a model's predictions off the tissue are cleared: class 0 is not
    ``Background`` (the rule `class_areas` uses for what the tissue is)."""
    return bool(class_names) and class_names[0].strip().lower() != "background"


class OffTissue:
    """The tissue mask of a slide, kept as bits, and the mapping of output pixels to it.

    Parameters
    ----------
    mask
        Boolean tissue mask on the thumbnail grid.
    downsample
        Level-0 pixels per mask pixel.
    plan
        The region plan: its output grid is mapped onto the mask by pixel centres.
    """

    def __init__(self, mask: np.ndarray, downsample: float, plan: RegionPlan) -> None:
        grown = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool))
        self._shape = grown.shape
        self._bits = np.packbits(grown, axis=1)  # 1 bit a pixel while the slide runs
        self._scale = plan.output_mpp / plan.mpp / downsample  # mask px per output px
        self._plan = plan

    def _index(self, start: int, stop: int, size: int) -> np.ndarray:
        centres = (np.arange(start, stop) + 0.5) * self._scale
        return np.minimum(centres.astype(np.int64), size - 1)

    def clear(self, region: Region, core: np.ndarray) -> np.ndarray:
        """``core`` (a region's labels on the output grid) with class 0 off the tissue."""
        x0, y0, x1, y1 = self._plan.core_box_out(region)
        h, w = self._shape
        ty, tx = self._index(y0, y1, h), self._index(x0, x1, w)
        rows = np.unpackbits(self._bits[ty[0] : ty[-1] + 1], axis=1, count=w)
        on = rows[ty - ty[0]][:, tx].astype(bool)
        if on.all():
            return core
        out = core.copy()
        out[~on] = 0
        return out
