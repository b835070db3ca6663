"""`wsiseg segment` refuses slides a model cannot read (issue 12 §4), end to end.

A refused slide: one ``error:`` line, status ``refused`` with its reasons in run.json
and the report, nothing written for it, a non-zero exit, the rest of the batch done.
``--force`` segments it and records ``forced`` with the refusals it overrode; a later
run, with or without ``--force``, skips it (same outputs). Admission warnings (colour
far from the training images) are ``warning:`` lines, in summary.json, run.json and
the report. The model card's notice is in run.json, summary.json and the report.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.segment_helpers import (
    assert_clean_failure,
    error_lines,
    run_cli,
    segment_cli,
    stderr_lines,
)
from wsiseg.models.checkpoint import DEFAULT_NOTICE

NOTICE = "Test model of wsiseg's refusal tests: not for diagnosis"


def _json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _by_name(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in run["slides"]}


def _warnings(err: str) -> list[str]:
    return [line for line in stderr_lines(err) if line.startswith("warning:")]


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a 1.2 µm/px slide (2.4x the tiny model's 0.5) and a 0.5 µm/px one."""
    from wsiseg.synthetic import SynthSpec, write_synthetic_slide

    scratch = tmp_path_factory.mktemp("refusal-synth")
    folder = tmp_path_factory.mktemp("refusal-slides")
    for name, mpp, size in (("coarse", 1.2, (384, 256)), ("fine", 0.5, (768, 512))):
        spec = SynthSpec(width_px=size[0], height_px=size[1], seed=5, tile_px=256, mpp=mpp)
        made = write_synthetic_slide(scratch, name, spec).image
        shutil.copy(made, folder / made.name)
    return folder


@pytest.fixture(scope="module")
def brown_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a notice and training colours of DAB brown (H&E slides warn)."""
    import torch

    from wsiseg.colour import colour_stats
    from wsiseg.models.checkpoint import save_checkpoint
    from wsiseg.models.config import packaged_model_config
    from wsiseg.models.deformseg import DeformSeg
    from wsiseg.models.loading import checkpoint_config

    brown = np.full((64, 64, 3), 245, np.uint8)
    brown[8:56, 8:56] = (120, 80, 30)
    stats = colour_stats([brown])
    assert stats is not None
    cfg = packaged_model_config("tiny")
    torch.manual_seed(0)
    extra = {"colour_stats": stats.to_dict(), "notice": NOTICE}
    folder = tmp_path_factory.mktemp("brown-model")
    return save_checkpoint(
        folder / "brown", DeformSeg(cfg).state_dict(), checkpoint_config(cfg, **extra)
    )


def test_shared_dapi_slide_is_refused_by_the_default_model(
    shared_data: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    slide = shared_data / "slides" / "test3-DAPI-2-387.ndpi"
    if not slide.is_file():
        pytest.skip(f"{slide} not found")
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        ["segment", "--cluster", cluster, "--device", "cpu", str(slide), "-o", str(out)], capsys
    )
    assert code == 1, err
    assert_clean_failure(err)
    (line,) = error_lines(err)
    assert line.startswith(f"error: {slide}: refused: not a brightfield scan (fluorescence: ")
    assert "387 nm" in line and line.endswith("(--force segments it anyway)")
    assert not _warnings(err)
    (record,) = _json(out / "run.json")["slides"]
    assert record["status"] == "refused" and record["out"] is None and not record["forced"]
    assert len(record["refusals"]) == 1 and "fluorescence" in record["refusals"][0]
    # Nothing written for the slide: no folder, only the run's own files.
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "report.html",
        "run.json",
    ]
    demo = "Demo model trained on synthetic slides only; not for diagnosis"
    assert _json(out / "run.json")["notice"] == demo
    report = (out / "report.html").read_text(encoding="utf-8")
    assert demo in report and "Refused." in report and "387 nm" in report


def test_refused_forced_and_skipped(
    slides: Path, brown_model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    coarse, fine = slides / "coarse.tiff", slides / "fine.tiff"
    # 1. The folder: the coarse slide is refused, the fine one done (with a colour warning).
    code, stdout, err = segment_cli([str(slides), "-o", str(out)], brown_model, cluster, capsys)
    assert code == 1, err
    assert_clean_failure(err)
    (line,) = error_lines(err)
    assert line.startswith(f"error: {coarse}: refused: pixel size 1.2 µm/px is 2.4x coarser")
    assert line.endswith("(--force segments it anyway)")
    warned = _warnings(err)
    assert len(warned) == 1 and warned[0].startswith(f"warning: {fine}: tissue colour is far")
    assert not (out / "coarse").exists()
    run = _by_name(_json(out / "run.json"))
    assert run["coarse"]["status"] == "refused" and run["coarse"]["out"] is None
    assert "2.4x coarser" in run["coarse"]["refusals"][0] and not run["coarse"]["forced"]
    assert run["coarse"]["slide_mpp"] == 1.2  # the pixel size it was refused for
    assert run["fine"]["status"] == "done" and not run["fine"]["forced"]
    assert run["fine"]["refusals"] == [] and len(run["fine"]["warnings"]) == 1
    summary = _json(out / "fine" / "summary.json")
    assert summary["warnings"] == run["fine"]["warnings"]
    assert summary["forced"] is False and summary["refusals"] == []
    assert summary["notice"] == NOTICE
    report = (out / "report.html").read_text(encoding="utf-8")
    assert report.count(html.escape(NOTICE)) == 4  # page foot, header, each slide's section
    assert "2.4x coarser" in report and "tissue colour is far" in report

    # 2. --force: the coarse slide is segmented and says so everywhere.
    code, stdout, err = segment_cli(
        [str(coarse), "-o", str(out), "--force"], brown_model, cluster, capsys
    )
    assert code == 0, err
    assert not error_lines(err)
    forced_line = [w for w in _warnings(err) if "--force" in w]
    assert len(forced_line) == 1 and "2.4x coarser" in forced_line[0]
    summary = _json(out / "coarse" / "summary.json")
    assert summary["forced"] is True and len(summary["refusals"]) == 1
    assert "2.4x coarser" in summary["refusals"][0] and summary["slide_mpp"] == 1.2
    run = _by_name(_json(out / "run.json"))
    assert run["coarse"]["status"] == "done" and run["coarse"]["forced"] is True
    assert run["coarse"]["refusals"] == summary["refusals"]
    assert run["fine"]["status"] == "done"  # kept from the first run
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "Segmented with --force." in report

    # 3. Reruns skip the forced slide, with --force or without: its outputs stand.
    mask = (out / "coarse" / "mask.ome.tif").read_bytes()
    for extra in (["--force"], []):
        code, stdout, err = segment_cli(
            [str(coarse), "-o", str(out), *extra], brown_model, cluster, capsys
        )
        assert code == 0, err
        assert stdout.split()[0] == "skipped"
        run = _by_name(_json(out / "run.json"))
        assert run["coarse"]["status"] == "skipped" and run["coarse"]["forced"] is True
        assert "2.4x coarser" in run["coarse"]["refusals"][0]
    assert (out / "coarse" / "mask.ome.tif").read_bytes() == mask


def test_default_notice_without_one_in_the_checkpoint(
    slides: Path, model: Path, cluster: str, tmp_path: Path, capsys
) -> None:
    """The tiny checkpoint states no notice: the default one is recorded and shown."""
    out = tmp_path / "out"
    code, _, err = segment_cli(
        [str(slides / "coarse.tiff"), "-o", str(out)], model, cluster, capsys
    )
    assert code == 1 and len(error_lines(err)) == 1
    assert _json(out / "run.json")["notice"] == DEFAULT_NOTICE
    assert DEFAULT_NOTICE in (out / "report.html").read_text(encoding="utf-8")
