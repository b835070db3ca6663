"""Accuracy vs pixel budget: learned vs uniform sampling vs tiled full resolution.

    python pipelines/benchmark_budget.py --out results [--work runs/budget] \
        [--datasets synthetic,glas,cpm15,stain] [--seeds 3] [--steps 300] [--quick]

For each dataset, budget (samples per region pixel: 1/16, 1/64, 1/256 with every
seed, 1/4 with the first seed only) and seed it trains a learned and a uniform model
(same segmenter, data, steps and seed), plus one tiled full-resolution model per
seed, then evaluates each on held-out images: one confusion matrix per image at full
label resolution. Datasets:

- ``synthetic``: slides from ``wsiseg synth`` (train seeds 1000-1005, 6144x4096 px;
  test seeds 1200-1209, 4096x3072 px; 0.5 µm/px), 4 classes;
- ``glas``: the GlaS colon tiles in SHARED/labeled/glas (0.62 µm/px), glands vs
  background;
- ``cpm15``: the CPM-15 tiles in SHARED/labeled/cpm15 (20x tiles 0.5 µm/px, 40x tiles
  0.25 µm/px), nuclei vs background;
- ``stain``: the H&E slides in SHARED/slides, labelled by the deterministic stain rule
  of `wsiseg.bench.stain_rule` (background / eosin / haematoxylin-dense): a sanity
  check on real texture, not evidence of the method.

The real images are few (3 GlaS, 2 CPM-15, 2 slides), so each is split by columns:
the left 60 % trains, the right 40 % tests (stated in the report; train and test
parts of one image are not independent). Augmentation: flips, rot90, colour jitter.

Each run writes OUT/<config-hash>.json when it is finished; a rerun skips finished
runs and resumes unfinished trainings from WORK, so the benchmark survives an
interruption. The expected wall time (from a short calibration on this machine) is
printed first. The report is OUT/budget.json, OUT/budget.md and one
OUT/budget_<dataset>.png per dataset; ``--report-only`` rewrites it from the finished
runs (e.g. after running datasets in parallel processes). ``--quick`` shrinks
everything (tiny images, two budgets, a few steps) to check the machinery in minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsiseg.bench.budget_curve import BudgetRun, format_budget_markdown, summarise_budget
from wsiseg.bench.plots import plot_budget
from wsiseg.bench.runs import (
    budget_label,
    claim,
    file_signature,
    machine,
    run_key,
    time_run_kind,
    train_identity,
    write_result,
)
from wsiseg.bench.stain_rule import STAIN_CLASSES, stain_rule_labels
from wsiseg.fileops import atomic_path
from wsiseg.io import open_slide
from wsiseg.models.config import DEFAULT_CLASSES, ModelConfig
from wsiseg.models.loading import load_model
from wsiseg.synthetic import SynthSpec, write_synthetic_slide
from wsiseg.train.datasets import ArraySource, LabeledSource, discover_sources
from wsiseg.train.evaluate import confusion_per_source
from wsiseg.train.loop import TrainConfig, train
from wsiseg.train.metrics import mean_iou
from wsiseg.train.regions import grid_boxes

REPO = Path(__file__).resolve().parents[1]
VERSION = 1  # bump when a change makes earlier results incomparable
ALL_DATASETS = ("synthetic", "glas", "cpm15", "stain")
BUDGETS = (1 / 16, 1 / 64, 1 / 256)
FIRST_SEED_ONLY = (1 / 4,)
TRAIN_FRACTION = 0.6
#: CPM-15 magnifications from its README (images 01-07 at 20x, 08-15 at 40x).
CPM15_MPP = {
    **{f"image{i:02d}": 0.5 for i in range(1, 8)},
    **{f"image{i:02d}": 0.25 for i in range(8, 16)},
}
#: H&E slides for the stain rule; a slide without mpp metadata is read at this pixel size.
STAIN_SLIDES = ("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs")
STAIN_FALLBACK_MPP = 0.5
BINARY = {
    "glas": (("background", (255, 255, 255)), ("gland", (200, 40, 40))),
    "cpm15": (("background", (255, 255, 255)), ("nucleus", (60, 40, 160))),
}
STAIN_COLOURS = ((255, 255, 255), (235, 120, 180), (70, 40, 150))

log = logging.getLogger("benchmark_budget")


@dataclass
class Dataset:
    name: str
    train: list[LabeledSource]
    test: list[LabeledSource]
    classes: tuple[tuple[str, tuple[int, int, int]], ...]
    task_mpp: float
    region_px: int
    split: str
    signature: dict[str, Any]


@dataclass(frozen=True)
class Run:
    dataset: str
    sampler: str
    budget: float
    seed: int
    model: ModelConfig
    train: TrainConfig
    key: str


# -- data -------------------------------------------------------------------------------


def column_split(src: ArraySource, fraction: float) -> tuple[ArraySource, ArraySource]:
    """The left ``fraction`` of an image for training, the rest for testing."""
    cut = int(round(src.image.shape[1] * fraction))
    left = ArraySource(f"{src.name}[train]", src.image[:, :cut], src.labels[:, :cut], src.mpp)
    right = ArraySource(f"{src.name}[test]", src.image[:, cut:], src.labels[:, cut:], src.mpp)
    return left, right


class MemoSource:
    """A labeled source whose reads are kept in memory: every model of a run is
    evaluated on the same test regions, so each is decoded from the slide once."""

    def __init__(self, source: LabeledSource) -> None:
        self._src = source
        self.name, self.group, self.mpp, self.size = (
            source.name,
            source.group,
            source.mpp,
            source.size,
        )
        self._reads: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}

    def read(
        self, x: int, y: int, w: int, h: int, out_hw: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        key = (x, y, w, h, *out_hw)
        if key not in self._reads:
            self._reads[key] = self._src.read(x, y, w, h, out_hw)
        return self._reads[key]

    def label_thumbnail(self, max_px: int = 512) -> tuple[np.ndarray, float]:
        return self._src.label_thumbnail(max_px)


def _split_all(sources: Sequence[ArraySource]) -> tuple[list[LabeledSource], list[LabeledSource]]:
    parts = [column_split(s, TRAIN_FRACTION) for s in sources]
    return [p[0] for p in parts], [p[1] for p in parts]


def synthetic_dataset(work: Path, quick: bool) -> Dataset:
    if quick:
        splits = {
            "train": (range(1000, 1002), (2048, 2048)),
            "test": (range(1200, 1202), (2048, 1536)),
        }
    else:
        splits = {
            "train": (range(1000, 1006), (6144, 4096)),
            "test": (range(1200, 1210), (4096, 3072)),
        }
    folders = {}
    for split, (seeds, (w, h)) in splits.items():
        folder = work / "data" / ("synthetic-quick" if quick else "synthetic") / split
        for seed in seeds:
            if not (folder / f"synth-{seed}_mask.tiff").exists():
                print(f"writing synthetic slide {split}/synth-{seed} ({w}x{h})", flush=True)
                write_synthetic_slide(folder, f"synth-{seed}", SynthSpec(w, h, seed=seed))
        folders[split] = folder
    train_src = discover_sources(folders["train"])
    test_src: list[LabeledSource] = [MemoSource(s) for s in discover_sources(folders["test"])]
    seeds = {k: [min(v[0]), max(v[0]), *v[1]] for k, v in splits.items()}
    return Dataset(
        "synthetic",
        train_src,
        test_src,
        DEFAULT_CLASSES,
        task_mpp=2.0 if quick else 1.0,
        region_px=128 if quick else 512,
        split=f"by slide: {len(train_src)} training slides, {len(test_src)} test slides",
        signature={"synthetic": seeds},
    )


def glas_dataset(shared: Path) -> Dataset:
    root = shared / "labeled" / "glas"
    sources = [s for s in discover_sources(root, data_mpp=0.62, binary_labels=True)]
    train_src, test_src = _split_all([s for s in sources if isinstance(s, ArraySource)])
    return Dataset(
        "glas",
        train_src,
        test_src,
        BINARY["glas"],
        task_mpp=0.62,
        region_px=256,
        split=f"{len(sources)} images, each split by columns: left 60% trains, right 40% tests",
        signature={"files": file_signature(list(root.iterdir()))},
    )


def cpm15_dataset(shared: Path) -> Dataset:
    root = shared / "labeled" / "cpm15"
    sources = []
    for s in discover_sources(root, data_mpp=0.5, binary_labels=True):
        assert isinstance(s, ArraySource)
        sources.append(ArraySource(s.name, s.image, s.labels, CPM15_MPP.get(s.name, s.mpp)))
    train_src, test_src = _split_all(sources)
    return Dataset(
        "cpm15",
        train_src,
        test_src,
        BINARY["cpm15"],
        task_mpp=0.25,
        region_px=256,
        split=f"{len(sources)} tiles, each split by columns: left 60% trains, right 40% tests",
        signature={"files": file_signature([p for p in root.iterdir() if p.suffix == ".png"])},
    )


def stain_dataset(shared: Path) -> Dataset:
    sources = []
    paths = [shared / "slides" / n for n in STAIN_SLIDES if (shared / "slides" / n).is_file()]
    for path in paths:
        with open_slide(path, mpp=STAIN_FALLBACK_MPP) as r:
            w, h = r.level_dimensions[0]
            rgb = np.asarray(r.read_region(0, 0, 0, w, h))[..., :3]
            mpp = r.mpp[0]
        sources.append(ArraySource(path.stem, rgb, stain_rule_labels(rgb), mpp))
    train_src, test_src = _split_all(sources)
    classes = tuple(zip(STAIN_CLASSES, STAIN_COLOURS, strict=True))
    return Dataset(
        "stain",
        train_src,
        test_src,
        classes,
        task_mpp=0.5,
        region_px=256,
        split=f"{len(sources)} slides, each split by columns: left 60% trains, right 40% tests",
        signature={"files": file_signature(paths), "rule": "stain_rule_labels defaults"},
    )


def load_dataset(name: str, work: Path, shared: Path, quick: bool) -> Dataset:
    if name == "synthetic":
        return synthetic_dataset(work, quick)
    if not shared.is_dir():
        raise SystemExit(f"error: {shared} not found (set --shared or WSISEG_SHARED_DATA)")
    return {"glas": glas_dataset, "cpm15": cpm15_dataset, "stain": stain_dataset}[name](shared)


# -- plan -------------------------------------------------------------------------------


def model_config(ds: Dataset, sampler: str, budget: float, quick: bool) -> ModelConfig:
    r = ds.region_px
    sample = max(8, round(r * budget**0.5))
    return ModelConfig(
        sampler=sampler,  # type: ignore[arg-type]
        segmenter="unet-tiny",
        classes=ds.classes,
        task_mpp=ds.task_mpp,
        region_px=r,
        sample_px=sample if sampler != "tiled" else min(64, r),
        saliency_input_px=max(16, r // 8),
        saliency_grid_px=max(8, r // 16),
        saliency_width=8 if quick else 24,
        radius_cells=3 if r <= 256 else 4,
        tile_train_px=min(128, r),
        tile_infer_px=min(512, 2 * r),
        tile_overlap_px=16 if quick else 32,
    )


def plan(ds: Dataset, seeds: int, steps: int, quick: bool, threads: int) -> list[Run]:
    """Runs in the order they pay off: every budget of seed 0 first, then the other
    seeds, and the expensive first-seed-only budgets last."""
    budgets = (1 / 16, 1 / 64) if quick else BUDGETS
    runs = []
    for seed in range(seeds):
        tcfg = _train_config(steps, seed, quick, threads)
        for budget in sorted(budgets):
            for sampler in ("learned", "uniform"):
                runs.append(_run(ds, sampler, budget, seed, tcfg, quick))
        runs.append(_run(ds, "tiled", 1.0, seed, tcfg, quick))
    if not quick:
        for budget in FIRST_SEED_ONLY:
            for sampler in ("learned", "uniform"):
                runs.append(
                    _run(ds, sampler, budget, 0, _train_config(steps, 0, quick, threads), quick)
                )
    return runs


def _train_config(steps: int, seed: int, quick: bool, threads: int) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=4 if quick else 8,
        pool_regions=8 if quick else 32,
        refresh_every=25,
        steps_per_epoch=min(100, steps),  # a checkpoint to resume from every 100 steps
        val_regions=2 if quick else 8,
        seed=seed,
        threads=threads,
    )


def _run(
    ds: Dataset, sampler: str, budget: float, seed: int, tcfg: TrainConfig, quick: bool
) -> Run:
    mcfg = model_config(ds, sampler, budget, quick)
    ident = {
        "version": VERSION,
        "dataset": ds.name,
        "data": ds.signature,
        "split": ds.split,
        "model": mcfg.to_dict(),
        "train": train_identity(tcfg),
        "checkpoint": "last",
    }
    return Run(ds.name, sampler, budget, seed, mcfg, tcfg, run_key(ident))


# -- timing estimate ----------------------------------------------------------------------


def calibrate(runs: Sequence[Run], datasets: dict[str, Dataset]) -> float:
    """Expected seconds for ``runs``: a few timed training steps and one evaluation
    batch per distinct configuration, on random data, scaled by steps and regions."""
    cache: dict[tuple[str, str, float], tuple[float, float]] = {}
    total = 0.0
    for run in runs:
        ck = (run.dataset, run.sampler, run.budget)
        if ck not in cache:
            cache[ck] = time_run_kind(run.model, run.train.batch_size)
        step_s, region_s = cache[ck]
        ds = datasets[run.dataset]
        n_regions = sum(
            len(grid_boxes(s, max(1, round(ds.region_px * ds.task_mpp / s.mpp)))) for s in ds.test
        )
        # + region drawing and validation, about a fifth of the step time here
        total += 1.2 * step_s * run.train.steps + 1.5 * region_s * n_regions
    return total


# -- execution ------------------------------------------------------------------------------


def execute(run: Run, ds: Dataset, out: Path, work: Path, device: str) -> dict[str, Any]:
    run_dir = work / "runs" / run.key
    resume = run_dir.exists() and (run_dir / "train_state.json").exists()
    if run_dir.exists() and not resume:  # started but no checkpoint yet: start over
        for p in run_dir.iterdir():
            p.unlink()
    done_steps = 0
    if resume:
        done_steps = int(json.loads((run_dir / "train_state.json").read_text())["step"])
    t0 = time.perf_counter()
    if done_steps < run.train.steps:
        from tqdm import tqdm

        bar = tqdm(total=run.train.steps, initial=done_steps, leave=False, desc=f"train {run.key}")

        def on_step(info: Any) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{info.loss:.3f}")

        train(
            run.model,
            run.train,
            ds.train,
            run_dir,
            val_sources=ds.train,
            device=device,
            resume=resume,
            on_step=on_step,
            data_summary={"benchmark": "accuracy vs budget", "dataset": ds.name, "split": ds.split},
        )
        bar.close()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = load_model(run_dir / "last.safetensors", device=device)
    cms = confusion_per_source(model, ds.test)
    eval_s = time.perf_counter() - t0
    record = {
        "key": run.key,
        "dataset": run.dataset,
        "sampler": run.sampler,
        "budget": run.budget,
        "budget_label": budget_label(run.budget),
        "seed": run.seed,
        "images": [s.name for s in ds.test],
        "classes": [c[0] for c in ds.classes],
        "confusion": cms.tolist(),
        "miou": mean_iou(cms.sum(0)),
        "train_seconds": train_s,
        "eval_seconds": eval_s,
        "resumed_at_step": done_steps,
        "split": ds.split,
        "model": run.model.to_dict(),
        "train": asdict(run.train),
        "machine": machine(),
    }
    write_result(out, run.key, record)
    return record


# -- report -----------------------------------------------------------------------------------


def write_report(out: Path, runs: Sequence[Run], datasets: dict[str, Dataset]) -> dict[str, Any]:
    done, missing = [], []
    for run in runs:
        path = out / f"{run.key}.json"
        if path.is_file():
            done.append(BudgetRun.from_dict(json.loads(path.read_text())))
        else:
            missing.append(run)
    summary = summarise_budget(done)
    for name, res in summary.items():
        res["split"] = datasets[name].split
        res["region"] = f"{datasets[name].region_px} px at {datasets[name].task_mpp} µm/px"
        res["runs"] = sorted(r.key for r in runs if r.dataset == name)
    summary_doc = {
        "datasets": summary,
        "missing_runs": [r.key for r in missing],
        "machine": machine(),
    }
    with atomic_path(out / "budget.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(summary_doc, indent=1))
    md = ["# Accuracy vs pixel budget", ""]
    for name, res in summary.items():
        md.append(f"- {name}: {res['region']}; split {res['split']}")
    if missing:
        md.append(
            f"- {len(missing)} planned runs not finished: " + ", ".join(r.key for r in missing)
        )
    md += ["", format_budget_markdown(summary)]
    with atomic_path(out / "budget.md", overwrite=True) as tmp:
        tmp.write_text("\n".join(md))
    for name, res in summary.items():
        plot_budget(res, f"{name}: {res['n_images']} test images", out / f"budget_{name}.png")
    return summary_doc


# -- main -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("results"), help="results folder")
    p.add_argument("--work", type=Path, default=Path("runs/budget"), help="data and checkpoints")
    p.add_argument("--datasets", default=",".join(ALL_DATASETS))
    p.add_argument("--seeds", type=int, default=3, help="training seeds (synthetic data)")
    p.add_argument("--real-seeds", type=int, default=1, help="training seeds (real data)")
    p.add_argument("--steps", type=int, default=300, help="training steps (synthetic data)")
    p.add_argument("--real-steps", type=int, default=200, help="training steps (real data)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--shared", type=Path, default=None, help="shared data folder")
    p.add_argument("--quick", action="store_true", help="a minutes-long smoke run")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report")
    p.add_argument(
        "--reverse", action="store_true", help="take seeds from the last (for a second process)"
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    names = [n.strip() for n in a.datasets.split(",") if n.strip()]
    bad = sorted(set(names) - set(ALL_DATASETS))
    if bad:
        p.error(f"unknown dataset(s) {', '.join(bad)} (known: {', '.join(ALL_DATASETS)})")
    shared = a.shared or Path(os.environ.get("WSISEG_SHARED_DATA", REPO.parent / "shared" / "data"))
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    datasets = {n: load_dataset(n, a.work, shared, a.quick) for n in names}
    runs: list[Run] = []
    for name, ds in datasets.items():
        synthetic = name == "synthetic"
        seeds = 1 if a.quick else (a.seeds if synthetic else a.real_seeds)
        steps = 4 if a.quick else (a.steps if synthetic else a.real_steps)
        runs += plan(ds, seeds, steps, a.quick, a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    pending = [r for r in runs if not (a.out / f"{r.key}.json").is_file()]
    print(f"{len(runs)} runs planned, {len(runs) - len(pending)} finished, {len(pending)} to do")
    if pending and not a.report_only:
        expected = calibrate(pending, datasets)
        print(f"expected wall time: about {expected / 60:.0f} min on this machine", flush=True)
        t0 = time.perf_counter()
        order = pending
        if a.reverse:  # the other end of the seeds, still leaving first-seed-only budgets last
            last = [r for r in pending if r.budget in FIRST_SEED_ONLY]
            order = [r for r in pending[::-1] if r.budget not in FIRST_SEED_ONLY] + last
        for i, run in enumerate(order, 1):
            label = f"{run.dataset} {run.sampler} {budget_label(run.budget)} seed {run.seed}"
            with claim(a.work / "locks" / f"{run.key}.lock") as mine:
                if not mine or (a.out / f"{run.key}.json").is_file():
                    print(f"[{i}/{len(order)}] {label} ({run.key}): done or running elsewhere")
                    continue
                print(f"[{i}/{len(order)}] {label} ({run.key})", flush=True)
                rec = execute(run, datasets[run.dataset], a.out, a.work, a.device)
            print(f"    mIoU {rec['miou']:.4f}  train {rec['train_seconds']:.0f} s", flush=True)
        print(f"finished in {(time.perf_counter() - t0) / 60:.1f} min")
    write_report(a.out, runs, datasets)
    print((a.out / "budget.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
