"""Memory and time of ``wsiseg segment`` against slide size, with the cost split by phase.

    python pipelines/benchmark_scale.py [--sizes 10000 30000 60000 100000x60000] \
        [--workers 2] [--model default] [--device cpu] [--note "two trainings running"]
    python pipelines/benchmark_scale.py --quick --work /tmp/scale   # one small slide (CI)
    python pipelines/benchmark_scale.py --at 6783bb8 --sizes 30000 --cluster local
    # an earlier commit; one from before --cluster threads existed needs --cluster local

For each size (N: N x N px, or WxH) a synthetic slide at 0.5 µm/px is written once
under ``--slides`` (`wsiseg.bench.wholeslide.bench_slide`: tile by tile, bounded
memory; the square ones are those of ``pipelines/benchmark_wsi.py``), then segmented
by ``wsiseg segment`` in a fresh child process (``pipelines/segment_probe.py``), so
that the wall time includes start-up. Recorded per slide:

- wall time of the whole command, and peak RSS summed over the process tree (the
  command's process; with ``--cluster local`` also the dask scheduler, nannies and
  worker processes) sampled every 0.2 s, also per phase below;
- regions, regions per second of the region phase, pixels decoded per level-0 tissue
  pixel (from the slide's ``summary.json``);
- the workers' phase seconds, summed over regions (``summary.json``: load, read,
  saliency, sampling, segmenter, backprojection);
- the driver's phases, timed by the probe: imports, model check, cluster start,
  slide preparation (open, fingerprint, thumbnail, admission, tissue, plan), the
  region phase (of which fetching results and stitching), writing the outputs (of
  which the mask OME-TIFF, GeoJSON tracing and writing, overlay, PNGs, the band scan of
  the labels: ROI, class counts, overlay subsample),
  summary, run report, cluster close;
- digests of the outputs (label array; parsed GeoJSON), to show that a change left
  them identical (DESIGN.md §3.8);
- the machine's load before and after (other busy processes are named).

``--at COMMIT`` runs that commit's ``wsiseg`` package (``git archive`` into WORK, first
on PYTHONPATH of the child and its workers) for before/after figures on one machine;
otherwise the working tree runs (its commit is marked ``+dirty`` when ``wsiseg/`` has
uncommitted changes). Results go to ``RESULTS/<commit>.json`` keyed by slide size (a later run of the same
commit adds to or replaces its sizes); ``--quick`` writes under WORK instead. A
table is printed. This is a benchmark, not a test: note what else runs (``--note``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from wsiseg.bench.wholeslide import (
    TreeRSS,
    bench_slide,
    git_commit,
    load_snapshot,
    parse_size,
    results_folder_ready,
    size_key,
)

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().with_name("segment_probe.py")
DEFAULT_SIZES = ["10000", "30000", "60000", "100000x60000"]
QUICK_SIZE = "4096x3072"
GIB = 2**30

#: Driver phases reported from the probe's spans, in the order they run.
SPAN_PHASES = (
    "import",
    "model_check",
    "cluster_start",
    "slide",
    "tissue",
    "admission",
    "plan",
    "regions",
    "write_outputs",
    "mask_tiff",
    "geojson_trace",
    "geojson_write",
    "overlay",
    "scan_labels",
    "report",
    "cluster_close",
)


def _kill_tree(pid: int) -> None:
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def output_digests(out_dir: Path) -> dict[str, Any]:
    """SHA-256 of the label array (level 0 of ``mask.ome.tif``) and of the parsed GeoJSON
    (canonical JSON), for comparing outputs across changes."""
    from wsiseg.export.ome_tiff import read_label_ome_tiff

    labels = read_label_ome_tiff(out_dir / "mask.ome.tif")
    geo = json.loads((out_dir / "annotations.geojson").read_text())
    canon = json.dumps(geo, sort_keys=True, separators=(",", ":")).encode()
    return {
        "labels_shape": list(labels.shape),
        "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
        "geojson_sha256": hashlib.sha256(canon).hexdigest(),
        "features": len(geo.get("features", [])),
    }


def _driver_phases(probe: dict[str, Any], t_end: float) -> tuple[dict[str, float], dict]:
    """Seconds per driver phase and each phase's (t0, t1), from the probe's record."""
    spans: dict[str, tuple[float, float]] = {}
    totals: dict[str, float] = {}
    for name, t0, t1 in probe.get("spans", []):
        totals[name] = totals.get(name, 0.0) + (t1 - t0)
        first = spans.get(name, (t0, t1))
        spans[name] = (min(first[0], t0), max(first[1], t1))
    phases = {k: round(totals[k], 3) for k in SPAN_PHASES if k in totals}
    if "slide" in spans and "regions" in spans:
        t0 = spans["slide"][0]
        spans["slide_prepare"] = (t0, spans["regions"][0])
        phases["slide_prepare"] = round(spans["regions"][0] - t0, 3)
    if "slide" in spans and "write_outputs" in spans:
        t1 = spans["write_outputs"][1]
        phases["summary"] = round(spans["slide"][1] - t1, 3)
    if "command" in spans:
        phases["exit"] = round(t_end - spans["command"][1], 3)
    if "process_start" in probe and "import" in spans:
        phases["interpreter_start"] = round(spans["import"][0] - probe["process_start"], 3)
    for name, (secs, calls) in probe.get("sums", {}).items():
        phases[name] = round(secs, 3)
        phases[f"{name}_calls"] = int(calls)
    return phases, spans


def measure_segment(
    slide: Path,
    out: Path,
    *,
    model: str = "default",
    workers: int = 2,
    device: str | None = None,
    extra: tuple[str, ...] = (),
    timeout_s: float | None = None,
    digests: bool = True,
    src: Path | None = None,
) -> dict[str, Any]:
    """Run ``wsiseg segment SLIDE -o OUT`` in a child process and measure it (see the
    module docstring); ``OUT`` must not hold earlier results of the slide. ``src``: a
    folder holding the ``wsiseg`` package to run instead of the installed one."""
    out.mkdir(parents=True, exist_ok=True)
    probe_file, log_file = out / "probe.json", out / "segment.log"
    cmd = [sys.executable, str(PROBE), str(probe_file), "--", "segment", str(slide)]
    cmd += ["-o", str(out), "--model", model, "--workers", str(workers), *extra]
    if device:
        cmd += ["--device", device]
    load_before = load_snapshot()
    timed_out = False
    with log_file.open("w") as log:
        t0 = time.time()
        env = dict(os.environ)
        if src is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(":")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        with TreeRSS(proc.pid) as rss:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_tree(proc.pid)
                proc.wait()
        t_end = time.time()
    load_after = load_snapshot()
    probe = json.loads(probe_file.read_text()) if probe_file.exists() else {}
    result: dict[str, Any] = {
        "command": ["wsiseg", *cmd[4:]],
        "exit_code": proc.returncode,
        "timed_out": timed_out,
        "wall_s": round(t_end - t0, 2),
        "peak_rss_gib": round(rss.peak / GIB, 3),
        "peak_rss_driver_gib": round(rss.peak_root / GIB, 3),
        "load_before": load_before,
        "load_after": load_after,
        "hooks_missing": probe.get("missing", []),
        "wsiseg_path": probe.get("wsiseg_path"),
    }
    if "cuda_device" in probe:
        result["cuda_device"] = probe["cuda_device"]
    phases, spans = _driver_phases(probe, t_end)
    result["driver_seconds"] = phases
    by_phase = {}
    for name, (a, b) in spans.items():
        total, root = rss.peak_between(a, b)
        if total:
            by_phase[name] = {"all": round(total / GIB, 3), "driver": round(root / GIB, 3)}
    result["peak_rss_gib_by_phase"] = by_phase
    summary_path = out / slide.stem / "summary.json"
    if proc.returncode != 0 or not summary_path.exists():
        result["error"] = log_file.read_text(errors="replace")[-2000:]
        return result
    summary = json.loads(summary_path.read_text())
    mpp = summary["slide_mpp"]
    tissue_px = summary["detected_tissue_area_mm2"] / (mpp / 1000.0) ** 2
    seconds = dict(summary["seconds"])
    seconds.pop("write", None)  # the driver's, reported above
    region_wall = phases.get("regions")
    result.update(
        regions=summary["regions"],
        regions_per_s=round(summary["regions"] / region_wall, 3) if region_wall else None,
        pixels_decoded=summary["pixels_decoded"],
        level0_tissue_px=round(tissue_px),
        pixels_decoded_per_tissue_pixel=summary["pixels_decoded_per_tissue_pixel"],
        output_size=summary["output_size"],
        slide_wall_s=summary.get("wall_seconds"),
        worker_seconds={k: round(v, 3) for k, v in seconds.items()},
        worker_seconds_total=round(sum(seconds.values()), 3),
    )
    if digests:
        result["outputs"] = output_digests(out / slide.stem)
    return result


def export_commit(commit: str, work: Path) -> tuple[str, Path]:
    """``git archive`` the ``wsiseg`` package of ``commit`` into WORK/src-<commit>; the
    commit's short id and the folder to put first on PYTHONPATH."""
    found = subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "rev-parse",
            "--verify",
            "--quiet",
            "--short=10",
            f"{commit}^{{commit}}",
        ],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise ValueError(f"--at {commit}: not a commit of {REPO}")
    sha = found.stdout.strip()
    dest = work / f"src-{sha}"
    if not (dest / "wsiseg").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", sha, "wsiseg"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return sha, dest


def _results_file(folder: Path, commit: str) -> Path:
    return folder / f"{commit.replace('+', '-')}.json"


def record_results(folder: Path, commit: str, runs: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Merge ``runs`` (size key -> result) into ``folder/<commit>.json``; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = _results_file(folder, commit)
    data: dict[str, Any] = {"commit": commit, "runs": {}}
    if path.exists():
        data = json.loads(path.read_text())
    data.update(meta)
    data["runs"].update(runs)
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def _fmt(v: Any) -> str:
    return "-" if v is None else str(v)


def table(runs: dict[str, Any]) -> str:
    """Markdown tables: totals, driver phases, worker phases."""
    lines = [
        "| slide | regions | wall s | peak RSS GiB (all / driver) | decoded / tissue | regions/s |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in runs.items():
        lines.append(
            f"| {key} | {_fmt(r.get('regions'))} | {r['wall_s']} | {r['peak_rss_gib']} / "
            f"{r['peak_rss_driver_gib']} | {_fmt(r.get('pixels_decoded_per_tissue_pixel'))} | "
            f"{_fmt(r.get('regions_per_s'))} |"
        )
    driver = (
        "import",
        "model_check",
        "cluster_start",
        "slide_prepare",
        "regions",
        "stitch",
        "write_outputs",
        "mask_tiff",
        "geojson_trace",
        "overlay",
        "report",
        "cluster_close",
    )
    lines += ["", "driver s: | slide | " + " | ".join(driver) + " |"]
    lines.append("|---" * (len(driver) + 1) + "|")
    for key, r in runs.items():
        d = r.get("driver_seconds", {})
        lines.append(f"| {key} | " + " | ".join(_fmt(d.get(k)) for k in driver) + " |")
    workers = ("load", "read", "saliency", "sampling", "segmenter", "backprojection")
    lines += ["", "workers s (summed): | slide | " + " | ".join(workers) + " | total |"]
    lines.append("|---" * (len(workers) + 2) + "|")
    for key, r in runs.items():
        w = r.get("worker_seconds", {})
        cells = " | ".join(_fmt(w.get(k)) for k in workers)
        lines.append(f"| {key} | {cells} | {_fmt(r.get('worker_seconds_total'))} |")
    mem = (
        "import",
        "model_check",
        "cluster_start",
        "slide_prepare",
        "regions",
        "write_outputs",
        "geojson_trace",
    )
    lines += ["", "peak RSS GiB by phase (all / driver): | slide | " + " | ".join(mem) + " |"]
    lines.append("|---" * (len(mem) + 1) + "|")
    for key, r in runs.items():
        m = r.get("peak_rss_gib_by_phase", {})
        cells = " | ".join(f"{m[k]['all']} / {m[k]['driver']}" if k in m else "-" for k in mem)
        lines.append(f"| {key} | {cells} |")
    lines.append(
        "(memory is sampled every 0.2 s: '-' is a phase shorter than that; the overall peak "
        "also covers the time between these phases, so it can exceed every column)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", nargs="+", default=None, help="N or WxH px (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help=f"one {QUICK_SIZE} slide, results in WORK")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--cluster",
        default="threads",
        help="passed to wsiseg segment: threads (its default: workers in its process) or local "
        "(worker processes; an --at commit from before threads existed needs it); results keyed "
        "SIZE-CLUSTER when not local",
    )
    p.add_argument("--model", default="default")
    p.add_argument("--device", default=None, help="passed to wsiseg segment (default: its own)")
    p.add_argument(
        "--slides",
        type=Path,
        default=REPO / "runs" / "bench-slides",
        help="synthetic slides, written once and shared by the benchmarks (git-ignored; "
        "--quick: WORK/slides)",
    )
    p.add_argument("--work", type=Path, default=REPO / "runs" / "bench-scale")
    p.add_argument("--results", type=Path, default=None, help="default docs/results/scale")
    p.add_argument("--timeout", type=float, default=None, help="seconds per slide")
    p.add_argument("--note", default="", help="free text stored with the results (load...)")
    p.add_argument("--keep", action="store_true", help="keep the segmentation outputs")
    p.add_argument(
        "--at",
        default=None,
        metavar="COMMIT",
        help="run the wsiseg package of COMMIT (git archive) instead of the working tree",
    )
    a = p.parse_args(argv)
    sizes = a.sizes or ([QUICK_SIZE] if a.quick else DEFAULT_SIZES)
    if a.quick and a.slides == p.get_default("slides"):
        a.slides = a.work / "slides"
    results = a.results or (a.work / "results" if a.quick else REPO / "docs" / "results" / "scale")
    src = None
    try:
        dims = [parse_size(s) for s in sizes]
        results_folder_ready(results)
        if a.at:
            commit, src = export_commit(a.at, a.work)
        else:
            commit = git_commit(REPO)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = {
        "script": "pipelines/benchmark_scale.py",
        "machine": f"{os.cpu_count()} CPU cores, {psutil.virtual_memory().total / GIB:.0f} GiB",
    }
    runs: dict[str, Any] = {}
    for w, h in dims:
        key = size_key(w, h) + ("" if a.cluster == "local" else f"-{a.cluster}")
        t0 = time.time()
        slide, _ = bench_slide(a.slides, w, h)
        print(f"{key}: slide ready ({time.time() - t0:.0f} s); segmenting", flush=True)
        out = a.work / f"out-{key}-{int(time.time())}"
        r = measure_segment(
            slide,
            out,
            model=a.model,
            workers=a.workers,
            device=a.device,
            timeout_s=a.timeout,
            src=src,
            extra=("--cluster", a.cluster),
        )
        r.update(
            slide=str(slide),
            size_px=[w, h],
            workers=a.workers,
            cluster=a.cluster,
            model=a.model,
            device=a.device or "auto",
            when=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            note=a.note,
            source=f"git archive {commit}" if src else "working tree",
        )
        runs[key] = r
        path = record_results(results, commit, {key: r}, meta)
        if not a.keep:
            shutil.rmtree(out / slide.stem, ignore_errors=True)
        status = "ok" if r["exit_code"] == 0 else f"FAILED (exit {r['exit_code']})"
        print(f"{key}: {status}, wall {r['wall_s']} s, peak {r['peak_rss_gib']} GiB", flush=True)
        if r["exit_code"] != 0:
            print(r.get("error", ""), file=sys.stderr)
    print(f"results: {path}")
    print(table(runs))
    return 0 if all(r["exit_code"] == 0 for r in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
