"""The real-tissue accuracy-vs-budget benchmark in --quick mode: results, resume, report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "pipelines" / "benchmark_real.py"


def _bench(out: Path | None, work: Path, shared: Path, *extra: str) -> str:
    cmd = [sys.executable, str(SCRIPT), "--quick", "--work", str(work)]
    cmd += [] if out is None else ["--out", str(out)]
    cmd += ["--shared", str(shared), "--threads", "1", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture
def labeled(shared_data: Path) -> Path:
    for name in ("glas-full", "monuseg"):
        if not (shared_data / "labeled" / name / "images").is_dir():
            pytest.skip(f"shared data set labeled/{name} not found under {shared_data}")
    return shared_data


@pytest.mark.slow
@pytest.mark.realdata
def test_quick_real_benchmark_results_resume_report(tmp_path: Path, labeled: Path) -> None:
    work = tmp_path / "work"
    out = work / "quick"  # --quick's default: never the committed docs/results/real
    first = _bench(None, work, labeled)
    lines = first.splitlines()
    expected = next(i for i, line in enumerate(lines) if line.startswith("expected wall time"))
    assert expected < next(i for i, line in enumerate(lines) if line.startswith("[1/"))

    runs = sorted(p for p in out.glob("*.json") if p.name != "real.json")
    # per dataset: 2 budgets x (learned, uniform) + full resolution = 5 runs
    assert len(runs) == 10
    records = [json.loads(p.read_text()) for p in runs]
    assert {r["dataset"] for r in records} == {"glas", "monuseg"}
    assert {r["sampler"] for r in records} == {"learned", "uniform", "tiled"}
    for p, r in zip(runs, records, strict=True):
        assert r["key"] == p.stem and r["seed"] == 0
        assert len(r["images"]) == len(r["confusion"]) == len(r["per_image"]) == 2
        cms = np.asarray(r["confusion"])
        assert cms.shape == (2, 2, 2) and (cms.sum(axis=(1, 2)) > 0).all()
        assert 0.0 <= r["fg_iou"] <= 1.0 and 0.0 <= r["fg_dice"] <= 1.0
        assert 1 <= r["best_step"] <= r["stopped_step"] <= r["train"]["steps"]
        assert [h[0] for h in r["val_history"]][-1] == r["stopped_step"]
        assert r["data"]["files"] and r["machine"]["cpus"]
        assert ("objects" in r) == (r["dataset"] == "monuseg")
    test_images = {r["dataset"]: set(r["images"]) for r in records}
    assert all(n.startswith("testA_") for n in test_images["glas"])

    doc = json.loads((out / "real.json").read_text())
    assert doc["missing_runs"] == [] and set(doc["datasets"]) == {"glas", "monuseg"}
    assert doc["quick"] is True
    mon = doc["datasets"]["monuseg"]
    assert mon["nucleus_size"]["diameter_um_median"] > 1.0 and mon["objects"]
    md = (out / "real.md").read_text()
    assert "## glas" in md and "## monuseg" in md and "**Quick smoke run**" in md
    for name in ("glas", "monuseg"):
        top = doc["datasets"][name]["full_resolution_is_top"]
        assert isinstance(top, bool)
        assert ("Full resolution is the top line" in md) or ("FLAGGED" in md)
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    # a rerun trains nothing; a lost result is redone from its checkpoints, not retrained
    stamps = {p.name: p.stat().st_mtime_ns for p in runs}
    second = _bench(out, work, labeled)
    assert "10 finished, 0 to do" in second and "[1/" not in second
    assert {p.name: p.stat().st_mtime_ns for p in runs} == stamps
    lost = runs[2]
    before = json.loads(lost.read_text())
    lost.unlink()
    third = _bench(out, work, labeled, "--no-estimate")
    assert "9 finished, 1 to do" in third
    after = json.loads(lost.read_text())
    assert after["resumed_at_step"] == before["stopped_step"]
    assert after["confusion"] == before["confusion"]  # same best checkpoint, same evaluation

    # the report alone is rebuilt from the result files
    (out / "real.md").unlink()
    _bench(out, work, labeled, "--report-only")
    assert (out / "real.md").read_text() == md


@pytest.mark.realdata
def test_extra_run_outside_the_plan(tmp_path: Path, labeled: Path) -> None:
    """benchmark_real_extra.py: one diagnostic run (uniform 1/4, not in the plan) under
    the benchmark's rule, its result file, and no second training for a finished key."""
    script = REPO / "pipelines" / "benchmark_real_extra.py"
    out, work = tmp_path / "extra", tmp_path / "work"
    cmd = [sys.executable, str(script), "--dataset", "glas", "--sampler", "uniform"]
    cmd += ["--budget", "1/4", "--seed", "1", "--quick", "--out", str(out), "--work", str(work)]
    cmd += ["--shared", str(labeled)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    (result,) = out.glob("*.json")
    rec = json.loads(result.read_text())
    assert (rec["sampler"], rec["budget"], rec["seed"]) == ("uniform", 0.25, 1)
    assert rec["model"]["sample_px"] == 64  # half of the quick 128 px region a side
    assert len(rec["per_image"]) == 2 and "gland IoU" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0 and "already finished" in again.stdout
    bad = subprocess.run(
        [*cmd[:6], "--budget", "2"], capture_output=True, text=True, env=env, timeout=60
    )
    assert bad.returncode == 2 and "--budget must be in (0, 1]" in bad.stderr
    # --batch: more regions per step is another configuration (its own key and file)
    batched = subprocess.run([*cmd, "--batch", "3"], capture_output=True, text=True, env=env)
    assert batched.returncode == 0, batched.stderr[-3000:]
    assert "3 regions per step" in batched.stdout and "already finished" not in batched.stdout
    assert len(list(out.glob("*.json"))) == 2
    assert {json.loads(p.read_text())["train"]["batch_size"] for p in out.glob("*.json")} == {2, 3}


@pytest.mark.parametrize("script", ["benchmark_real.py", "benchmark_real_extra.py"])
def test_quick_refuses_the_committed_results_folder(script: str, tmp_path: Path) -> None:
    """--quick into docs/results/real would replace the committed report by a smoke
    run's: refused before anything is read or written."""
    committed = REPO / "docs" / "results" / "real"
    out = committed / "extra" if script.endswith("extra.py") else committed
    before = sorted(p.name for p in out.glob("*")) if out.is_dir() else []
    cmd = [sys.executable, str(REPO / "pipelines" / script), "--quick", "--out", str(out)]
    cmd += ["--work", str(tmp_path / "work"), "--shared", str(tmp_path)]
    if script.endswith("extra.py"):
        cmd += ["--dataset", "glas", "--sampler", "uniform", "--budget", "1/4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--quick would" in proc.stderr
    assert (sorted(p.name for p in out.glob("*")) if out.is_dir() else []) == before
    assert not (tmp_path / "work").exists()
