"""Slides a model cannot read are refused (issue 12 §4): fluorescence, coarse pixels; colour warns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsiseg.colour import colour_stats
from wsiseg.io import open_slide
from wsiseg.models.config import ModelConfig
from wsiseg.pipeline.admission import (
    admit_slide,
    dark_background,
    fluorescence_evidence,
)

MODEL = ModelConfig()  # task_mpp 0.5


def _he_thumbnail(seed: int = 0, dark: bool = False) -> np.ndarray:
    """Glass with a pink/purple tissue block (or the same on black, as in fluorescence)."""
    rng = np.random.default_rng(seed)
    thumb = np.full((120, 160, 3), 10 if dark else 245, np.uint8)
    tissue = rng.integers(0, 30, (60, 80, 3)) + np.array([160, 80, 170])
    thumb[30:90, 40:120] = (tissue // 3 if dark else tissue).astype(np.uint8)
    return thumb


@pytest.fixture(scope="module")
def coarse_synthetic(tmp_path_factory: pytest.TempPathFactory):
    from wsiseg.synthetic import SynthSpec, write_synthetic_slide

    spec = SynthSpec(width_px=768, height_px=512, seed=3, tile_px=256, mpp=1.2)
    return write_synthetic_slide(tmp_path_factory.mktemp("coarse"), "coarse", spec)


def test_synthetic_slide_is_admitted(small_synthetic) -> None:
    with open_slide(small_synthetic.image) as reader:
        adm = admit_slide(reader, MODEL, None)
    assert adm.admitted and not adm.refusals and not adm.warnings and not adm.forced


def test_slide_coarser_than_twice_the_task_pixel_size_is_refused(coarse_synthetic) -> None:
    with open_slide(coarse_synthetic.image) as reader:
        assert reader.mpp[0] == pytest.approx(1.2)
        adm = admit_slide(reader, MODEL, None)
        assert not adm.admitted and len(adm.refusals) == 1
        assert "2.4x coarser" in adm.reason and "0.5 µm/px" in adm.reason
        # A model at 0.62 µm/px reads it (1.9x).
        assert admit_slide(reader, MODEL.replace(task_mpp=0.62), None).admitted
        forced = admit_slide(reader, MODEL, None, force=True)
    assert forced.admitted and forced.forced and forced.refusals == adm.refusals
    assert forced.to_dict()["forced"] is True


def test_dark_background_is_not_brightfield() -> None:
    assert dark_background(_he_thumbnail()) is None
    reason = dark_background(_he_thumbnail(dark=True))
    assert reason is not None and "dark background" in reason


def test_fluorescence_metadata() -> None:
    ndpi = {
        "hamamatsu.;NDP Shading Data\r;Version": "0005\r;Name=TxRed\r;CubeName=TxRed\r;"
        "ExcitationName=Blank\r;ExcitationWaveLength=\r;EmissionWaveLength=650\r;",
        "hamamatsu.AHEX[0].fluorescence": "0000",
    }
    found = fluorescence_evidence(ndpi)
    assert found is not None and "emission wavelength 650 nm" in found and "TxRed" in found
    # All-zero calibration tables and blank wavelengths say nothing.
    assert fluorescence_evidence({"hamamatsu.AHEX[0].fluorescence": "0000"}) is None
    assert fluorescence_evidence({"x": "ExcitationWaveLength=\r;EmissionWaveLength=0"}) is None
    ome = (
        '<?xml version="1.0"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
        '<Image ID="Image:0"><Pixels ID="Pixels:0" SizeC="{c}" SizeX="4" SizeY="4" SizeZ="1" '
        'SizeT="1" DimensionOrder="XYCZT" Type="uint8">{channels}</Pixels></Image></OME>'
    )
    fluo = ome.format(
        c=2,
        channels='<Channel ID="Channel:0:0" Name="DAPI" ExcitationWavelength="358"/>'
        '<Channel ID="Channel:0:1" Name="FITC" IlluminationType="Epifluorescence"/>',
    )
    bright = ome.format(
        c=3,
        channels='<Channel ID="Channel:0:0" SamplesPerPixel="3" IlluminationType="Transmitted"/>',
    )
    found = fluorescence_evidence({"tiff.ImageDescription": fluo})
    assert found is not None and "DAPI" in found
    assert fluorescence_evidence({"tiff.ImageDescription": bright}) is None
    assert fluorescence_evidence({"tiff.ImageDescription": "<OME><Channel"}) is None  # broken


def test_colour_far_from_training_warns_only(small_synthetic) -> None:
    he = colour_stats([_he_thumbnail()])
    assert he is not None
    meta = {"colour_stats": he.to_dict()}
    with open_slide(small_synthetic.image) as reader:
        near = admit_slide(reader, MODEL, meta, thumbnail=_he_thumbnail(seed=1))
        brown = np.full((120, 160, 3), 245, np.uint8)
        brown[30:90, 40:120] = (120, 80, 30)  # DAB-like, not H&E
        far = admit_slide(reader, MODEL, meta, thumbnail=brown)
        broken = admit_slide(reader, MODEL, {"colour_stats": {"mean": [1]}}, thumbnail=brown)
    assert near.admitted and not near.warnings
    assert far.admitted and not far.refusals and len(far.warnings) == 1
    assert "colour is far from the model's training images" in far.warnings[0]
    assert broken.admitted and not broken.warnings


def test_shared_dapi_fluorescence_slide_is_refused(shared_data: Path) -> None:
    path = shared_data / "slides" / "test3-DAPI-2-387.ndpi"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with open_slide(path) as reader:
        adm = admit_slide(reader, MODEL, None)
        assert not adm.admitted and len(adm.refusals) == 1
        assert "not a brightfield scan" in adm.reason and "387 nm" in adm.reason
        # Without its metadata, the thumbnail alone says the same.
        thumb = reader.thumbnail(8.0)
    assert dark_background(thumb) is not None


@pytest.mark.parametrize(
    "name, mpp",
    [
        ("CMU-1-Small-Region.svs", None),
        ("tcga-cr-7395-01a-01-ts1.svs", 0.5),
        ("kidney-48-5.tif", 0.5),
        ("small_HE_levels.tiff", 0.5),
        ("dicom-jpeg", None),
    ],
)
def test_shared_brightfield_slides_are_admitted(shared_data: Path, name: str, mpp) -> None:
    path = shared_data / "slides" / name
    if not path.exists():
        pytest.skip(f"{path} not found")
    with open_slide(path, mpp=mpp) as reader:
        # The 16.8 µm/px DICOM needs a model of a matching pixel size; it is brightfield.
        model = MODEL.replace(task_mpp=max(0.5, reader.mpp[0] / 2))
        adm = admit_slide(reader, model, None)
        assert adm.admitted and not adm.refusals, adm.refusals
        if reader.mpp[0] > 1.0:
            refused = admit_slide(reader, MODEL, None)
            assert not refused.admitted and "coarser" in refused.reason
