"""Accuracy-vs-pixel-budget curves: summaries over training seeds and paired comparisons.

A *run* is one trained model evaluated on one test set: its sampler (learned, uniform
or tiled), pixel budget (samples per region pixel; 1 for tiled full resolution), seed,
and one confusion matrix per test image. Summaries pool each run's confusion matrices
over images (as `wsiseg evaluate` does), average over seeds, and compare learned with
uniform at the same budget by a bootstrap over test images of the seed-averaged
difference. The score is mIoU unless another of `METRICS` is asked for (``fg_iou`` /
``fg_dice``: IoU / Dice of class 1, the object of a binary target); the summary's keys
are named after it (``miou_mean``, ``fg_iou_mean``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsiseg.train.metrics import bootstrap_interval, iou_dice, mean_iou

__all__ = [
    "METRICS",
    "BudgetRun",
    "equal_accuracy_budget",
    "summarise_budget",
    "format_budget_markdown",
]


def _fg_iou(cm: np.ndarray) -> float:
    return float(iou_dice(cm)[0][1])


def _fg_dice(cm: np.ndarray) -> float:
    return float(iou_dice(cm)[1][1])


#: Scores of a pooled confusion matrix, by name.
METRICS: dict[str, Callable[[np.ndarray], float]] = {
    "miou": mean_iou,
    "fg_iou": _fg_iou,
    "fg_dice": _fg_dice,
}
_LABELS = {"miou": "mIoU", "fg_iou": "foreground IoU", "fg_dice": "foreground Dice"}


@dataclass(frozen=True)
class BudgetRun:
    """One trained and evaluated model."""

    dataset: str
    sampler: str
    budget: float
    seed: int
    confusion: np.ndarray  # [S, K, K] per test image
    images: tuple[str, ...]

    @property
    def miou(self) -> float:
        return mean_iou(self.confusion.sum(0))

    def score(self, metric: str = "miou") -> float:
        """``metric`` (a key of `METRICS`) of the confusion pooled over test images."""
        return METRICS[metric](self.confusion.sum(0))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BudgetRun:
        return cls(
            dataset=str(data["dataset"]),
            sampler=str(data["sampler"]),
            budget=float(data["budget"]),
            seed=int(data["seed"]),
            confusion=np.asarray(data["confusion"], np.int64),
            images=tuple(data["images"]),
        )


def equal_accuracy_budget(
    budgets: Sequence[float], mious: Sequence[float], target: float
) -> float | None:
    """The budget at which a curve reaches ``target`` mIoU, interpolating in log budget.

    The curve is made monotone first (running maximum from small to large budgets).
    Returns None when the curve never reaches ``target``; the smallest budget when it
    is already reached there (a bound, not an estimate).
    """
    order = np.argsort(budgets)
    b = np.asarray(budgets, np.float64)[order]
    m = np.maximum.accumulate(np.asarray(mious, np.float64)[order])
    if b.size == 0 or not np.isfinite(target) or m[-1] < target:
        return None
    if m[0] >= target:
        return float(b[0])
    i = int(np.argmax(m >= target))
    lo, hi = math.log(b[i - 1]), math.log(b[i])
    t = (target - m[i - 1]) / (m[i] - m[i - 1])
    return float(math.exp(lo + t * (hi - lo)))


def _paired_difference(
    first: Sequence[BudgetRun],
    second: Sequence[BudgetRun],
    n_boot: int,
    seed: int,
    metric: str = "miou",
) -> dict[str, Any]:
    """Seed-averaged score(first) - score(second), bootstrap 95% interval over test
    images (the same resamples for every seed), and each seed's own difference and
    interval (``per_seed``)."""
    pairs = {r.seed: r for r in second}
    matched = [(a, pairs[a.seed]) for a in first if a.seed in pairs]
    if not matched:
        return {}
    n_img = matched[0][0].confusion.shape[0]
    rng = np.random.default_rng(seed)
    weights = np.stack(
        [np.bincount(rng.integers(0, n_img, n_img), minlength=n_img) for _ in range(n_boot)]
    ).astype(np.float64)  # [B, S]
    reps = np.zeros(n_boot)
    per_seed: dict[str, dict[str, Any]] = {}
    for a, b in matched:
        seed_reps = np.zeros(n_boot)
        for run, sign in ((a, 1.0), (b, -1.0)):
            cms = np.einsum("bs,skl->bkl", weights, run.confusion.astype(np.float64))
            seed_reps += sign * np.array([METRICS[metric](cm) for cm in cms])
        reps += seed_reps
        s_lo, s_hi = bootstrap_interval(seed_reps.tolist())
        per_seed[str(a.seed)] = {"diff": a.score(metric) - b.score(metric), "ci95": [s_lo, s_hi]}
    reps /= len(matched)
    point = float(np.mean([a.score(metric) - b.score(metric) for a, b in matched]))
    lo, hi = bootstrap_interval(reps.tolist())
    return {
        "diff": point,
        "ci95": [lo, hi],
        "n_seeds": len(matched),
        "n_images": n_img,
        "per_seed": per_seed,
    }


def summarise_budget(
    runs: Sequence[BudgetRun], *, n_boot: int = 2000, seed: int = 0, metric: str = "miou"
) -> dict[str, Any]:
    """Per dataset: the score per sampler and budget (mean, sd, per seed), paired
    differences learned - uniform, and the uniform budget that matches each learned point."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
    m_ = metric
    out: dict[str, Any] = {}
    for ds in sorted({r.dataset for r in runs}):
        mine = [r for r in runs if r.dataset == ds]
        curves: dict[str, dict[str, Any]] = {}
        for sampler in ("learned", "uniform", "tiled"):
            points = {}
            for budget in sorted({r.budget for r in mine if r.sampler == sampler}):
                group = sorted(
                    (r for r in mine if r.sampler == sampler and r.budget == budget),
                    key=lambda r: r.seed,
                )
                vals = [r.score(m_) for r in group]
                points[_budget_key(budget)] = {
                    "budget": budget,
                    f"{m_}_mean": float(np.mean(vals)),
                    f"{m_}_sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                    f"{m_}_per_seed": {str(r.seed): v for r, v in zip(group, vals, strict=True)},
                    "n_seeds": len(vals),
                }
            if points:
                curves[sampler] = points
        comparisons = {}
        for key, lp in curves.get("learned", {}).items():
            budget = lp["budget"]
            learned = [r for r in mine if r.sampler == "learned" and r.budget == budget]
            uniform = [r for r in mine if r.sampler == "uniform" and r.budget == budget]
            entry = _paired_difference(learned, uniform, n_boot, seed, m_)
            uni = curves.get("uniform", {})
            match = equal_accuracy_budget(
                [p["budget"] for p in uni.values()],
                [p[f"{m_}_mean"] for p in uni.values()],
                lp[f"{m_}_mean"],
            )
            entry["uniform_budget_for_same_miou"] = match
            entry["sample_ratio"] = None if match is None else match / budget
            # reached already at the smallest uniform budget: an upper bound only
            entry["upper_bound"] = bool(
                match is not None and uni and match <= min(p["budget"] for p in uni.values())
            )
            comparisons[key] = entry
        images = mine[0].images if mine else ()
        out[ds] = {"curves": curves, "learned_vs_uniform": comparisons, "n_images": len(images)}
        if m_ != "miou":  # budget.json of the synthetic benchmark keeps its earlier form
            out[ds]["metric"] = m_
    return out


def _budget_key(budget: float) -> str:
    return "1" if budget >= 1 else f"1/{round(1 / budget)}"


def format_budget_markdown(summary: Mapping[str, Any]) -> str:
    """Tables of `summarise_budget`'s result, one per dataset."""
    lines: list[str] = []
    m_ = "miou"
    for ds, res in summary.items():
        curves = res["curves"]
        m_ = res.get("metric", "miou")
        name = _LABELS[m_]
        lines += [f"### {ds} ({res['n_images']} test images)", ""]
        lines += [
            f"| budget | learned {name} | uniform {name} | learned - uniform [95% CI] | "
            f"uniform budget for the same {name} |",
            "|---|---|---|---|---|",
        ]
        keys = sorted(
            set(curves.get("learned", {})) | set(curves.get("uniform", {})),
            key=lambda k: -_parse_key(k),
        )
        for key in keys:
            lp = curves.get("learned", {}).get(key)
            up = curves.get("uniform", {}).get(key)
            cmp_ = res["learned_vs_uniform"].get(key, {})
            diff = "-"
            if "diff" in cmp_:
                lo, hi = cmp_["ci95"]
                diff = f"{cmp_['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
                if cmp_["n_seeds"] < max(lp["n_seeds"], up["n_seeds"]):
                    diff += f" ({cmp_['n_seeds']} common seeds)"
            match = cmp_.get("uniform_budget_for_same_miou")
            if match is None:
                match_s = "not reached" if lp else "-"
            else:
                le = "≤ " if cmp_.get("upper_bound") else ""
                match_s = f"{le}1/{1 / match:.0f} ({le}{cmp_['sample_ratio']:.2f}x)"
            lines.append(f"| {key} | {_fmt(lp, m_)} | {_fmt(up, m_)} | {diff} | {match_s} |")
        seeds_md = [
            f"{key}: "
            + ", ".join(
                f"seed {sd} {v['diff']:+.4f} [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]"
                for sd, v in sorted(res["learned_vs_uniform"][key]["per_seed"].items())
            )
            for key in keys
            if len(res["learned_vs_uniform"].get(key, {}).get("per_seed", {})) > 1
        ]
        if seeds_md:
            lines += ["", "Learned - uniform per seed: " + "; ".join(seeds_md) + "."]
        tiled = curves.get("tiled", {}).get("1")
        if tiled:
            lines += ["", f"Tiled full resolution (same steps): {_fmt(tiled, m_)}."]
        lines.append("")
    name = _LABELS[m_]
    lines.append(
        f"{name}: pooled confusion matrix over the test images at full label resolution, "
        "mean ± sd over training seeds (n seeds in brackets); differences: paired by seed "
        "(over the seeds both samplers have) and seed-averaged, "
        "95% bootstrap interval over test images. The last column reads the uniform curve "
        f"(interpolated in log budget) at the learned {name}; a ratio above 1 means uniform "
        "needs that many times more samples."
    )
    return "\n".join(lines) + "\n"


def _parse_key(key: str) -> float:
    return 1.0 if key == "1" else 1.0 / float(key.split("/")[1])


def _fmt(point: Mapping[str, Any] | None, metric: str = "miou") -> str:
    if not point:
        return "-"
    mean = point[f"{metric}_mean"]
    if point["n_seeds"] > 1:
        return f"{mean:.4f} ± {point[f'{metric}_sd']:.4f} ({point['n_seeds']})"
    return f"{mean:.4f} (1)"
