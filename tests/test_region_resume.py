"""Region-level resume (issue 13, goal 3): a slide killed part-way through its regions
is rerun with the same command, reuses the regions its scratch holds finished and
computes only the others, with outputs identical to an uninterrupted run's (DESIGN.md
§3.8). Scratch made for other inputs or settings, or cut short, is never reused.

The processes are real `wsiseg segment` runs, guarded and killed as in
`tests/test_interrupt.py`; the scratch's own checks are tested in-process below.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.test_interrupt import Run, _chunks, _finish, _hidden, _png, _summary, _tiff_levels

SLIDE = "small"
BATCH = 4  # SegmentConfig.batch_regions: a batch is the unit of reuse
REUSED = re.compile(r"(\d+) of (\d+) regions reused from an interrupted run, (\d+) to compute")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic slide of 192 regions (48 batches), an untrained tiny model and another
    one of the same geometry (other weights: its regions would tile the same store)."""
    import torch

    from tests.segment_helpers import tiny_checkpoint
    from wsiseg.models.checkpoint import save_checkpoint
    from wsiseg.models.config import packaged_model_config
    from wsiseg.models.deformseg import DeformSeg
    from wsiseg.models.loading import checkpoint_config
    from wsiseg.synthetic import SynthSpec, write_synthetic_slide

    tmp = tmp_path_factory.mktemp("region-resume")
    spec = SynthSpec(width_px=3072, height_px=2048, seed=7, tile_px=256, level_factor=2)
    paths = write_synthetic_slide(tmp / "slides", SLIDE, spec)
    cfg = packaged_model_config("tiny")
    torch.manual_seed(1)
    other = save_checkpoint(tmp / "other", DeformSeg(cfg).state_dict(), checkpoint_config(cfg))
    return {
        "slide": paths.image,
        "model": tiny_checkpoint(tmp / "model"),
        "other": Path(other),
        "tmp": tmp,
    }


def _args(inputs: dict[str, Path], out: Path, model: str = "model") -> list[str]:
    return [str(inputs["slide"]), "-o", str(out), "--model", str(inputs[model])] + [
        "--workers",
        "1",
        "--device",
        "cpu",
    ]


def _records(out: Path) -> list[Path]:
    """The scratch's records of finished batches."""
    return sorted(out.glob(f"{SLIDE}/.work-*/done/[0-9]*.json"))


def _regions_in(records: list[Path]) -> int:
    return sum(len(json.loads(p.read_text())["regions"]) for p in records)


def _slide_summary(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / SLIDE / "summary.json").read_text())
    return data


def _kill_part_way(inputs: dict[str, Path], out: Path, log: Path, chunks: int) -> int:
    """Start a run, SIGKILL its process group once ``chunks`` cores are stored; the
    cores stored then."""
    run = Run(_args(inputs, out), out, log)
    run.wait_until(lambda: _chunks(out, SLIDE) >= chunks, f"{chunks} regions were done")
    run.kill()
    assert not run.watch.errors, run.watch.errors
    assert not (out / SLIDE / "summary.json").exists()
    return _chunks(out, SLIDE)


@pytest.fixture(scope="module")
def reference(inputs: dict[str, Path]) -> Path:
    out = inputs["tmp"] / "ref"
    run = Run(_args(inputs, out), out, inputs["tmp"] / "ref.log", options=("-v",))
    _finish(run)
    assert _slide_summary(out)["regions_reused"] == 0
    assert not REUSED.search(run.output())
    return out


@pytest.mark.slow
def test_killed_slide_reuses_its_finished_regions(
    inputs: dict[str, Path], reference: Path, tmp_path: Path
) -> None:
    n = _slide_summary(reference)["regions"]
    assert n >= 10 * BATCH
    out = tmp_path / "out"
    stored = _kill_part_way(inputs, out, tmp_path / "killed.log", chunks=10 * BATCH)
    assert stored < n, "killed part-way through the regions"
    # Each finished batch is recorded right after its cores are stored.
    records = _records(out)
    finished = _regions_in(records)
    assert stored - BATCH <= finished <= stored, (stored, finished)
    # A record cut short (a crash while writing it): its batch is redone.
    cut = records[len(records) // 2]
    lost = len(json.loads(cut.read_text())["regions"])
    cut.write_text(cut.read_text()[:25])

    rerun = Run(_args(inputs, out), out, tmp_path / "rerun.log", options=("-v",))
    _finish(rerun)
    found = REUSED.search(rerun.output())
    assert found, rerun.output()[-3000:]
    reused, total, computed = (int(g) for g in found.groups())
    assert (reused, total, computed) == (finished - lost, n, n - finished + lost)
    assert _slide_summary(out)["regions_reused"] == finished - lost
    assert not _hidden(out), f"scratch left behind: {_hidden(out)}"

    # Identical outputs: every mask level, the parsed GeoJSON, the images (the overlay
    # shows the reused regions' sampling densities), the summary's areas and counts.
    a, b = reference / SLIDE, out / SLIDE
    la, lb = _tiff_levels(a / "mask.ome.tif"), _tiff_levels(b / "mask.ome.tif")
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(x, y)
    geo = json.loads((a / "annotations.geojson").read_text())
    assert geo["features"], "the tiny model must give some features for this to mean much"
    assert geo == json.loads((b / "annotations.geojson").read_text())
    for png in ("overlay.png", "thumbnail.png"):
        np.testing.assert_array_equal(_png(a / png), _png(b / png))
    sa, sb = _summary(a / "summary.json"), _summary(b / "summary.json")
    assert sa["classes"] == sb["classes"] and sa["pixels_decoded"] == sb["pixels_decoded"]
    assert sa == sb


@pytest.mark.slow
def test_scratch_of_another_model_is_not_reused(inputs: dict[str, Path], tmp_path: Path) -> None:
    """Another model of the same geometry: the stored cores fit its grid and batches,
    and still none may be reused."""
    out = tmp_path / "out"
    _kill_part_way(inputs, out, tmp_path / "killed.log", chunks=4 * BATCH)
    assert _regions_in(_records(out)) > 0
    (old,) = (out / SLIDE).glob(".work-*")

    rerun = Run(_args(inputs, out, "other"), out, tmp_path / "rerun.log", options=("-v",))
    _finish(rerun)
    text = rerun.output()
    assert f"discarding the scratch {old.name}" in text, text[-3000:]
    assert not REUSED.search(text)
    summary = _slide_summary(out)
    assert summary["regions_reused"] == 0
    assert Path(summary["model"]) == inputs["other"].resolve()
    assert not _hidden(out)


# -- the scratch's checks, in-process -----------------------------------------------------


def _plan():  # type: ignore[no-untyped-def]
    from wsiseg.tiling import plan_regions

    return plan_regions((1024, 768), 0.5, task_mpp=0.5, region_px=256, margin_px=64, output_mpp=2.0)


def _batches(plan, size: int) -> list[list[Any]]:  # type: ignore[no-untyped-def]
    regions = list(plan.regions)
    return [regions[i : i + size] for i in range(0, len(regions), size)]


def _identity(output_mpp: float = 2.0):  # type: ignore[no-untyped-def]
    from wsiseg.pipeline.outputs import ResumeIdentity

    return ResumeIdentity(
        model_sha256="m" * 64,
        slide_fingerprint="f" * 32,
        slide_mpp=0.5,
        output_mpp=output_mpp,
        roi_sha256=None,
        backend="tiffslide",
        settings_hash="h" * 16,
    )


def test_scratch_reuses_only_batches_stored_as_recorded(tmp_path: Path) -> None:
    from wsiseg.pipeline.scratch import BatchRecord, core_sha256, open_scratch, scratch_key
    from wsiseg.pipeline.stitch import Stitcher, core_of

    plan = _plan()
    batches = _batches(plan, 2)
    assert len(batches) >= 6
    key = scratch_key(_identity(), plan, batches)
    scratch = open_scratch(tmp_path, key)
    stitcher = Stitcher(plan, scratch.labels_path, density_grid=16)
    rng = np.random.default_rng(0)
    n = plan.region_out_px
    cores, densities = {}, {}
    for number, batch in enumerate(batches[:5]):
        for r in batch:
            cores[r.index] = core_of(plan, r, rng.integers(0, 3, (n, n), dtype=np.uint8))
            densities[r.index] = rng.random((16, 16), dtype=np.float32)
            stitcher.add_core(r, cores[r.index])
        scratch.add(
            BatchRecord(
                batch=number,
                regions=tuple(r.index for r in batch),
                sha256=tuple(core_sha256(cores[r.index]) for r in batch),
                pixels_decoded=1000 + number,
                densities=tuple(densities[r.index] for r in batch),
            )
        )
    # The sixth batch's cores are stored but it was killed before its record.
    for r in batches[5]:
        stitcher.add_core(r, core_of(plan, r, np.ones((n, n), np.uint8)))

    def chunk(region: Any) -> Path:
        x0, y0, _, _ = plan.core_box_out(region)
        c = plan.core_out_px
        return scratch.labels_path / "c" / str(y0 // c) / str(x0 // c)

    data = bytearray(chunk(batches[1][0]).read_bytes())
    data[7] ^= 1
    chunk(batches[1][0]).write_bytes(bytes(data))  # changed
    chunk(batches[2][1]).write_bytes(b"\0" * 3)  # cut short
    chunk(batches[3][0]).unlink()  # missing
    # Reopened as a rerun does: the same key finds the same scratch.
    again = open_scratch(tmp_path, key)
    assert again.folder == scratch.folder
    resumed = Stitcher(plan, again.labels_path, density_grid=16)
    reused = again.reusable(resumed, batches)
    assert sorted(reused) == [0, 4]
    assert reused[4].pixels_decoded == 1004
    for number in (0, 4):
        for r, dens in zip(batches[number], reused[number].densities, strict=True):
            np.testing.assert_array_equal(dens, densities[r.index])
            stored = resumed.stored_core(r)
            assert stored is not None
            np.testing.assert_array_equal(stored, cores[r.index])


def test_scratch_of_another_key_or_overwrite_is_discarded(tmp_path: Path) -> None:
    from wsiseg.pipeline.scratch import open_scratch, scratch_key

    plan = _plan()
    batches = _batches(plan, 4)
    first = open_scratch(tmp_path, scratch_key(_identity(), plan, batches))
    (first.folder / "done").mkdir()
    assert open_scratch(tmp_path, scratch_key(_identity(), plan, batches)).folder == first.folder
    assert (first.folder / "done").is_dir(), "the same key keeps it"
    other = open_scratch(tmp_path, scratch_key(_identity(4.0), plan, batches))
    assert other.folder != first.folder and not first.folder.exists()
    assert [p.name for p in tmp_path.glob(".work-*")] == [other.folder.name]
    (other.folder / "done").mkdir()
    fresh = open_scratch(tmp_path, scratch_key(_identity(4.0), plan, batches), discard=True)
    assert fresh.folder == other.folder and not (fresh.folder / "done").exists()
    # Other batches (batch_regions) or a damaged key file: not reused either.
    regrouped = open_scratch(tmp_path, scratch_key(_identity(4.0), plan, _batches(plan, 2)))
    assert regrouped.folder != fresh.folder and not fresh.folder.exists()
    (regrouped.folder / "done").mkdir()
    (regrouped.folder / "key.json").write_text("{")
    last = open_scratch(tmp_path, scratch_key(_identity(4.0), plan, _batches(plan, 2)))
    assert last.folder == regrouped.folder and not (last.folder / "done").exists()
    assert len(list(tmp_path.glob(".work-*"))) == 1
