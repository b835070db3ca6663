"""pipelines/bundle_real_model.py: the benchmark's run chosen by validation, bundled with its card."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from wsiseg.models.checkpoint import load_checkpoint, model_notice
from wsiseg.models.config import packaged_model_config
from wsiseg.train.datasets import discover_sources
from wsiseg.train.loop import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bundle", REPO / "pipelines/bundle_real_model.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bundles_the_best_validated_seed_with_a_card(
    small_synthetic, tmp_path: Path, capsys
) -> None:
    cfg = packaged_model_config("tiny")
    sources = discover_sources(small_synthetic.image.parent)
    results, work, out = tmp_path / "results", tmp_path / "work", tmp_path / "models"
    results.mkdir()
    tcfg = TrainConfig(steps=2, batch_size=2, pool_regions=2, steps_per_epoch=2, val_regions=2)
    for key, seed, val, test_iou in (("aaa", 0, 0.5, 0.9), ("bbb", 1, 0.7, 0.1)):
        train(cfg, tcfg, sources, work / "runs" / key)
        rec = {
            "key": key,
            "dataset": "glas",
            "sampler": "learned",
            "budget_label": "1/16",
            "seed": seed,
            "val_history": [[1, val - 0.1], [2, val]],
            "best_step": 2,
            "classes": list(cfg.class_names),
            "model": json.loads(json.dumps(cfg.to_dict())),
            "train": {"steps": 2, "batch_size": 2, "lr": 1e-3},
            "split": "test split",
            "fg_iou": test_iou,
            "fg_dice": test_iou,
            "miou": test_iou,
            "machine": {"cpus": 2},
            "train_seconds": 60.0,
        }
        (results / f"{key}.json").write_text(json.dumps(rec))
    mod = _script()
    argv = ["--results", str(results), "--work", str(work), "--out", str(out)]
    assert mod.main(argv) == 0
    weights, meta = load_checkpoint(out / "glas.safetensors")
    # the better validation score wins, not the better test score
    assert meta["benchmark_run"] == "bbb" and meta["name"] == "glas"
    assert "not for diagnosis" in model_notice(meta) and "GlaS" in model_notice(meta)
    card = (out / "glas.md").read_text()
    for needed in ("Research use only", "Sirinukunwattana", "Not for", "test A", "seed 1"):
        assert needed in card, needed
    assert (out / "glas.safetensors").stat().st_size < 25 * 2**20
    assert "of the 2 finished seed(s)" in card
    assert mod.main([*argv[:4], "--out", str(tmp_path / "none"), "--budget", "1/64"]) == 2
    assert "error: no finished learned 1/64 run" in capsys.readouterr().err
    # the best-validated seed's checkpoint missing: refused, not a lesser seed bundled
    (work / "runs" / "bbb" / "best.safetensors").unlink()
    assert mod.main([*argv[:4], "--out", str(tmp_path / "other")]) == 2
    assert "best-validated run bbb (seed 1) has no checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
