"""Evaluate models on labeled images: pooled confusion matrices, bootstrap over slides."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsiseg.models.config import ModelConfig
from wsiseg.models.deformseg import DeformSeg, MemorySource
from wsiseg.train.datasets import LabeledSource
from wsiseg.train.layouts import DataLayout
from wsiseg.train.metrics import (
    bootstrap_interval,
    bootstrap_mean_iou,
    confusion_matrix,
    iou_dice,
    mean_iou,
)
from wsiseg.train.regions import grid_boxes, to_tensors

__all__ = [
    "confusion_per_source",
    "confusion_per_image",
    "fitted_boxes",
    "summarise",
    "format_markdown",
    "seen_in_training",
]

log = logging.getLogger(__name__)


def _region_side(cfg: ModelConfig, src: LabeledSource) -> int:
    """A region's side in the source's own pixels."""
    return max(1, round(cfg.region_px * cfg.task_mpp / src.mpp))


def _predict_boxes(
    model: DeformSeg, src: LabeledSource, side: int, boxes: Sequence[tuple[int, int]]
) -> tuple[torch.Tensor, list[tuple[np.ndarray, np.ndarray]]]:
    """Class probabilities [B, K, side, side] of ``side``-px regions at ``boxes``, and the reads."""
    cfg = model.config
    reads = [src.read(x, y, side, side, (side, side)) for x, y in boxes]
    x, _ = to_tensors(np.stack([r[0] for r in reads]), np.stack([r[1] for r in reads]))
    if side != cfg.region_px:
        x = F.interpolate(
            x,
            size=(cfg.region_px, cfg.region_px),
            mode="area" if side > cfg.region_px else "bilinear",
        )
    probs, _ = model.predict(MemorySource(x.to(model.device)), (side, side))
    return probs, reads


@torch.no_grad()
def confusion_per_source(
    model: DeformSeg,
    sources: Sequence[LabeledSource],
    *,
    batch_size: int = 2,
    on_region: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """[S, K, K] confusion matrices: every tissue region of each source, at full label resolution."""
    cfg = model.config
    k = cfg.num_classes
    out = np.zeros((len(sources), k, k), np.int64)
    plans = []
    for src in sources:
        side = _region_side(cfg, src)
        plans.append((src, side, grid_boxes(src, side)))
    total = sum(len(b) for _, _, b in plans)
    done = 0
    model.eval()
    for s, (src, side, boxes) in enumerate(plans):
        for i in range(0, len(boxes), batch_size):
            chunk = boxes[i : i + batch_size]
            probs, reads = _predict_boxes(model, src, side, chunk)
            truth = np.stack([r[1] for r in reads])
            out[s] += confusion_matrix(probs.argmax(1).cpu().numpy(), truth, k)
            done += len(chunk)
            if on_region is not None:
                on_region(done, total)
    return out


def fitted_boxes(size: int, side: int) -> list[int]:
    """Starts of the fewest ``side`` windows that cover ``size`` pixels, spread evenly
    (overlapping rather than running past the edge; one window when ``side >= size``)."""
    if side >= size:
        return [0]
    n = -(-size // side)
    return [round(i * (size - side) / (n - 1)) for i in range(n)]


@torch.no_grad()
def confusion_per_image(
    model: DeformSeg,
    sources: Sequence[LabeledSource],
    *,
    batch_size: int = 2,
    on_image: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
) -> np.ndarray:
    """[S, K, K] confusion matrices counting every pixel of each image once.

    Unlike `confusion_per_source` (a grid of regions that touch labelled objects), the
    whole image is covered by regions fitted to it (`fitted_boxes`: they overlap instead
    of running past its edge, so no region is mostly padding); class probabilities are
    averaged where regions overlap. ``on_image(index, prediction, truth)`` receives each
    image's label maps at full resolution. Deterministic for a given model.
    """
    cfg = model.config
    k = cfg.num_classes
    out = np.zeros((len(sources), k, k), np.int64)
    model.eval()
    for s, src in enumerate(sources):
        side = _region_side(cfg, src)
        w, h = src.size
        boxes = [(x, y) for y in fitted_boxes(h, side) for x in fitted_boxes(w, side)]
        acc = np.zeros((k, h, w), np.float32)
        truth = np.zeros((h, w), np.uint8)
        for i in range(0, len(boxes), batch_size):
            chunk = boxes[i : i + batch_size]
            probs, reads = _predict_boxes(model, src, side, chunk)
            probs_np = probs.float().cpu().numpy()
            for (bx, by), p, (_, lab) in zip(chunk, probs_np, reads, strict=True):
                ph, pw = min(side, h - by), min(side, w - bx)
                acc[:, by : by + ph, bx : bx + pw] += p[:, :ph, :pw]
                truth[by : by + ph, bx : bx + pw] = lab[:ph, :pw]
        pred = acc.argmax(0).astype(np.uint8)
        out[s] = confusion_matrix(pred, truth, k)
        if on_image is not None:
            on_image(s, pred, truth)
    return out


def summarise(
    names: Sequence[str],
    class_names: Sequence[str],
    per_source: Mapping[str, np.ndarray],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    unit: str = "slide",
) -> dict[str, Any]:
    """mIoU, per-class IoU/Dice and bootstrap 95% intervals over slides for each model.

    ``per_source`` maps model label -> [S, K, K]; the first entry is the model under
    test and its paired differences to every other entry are reported too. Scores pool
    the confusion matrices of all sources (every pixel weighs the same); ``unit`` names
    a source in the report ("slide", "image").
    """
    labels = list(per_source)
    stacked = np.stack([per_source[m] for m in labels])  # [M, S, K, K]
    _, _, reps = bootstrap_mean_iou(stacked, n_boot=n_boot, seed=seed)
    result: dict[str, Any] = {"slides": list(names), "classes": list(class_names), "models": {}}
    for m, label in enumerate(labels):
        cm = stacked[m].sum(0)
        iou, dice = iou_dice(cm)
        lo, hi = bootstrap_interval(reps[m])
        result["models"][label] = {
            "miou": mean_iou(cm),
            "miou_ci95": [lo, hi],
            "iou": {c: _num(v) for c, v in zip(class_names, iou, strict=True)},
            "dice": {c: _num(v) for c, v in zip(class_names, dice, strict=True)},
            "per_slide_miou": {n: mean_iou(stacked[m, s]) for s, n in enumerate(names)},
            "confusion": cm.tolist(),
        }
        if m > 0:
            diff = reps[0] - reps[m]
            result["models"][label]["diff_vs_first"] = {
                "miou": result["models"][labels[0]]["miou"] - mean_iou(cm),
                "ci95": list(bootstrap_interval(diff)),
            }
    result["n_slides"] = len(names)
    result["unit"] = unit
    return result


def _num(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def format_markdown(result: Mapping[str, Any]) -> str:
    """A markdown table of `summarise`'s result (IoU of every class, Dice of the objects)."""
    classes = result["classes"]
    objects = classes[1:]  # class 0 is the background
    unit = result.get("unit", "slide")

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    head = (
        "| model | mIoU | 95% CI | "
        + " | ".join([*(f"IoU {c}" for c in classes), *(f"Dice {c}" for c in objects)])
        + " |"
    )
    sep = "|" + "---|" * (3 + len(classes) + len(objects))
    rows = [head, sep]
    for label, r in result["models"].items():
        cells = [num(r["iou"][c]) for c in classes] + [num(r["dice"][c]) for c in objects]
        lo, hi = r["miou_ci95"]
        rows.append(f"| {label} | {r['miou']:.4f} | {lo:.4f}-{hi:.4f} | {' | '.join(cells)} |")
    lines = [
        f"Evaluated on {result['n_slides']} {unit}(s), pixels pooled; "
        f"intervals: bootstrap over {unit}s.",
        *_data_lines(result.get("data")),
        "",
        *rows,
    ]
    diffs = [(k, v["diff_vs_first"]) for k, v in result["models"].items() if "diff_vs_first" in v]
    if diffs:
        first = next(iter(result["models"]))
        lines += ["", f"| {first} minus | ΔmIoU | 95% CI |", "|---|---|---|"]
        for k, d in diffs:
            lines.append(f"| {k} | {d['miou']:+.4f} | {d['ci95'][0]:+.4f} to {d['ci95'][1]:+.4f} |")
    return "\n".join(lines) + "\n"


def _data_lines(data: Mapping[str, Any] | None) -> list[str]:
    """What was scored (folder, split, target, pixel size) and any images a model saw
    in training, for the markdown."""
    if not data:
        return []
    mpps = sorted({float(v) for v in (data.get("mpp") or {}).values()})
    size = (
        f"{mpps[0]:g} µm/px"
        if len(mpps) == 1
        else (f"{mpps[0]:g}-{mpps[-1]:g} µm/px" if mpps else "-")
    )
    what = [f"data: {data.get('folder')}"]
    if data.get("layout"):
        what.append(
            f"{data['layout']} layout, split {data.get('split')}, target {data.get('target')}"
        )
    what.append(f"pixel size {size}")
    lines = ["", "; ".join(what) + "."]
    for label, names in (data.get("seen_in_training") or {}).items():
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        lines.append(
            f"**Not a test score for {label}:** {len(names)} of these images "
            f"{'was' if len(names) == 1 else 'were'} used to train or select it ({shown})."
        )
    return lines


def seen_in_training(
    data: Mapping[str, Any], names: Sequence[str], layout: DataLayout | None
) -> list[str]:
    """Which of the scored images ``names`` a model was trained or validated on, as its
    checkpoint's data record (``data``) tells: by name where it lists them; else, for a
    record that only names its data set (a benchmark model), every image of that data
    set's official training split."""
    listed = [
        str(n)
        for key in ("train_images", "val_images")
        if isinstance(data.get(key), list)
        for n in data[key]
    ]
    if listed:
        seen = set(listed)
        return [n for n in names if n in seen]
    kind = data.get("dataset", data.get("layout"))
    if layout is not None and kind == layout.kind:
        train = {im.name for im in layout.images if im.split == "train"}
        return [n for n in names if n in train]
    return []
