"""Micro-benchmark of grid inversion and back-projection (and the sampler) on this machine.

    python pipelines/bench_backproject.py [--grid 64] [--out 256] [--batch 4] [--classes 4] \
        [--repeat 10] [--threads 1]

Prints the median milliseconds per region for: saliency -> grid, sampling a 3-channel
image at the grid through its mip-map, inverting the grid, and back-projecting K class
maps (inversion included). The defaults are the pipeline's sizes with the bundled model
(64² samples, 32² saliency, radius 4, regions predicted four at a time and projected at
256², i.e. output_mpp = 4x task_mpp). Timings are CPU time of this thread (less
sensitive to other processes than wall time), but they still depend on the machine and
its load: not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from wsiseg.models.backproject import backproject, invert_grid
from wsiseg.models.mipmap import build_mipmap, mipmap_downsamples, sample_image
from wsiseg.models.sampling import saliency_to_grid


def _median_ms(fn: Callable[[], object], repeat: int, per: int) -> float:
    fn()  # warm-up (allocator, scratch memory, kernels)
    times = []
    for _ in range(repeat):
        start = time.thread_time()
        fn()
        times.append((time.thread_time() - start) * 1e3 / per)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=64, help="sample grid side")
    parser.add_argument("--out", type=int, default=256, help="back-projection output side")
    parser.add_argument("--batch", type=int, default=4, help="regions per call")
    parser.add_argument("--saliency", type=int, default=32, help="saliency grid side")
    parser.add_argument("--radius", type=int, default=4, help="kernel radius in cells")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    b = args.batch
    logits = torch.randn(b, 1, 8, 8, generator=gen)
    logits = torch.nn.functional.interpolate(
        logits, (args.saliency, args.saliency), mode="bicubic", align_corners=True
    )
    density = torch.softmax(3.0 * logits.flatten(1), dim=1).view_as(logits)
    grid = saliency_to_grid(density, (args.grid, args.grid), args.radius)
    image = torch.rand(b, 3, args.out, args.out, generator=gen)
    mip = build_mipmap(image)
    ds = mipmap_downsamples(mip)
    probs = torch.rand(b, args.classes, args.grid, args.grid, generator=gen)
    size = (args.out, args.out)

    rows = [
        (
            "saliency_to_grid",
            lambda: saliency_to_grid(density, (args.grid, args.grid), args.radius),
        ),
        (f"sample_image {args.out}^2 -> {args.grid}^2", lambda: sample_image(mip, grid, ds)),
        (f"invert_grid {args.grid}^2 -> {args.out}^2", lambda: invert_grid(grid, size)),
        (f"backproject K={args.classes}", lambda: backproject(probs, grid, size)),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, batch {b}")
    for name, fn in rows:
        print(f"{name:40s} {_median_ms(fn, args.repeat, b):8.2f} ms/region")


if __name__ == "__main__":
    main()
