"""Whole-slide speed and cost: learned sampling vs tiled full resolution, same run.

    python pipelines/benchmark_wsi.py --sizes 10000 30000 --work runs/bench-wsi \
        --learned CKPT --tiled CKPT [--workers 2]

For each size, a synthetic slide (size x size px at 0.5 µm/px, seed 7000 + size) is
written once, then segmented by each model with ``wsiseg segment`` in a fresh
output folder. Reported per slide and model: wall time, time split (from the
workers' summary), regions, pixels decoded / level-0 tissue pixels, mIoU against
the exact labels at the output resolution, and peak RSS summed over this driver
and every dask worker and scheduler process (sampled every 0.2 s). Ratios
(tiled / learned) are printed and written to WORK/benchmark_wsi.json and .md.
This is a benchmark, not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import psutil

from wsiseg.bench.wholeslide import TreeRSS, bench_slide
from wsiseg.cli import invoke
from wsiseg.export.ome_tiff import read_label_ome_tiff
from wsiseg.train.datasets import LabelMask
from wsiseg.train.metrics import confusion_matrix, mean_iou


def run_one(slide: Path, mask: Path, model: Path, out: Path, workers: int) -> dict:
    args = ["segment", str(slide), "-o", str(out), "--model", str(model), "--workers", str(workers)]
    t0 = time.perf_counter()
    with TreeRSS() as rss:
        invoke(args, echo=False)
    wall = time.perf_counter() - t0
    summary = json.loads((out / slide.stem / "summary.json").read_text())
    pred = read_label_ome_tiff(out / slide.stem / "mask.ome.tif")
    truth = LabelMask(mask).at_grid(pred.shape)
    return {
        "wall_s": round(wall, 2),
        "peak_rss_gib": round(rss.peak / 2**30, 3),
        "regions": summary["regions"],
        "pixels_decoded_per_tissue_pixel": summary["pixels_decoded_per_tissue_pixel"],
        "worker_seconds": summary["seconds"],
        "miou": round(mean_iou(confusion_matrix(pred, truth, 4)), 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000])
    p.add_argument("--work", type=Path, default=Path("runs/bench-wsi"))
    p.add_argument("--learned", type=Path, required=True)
    p.add_argument("--tiled", type=Path, required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--learned-only",
        action="store_true",
        help="skip the tiled model (memory and cost vs slide size only)",
    )
    a = p.parse_args()
    rows = []
    for size in a.sizes:
        slide, mask = bench_slide(a.work / "slides", size, size)
        row: dict = {"size_px": size}
        models = [("learned", a.learned)] + ([] if a.learned_only else [("tiled", a.tiled)])
        for label, ckpt in models:
            out = a.work / f"out-{label}-{size}-{int(time.time())}"
            row[label] = run_one(slide, mask, ckpt, out, a.workers)
            print(label, size, row[label], flush=True)
        if "tiled" in row:
            L, T = row["learned"], row["tiled"]
            row["speedup_tiled_over_learned"] = round(T["wall_s"] / L["wall_s"], 2)
            row["miou_ratio_learned_over_tiled"] = round(L["miou"] / T["miou"], 4)
        rows.append(row)
    result = {
        "machine": f"{os.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "workers": a.workers,
        "rows": rows,
    }
    (a.work / "benchmark_wsi.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "| size | learned s | tiled s | speed-up | learned mIoU | tiled mIoU | decoded/tissue (learned) | decoded/tissue (tiled) | peak RSS GiB (learned / tiled) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    none = {"wall_s": "-", "miou": "-", "pixels_decoded_per_tissue_pixel": "-", "peak_rss_gib": "-"}
    for r in rows:
        L, T = r["learned"], r.get("tiled", none)
        lines.append(
            f"| {r['size_px']}² | {L['wall_s']} | {T['wall_s']} | {r.get('speedup_tiled_over_learned', '-')}x | "
            f"{L['miou']} | {T['miou']} | {L['pixels_decoded_per_tissue_pixel']} | "
            f"{T['pixels_decoded_per_tissue_pixel']} | {L['peak_rss_gib']} / {T['peak_rss_gib']} |"
        )
    (a.work / "benchmark_wsi.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
