"""Class areas and fractions of tissue in a slide's summary."""

from __future__ import annotations

import numpy as np
import pytest

from wsiseg.pipeline.run import class_areas


def test_background_class_is_not_tissue() -> None:
    counts = np.array([600.0, 300.0, 100.0])
    areas, tissue = class_areas(
        ["Background", "Stroma", "Tumor"], counts, 1e-6, detected_tissue_px=999
    )
    assert tissue == 400
    assert areas["Background"].fraction_of_tissue is None
    assert areas["Stroma"].fraction_of_tissue == pytest.approx(0.75)
    assert areas["Tumor"].fraction_of_tissue == pytest.approx(0.25)
    assert areas["Tumor"].area_mm2 == pytest.approx(1e-4)


def test_a_tissue_class_zero_measures_against_detected_tissue() -> None:
    """A binary gland model's class 0 ("Not gland") holds stroma and glass alike: the
    gland fraction is of the tissue that was found, not 100 % of the glands."""
    counts = np.array([900.0, 100.0])
    areas, tissue = class_areas(["Not gland", "Gland"], counts, 1e-6, detected_tissue_px=400)
    assert tissue == 400
    assert areas["Gland"].fraction_of_tissue == pytest.approx(0.25)
    assert areas["Not gland"].fraction_of_tissue is None
    _, none = class_areas(["Not gland", "Gland"], counts, 1e-6, detected_tissue_px=0)
    assert none == 0
