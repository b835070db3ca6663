"""`wsiseg segment` end to end on synthetic and real slides with the bundled model."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsiseg.cli import main
from wsiseg.export.ome_tiff import read_label_ome_tiff
from wsiseg.io.geojson import rasterise_geojson
from wsiseg.synthetic import SynthSpec, write_synthetic_slide
from wsiseg.train.datasets import LabelMask
from wsiseg.train.metrics import confusion_matrix, mean_iou

#: mIoU floor of the bundled model on a held-out synthetic slide, at the output
#: resolution (2 µm/px), against the slide's exact labels.
MIOU_FLOOR = 0.6


def run_cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    for seed in (901, 902):
        write_synthetic_slide(
            folder, f"held-out-{seed}", SynthSpec(width_px=4096, height_px=3072, seed=seed)
        )
    return folder


@pytest.fixture(scope="module")
def one_worker(slides: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out1")
    assert (
        run_cli(["segment", str(slides), "-o", str(out), "--workers", "1", "--device", "cpu"]) == 0
    )
    return out


def test_outputs_and_accuracy(one_worker: Path, slides: Path) -> None:
    run = json.loads((one_worker / "run.json").read_text())
    assert [s["status"] for s in run["slides"]] == ["done", "done"]
    out = one_worker / "held-out-901"
    for name in ("mask.ome.tif", "annotations.geojson", "summary.json", "overlay.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*")), "no temporary files may remain"
    pred = read_label_ome_tiff(out / "mask.ome.tif")
    truth = LabelMask(slides / "held-out-901_mask.tiff").at_grid(pred.shape)
    miou = mean_iou(confusion_matrix(pred, truth, 4))
    assert miou >= MIOU_FLOOR, miou
    summary = json.loads((out / "summary.json").read_text())
    assert summary["regions"] > 0 and summary["pixels_decoded"] > 0
    assert 0 < summary["pixels_decoded_per_tissue_pixel"] < 1
    assert set(summary["classes"]) == {"Background", "Stroma", "Benign gland", "Tumor"}
    for phase in ("read", "saliency", "sampling", "segmenter", "backprojection", "write"):
        assert summary["seconds"][phase] >= 0, phase
    assert summary["mpp_source"] == "metadata"
    assert summary["classes"]["Stroma"]["area_mm2"] > 0
    with tifffile.TiffFile(out / "mask.ome.tif") as tf:
        assert tf.is_ome and len(tf.series[0].levels) >= 2
    # The GeoJSON rasterises back to the mask (up to simplification and specks).
    back = rasterise_geojson(out / "annotations.geojson", pred.shape, 4.0, summary_names(summary))
    assert (back == pred).mean() > 0.97


def summary_names(summary: dict) -> list[str]:
    return list(summary["classes"])


@pytest.mark.parametrize("cluster", ["local", "threads"])
def test_two_workers_identical(
    one_worker: Path, slides: Path, tmp_path: Path, cluster: str
) -> None:
    """Two worker processes, or two worker threads in the driver's process (no spawned
    processes: one torch, one model), give what one worker process gives."""
    out2 = tmp_path / "out2"
    args = ["segment", str(slides), "-o", str(out2), "--workers", "2", "--device", "cpu"]
    assert run_cli([*args, "--cluster", cluster]) == 0
    run = json.loads((out2 / "run.json").read_text())
    assert [s["status"] for s in run["slides"]] == ["done", "done"]
    for name in ("held-out-901", "held-out-902"):
        a = read_label_ome_tiff(one_worker / name / "mask.ome.tif")
        b = read_label_ome_tiff(out2 / name / "mask.ome.tif")
        np.testing.assert_array_equal(a, b)
        ga = json.loads((one_worker / name / "annotations.geojson").read_text())
        gb = json.loads((out2 / name / "annotations.geojson").read_text())
        assert ga == gb


def test_resume_skips_and_settings_change_is_refused(
    one_worker: Path, slides: Path, capsys
) -> None:
    stamp = (one_worker / "held-out-901" / "summary.json").stat().st_mtime_ns
    assert run_cli(["segment", str(slides), "-o", str(one_worker), "--workers", "1"]) == 0
    assert "skipped" in capsys.readouterr().out
    assert (one_worker / "held-out-901" / "summary.json").stat().st_mtime_ns == stamp
    code = run_cli(
        [
            "segment",
            str(slides / "held-out-901.tiff"),
            "-o",
            str(one_worker),
            "--workers",
            "1",
            "--output-mpp",
            "4.0",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "--overwrite" in err
    assert (one_worker / "held-out-901" / "summary.json").stat().st_mtime_ns == stamp


def test_batch_goes_on_past_broken_slides(
    slides: Path, tmp_path: Path, shared_data: Path, capsys
) -> None:
    batch = tmp_path / "batch"
    batch.mkdir()
    shutil.copy(slides / "held-out-902.tiff", batch / "good.tiff")
    for name in ("broken.svs", "empty.svs", "truncated-CMU-1-Small-Region.svs"):
        shutil.copy(shared_data / "broken" / name, batch / name)
    out = tmp_path / "out"
    code = run_cli(["segment", str(batch), "-o", str(out), "--workers", "1"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.count("error:") == 3
    run = json.loads((out / "run.json").read_text())
    status = {Path(s["slide"]).name: s["status"] for s in run["slides"]}
    assert status == {
        "good.tiff": "done",
        "broken.svs": "failed",
        "empty.svs": "failed",
        "truncated-CMU-1-Small-Region.svs": "failed",
    }
    assert (out / "good" / "summary.json").is_file()


def test_real_slide_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "real"
    slide = shared_data / "slides" / "CMU-1-Small-Region.svs"
    assert run_cli(["segment", str(slide), "-o", str(out), "--workers", "1"]) == 0
    summary = json.loads((out / "CMU-1-Small-Region" / "summary.json").read_text())
    assert summary["slide_mpp"] == pytest.approx(0.499)
    mask = read_label_ome_tiff(out / "CMU-1-Small-Region" / "mask.ome.tif")
    assert mask.shape == (math.ceil(2967 * 0.499 / 2.0), math.ceil(2220 * 0.499 / 2.0))
    assert summary["classes"]["Background"]["area_mm2"] > 0
    # Features end at the slide's edge (the last output pixel row reached y = 2969.9).
    import shapely
    from shapely.geometry import shape

    text = (out / "CMU-1-Small-Region" / "annotations.geojson").read_text()
    feats = json.loads(text)["features"]
    xy = np.concatenate([shapely.get_coordinates(shape(f["geometry"])) for f in feats])
    assert xy.min() >= 0 and xy[:, 0].max() <= 2220 and xy[:, 1].max() <= 2967


def test_rerun_after_interrupted_outputs(one_worker: Path, slides: Path, tmp_path: Path) -> None:
    """A run killed after some outputs (no summary.json yet) is finished by a rerun."""
    out = tmp_path / "partial"
    shutil.copytree(one_worker / "held-out-902", out / "held-out-902")
    (out / "held-out-902" / "summary.json").unlink()
    (out / "held-out-902" / ".work-deadbeef").mkdir()  # a dead run's scratch
    code = run_cli(["segment", str(slides / "held-out-902.tiff"), "-o", str(out), "--workers", "1"])
    assert code == 0
    np.testing.assert_array_equal(
        read_label_ome_tiff(out / "held-out-902" / "mask.ome.tif"),
        read_label_ome_tiff(one_worker / "held-out-902" / "mask.ome.tif"),
    )
    assert (out / "held-out-902" / "summary.json").is_file()
    assert not list((out / "held-out-902").glob(".*")), "stale scratch is cleaned up"


def test_slide_without_tissue_is_reported_not_failed(tmp_path: Path, capsys) -> None:
    glass = np.full((2048, 2048, 3), 242, np.uint8)
    glass += np.random.default_rng(0).integers(0, 4, glass.shape, dtype=np.uint8)
    path = tmp_path / "glass.tiff"
    res = 1e4 / 0.5  # pixels per cm at 0.5 µm/px
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            glass,
            tile=(256, 256),
            compression="jpeg",
            photometric="rgb",
            resolution=(res, res),
            resolutionunit="CENTIMETER",
        )
        tw.write(
            glass[::4, ::4],
            tile=(256, 256),
            compression="jpeg",
            photometric="rgb",
            subfiletype=1,
            resolution=(res / 4, res / 4),
            resolutionunit="CENTIMETER",
        )
    out = tmp_path / "out"
    assert run_cli(["segment", str(path), "-o", str(out), "--workers", "1"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["slides"][0]["status"] == "no tissue"
    assert not (out / "glass").exists()
    assert "no tissue" in (out / "report.html").read_text()
    capsys.readouterr()
