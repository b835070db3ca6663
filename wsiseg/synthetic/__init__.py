"""Synthetic prostate needle-biopsy whole-slide images with exact ground truth.

The generator draws a deterministic *scene* from a :class:`SynthSpec` (the seed
and the physical size of the slide) and renders any level-0 region of it on
demand, so a slide of any size is written tile by tile with bounded memory and
the same pixels come out whatever the tiling.

Content and classes (label ids are the indices of :data:`CLASS_NAMES`):

``0 background``
    Near-white glass with slight grain.
``1 stroma``
    A few elongated tissue cores (needle biopsies): long bands about
    1-1.5 mm wide (narrower on slides too small to hold that), slightly
    curved, with irregular edges, rounded ends and the odd ragged transverse
    crack (glass, class 0).
    Pink eosinophilic fibromuscular stroma with fibres running along the core,
    slow staining variation and scattered spindle-shaped nuclei and
    lymphocytes.
``2 benign_gland``
    Large glands, 100-400 µm across, with irregular, sometimes lobulated
    outlines: a purple epithelial ring (a row of flat dark basal nuclei and a
    row of round secretory nuclei over pale cytoplasm) with papillary
    infoldings around a pale lumen, some with pink corpora amylacea. The
    label covers epithelium and lumen.
``3 tumour``
    Several foci per core of small crowded glands and solid cords 15-60 µm
    across: amphophilic cytoplasm, enlarged dark nuclei with nucleoli, small
    or no lumina, separated by thin stroma (which stays class 1). Foci range
    from a single gland or a few glands (the smallest are one or two samples
    across at 1/256 of the pixels) to hundreds.

Labels are exact: a pixel's label is the object whose colours were painted
there (cores, then glands; nuclei never change a label). Every size is in µm
and converted with ``spec.mpp``: the same seed and physical size at 0.25 µm/px
give the same slide at twice the pixels. Textures are functions of absolute
pixel coordinates (hash-based jittered grids, value noise and periodic noise
tables), so tiles are seamless and :func:`render_region` does not depend on
how a slide is cut into regions. The label computation uses only exactly
rounded floating-point operations, so labels are bit-identical between any
two tilings; images agree too (exactly in practice; nucleus orientations use
``sin``/``cos``, whose last bit numpy does not promise).

Cost: the scene (object lists, binned in 256 µm cells) is built once per
process and spec and cached (well under a second for an 8192 x 6144 slide,
about 10 s for 60k x 60k); rendering then costs the same per pixel whatever
the slide size: glass is a slice of a precomputed periodic texture, tissue
is vectorised numpy over the objects that touch the block.

Files written by :func:`write_synthetic_slide`:

* ``NAME.tiff``: tiled pyramidal TIFF in the layout OpenSlide's generic-TIFF
  reader expects (levels as top-level IFDs in decreasing size, levels after
  the first marked as reduced images, no SubIFDs, not OME). JPEG tiles stored
  as YCbCr with 2x2 chroma subsampling (the common WSI convention; OpenSlide
  and tiffslide decode them identically), pixel size in the resolution tags
  (pixels per cm) of every level, lower levels area-averaged from the level
  above, a JSON ImageDescription naming generator, version, seed and mpp.
* ``NAME_mask.tiff``: the labels, same geometry and levels, uint8, deflate,
  lower levels by block mode (ties go to the higher class id so small tumour
  foci survive as long as possible), never averaged.

Modules: ``spec`` (what to generate), ``noise`` (hashing and value noise),
``cores`` and ``glands`` (tissue geometry), ``scene`` (one cached scene per
spec), ``textures`` and ``nuclei`` (appearance), ``render`` (painting pixels),
``tiff`` (writing the pyramids).
"""

from __future__ import annotations

from wsiseg.synthetic.render import render_region
from wsiseg.synthetic.spec import (
    CLASS_COLOURS,
    CLASS_NAMES,
    GENERATOR_NAME,
    GENERATOR_VERSION,
    SynthPaths,
    SynthSpec,
    level_shapes,
)
from wsiseg.synthetic.tiff import write_synthetic_slide

__all__ = [
    "CLASS_COLOURS",
    "CLASS_NAMES",
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "SynthPaths",
    "SynthSpec",
    "level_shapes",
    "render_region",
    "write_synthetic_slide",
]
