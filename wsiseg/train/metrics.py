"""Segmentation metrics from confusion matrices, with bootstrap intervals over slides."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wsiseg.train.losses import IGNORE_INDEX

__all__ = ["confusion_matrix", "iou_dice", "mean_iou", "bootstrap_interval", "bootstrap_mean_iou"]


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[t, p]`` = number of pixels of true class t predicted as p (ignored pixels skipped)."""
    t = np.asarray(truth).ravel().astype(np.int64)
    p = np.asarray(pred).ravel().astype(np.int64)
    keep = (t != IGNORE_INDEX) & (t < num_classes)
    idx = t[keep] * num_classes + np.clip(p[keep], 0, num_classes - 1)
    return np.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_dice(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class IoU and Dice; NaN for classes absent from both truth and prediction."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
        dice = 2 * tp / (2 * tp + fp + fn)
    return iou, dice


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over the classes present in truth or prediction."""
    iou, _ = iou_dice(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def bootstrap_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(arr, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_mean_iou(
    per_slide: Sequence[np.ndarray] | np.ndarray,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, np.ndarray]:
    """Bootstrap the pooled mIoU over slides: resample slides, pool their matrices.

    ``per_slide`` is [S, K, K] (or [M, S, K, K] for M paired models, resampled with the
    same slide draws). Returns the interval and the replicates ([n_boot] or [M, n_boot]).
    """
    cms = np.asarray(per_slide, dtype=np.float64)
    paired = cms.ndim == 4
    if not paired:
        cms = cms[None]
    n_slides = cms.shape[1]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_slides, size=(n_boot, n_slides))
    reps = np.empty((cms.shape[0], n_boot))
    for b, idx in enumerate(draws):
        pooled = cms[:, idx].sum(axis=1)
        for m in range(cms.shape[0]):
            reps[m, b] = mean_iou(pooled[m])
    lo, hi = bootstrap_interval(reps[0], level)
    return lo, hi, (reps if paired else reps[0])
