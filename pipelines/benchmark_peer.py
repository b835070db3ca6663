"""Side by side, one run, one slide: ``wsiseg segment`` (bundled model) against a tiled
full-resolution peer, TIAToolbox 1.3.2's ``SemanticSegmentor`` (issue 13's speed goal).

    python pipelines/benchmark_peer.py --setup     # once: TIAToolbox's own venv
    python pipelines/benchmark_peer.py [--size 16384] [--workers 2] [--peer-mask tissue] \
        [--peer-mpp 1.0]
    python pipelines/benchmark_peer.py --fallback  # the peer is wsiseg's own tiled model

``--setup`` creates ``runs/tiatoolbox-venv`` (git-ignored) with

    python3.11 -m venv runs/tiatoolbox-venv
    runs/tiatoolbox-venv/bin/pip install "setuptools<81" tiatoolbox==1.3.2 torch==2.14.1 \
        torchvision==0.29.1 segmentation-models-pytorch openslide-bin

(1.3.2 is the newest TIAToolbox that accepts torch 2.14.1; it imports ``pkg_resources``,
hence ``setuptools<81``; OpenSlide's library comes from ``openslide-bin``).

The synthetic slide (``--size`` px square at 0.5 µm/px, `bench_slide`) is segmented
first by wsiseg (child process, 2 workers, phases timed: ``benchmark_scale.py``) and
then by the peer (``pipelines/peer_tiatoolbox.py`` in the venv: smp Unet-ResNet18 with
random weights, 512 px patches at a 448 px stride at ``--peer-mpp`` µm/px, merged at 2
µm/px; 1 µm/px, the issue's setting, gives the peer 4x fewer pixels than wsiseg's task
pixel size of 0.5 µm/px, which ``--peer-mpp 0.5`` matches; ``--peer-mask tissue``
lets TIAToolbox's own tissue mask pick the patches, ``none`` runs every patch). The
peer gets every core (OMP_NUM_THREADS = cores). Wall times include start-up
(imports, workers) on both sides; peak RSS is summed over each process tree. Where
TIAToolbox cannot be run (no venv, or it fails), the peer falls back to wsiseg's own
tiled model, untrained (``tiled`` sampler, 512 px windows, 64 px overlap at
``--peer-mpp``), and the output says so. Results: ``RESULTS/<commit>.json`` (default
``docs/results/peer``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmark_scale import GIB, REPO, measure_segment, record_results

from wsiseg.bench.wholeslide import (
    TreeRSS,
    bench_slide,
    git_commit,
    load_snapshot,
    results_folder_ready,
)

PEER_SCRIPT = Path(__file__).resolve().with_name("peer_tiatoolbox.py")
VENV = REPO / "runs" / "tiatoolbox-venv"
PEER_PACKAGES = [
    "setuptools<81",
    "tiatoolbox==1.3.2",
    "torch==2.14.1",
    "torchvision==0.29.1",
    "segmentation-models-pytorch",
    "openslide-bin",
]


def setup_venv(venv: Path) -> None:
    """Create ``venv`` and install TIAToolbox into it (prints the commands)."""
    cmds = [
        ["python3.11", "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", *PEER_PACKAGES],
    ]
    for cmd in cmds:
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


def run_tiatoolbox(
    venv: Path, slide: Path, work: Path, mask: str, timeout_s: float | None, mpp: float = 1.0
) -> dict[str, Any]:
    """TIAToolbox on ``slide``: wall, peak RSS and what the peer script reports."""
    python = venv / "bin" / "python"
    out, result_file, log_file = (
        work / "tiatoolbox-out",
        work / "tiatoolbox.json",
        work / "tiatoolbox.log",
    )
    cmd = [str(python), str(PEER_SCRIPT), str(slide), str(out), str(result_file), "--mask", mask]
    cmd += ["--mpp", f"{mpp:g}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    work.mkdir(parents=True, exist_ok=True)
    load_before = load_snapshot()
    with log_file.open("w") as log:
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
        with TreeRSS(proc.pid) as rss:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        wall = time.time() - t0
    shutil.rmtree(out, ignore_errors=True)
    r: dict[str, Any] = {
        "peer": "TIAToolbox SemanticSegmentor",
        "command": cmd,
        "exit_code": proc.returncode,
        "wall_s": round(wall, 2),
        "peak_rss_gib": round(rss.peak / GIB, 3),
        "load_before": load_before,
    }
    if proc.returncode == 0 and result_file.exists():
        r.update(json.loads(result_file.read_text()))
        r.pop("process_start", None)
    else:
        r["error"] = log_file.read_text(errors="replace")[-2000:]
    return r


def tiled_checkpoint(folder: Path, mpp: float = 1.0) -> Path:
    """wsiseg's tiled full-resolution model, untrained: 512 px windows overlapping by 64 px
    (a 448 px stride) at ``mpp`` µm/px, the bundled model's segmenter and classes."""
    import torch

    from wsiseg.models.checkpoint import save_checkpoint
    from wsiseg.models.config import packaged_model_config
    from wsiseg.models.deformseg import DeformSeg
    from wsiseg.models.loading import checkpoint_config

    cfg = replace(
        packaged_model_config("default"),
        sampler="tiled",
        task_mpp=mpp,
        tile_infer_px=512,
        tile_overlap_px=64,
    )
    torch.manual_seed(0)
    return save_checkpoint(
        folder / "tiled-peer", DeformSeg(cfg).state_dict(), checkpoint_config(cfg)
    )


def _side(text: str) -> int:
    """``--size``: one positive side in pixels (the slide is square)."""
    try:
        side = int(text)
    except ValueError:
        side = 0
    if side <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give the square slide's side in pixels")
    return side


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--setup", action="store_true", help="create the TIAToolbox venv and stop")
    p.add_argument("--venv", type=Path, default=VENV)
    p.add_argument("--size", type=_side, default=16384, help="slide side, px at 0.5 µm/px")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--peer-mask", choices=("tissue", "none"), default="tissue")
    p.add_argument(
        "--peer-mpp",
        type=float,
        default=1.0,
        help="the peer's patch pixel size, µm/px (1.0: issue 13's setting; 0.5: wsiseg's task)",
    )
    p.add_argument("--fallback", action="store_true", help="use wsiseg's tiled model as peer")
    p.add_argument(
        "--slides",
        type=Path,
        default=REPO / "runs" / "bench-slides",
        help="synthetic slides, written once and shared by the benchmarks (git-ignored)",
    )
    p.add_argument("--work", type=Path, default=REPO / "runs" / "bench-peer")
    p.add_argument("--results", type=Path, default=REPO / "docs" / "results" / "peer")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per side")
    p.add_argument("--note", default="")
    a = p.parse_args(argv)
    if a.setup:
        setup_venv(a.venv)
        return 0
    try:
        results_folder_ready(a.results)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    commit = git_commit(REPO)  # before the runs: the code that runs
    slide, _ = bench_slide(a.slides, a.size, a.size)
    stamp = int(time.time())
    ours = measure_segment(
        slide, a.work / f"wsiseg-{stamp}", workers=a.workers, timeout_s=a.timeout
    )
    shutil.rmtree(a.work / f"wsiseg-{stamp}" / slide.stem, ignore_errors=True)
    fallback_reason = ""
    if a.fallback:
        fallback_reason = "--fallback was given"
    elif not (a.venv / "bin" / "python").exists():
        fallback_reason = f"no TIAToolbox venv at {a.venv} (run --setup)"
    peer: dict[str, Any] = {}
    if not fallback_reason:
        peer = run_tiatoolbox(
            a.venv, slide, a.work / f"peer-{stamp}", a.peer_mask, a.timeout, a.peer_mpp
        )
        if peer["exit_code"] != 0:
            fallback_reason = f"TIAToolbox failed (exit {peer['exit_code']})"
    if fallback_reason:
        print(f"peer: FALLBACK to wsiseg's own tiled model: {fallback_reason}", flush=True)
        work = a.work / f"tiled-{stamp}"
        ckpt = tiled_checkpoint(work, a.peer_mpp)
        failed = peer
        peer = measure_segment(
            slide, work / "out", model=str(ckpt), workers=a.workers, timeout_s=a.timeout
        )
        peer["peer"] = "wsiseg tiled model (untrained), fallback"
        peer["fallback_reason"] = fallback_reason
        if failed:
            peer["tiatoolbox_failure"] = failed
        shutil.rmtree(work / "out" / slide.stem, ignore_errors=True)
    ok = ours["exit_code"] == 0 and peer.get("exit_code") == 0
    ratio = round(peer["wall_s"] / ours["wall_s"], 2) if ok else None
    run = {
        "slide": str(slide),
        "size_px": [a.size, a.size],
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "note": a.note,
        "wsiseg": ours,
        "peer": peer,
        "fallback": bool(fallback_reason),
        "speedup_wall": ratio,
        "peer_mpp": a.peer_mpp,
    }
    key = f"{a.size}x{a.size}-{'fallback' if fallback_reason else 'tiatoolbox-' + a.peer_mask}"
    if a.peer_mpp != 1.0:  # the setting keeps its key
        key += f"-{a.peer_mpp:g}mpp"
    path = record_results(a.results, commit, {key: run}, {"script": "pipelines/benchmark_peer.py"})
    print(f"results: {path}")
    print(f"slide {a.size}² px: wsiseg {ours['wall_s']} s (peak {ours['peak_rss_gib']} GiB)")
    print(
        f"peer ({peer.get('peer')}): {peer.get('wall_s')} s (peak {peer.get('peak_rss_gib')} GiB)"
    )
    if fallback_reason:
        print(f"NOTE: the peer is a FALLBACK ({fallback_reason}), not TIAToolbox")
    print(f"speed-up (peer wall / wsiseg wall): {ratio}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
