"""Predictions off the detected tissue are cleared for models whose class 0 is not
``Background`` (a gland model's ``Not gland``), and kept for the others."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from wsiseg.pipeline.off_tissue import OffTissue, clears_off_tissue
from wsiseg.tiling import plan_regions


def test_which_models_are_cleared() -> None:
    assert clears_off_tissue(("Not gland", "Gland"))
    assert clears_off_tissue(["Nucleus background", "Nucleus"])
    assert not clears_off_tissue(("Background", "Stroma", "Tumor"))
    assert not clears_off_tissue((" background ", "Tumor"))


def test_cores_are_cleared_where_the_grown_mask_has_no_tissue() -> None:
    """Output pixels map onto the mask by their centres; the mask is grown by one of its
    pixels, so a prediction within one mask pixel of the tissue stays."""
    mask = np.zeros((40, 60), bool)
    mask[10:30, 5:25] = True  # 8 x 8 level-0 px per mask px: tissue at x 40..200
    plan = plan_regions(
        (480, 320),
        0.5,
        task_mpp=0.5,
        region_px=64,
        margin_px=8,
        output_mpp=1.0,
        tissue_mask=mask,
        tissue_downsample=8.0,
    )
    off = OffTissue(mask, 8.0, plan)
    grown = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool))
    w, h = plan.output_size
    # output px (x, y) covers level-0 [2x, 2x + 2): its centre lies in mask px (2x + 1) // 8
    expected = grown[(2 * np.arange(h) + 1) // 8][:, (2 * np.arange(w) + 1) // 8]
    seen = np.zeros((h, w), bool)
    for region in plan.regions:
        x0, y0, x1, y1 = plan.core_box_out(region)
        core = np.full((y1 - y0, x1 - x0), 3, np.uint8)
        got = off.clear(region, core)
        assert np.array_equal(got == 3, expected[y0:y1, x0:x1])
        assert np.all(got[~expected[y0:y1, x0:x1]] == 0)
        assert np.all(core == 3)  # the worker's array is not changed in place
        seen[y0:y1, x0:x1] = True
    tissue = mask[(2 * np.arange(h) + 1) // 8][:, (2 * np.arange(w) + 1) // 8]
    assert seen[tissue].all()  # every tissue pixel lies in a planned core
    assert (expected & ~tissue).any()  # and the grown band is there to keep


def test_results_written_before_the_rule_are_not_taken_for_done() -> None:
    """The clearing is part of the resume identity's settings (recorded in summary.json,
    and so in the scratch key): a gland model's results from before it are named as
    different inputs, not skipped as done; the demo model's settings are unchanged."""
    from wsiseg.pipeline.config import SegmentConfig
    from wsiseg.pipeline.outputs import ResumeIdentity

    cfg = SegmentConfig().resolved(2.0)
    assert "off_tissue" not in cfg.output_settings()
    assert cfg.output_settings(off_tissue=True)["off_tissue"] == "cleared"
    assert cfg.output_hash(off_tissue=True) != cfg.output_hash()

    def ident(off: bool) -> ResumeIdentity:
        return ResumeIdentity(
            "m" * 64,
            "f" * 64,
            0.5,
            2.0,
            None,
            "openslide",
            cfg.output_hash(off_tissue=off),
            {},
            cfg.output_settings(off_tissue=off),
        )

    diffs = ident(False).differences(ident(True))
    assert len(diffs) == 1 and "off_tissue (not recorded) vs cleared" in diffs[0]


def _biased_model(folder: Path, names: tuple[str, str]) -> Path:
    """A tiny two-class model that calls every pixel class 1 (its head's bias)."""
    import torch

    from wsiseg.models.checkpoint import save_checkpoint
    from wsiseg.models.config import packaged_model_config
    from wsiseg.models.deformseg import DeformSeg
    from wsiseg.models.loading import checkpoint_config

    cfg = packaged_model_config("tiny")
    cfg = dataclasses.replace(
        cfg, classes=((names[0], (255, 255, 255)), (names[1], (20, 120, 220)))
    )
    torch.manual_seed(0)
    state = DeformSeg(cfg).state_dict()
    state["segmenter.model.head.bias"] = torch.tensor([-20.0, 20.0])
    return Path(save_checkpoint(folder / names[0].replace(" ", "_"), state, checkpoint_config(cfg)))


@pytest.mark.parametrize(
    ("names", "cleared"), [(("Not gland", "Gland"), True), (("Background", "Tumor"), False)]
)
def test_segment_clears_off_tissue_only_for_a_tissue_class_zero(
    small_synthetic, tmp_path: Path, names: tuple[str, str], cleared: bool
) -> None:
    """End to end: a model that calls everything class 1 leaves class 1 exactly on the
    (grown) tissue of its regions when class 0 is ``Not gland``; with ``Background`` as
    class 0 its regions stay class 1 on the glass as well (unchanged behaviour)."""
    from wsiseg.cli import main
    from wsiseg.export.ome_tiff import read_label_ome_tiff
    from wsiseg.io import open_slide
    from wsiseg.pipeline.config import SegmentConfig
    from wsiseg.tissue import TissueParams, detect_tissue

    model = _biased_model(tmp_path, names)
    out = tmp_path / "out"
    main(["segment", str(small_synthetic.image), "-o", str(out), "--model", str(model)])
    labels = read_label_ome_tiff(out / small_synthetic.image.stem / "mask.ome.tif")
    recorded = json.loads((out / small_synthetic.image.stem / "summary.json").read_text())
    assert recorded["identity"]["settings"].get("off_tissue") == ("cleared" if cleared else None)
    reader = open_slide(small_synthetic.image)
    tissue = detect_tissue(reader, TissueParams(thumb_mpp=SegmentConfig().thumb_mpp))
    grown = ndimage.binary_dilation(tissue.mask, structure=np.ones((3, 3), bool))
    summary = json.loads((out / small_synthetic.image.stem / "summary.json").read_text())
    h, w = labels.shape
    scale = summary["output_mpp"] / reader.mpp[0] / tissue.downsample  # mask px per output px
    ty = np.minimum(((np.arange(h) + 0.5) * scale).astype(int), grown.shape[0] - 1)
    tx = np.minimum(((np.arange(w) + 0.5) * scale).astype(int), grown.shape[1] - 1)
    on = grown[ty][:, tx]
    assert (labels[on] == 1).mean() > 0.99  # tissue pixels keep the model's answer
    if cleared:
        assert not labels[~on].any()
    else:
        assert labels[~on].any()  # glass in border regions keeps the model's class 1
