"""The accuracy-vs-budget benchmark in --quick mode: outputs, expected time, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "pipelines" / "benchmark_budget.py"


def _bench(out: Path, work: Path, shared: Path) -> str:
    cmd = [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--work", str(work)]
    cmd += ["--datasets", "synthetic,glas", "--shared", str(shared), "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
@pytest.mark.realdata
def test_quick_benchmark_writes_report_and_resumes(tmp_path: Path, shared_data: Path) -> None:
    out, work = tmp_path / "results", tmp_path / "work"
    first = _bench(out, work, shared_data)
    lines = first.splitlines()
    expected = next(i for i, line in enumerate(lines) if line.startswith("expected wall time"))
    first_run = next(i for i, line in enumerate(lines) if line.startswith("[1/"))
    assert expected < first_run  # the estimate comes before any training

    runs = sorted(p for p in out.glob("*.json") if p.name != "budget.json")
    # per dataset: 2 budgets x (learned, uniform) + tiled = 5 runs
    assert len(runs) == 10
    records = [json.loads(p.read_text()) for p in runs]
    assert {r["sampler"] for r in records} == {"learned", "uniform", "tiled"}
    for r in records:
        assert 0.0 <= r["miou"] <= 1.0
        assert len(r["confusion"]) == len(r["images"]) > 0
    summary = json.loads((out / "budget.json").read_text())
    assert set(summary["datasets"]) == {"synthetic", "glas"}
    assert summary["missing_runs"] == []
    glas = summary["datasets"]["glas"]
    assert set(glas["curves"]["learned"]) == {"1/16", "1/64"}
    assert "columns" in glas["split"]
    md = (out / "budget.md").read_text()
    assert "### glas" in md and "### synthetic" in md
    for name in ("synthetic", "glas"):
        png = out / f"budget_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    # a rerun does nothing; a lost result is redone alone, under the same name
    stamps = {p.name: p.stat().st_mtime_ns for p in runs}
    second = _bench(out, work, shared_data)
    assert "10 finished, 0 to do" in second
    assert {p.name: p.stat().st_mtime_ns for p in runs} == stamps
    lost = runs[3]
    lost.unlink()
    third = _bench(out, work, shared_data)
    assert "9 finished, 1 to do" in third
    assert lost.is_file()
    assert json.loads(lost.read_text())["key"] == lost.stem


def _load_script():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_budget", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_runs_are_claimed_by_one_process(tmp_path: Path) -> None:
    bench = _load_script()
    lock = tmp_path / "locks" / "abc.lock"
    with bench.claim(lock) as first:
        assert first and lock.read_text() == str(os.getpid())
        with bench.claim(lock) as second:  # held by a live process (us)
            assert not second
    assert not lock.exists()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    lock.write_text(dead.stdout.strip())  # left behind by a process that is gone
    with bench.claim(lock) as taken:
        assert taken


@pytest.mark.realdata
def test_run_keys_of_committed_results_are_unchanged(shared_data: Path, tmp_path: Path) -> None:
    """The full plan's keys are those of docs/results/budget.json, so committed results
    resume (a new TrainConfig field at its default must not change a key)."""
    bench = _load_script()
    committed = json.loads((REPO / "docs" / "results" / "budget.json").read_text())["datasets"]
    # the synthetic data set's identity without writing its slides (as synthetic_dataset)
    sizes = {"train": [1000, 1005, 6144, 4096], "test": [1200, 1209, 4096, 3072]}
    split = "by slide: 6 training slides, 10 test slides"
    datasets = {
        "synthetic": bench.Dataset(
            "synthetic", [], [], bench.DEFAULT_CLASSES, 1.0, 512, split, {"synthetic": sizes}
        ),
        **{
            n: bench.load_dataset(n, tmp_path, shared_data, False)
            for n in ("glas", "cpm15", "stain")
        },
    }
    for name, ds in datasets.items():
        synthetic = name == "synthetic"
        runs = bench.plan(ds, 3 if synthetic else 1, 300 if synthetic else 200, False, 0)
        assert sorted(r.key for r in runs) == sorted(committed[name]["runs"]), name
