"""Accuracy-vs-budget summaries: interpolation, seed averaging, paired bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wsiseg.bench.budget_curve import (
    BudgetRun,
    equal_accuracy_budget,
    format_budget_markdown,
    summarise_budget,
)


def test_equal_accuracy_budget_interpolates_in_log_budget() -> None:
    budgets = [1 / 256, 1 / 64, 1 / 16]
    mious = [0.6, 0.7, 0.8]
    assert equal_accuracy_budget(budgets, mious, 0.7) == pytest.approx(1 / 64)
    # halfway in mIoU between 1/256 and 1/64 is the geometric mean of the budgets
    assert equal_accuracy_budget(budgets, mious, 0.65) == pytest.approx(math.sqrt(1 / 256 / 64))
    assert equal_accuracy_budget(budgets, mious, 0.85) is None
    assert equal_accuracy_budget(budgets, mious, 0.5) == pytest.approx(1 / 256)  # a bound


def test_equal_accuracy_budget_uses_a_monotone_envelope() -> None:
    # a dip at 1/64 must not make 1/16 look like the first budget that reaches 0.7
    assert equal_accuracy_budget([1 / 256, 1 / 64, 1 / 16], [0.7, 0.6, 0.8], 0.7) == pytest.approx(
        1 / 256
    )


def _cm(correct: int, wrong: int) -> np.ndarray:
    return np.array([[correct, wrong], [wrong, correct]], np.int64)


def _run(sampler: str, budget: float, seed: int, per_image: list[tuple[int, int]]) -> BudgetRun:
    conf = np.stack([_cm(c, w) for c, w in per_image])
    return BudgetRun("d", sampler, budget, seed, conf, tuple(f"i{k}" for k in range(len(conf))))


def test_summary_averages_seeds_and_pairs_learned_with_uniform() -> None:
    runs = []
    for seed in range(3):
        runs.append(_run("learned", 1 / 64, seed, [(90, 10), (80, 20), (85, 15)]))
        runs.append(_run("uniform", 1 / 64, seed, [(80, 20), (70, 30), (75, 25)]))
        runs.append(_run("uniform", 1 / 16, seed, [(95, 5), (90, 10), (92, 8)]))
    runs.append(_run("tiled", 1.0, 0, [(99, 1), (98, 2), (97, 3)]))
    res = summarise_budget(runs, n_boot=200)["d"]
    lp = res["curves"]["learned"]["1/64"]
    up = res["curves"]["uniform"]["1/64"]
    assert lp["n_seeds"] == 3 and lp["miou_sd"] == pytest.approx(0.0, abs=1e-12)
    assert lp["miou_mean"] == pytest.approx(runs[0].miou)
    cmp_ = res["learned_vs_uniform"]["1/64"]
    assert cmp_["diff"] == pytest.approx(lp["miou_mean"] - up["miou_mean"])
    lo, hi = cmp_["ci95"]
    assert 0 < lo <= cmp_["diff"] <= hi
    # learned at 1/64 sits between uniform at 1/64 and 1/16: uniform needs more samples
    assert 1 < cmp_["sample_ratio"] < 4
    assert res["curves"]["tiled"]["1"]["miou_mean"] > lp["miou_mean"]
    text = format_budget_markdown({"d": res})
    assert "| 1/64 |" in text and "Tiled full resolution" in text


def test_summary_reports_spread_over_seeds() -> None:
    runs = [
        _run("learned", 1 / 16, 0, [(90, 10)]),
        _run("learned", 1 / 16, 1, [(70, 30)]),
    ]
    lp = summarise_budget(runs, n_boot=50)["d"]["curves"]["learned"]["1/16"]
    assert lp["miou_sd"] > 0.1
    assert set(lp["miou_per_seed"]) == {"0", "1"}


def test_difference_over_common_seeds_says_so() -> None:
    """Learned with 2 seeds against uniform with 3: the difference is paired on the two
    common seeds and the table says so; with equal seed sets it says nothing."""
    runs = [_run("learned", 1 / 64, s, [(90, 10), (80, 20)]) for s in (0, 2)]
    runs += [_run("uniform", 1 / 64, s, [(80, 20), (70, 30)]) for s in (0, 1, 2)]
    runs += [_run("learned", 1 / 16, s, [(95, 5), (90, 10)]) for s in (0, 1)]
    runs += [_run("uniform", 1 / 16, s, [(94, 6), (90, 10)]) for s in (0, 1)]
    res = summarise_budget(runs, n_boot=50)["d"]
    assert res["learned_vs_uniform"]["1/64"]["n_seeds"] == 2
    rows = {
        line.split("|")[1].strip(): line
        for line in format_budget_markdown({"d": res}).splitlines()
        if line.startswith("| 1/")
    }
    assert "(2 common seeds)" in rows["1/64"]
    assert "common seeds" not in rows["1/16"]
    # each common seed's own difference and interval, recorded and printed
    per = res["learned_vs_uniform"]["1/64"]["per_seed"]
    assert set(per) == {"0", "2"}
    for v in per.values():
        assert v["ci95"][0] <= v["diff"] <= v["ci95"][1] and v["diff"] > 0
    assert "Learned - uniform per seed: 1/16: seed 0 " in format_budget_markdown({"d": res})
