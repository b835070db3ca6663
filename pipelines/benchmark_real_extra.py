"""One run of the real-tissue benchmark outside its plan (a diagnostic point).

    OMP_NUM_THREADS=1 python pipelines/benchmark_real_extra.py --dataset glas \
        --sampler uniform --budget 1/4 --seed 2

Same data, split, segmenter, training rule and evaluation as
``pipelines/benchmark_real.py`` (its ``_run`` and ``execute``), for a sampler and budget
the plan does not hold, e.g. uniform 1/4 to see where accuracy peaks on the way to full
resolution. The result goes to ``docs/results/real/extra/<key>.json`` (not in the
report); a finished key is not run again; checkpoints under ``--work``.
"""

from __future__ import annotations

import argparse
import os
import sys
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark_real as br  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", choices=br.ALL_DATASETS, required=True)
    p.add_argument("--sampler", choices=("learned", "uniform", "tiled"), required=True)
    p.add_argument("--budget", default="1", help="fraction of the region's pixels, e.g. 1/4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=None, help="regions per step (default: the plan's)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result file (default: docs/results/real/extra; with --quick: WORK/quick/extra)",
    )
    p.add_argument("--work", type=Path, default=Path("runs/real"))
    p.add_argument("--shared", type=Path, default=None, help="shared data folder")
    p.add_argument("--quick", action="store_true", help="benchmark_real's --quick sizes")
    a = p.parse_args(argv)
    a.out = br.results_folder(p, a.out, a.work, a.quick, "extra")
    try:
        budget = float(Fraction(a.budget))
    except (ValueError, ZeroDivisionError):
        p.error(f"--budget {a.budget!r} is not a fraction like 1/4")
    if not 0 < budget <= 1:
        p.error("--budget must be in (0, 1]")
    shared = a.shared or Path(
        os.environ.get("WSISEG_SHARED_DATA", br.REPO.parent / "shared" / "data")
    )
    if not shared.is_dir():
        print(f"error: {shared} not found (set --shared or WSISEG_SHARED_DATA)", file=sys.stderr)
        return 2
    ds = br.load_dataset(a.dataset, shared, a.quick)
    run = br._run(ds, a.sampler, budget, a.seed, a.quick, 1, a.batch)
    done = a.out / f"{run.key}.json"
    print(
        f"{br._label(run, ' ')} ({run.key}), {run.model.sample_px} samples a side, "
        f"{run.train.batch_size} regions per step",
        flush=True,
    )
    if done.is_file():
        print(f"already finished: {done}")
        return 0
    a.out.mkdir(parents=True, exist_ok=True)
    rec = br.execute(run, ds, a.out, a.work, "cpu")
    print(f"{br.OBJECT[a.dataset]} IoU {rec['fg_iou']:.4f}, best step {rec['best_step']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
