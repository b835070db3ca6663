"""Benchmark: the same slides on 1 vs 2 SLURM worker jobs (dask-jobqueue); wall times, speed-up.

Run as::

    python pipelines/benchmark_slurm.py --cluster configs/clusters/localhost-ci.yaml
    python pipelines/benchmark_slurm.py --cluster slurm-cpu --jobs 1 4 --slides /data/slides \\
        --model default

For each job count the script opens the cluster (``--workers`` = jobs), waits for every
worker, warms each one up (imports, model load: reported as ``warm-up``, not in the
segmentation time), then segments every slide and reports the wall time, the regions
per second and the speed-up over the first job count. Outputs of the runs are compared
(equal label arrays) as a sanity check. Without ``--slides`` it writes synthetic slides;
without ``--model`` it uses an untrained tiny model (speed only, not accuracy).
Each job runs ``processes`` workers of the profile; the workers count is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "run_once"]


def _tiny_model(folder: Path) -> Path:
    import torch

    from wsiseg.models.checkpoint import save_checkpoint
    from wsiseg.models.config import packaged_model_config
    from wsiseg.models.deformseg import DeformSeg
    from wsiseg.models.loading import checkpoint_config

    cfg = packaged_model_config("tiny")
    torch.manual_seed(0)
    return Path(
        save_checkpoint(folder / "tiny", DeformSeg(cfg).state_dict(), checkpoint_config(cfg))
    )


def _synthetic_slides(folder: Path, n: int, width: int, height: int) -> list[Path]:
    from wsiseg.synthetic import SynthSpec, write_synthetic_slide

    return [
        write_synthetic_slide(
            folder, f"bench{i}", SynthSpec(width_px=width, height_px=height, seed=100 + i)
        ).image
        for i in range(n)
    ]


def _warm(model_path: str, device: str, threads: int) -> None:
    from wsiseg.pipeline.worker import cached_model

    cached_model(model_path, device, threads)


def run_once(
    cluster: str, jobs: int, slides: list[Path], model: str, out: Path, batch_regions: int
) -> dict[str, Any]:
    """Segment ``slides`` on ``jobs`` SLURM jobs; return timings.

    Parameters
    ----------
    cluster
        Cluster profile (packaged name or YAML path).
    jobs
        Number of SLURM worker jobs.
    slides, model, out
        Inputs and the output folder (replaced).
    batch_regions
        Regions per task.

    Returns
    -------
    dict
        ``jobs``, ``workers``, ``startup_s``, ``warmup_s``, ``segment_s``, ``regions``.
    """
    import dask

    from wsiseg.pipeline.batch import BatchSettings, prepare_model, run_batch
    from wsiseg.pipeline.cluster import open_client
    from wsiseg.pipeline.config import SegmentConfig
    from wsiseg.pipeline.outputs import SlideSummary

    config = SegmentConfig(batch_regions=batch_regions)
    settings = BatchSettings(model=model, config=config, cluster=cluster, overwrite=True)
    info, _ = prepare_model(settings)
    t0 = time.perf_counter()
    with open_client(cluster, workers=jobs) as client:
        # Each job runs `processes` workers; wait for all of them.
        n_expected = jobs * int(dask.config.get("jobqueue.slurm.processes", default=1) or 1)
        client.wait_for_workers(n_expected, timeout=600)
        t1 = time.perf_counter()
        client.run(_warm, str(info.path), config.device, config.threads_per_worker)
        t2 = time.perf_counter()
        record = run_batch(slides, out, settings, client=client)
        regions = 0
        for s in record.slides:
            if s.status != "done" or s.out is None:
                raise SystemExit(f"{s.slide}: {s.status} {s.message}")
            summary = json.loads((Path(s.out) / "summary.json").read_text())
            regions += SlideSummary.from_json(summary).regions
        t3 = time.perf_counter()
        n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
    return {
        "jobs": jobs,
        "workers": n_workers,
        "startup_s": round(t1 - t0, 2),
        "warmup_s": round(t2 - t1, 2),
        "segment_s": round(t3 - t2, 2),
        "regions": regions,
    }


def _same_outputs(a: Path, b: Path, slides: list[Path]) -> bool:
    import numpy as np

    from wsiseg.export.ome_tiff import read_label_ome_tiff
    from wsiseg.pipeline.run import safe_name

    return all(
        np.array_equal(
            read_label_ome_tiff(a / safe_name(s) / "mask.ome.tif"),
            read_label_ome_tiff(b / safe_name(s) / "mask.ome.tif"),
        )
        for s in slides
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints a table and optionally writes JSON."""
    p = argparse.ArgumentParser(
        prog="python pipelines/benchmark_slurm.py",
        description=(__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--cluster", default="configs/clusters/localhost-ci.yaml")
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="job counts to compare")
    p.add_argument("--slides", type=Path, nargs="*", default=None, help="slide files")
    p.add_argument("--model", default=None, help="checkpoint (default: untrained tiny model)")
    p.add_argument("--n-slides", type=int, default=2, help="synthetic slides to make")
    p.add_argument("--size", type=int, nargs=2, default=[4096, 3072], metavar=("W", "H"))
    p.add_argument("--batch-regions", type=int, default=4)
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="write results here")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    with tempfile.TemporaryDirectory(prefix="wsiseg-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        slides = args.slides or _synthetic_slides(
            work / "slides", args.n_slides, args.size[0], args.size[1]
        )
        model = args.model or str(_tiny_model(work))
        results = []
        for jobs in args.jobs:
            r = run_once(
                args.cluster, jobs, slides, model, work / f"out-{jobs}", args.batch_regions
            )
            results.append(r)
            print(
                f"jobs={r['jobs']} workers={r['workers']}: startup {r['startup_s']:.1f} s, "
                f"warm-up {r['warmup_s']:.1f} s, segment {r['segment_s']:.1f} s "
                f"({r['regions'] / r['segment_s']:.1f} regions/s)",
                flush=True,
            )
        base = results[0]
        for r in results[1:]:
            r["speedup"] = round(base["segment_s"] / r["segment_s"], 2)
            same = _same_outputs(work / f"out-{base['jobs']}", work / f"out-{r['jobs']}", slides)
            r["identical_to_first"] = same
            print(
                f"speed-up {base['jobs']} -> {r['jobs']} jobs: {r['speedup']:.2f}x "
                f"(outputs identical: {same})"
            )
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
