"""Accuracy-vs-budget plots (one PNG per dataset) from `summarise_budget`'s result."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wsiseg.bench.runs import budget_label
from wsiseg.fileops import atomic_path

__all__ = ["plot_budget"]


def plot_budget(
    res: Mapping[str, Any],
    title: str,
    path: Path,
    *,
    ylabel: str = "mIoU (test images)",
    full_label: str = "tiled full resolution",
) -> None:
    """Score vs budget for learned and uniform sampling (mean ± sd over seeds, each seed
    a dot) and the full-resolution model as a dashed line (its sd as a band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = res.get("metric", "miou")
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    styles = {"learned": ("tab:red", "o"), "uniform": ("tab:blue", "s")}
    ticks: set[float] = set()
    most = max(
        (p["n_seeds"] for sampler in styles for p in res["curves"].get(sampler, {}).values()),
        default=0,
    )
    for sampler, (colour, marker) in styles.items():
        pts = sorted(res["curves"].get(sampler, {}).values(), key=lambda p: p["budget"])
        if not pts:
            continue
        xs = [p["budget"] for p in pts]
        ticks.update(xs)
        ax.errorbar(
            xs,
            [p[f"{m}_mean"] for p in pts],
            yerr=[p[f"{m}_sd"] for p in pts],
            color=colour,
            marker=marker,
            capsize=3,
            label=f"{sampler} sampling",
        )
        for p in pts:
            seeds = list(p[f"{m}_per_seed"].values())
            ax.scatter([p["budget"]] * len(seeds), seeds, color=colour, s=8, alpha=0.5)
            if p["n_seeds"] < most:  # fewer seeds than elsewhere: say so, in the line's colour
                other = [
                    q[f"{m}_mean"]
                    for name, curve in res["curves"].items()
                    if name in styles and name != sampler
                    for q in curve.values()
                    if q["budget"] == p["budget"]
                ]
                above = not other or p[f"{m}_mean"] >= other[0]  # away from the other line
                ax.annotate(
                    f"{sampler}: {p['n_seeds']} seed" + ("s" if p["n_seeds"] > 1 else ""),
                    (p["budget"], p[f"{m}_mean"]),
                    textcoords="offset points",
                    xytext=(0, 8 if above else -8),
                    ha="center",
                    va="bottom" if above else "top",
                    fontsize=7,
                    color=colour,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
                    zorder=5,
                )
    tiled = res["curves"].get("tiled", {}).get("1")
    if tiled:
        mean, sd = tiled[f"{m}_mean"], tiled[f"{m}_sd"]
        ax.axhline(mean, color="0.3", ls="--", label=full_label)
        if sd > 0:
            ax.axhspan(mean - sd, mean + sd, color="0.5", alpha=0.15, lw=0)
    ax.margins(x=0.1, y=0.12)  # room for the seed labels
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ticks), [budget_label(t) for t in sorted(ticks)])
    ax.set_xlabel("samples per region pixel (budget)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
