"""Real-tissue accuracy vs pixel budget: GlaS glands and MoNuSeg nuclei (issues 12 §2, 14).

    OMP_NUM_THREADS=1 python pipelines/benchmark_real.py --out docs/results/real \
        --work runs/real [--datasets glas,monuseg] [--seeds 3] [--reverse] [--quick]

Per dataset, learned vs uniform sampling at 1/16, 1/64 and 1/256 of a 512 px region's
pixels (128, 64, 32 samples a side) at the dataset's task pixel size, and the same
segmenter at full resolution (the ``tiled`` sampler: trained on whole 512 px regions,
``TILED_BATCH`` per step; predicting 512 px windows), 3 seeds each. Every model trains ``STEPS``
steps with the same schedule (AdamW lr 1e-3, ``WARMUP`` steps of linear warm-up, then
cosine decay to 1 % at the last step), validated every ``VAL_EVERY`` steps (mIoU on every
pixel of a patient-disjoint part of the training images); the best checkpoint is
evaluated on all test images, every pixel once at full label resolution
(`confusion_per_image`). A run whose best step is its last was still improving: the
report says so.

- ``glas``: SHARED/labeled/glas-full, 85 training images (about 20 % of them, whole
  patients, for validation), the 60 test A images; 0.62 µm/px; gland vs not gland.
- ``monuseg``: SHARED/labeled/monuseg, 30 training images (about 20 %, whole patients,
  for validation), the 7 test images; 0.25 µm/px (per image from split.csv); nucleus vs
  background. Also nuclei found / missed (connected components of the truth matched by a
  predicted component at IoU >= 0.5) and the sample spacing at each budget against the
  median nucleus diameter of the training masks.

Segmenter: unet-resnet18 (encoder_weights None) for every run, batch 8 regions (2 at full resolution),
real-tissue augmentation, bf16 autocast and channels-last convolutions on the CPU
(about 2.5x faster per step than float32 here; the weights and the evaluation stay float32).

Why this rule (version 2). Version 1 (constant lr, early stopping after 3 validations
without a better score) stopped the full-resolution model while its validation mIoU still
swung by 0.1-0.25 between checks (0.67, 0.41, 0.49, 0.56) and left it below every sampled
model (GlaS gland IoU 0.544 vs 0.62-0.76): the stopping point was noise, not a plateau.
A decaying learning rate settles every model, and one fixed length for every sampler
removes the stopping rule as a difference between them. Version-1 results are in git
history (commit 6783bb8), not in the report.

Full resolution's windows. Its first version-2 run trained on 256 px windows (batch 8)
and scored GlaS gland IoU 0.736, below the 1/16 models; to give it the sampled models'
context it then trained on whole regions (batch 2, same pixels per step) and scored
0.683; its validation mIoU swung between checks and peaked at 0.698. On GlaS it now
trains on 8 whole regions per step, as many as the sampled models see (4x their
pixels); its validation reached 0.80. Only its own configuration changed, so the
sampled runs keep their keys and results; the earlier GlaS full-resolution runs are in
git history (commits d54d913, 2baa0e0b6d84.json before this change), not in the report.
MoNuSeg keeps batch 2.

Each finished run writes OUT/<config-hash>.json (configuration, data signature, seed,
best and stopping step, train time, machine, per-image confusion matrices and scores).
A rerun skips finished runs and resumes unfinished trainings from WORK; two processes
(the second with ``--reverse``) share the runs through lock files. The report is
OUT/real.md, OUT/real.json and OUT/<dataset>.png (foreground IoU vs budget, mean ± sd over
seeds); ``--report-only`` rebuilds it from the result files. ``--quick`` runs two
training and two test images per dataset with tiny sizes and a few steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from wsiseg.bench.budget_curve import BudgetRun, format_budget_markdown, summarise_budget
from wsiseg.bench.plots import plot_budget
from wsiseg.bench.runs import (
    budget_label,
    claim,
    file_signature,
    machine,
    read_result,
    run_key,
    time_run_kind,
    train_identity,
    write_result,
)
from wsiseg.fileops import atomic_path
from wsiseg.models.config import ModelConfig
from wsiseg.models.loading import load_model
from wsiseg.train.datasets import ArraySource
from wsiseg.train.evaluate import confusion_per_image, fitted_boxes
from wsiseg.train.layouts import DataLayout, LayoutImage, read_layout, split_by_patient
from wsiseg.train.loop import TrainConfig, read_train_state, train
from wsiseg.train.metrics import iou_dice, mean_iou

REPO = Path(__file__).resolve().parents[1]
VERSION = 2  # bump when a change makes earlier results incomparable
ALL_DATASETS = ("glas", "monuseg")
FOLDERS = {"glas": "glas-full", "monuseg": "monuseg"}
OBJECT = {"glas": "gland", "monuseg": "nucleus"}
BUDGETS = (1 / 16, 1 / 64, 1 / 256)
REGION_PX = 512
SEGMENTER = "unet-resnet18"
VAL_FRACTION, VAL_SEED = 0.2, 0
VAL_EVERY = 100  # steps between validations (and checkpoints)
#: Every run: this many steps, the learning rate warmed up then cosine-decayed over all
#: of them (the same schedule for every sampler); the best validation checkpoint is kept.
STEPS, WARMUP = 1200, 50
#: Whole 512 px regions per full-resolution step. GlaS: 8, the sampled models' regions
#: per step (at 2 its validation mIoU swung and peaked at 0.698; at 8 it reached 0.80 by
#: step 800: validation, not test, decided). MoNuSeg: 2 (already the top line; 8 costs
#: 4x the CPU of its three seeds).
TILED_BATCH = {"glas": 8, "monuseg": 2}

log = logging.getLogger("benchmark_real")


@dataclass
class Dataset:
    name: str
    train: list[ArraySource]
    val: list[ArraySource]
    test: list[ArraySource]
    classes: tuple[tuple[str, tuple[int, int, int]], ...]
    task_mpp: float
    region_px: int
    split: str
    signature: dict[str, Any]
    object_stats: dict[str, Any] = field(default_factory=dict)


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


def _sha(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _load(layout: DataLayout, items: Sequence[LayoutImage]) -> list[ArraySource]:
    return [
        ArraySource(im.name, *layout.load(im, "binary"), im.mpp, group=im.patient) for im in items
    ]


def _quick_pick(items: Sequence[LayoutImage], n: int) -> list[LayoutImage]:
    """``n`` images of different patients (the first of each, in name order)."""
    out: list[LayoutImage] = []
    for im in sorted(items, key=lambda i: i.name):
        if im.patient not in {o.patient for o in out}:
            out.append(im)
        if len(out) == n:
            break
    return out


def load_dataset(name: str, shared: Path, quick: bool) -> Dataset:
    root = shared / "labeled" / FOLDERS[name]
    layout = read_layout(root)
    if layout is None or layout.kind != name:
        raise SystemExit(f"error: {root}: not the {name} layout (images/, masks/ and a CSV)")
    train_items, test_items = layout.select("train"), layout.select("test")
    if quick:
        train_items, test_items = _quick_pick(train_items, 2), _quick_pick(test_items, 2)
    # (LayoutImage's read-only name/group do not satisfy mypy's settable protocol attributes)
    fit, val = split_by_patient(train_items, 0.5 if quick else VAL_FRACTION, VAL_SEED)  # type: ignore[type-var]
    sums = root / "SHA256SUMS"
    used = sorted([*train_items, *test_items], key=lambda i: i.name)
    signature = {
        "folder": f"labeled/{FOLDERS[name]}",
        "sha256sums": hashlib.sha1(sums.read_bytes()).hexdigest() if sums.is_file() else None,
        "files": _sha(file_signature([p for im in used for p in (im.image, im.mask)])),
        "train": _sha([i.name for i in fit]),
        "val": _sha([i.name for i in val]),
        "test": _sha([i.name for i in test_items]),
        "mpp": _sha([[i.name, i.mpp] for i in used]),
    }
    task_mpp = float(np.median([i.mpp for i in train_items]))
    task_mpp = round(task_mpp, 2)
    if quick:
        task_mpp *= 4
    split = (
        f"official: {len(fit)} training + {len(val)} validation images (patient-disjoint, "
        f"{len({i.patient for i in val})} of {len({i.patient for i in train_items})} "
        f"patients), {len(test_items)} test images"
    )
    ds = Dataset(
        name,
        _load(layout, fit),
        _load(layout, val),
        _load(layout, test_items),
        layout.classes("binary"),
        task_mpp,
        128 if quick else REGION_PX,
        split,
        signature,
    )
    if name == "monuseg":
        ds.object_stats = nucleus_sizes(ds.train + ds.val)
    return ds


def nucleus_sizes(sources: Sequence[ArraySource]) -> dict[str, Any]:
    """Equivalent diameters (µm) of the connected components of the truth masks
    (touching nuclei count as one: a slight overestimate)."""
    diam = []
    for s in sources:
        comp, n = ndimage.label(s.labels == 1)
        areas = np.bincount(comp.ravel(), minlength=n + 1)[1:]
        diam.append(np.sqrt(4 * areas / np.pi) * s.mpp)
    d = np.concatenate(diam) if diam else np.zeros(0)
    d = d[d >= 1.0]  # drop specks under 1 µm (mask rasterisation)
    pct = np.percentile(d, [25, 50, 75]) if d.size else [float("nan")] * 3
    return {
        "n_components": int(d.size),
        "diameter_um_p25": float(pct[0]),
        "diameter_um_median": float(pct[1]),
        "diameter_um_p75": float(pct[2]),
    }


# -- plan -------------------------------------------------------------------------------


def model_config(ds: Dataset, sampler: str, budget: float, quick: bool) -> ModelConfig:
    r = ds.region_px
    return ModelConfig(
        sampler=sampler,  # type: ignore[arg-type]
        segmenter="unet-tiny" if quick else SEGMENTER,
        classes=ds.classes,
        task_mpp=ds.task_mpp,
        region_px=r,
        sample_px=round(r * budget**0.5) if sampler != "tiled" else r // 8,
        saliency_input_px=16 if quick else 64,
        saliency_grid_px=8 if quick else 32,
        saliency_width=8 if quick else 24,
        radius_cells=3 if quick else 4,
        uniform_floor=0.1,
        # full resolution trains on whole regions (the sampled models' context); the
        # others never use this field, which stays at its earlier value in their keys
        tile_train_px=r if sampler == "tiled" else r // 2,
        tile_infer_px=r,
        tile_overlap_px=16 if quick else 32,
    )


def train_config(sampler: str, seed: int, quick: bool, threads: int, dataset: str) -> TrainConfig:
    if quick:
        return TrainConfig(
            steps=6,
            batch_size=2,
            pool_regions=4,
            refresh_every=25,
            steps_per_epoch=2,
            val_every=2,
            patience=1,
            val_whole=True,
            jitter=0.0,
            augment="real",
            seed=seed,
            threads=threads,
        )
    return TrainConfig(
        steps=STEPS,
        batch_size=TILED_BATCH[dataset] if sampler == "tiled" else 8,
        lr=1e-3,
        lr_schedule="cosine",
        warmup_steps=WARMUP,
        precision="bf16",
        channels_last=True,
        pool_regions=32,
        refresh_every=25,
        steps_per_epoch=VAL_EVERY,
        val_every=VAL_EVERY,
        val_whole=True,
        jitter=0.0,
        augment="real",
        seed=seed,
        threads=threads,
    )


def _record_label(rec: dict[str, Any]) -> str:
    return f"{rec['sampler']} {rec['budget_label']} seed {rec['seed']}"


def plan(ds: Dataset, seeds: int, quick: bool, threads: int) -> list[Run]:
    """Per seed, the full-resolution model first (the line every budget is read against),
    then every budget; seed 0 before the next seeds."""
    budgets = (1 / 16, 1 / 64) if quick else BUDGETS
    runs = []
    for seed in range(seeds):
        runs.append(_run(ds, "tiled", 1.0, seed, quick, threads))
        for budget in sorted(budgets):
            for sampler in ("learned", "uniform"):
                runs.append(_run(ds, sampler, budget, seed, quick, threads))
    return runs


def _run(
    ds: Dataset,
    sampler: str,
    budget: float,
    seed: int,
    quick: bool,
    threads: int,
    batch_size: int | None = None,
) -> Run:
    """The planned run; ``batch_size`` overrides the plan's regions per step (a new key)."""
    mcfg = model_config(ds, sampler, budget, quick)
    tcfg = train_config(sampler, seed, quick, threads, ds.name)
    if batch_size is not None:
        tcfg = dataclasses.replace(tcfg, batch_size=batch_size)
    ident = {
        "version": VERSION,
        "benchmark": "real",
        "dataset": ds.name,
        "data": ds.signature,
        "split": ds.split,
        "model": mcfg.to_dict(),
        "train": train_identity(tcfg),
        "checkpoint": "best",
        "evaluation": "confusion_per_image",
    }
    return Run(ds.name, sampler, budget, seed, mcfg, tcfg, run_key(ident))


# -- timing estimate ----------------------------------------------------------------------


def _n_regions(ds: Dataset, sources: Sequence[ArraySource]) -> int:
    n = 0
    for s in sources:
        side = max(1, round(ds.region_px * ds.task_mpp / s.mpp))
        n += len(fitted_boxes(s.size[0], side)) * len(fitted_boxes(s.size[1], side))
    return n


def calibrate(runs: Sequence[Run], datasets: dict[str, Dataset]) -> dict[str, Any]:
    """Seconds per step and per predicted region for each run kind (timed here on random
    data), and the expected wall time of ``runs`` at their step caps and at the steps
    the pilot run stopped at."""
    kinds: dict[str, tuple[float, float]] = {}
    total_s = 0.0
    for run in runs:
        kind = f"{run.dataset} {run.sampler} {budget_label(run.budget)}"
        if kind not in kinds:
            kinds[kind] = time_run_kind(run.model, run.train.batch_size, train_cfg=run.train)
            print(
                f"  {kind}: {kinds[kind][0]:.2f} s/step, {kinds[kind][1]:.3f} s/region",
                flush=True,
            )
        step_s, region_s = kinds[kind]
        ds = datasets[run.dataset]
        val_s = region_s * _n_regions(ds, ds.val)
        test_s = region_s * _n_regions(ds, ds.test)
        steps = run.train.steps
        total_s += 1.1 * step_s * steps + val_s * (steps / run.train.val_interval) + test_s
    return {"kinds": kinds, "total_s": total_s}


# -- execution ------------------------------------------------------------------------------


def object_counts(pred: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """Truth components (8-connected) found by a predicted component at IoU >= 0.5."""
    st = np.ones((3, 3), bool)
    t_lab, nt = ndimage.label(truth == 1, st)
    p_lab, npred = ndimage.label(pred == 1, st)
    inter = np.bincount(
        t_lab.ravel() * (npred + 1) + p_lab.ravel(), minlength=(nt + 1) * (npred + 1)
    ).reshape(nt + 1, npred + 1)
    t_area, p_area = inter.sum(1), inter.sum(0)
    union = t_area[1:, None] + p_area[None, 1:] - inter[1:, 1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter[1:, 1:] / union, 0.0)
    found = int((iou >= 0.5).any(1).sum()) if npred else 0
    matched_pred = int((iou >= 0.5).any(0).sum()) if nt else 0
    return {
        "truth": int(nt),
        "found": found,
        "missed": int(nt) - found,
        "predicted": int(npred),
        "unmatched_predicted": int(npred) - matched_pred,
    }


def _scores(cm: np.ndarray) -> dict[str, float | None]:
    iou, dice = iou_dice(cm)
    return {
        "fg_iou": None if not np.isfinite(iou[1]) else float(iou[1]),
        "fg_dice": None if not np.isfinite(dice[1]) else float(dice[1]),
        "miou": mean_iou(cm),
    }


def execute(run: Run, ds: Dataset, out: Path, work: Path, device: str) -> dict[str, Any]:
    run_dir = work / "runs" / run.key
    resume = (run_dir / "train_state.json").exists()
    if run_dir.exists() and not resume:  # started but no checkpoint yet: start over
        for p in run_dir.iterdir():
            p.unlink()
    done_steps = int(read_train_state(run_dir)["step"]) if resume else 0
    wall_file = work / "runs" / f"{run.key}.wall.json"
    earlier_s = float(json.loads(wall_file.read_text())["train_s"]) if wall_file.is_file() else 0.0
    t0 = time.perf_counter()

    def on_step(info: Any) -> None:
        if info.val_miou is not None:
            print(
                f"    step {info.step}: loss {info.loss:.3f}, val mIoU {info.val_miou:.4f} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            wall_file.parent.mkdir(parents=True, exist_ok=True)
            wall_file.write_text(json.dumps({"train_s": earlier_s + time.perf_counter() - t0}))

    train(
        run.model,
        run.train,
        ds.train,
        run_dir,
        val_sources=ds.val,
        device=device,
        resume=resume,
        on_step=on_step,
        data_summary={"benchmark": "real tissue vs budget", "dataset": ds.name, "split": ds.split},
    )
    train_s = earlier_s + time.perf_counter() - t0
    state = read_train_state(run_dir)
    t0 = time.perf_counter()
    model = load_model(run_dir / "best.safetensors", device=device)
    objects: list[dict[str, int]] = []

    def on_image(i: int, pred: np.ndarray, truth: np.ndarray) -> None:
        if ds.name == "monuseg":
            objects.append(object_counts(pred, truth))

    cms = confusion_per_image(model, ds.test, on_image=on_image)
    eval_s = time.perf_counter() - t0
    record: dict[str, Any] = {
        "key": run.key,
        "dataset": run.dataset,
        "sampler": run.sampler,
        "budget": run.budget,
        "budget_label": budget_label(run.budget),
        "seed": run.seed,
        "images": [s.name for s in ds.test],
        "classes": [c[0] for c in ds.classes],
        "confusion": cms.tolist(),
        "per_image": [_scores(cm) for cm in cms],
        **_scores(cms.sum(0)),
        "best_step": state["best_step"],
        "stopped_step": state["stopped_step"],
        "early_stop": state["early_stop"],
        "val_history": state["history"],
        "train_seconds": train_s,
        "seconds_per_step": train_s / max(1, int(state["step"])),  # with validation
        "eval_seconds": eval_s,
        "resumed_at_step": done_steps,
        "split": ds.split,
        "data": ds.signature,
        "model": run.model.to_dict(),
        "train": asdict(run.train),
        "machine": machine(),
    }
    if objects:
        record["objects"] = objects
    write_result(out, run.key, record)
    return record


# -- report -----------------------------------------------------------------------------------


def _spacing(ds: Dataset, budget: float) -> float:
    """Sample spacing (µm) of a uniform grid at ``budget`` (full resolution: the pixel)."""
    side = ds.region_px * ds.task_mpp
    n = ds.region_px if budget >= 1 else round(ds.region_px * budget**0.5)
    return side / n


def write_report(
    out: Path, runs: Sequence[Run], datasets: dict[str, Dataset], *, quick: bool = False
) -> dict[str, Any]:
    """OUT/real.md, real.json and a plot per dataset from the finished runs' files;
    ``quick`` marks every part of it a smoke run."""
    records: dict[str, dict[str, Any]] = {}
    missing = []
    for run in runs:
        rec = read_result(out, run.key)
        if rec is None:
            missing.append(run)
        else:
            records[run.key] = rec
    done = [BudgetRun.from_dict(r) for r in records.values()]
    doc: dict[str, Any] = {
        "datasets": {},
        "missing_runs": [r.key for r in missing],
        "quick": quick,
    }
    md = ["# Real tissue: accuracy vs pixel budget", ""]
    if quick:
        md += [
            "**Quick smoke run** (`--quick`: two training and two test images, tiny sizes, a "
            "few steps). Its numbers check that the benchmark runs; they say nothing about "
            "the method.",
            "",
        ]
    for name, ds in datasets.items():
        mine = [r for r in done if r.dataset == name]
        if not mine:
            continue
        summary = {m: summarise_budget(mine, metric=m)[name] for m in ("fg_iou", "fg_dice", "miou")}
        res = summary["fg_iou"]
        curves = res["curves"]
        full = curves.get("tiled", {}).get("1")
        best_budget = max(
            (p["fg_iou_mean"] for s in ("learned", "uniform") for p in curves.get(s, {}).values()),
            default=float("nan"),
        )
        top = bool(full and full["fg_iou_mean"] > best_budget)
        tie = bool(full and full["fg_iou_mean"] == best_budget)
        recs = [records[r.key] for r in runs if r.dataset == name and r.key in records]
        entry: dict[str, Any] = {
            "summary": summary,
            "full_resolution_is_top": top if full else None,
            "region": f"{ds.region_px} px at {ds.task_mpp} µm/px",
            "split": ds.split,
            "runs": sorted(r.key for r in runs if r.dataset == name),
            "steps": {
                r["key"]: [
                    r["sampler"],
                    r["budget_label"],
                    r["seed"],
                    r["best_step"],
                    r["stopped_step"],
                ]
                for r in recs
            },
            "train_hours": sum(r["train_seconds"] for r in recs) / 3600,
            "spacing_um": {budget_label(b): _spacing(ds, b) for b in (*BUDGETS, 1.0)},
        }
        if ds.object_stats:
            entry["nucleus_size"] = ds.object_stats
            entry["objects"] = _object_summary(recs)
        doc["datasets"][name] = entry
        obj = OBJECT[name]
        md += [f"## {name}", "", f"- region {entry['region']}; split {ds.split}"]
        if full is None:
            md.append("- full resolution: not trained yet")
        elif top:
            md.append(
                f"- **Full resolution is the top line** ({obj} IoU {full['fg_iou_mean']:.4f} vs "
                f"best budgeted mean {best_budget:.4f})."
            )
        elif tie:
            md.append(
                f"- **FLAGGED: full resolution only ties a budgeted model** ({obj} IoU "
                f"{full['fg_iou_mean']:.4f}): no model has learned more than the other; do not "
                "cite this table."
            )
        else:
            md.append(
                f"- **FLAGGED: full resolution is NOT the top line** ({obj} IoU "
                f"{full['fg_iou_mean']:.4f} < {best_budget:.4f} at a budget): the training is "
                "wrong (context, window size, steps); do not cite this table."
            )
        md.append(f"- training time of the finished runs: {entry['train_hours']:.2f} h")
        rising = [_record_label(r) for r in recs if r["best_step"] == r["stopped_step"]]
        if rising:
            md.append(
                "- best validation at the last step (possibly still improving): "
                + ", ".join(rising)
            )
        md += ["", format_budget_markdown({f"{name}: {obj} IoU": res}).rstrip(), ""]
        md += [format_budget_markdown({f"{name}: {obj} Dice": summary["fg_dice"]}).rstrip(), ""]
        md += [_per_image_table(recs, obj), ""]
        spacing = ", ".join(f"{k} {v:.2f} µm" for k, v in entry["spacing_um"].items())
        md.append(f"Uniform sample spacing: {spacing}.")
        if ds.object_stats:
            st = ds.object_stats
            md.append(
                f"Nucleus equivalent diameter (training masks, {st['n_components']} components): "
                f"median {st['diameter_um_median']:.1f} µm (IQR {st['diameter_um_p25']:.1f}-"
                f"{st['diameter_um_p75']:.1f}); samples per median diameter: "
                + ", ".join(
                    f"{k} {st['diameter_um_median'] / v:.1f}"
                    for k, v in entry["spacing_um"].items()
                )
                + "."
            )
            md += ["", _object_table(entry["objects"])]
        md.append("")
    if missing:
        md.append(f"{len(missing)} planned runs not finished: " + ", ".join(r.key for r in missing))
    doc["machine"] = machine()
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "real.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    with atomic_path(out / "real.md", overwrite=True) as tmp:
        tmp.write_text("\n".join(md) + "\n")
    for name, entry in doc["datasets"].items():
        res = entry["summary"]["fg_iou"]
        plot_budget(
            res,
            ("QUICK SMOKE RUN, " if quick else "")
            + f"{name}: {res['n_images']} test images"
            + ("" if entry["full_resolution_is_top"] is not False else " (FLAGGED)"),
            out / f"{name}.png",
            ylabel=f"{OBJECT[name]} IoU (pooled over test images)",
        )
    return doc


def _group(recs: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in sorted(recs, key=lambda r: (-r["budget"], r["sampler"], r["seed"])):
        groups.setdefault((r["sampler"], r["budget_label"]), []).append(r)
    return groups


def _per_image_table(recs: Sequence[dict[str, Any]], obj: str) -> str:
    rows = [
        f"| sampler | budget | mean per-image {obj} IoU | mean per-image {obj} Dice | seeds |",
        "|---|---|---|---|---|",
    ]
    for (sampler, label), group in _group(recs).items():
        iou = [np.nanmean([_nan(p["fg_iou"]) for p in r["per_image"]]) for r in group]
        dice = [np.nanmean([_nan(p["fg_dice"]) for p in r["per_image"]]) for r in group]
        rows.append(
            f"| {sampler} | {label} | {np.mean(iou):.4f} ± {np.std(iou):.4f} | "
            f"{np.mean(dice):.4f} ± {np.std(dice):.4f} | {len(group)} |"
        )
    return "\n".join(rows)


def _nan(v: float | None) -> float:
    return float("nan") if v is None else v


def _object_summary(recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for (sampler, label), group in _group(recs).items():
        tot = {
            k: [sum(o[k] for o in r.get("objects", [])) for r in group]
            for k in ("truth", "found", "missed", "unmatched_predicted")
        }
        out[f"{sampler} {label}"] = {k: float(np.mean(v)) for k, v in tot.items()} | {
            "seeds": len(group)
        }
    return out


def _object_table(objects: dict[str, Any]) -> str:
    rows = [
        "| model | nuclei (truth components) | found (IoU ≥ 0.5) | missed | unmatched predicted |",
        "|---|---|---|---|---|",
    ]
    for name, o in objects.items():
        rows.append(
            f"| {name} | {o['truth']:.0f} | {o['found']:.1f} ({o['found'] / max(o['truth'], 1):.1%}) "
            f"| {o['missed']:.1f} | {o['unmatched_predicted']:.1f} |"
        )
    return (
        "\n".join(rows) + "\n\nObject counts: seed mean; touching nuclei form one truth component."
    )


# -- main -----------------------------------------------------------------------------------------


def results_folder(
    parser: argparse.ArgumentParser, out: Path | None, work: Path, quick: bool, sub: str = ""
) -> Path:
    """``--out``: by default the committed ``docs/results/real[/sub]``, or ``WORK/quick[/sub]``
    for a ``--quick`` smoke run, which may never write into the committed folder."""
    committed = REPO / "docs" / "results" / "real" / sub
    if out is None:
        return work / "quick" / sub if quick else committed
    if quick and out.resolve() == committed.resolve():
        parser.error("--quick would overwrite the committed results: give another --out")
    return out


def _label(run: Run, sep: str) -> str:
    return sep.join((run.dataset, run.sampler, budget_label(run.budget), str(run.seed)))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result files and report (default: docs/results/real; with --quick: WORK/quick)",
    )
    p.add_argument("--work", type=Path, default=Path("runs/real"), help="checkpoints, locks")
    p.add_argument("--datasets", default=",".join(ALL_DATASETS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--shared", type=Path, default=None, help="shared data folder")
    p.add_argument("--quick", action="store_true", help="a minutes-long smoke run")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report")
    p.add_argument("--no-estimate", action="store_true", help="skip the timing calibration")
    p.add_argument("--reverse", action="store_true", help="take runs from the end (2nd process)")
    p.add_argument(
        "--only",
        default="",
        help="comma-separated runs to do, as DATASET:SAMPLER:BUDGET:SEED (glas:learned:1/64:0)",
    )
    a = p.parse_args(argv)
    a.out = results_folder(p, a.out, a.work, a.quick)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    names = [n.strip() for n in a.datasets.split(",") if n.strip()]
    bad = sorted(set(names) - set(ALL_DATASETS))
    if bad:
        p.error(f"unknown dataset(s) {', '.join(bad)} (known: {', '.join(ALL_DATASETS)})")
    shared = a.shared or Path(os.environ.get("WSISEG_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not shared.is_dir():
        print(f"error: {shared} not found (set --shared or WSISEG_SHARED_DATA)", file=sys.stderr)
        return 2
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    datasets = {n: load_dataset(n, shared, a.quick) for n in names}
    runs: list[Run] = []
    for ds in datasets.values():
        runs += plan(ds, 1 if a.quick else a.seeds, a.quick, a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    pending = [r for r in runs if not (a.out / f"{r.key}.json").is_file()]
    print(f"{len(runs)} runs planned, {len(runs) - len(pending)} finished, {len(pending)} to do")
    if a.only:
        wanted = {w.strip() for w in a.only.split(",") if w.strip()}
        pending = [r for r in pending if _label(r, ":") in wanted]
        print(f"--only: {len(pending)} of them")
    if pending and not a.report_only:
        if not a.no_estimate:
            print("timing one step of each run kind (random data):", flush=True)
            est = calibrate(pending, datasets)
            print(
                f"expected wall time on one core: about {est['total_s'] / 3600:.1f} h "
                "(divide by the number of processes)",
                flush=True,
            )
        t0 = time.perf_counter()
        order = pending[::-1] if a.reverse else pending
        for i, run in enumerate(order, 1):
            label = _label(run, " ")
            with claim(a.work / "locks" / f"{run.key}.lock") as mine:
                if not mine or (a.out / f"{run.key}.json").is_file():
                    print(f"[{i}/{len(order)}] {label} ({run.key}): done or running elsewhere")
                    continue
                print(f"[{i}/{len(order)}] {label} ({run.key})", flush=True)
                rec = execute(run, datasets[run.dataset], a.out, a.work, a.device)
            print(
                f"    {OBJECT[run.dataset]} IoU {rec['fg_iou']}, best step {rec['best_step']}, "
                f"stopped {rec['stopped_step']}, train {rec['train_seconds']:.0f} s",
                flush=True,
            )
        print(f"finished in {(time.perf_counter() - t0) / 60:.1f} min")
    write_report(a.out, runs, datasets, quick=a.quick)
    print((a.out / "real.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
