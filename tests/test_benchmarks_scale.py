"""The whole-slide scale, GPU and peer benchmarks in their small CPU modes: the result
JSON has every field with sane values; the driver-phase probe still finds the
pipeline functions it times; the process-tree memory sampler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from wsiseg.bench.wholeslide import TreeRSS, parse_size, size_key

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"
SMALL = "4096x3072"


def _run(script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(PIPELINES / script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-slides")


def _check_segment_result(r: dict[str, Any]) -> None:
    assert r["exit_code"] == 0 and not r["timed_out"]
    assert r["hooks_missing"] == [], "pipelines/segment_probe.py HOOKS name functions that moved"
    assert r["wall_s"] > 0
    assert 0 < r["peak_rss_driver_gib"] <= r["peak_rss_gib"] < 64
    assert r["regions"] > 0 and r["regions_per_s"] > 0
    assert r["pixels_decoded"] > 0 and r["level0_tissue_px"] > 0
    assert 0 < r["pixels_decoded_per_tissue_pixel"] <= 1
    w = r["worker_seconds"]
    for phase in ("read", "saliency", "sampling", "segmenter", "backprojection"):
        assert w[phase] > 0, phase
    assert r["worker_seconds_total"] >= sum(w.values()) - 0.01
    d = r["driver_seconds"]
    for phase in ("import", "model_check", "cluster_start", "slide_prepare", "regions"):
        assert d[phase] > 0, phase
    for phase in ("write_outputs", "mask_tiff", "geojson_trace", "report", "cluster_close"):
        assert d[phase] >= 0, phase
    assert d["stitch_calls"] == r["regions"]  # one core stitched per region
    # the phases run one after another inside the command's wall time
    assert d["import"] + d["cluster_start"] + d["regions"] + d["write_outputs"] < r["wall_s"]
    assert r["peak_rss_gib_by_phase"]["regions"]["all"] <= r["peak_rss_gib"]
    out = r["outputs"]
    assert len(out["labels_sha256"]) == len(out["geojson_sha256"]) == 64
    assert out["features"] > 0


@pytest.mark.slow
def test_benchmark_scale_quick(tmp_path: Path, slides: Path) -> None:
    proc = _run("benchmark_scale.py", "--quick", "--work", str(tmp_path), "--slides", str(slides))
    files = list((tmp_path / "results").glob("*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    key = f"{SMALL}-threads"  # wsiseg segment's own default cluster
    assert data["commit"] and set(data["runs"]) == {key}
    r = data["runs"][key]
    _check_segment_result(r)
    assert r["size_px"] == [4096, 3072] and r["workers"] == 2 and r["cluster"] == "threads"
    assert r["load_before"]["cpus"] == os.cpu_count()
    assert f"| {key} |" in proc.stdout  # the printed table
    # outputs are removed unless --keep; the measured slide folder is gone
    assert not list(tmp_path.glob("out-*/bench-4096x3072/mask.ome.tif"))


@pytest.mark.slow
def test_benchmark_gpu_cpu_mode(tmp_path: Path, slides: Path) -> None:
    results = tmp_path / "results"
    args = ["--device", "cpu", "--size", SMALL, "--workers", "1"]
    args += ["--slides", str(slides), "--work", str(tmp_path), "--results", str(results)]
    _run("benchmark_gpu.py", *args)
    (path,) = results.glob("*-cpu-4096x3072.json")
    r = json.loads(path.read_text())
    assert r["device"] == "cpu" and r["workers"] == 1 and r["timeout_s"] is None
    _check_segment_result(r)
    assert "--device" in r["command"] and "cpu" in r["command"]


@pytest.mark.slow
def test_benchmark_peer_fallback(tmp_path: Path, slides: Path) -> None:
    """Without TIAToolbox the peer is wsiseg's own tiled model, and the output says so;
    a peer pixel size other than the issue's 1 µm/px is part of the result's key."""
    args = ["--fallback", "--size", "2048", "--workers", "1", "--slides", str(slides)]
    args += ["--peer-mpp", "0.5"]
    args += ["--work", str(tmp_path), "--results", str(tmp_path / "results")]
    proc = _run("benchmark_peer.py", *args)
    assert "FALLBACK" in proc.stdout
    (path,) = (tmp_path / "results").glob("*.json")
    run = json.loads(path.read_text())["runs"]["2048x2048-fallback-0.5mpp"]
    assert run["fallback"] is True and run["peer_mpp"] == 0.5
    assert run["wsiseg"]["exit_code"] == run["peer"]["exit_code"] == 0
    assert run["peer"]["worker_seconds"]["segmenter"] > 0
    assert run["speedup_wall"] == round(run["peer"]["wall_s"] / run["wsiseg"]["wall_s"], 2)


def test_probe_hooks_find_the_pipeline_functions() -> None:
    """Every function the driver-phase probe wraps exists (no slide is run)."""
    sys.path.insert(0, str(PIPELINES))
    try:
        import segment_probe
    finally:
        sys.path.remove(str(PIPELINES))
    rec = segment_probe.Record()
    saved = []
    for module, attr, _, _ in segment_probe.HOOKS:
        owner: Any = sys.modules.get(module) or __import__(module, fromlist=["_"])
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        saved.append((owner, name, getattr(owner, name)))
    try:
        segment_probe.install(rec)
        assert rec.missing == []
        for owner, name, original in saved:
            assert getattr(owner, name) is not original  # wrapped
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def test_tree_rss_samples_a_child_process() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; b = bytearray(200 * 2**20); time.sleep(1.5)"]
    )
    with TreeRSS(child.pid, interval=0.05) as rss:
        child.wait()
    assert rss.peak >= 200 * 2**20  # the child's buffer counts
    assert rss.peak_root == rss.peak  # it has no children of its own
    t0, t1 = rss.timeline[0][0], time.time()
    assert rss.peak_between(t0, t1)[0] == rss.peak
    assert rss.peak_between(t1 + 10, t1 + 20) == (0, 0)


@pytest.mark.parametrize("writes", [False, True])
def test_tree_rss_counts_a_fork_by_its_own_pages(writes: bool) -> None:
    """A forked child that has not exec'd shares its parent's pages: its RSS would
    count them twice (a spurious peak whenever a helper program starts); what it
    writes is its own and counts."""
    code = (
        "import os, time\n"
        "b = bytearray(300 * 2**20)\n"
        "b[::4096] = b'x' * len(b[::4096])\n"  # every page touched, no temporary copy
        "pid = os.fork()\n"
        f"if pid == 0 and {writes}: b[::4096] = b'y' * len(b[::4096])\n"
        "time.sleep(1.5)\n"
        "if pid == 0: os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    with TreeRSS(child.pid, interval=0.05) as rss:
        time.sleep(0.8)
        procs = psutil.Process(child.pid).children()
        child.wait()
    assert len(procs) == 1  # the fork was there while sampled
    if writes:
        assert rss.peak >= 2 * 290 * 2**20  # its written copy counts
    else:
        assert 300 * 2**20 <= rss.peak < 2 * 290 * 2**20  # not counted twice


def test_parse_size() -> None:
    assert parse_size("30000") == (30000, 30000)
    assert parse_size("100000x60000") == (100000, 60000)
    assert size_key(100000, 60000) == "100000x60000"
    for bad in ("", "x", "10x", "0", "-5", "1x2x3", "abc"):
        with pytest.raises(ValueError):
            parse_size(bad)


@pytest.mark.parametrize(
    ("script", "args", "says"),
    [
        ("benchmark_scale.py", ["--sizes", "4096"], "a file is in the way"),
        ("benchmark_gpu.py", ["--device", "cpu", "--size", "4096"], "a file is in the way"),
        ("benchmark_peer.py", ["--fallback", "--size", "4096"], "a file is in the way"),
        ("benchmark_scale.py", ["--at", "no-such-commit-xyz"], "not a commit"),
        ("benchmark_peer.py", ["--size", "0"], "give the square slide's side"),
    ],
)
def test_benchmarks_refuse_bad_arguments_before_measuring(
    tmp_path: Path, script: str, args: list[str], says: str
) -> None:
    """A results path that is a file, an unknown --at commit or a zero size is refused
    with one error line before any slide is written or segmented (formerly a traceback
    after the whole measurement, its numbers lost)."""
    blocker = tmp_path / "results"
    blocker.write_text("not a folder\n")
    results = blocker if "file" in says else tmp_path / "fresh-results"
    cmd = [sys.executable, str(PIPELINES / script), *args, "--results", str(results)]
    cmd += ["--work", str(tmp_path / "work"), "--slides", str(tmp_path / "slides")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]  # argparse: + usage
    assert len(errors) == 1 and says in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert blocker.read_text() == "not a folder\n"
    assert not (tmp_path / "slides").exists()  # nothing was measured
