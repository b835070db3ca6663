"""Bundle a model of the real-tissue benchmark as ``--model NAME``, with its model card.

    python pipelines/bundle_real_model.py [--dataset glas] [--budget 1/16] [--name glas]

Chooses among the finished ``learned`` runs of the dataset at the budget (result files
in ``--results``, checkpoints in ``--work``) the seed with the best *validation* mIoU
(never the test score: the test images only measure it), stores its best checkpoint as
float16 safetensors + JSON under ``wsiseg/resources/models/NAME.*`` with a notice and
its provenance, and writes the model card ``NAME.md`` beside it (data, licence terms,
intended use, the benchmark's measured table). Refuses a checkpoint over 25 MB.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from wsiseg.models.checkpoint import load_checkpoint, save_checkpoint
from wsiseg.models.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]
MAX_BYTES = 25 * 1024 * 1024

CARDS: dict[str, dict[str, str]] = {
    "glas": {
        "title": "glas: colon gland segmentation in H&E (GlaS), research use only",
        "notice": (
            "Research use only (GlaS data terms): segments glands in H&E colon tissue at "
            "about 20x (0.62 µm/px); not trained on prostate; not for diagnosis."
        ),
        "data": (
            "GlaS (MICCAI 2015 Gland Segmentation Challenge; Warwick-QU): H&E sections of "
            "colon (benign and adenocarcinoma), 16 patients, about 20x, 0.62 µm/px as the "
            "GlaS paper reports. Trained on the official training images (train_1..85) "
            "minus a patient-disjoint validation part; measured on the 60 test A images. "
            "Test B was not used for training, selection or tuning. The official split is "
            "by image, not by patient: 8 of test A's 9 patients also have training images "
            "(grade.csv), so test A measures new images of seen patients and is likely "
            "optimistic for new patients and labs."
        ),
        "licence": (
            "GlaS is challenge data distributed by the University of Warwick for research. "
            "No data licence is stated by the copies used; the data is not redistributed "
            "here. This model is a research-use model: cite Sirinukunwattana et al., "
            '"Gland segmentation in colon histology images: The GlaS challenge contest", '
            "Medical Image Analysis 35 (2017) 489-502, when you use it."
        ),
        "for": (
            "Research on gland segmentation and on learned downsampling; trying wsiseg on "
            "real H&E slides of colon at 20-40x."
        ),
        "not_for": (
            "Diagnosis or any clinical decision. Prostate (it has never seen prostate); "
            "grading (binary: gland / not gland); fluorescence, IHC or frozen sections; "
            "slides coarser than 1.24 µm/px, 2x the task pixel size (refused unless --force)."
        ),
    }
}


def _runs(results: Path, dataset: str, budget: str) -> list[dict[str, Any]]:
    out = []
    for path in sorted(results.glob("*.json")):
        rec = json.loads(path.read_text())
        if not isinstance(rec, dict) or "key" not in rec:
            continue  # the report files
        if (rec["dataset"], rec["sampler"], rec["budget_label"]) == (dataset, "learned", budget):
            out.append(rec)
    return out


def _best_val(rec: dict[str, Any]) -> float:
    return max((float(v) for _, v in rec.get("val_history") or []), default=float("-inf"))


def _threads(rec: dict[str, Any]) -> str:
    n = rec["machine"].get("torch_threads") or rec["train"].get("threads")
    return "one thread" if n == 1 else f"{n} threads"


def _table(report: dict[str, Any], dataset: str) -> str:
    """The benchmark's table for ``dataset`` from real.md (the lines of its section)."""
    text = (report.get("markdown") or "").split(f"## {dataset}", 1)
    return text[1].split("\n## ", 1)[0].strip() if len(text) == 2 else ""


def card_markdown(
    name: str, card: dict[str, str], rec: dict[str, Any], candidates: int, table: str
) -> str:
    obj = "gland"
    lines = [
        f"# Model card: {card['title']}",
        "",
        f"**{card['notice']}**",
        "",
        f"- Use: `wsiseg segment --model {name} SLIDES -o OUT`; "
        f"`wsiseg evaluate --model {name} --data GLAS_FOLDER -o OUT`.",
        f"- Method: learned deformation sampling (Jin et al., ICLR 2022), {rec['sampler']} "
        f"sampler at {rec['budget_label']} of a {rec['model']['region_px']} px region's "
        f"pixels ({rec['model']['sample_px']} x {rec['model']['sample_px']} samples), "
        f"segmenter {rec['model']['segmenter']} (trained from scratch, no pretrained "
        f"weights), task pixel size {rec['model']['task_mpp']} µm/px; classes: "
        + ", ".join(rec["classes"])
        + ".",
        f"- Data: {card['data']}",
        f"- Licence terms of the data: {card['licence']}",
        f"- Intended for: {card['for']}",
        f"- Not for: {card['not_for']}",
        f"- Training: {rec['train']['steps']} steps of {rec['train']['batch_size']} regions, "
        f"AdamW lr {rec['train']['lr']} ({rec['train'].get('lr_schedule', 'constant')}), "
        f"real-tissue augmentation (H&E stain jitter, brightness/contrast, blur, scale, "
        f"flips/rotations); {rec['split']}.",
        f"- Selection: of the {candidates} finished seed(s) of this configuration in the "
        f"benchmark, seed {rec['seed']} had the best validation mIoU "
        f"({_best_val(rec):.4f}, step {rec['best_step']}); the test images played no part.",
        f"- This model on GlaS test A (60 images, every pixel): {obj} IoU "
        f"{rec['fg_iou']:.4f}, {obj} Dice {rec['fg_dice']:.4f}, mIoU {rec['miou']:.4f} "
        f"(benchmark run `{rec['key']}`, {_threads(rec)} on a "
        f"{rec['machine'].get('cpus')}-core CPU machine, "
        f"{rec['train_seconds'] / 60:.0f} min of training).",
        "",
        "## The benchmark it comes from (GlaS test A; learned vs uniform vs full resolution)",
        "",
        table or "(see docs/results/real/real.md)",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="glas", choices=sorted(CARDS))
    p.add_argument("--budget", default="1/16")
    p.add_argument("--name", default=None, help="bundled name (default: the dataset's)")
    p.add_argument("--results", type=Path, default=REPO / "docs/results/real")
    p.add_argument("--work", type=Path, default=REPO / "runs/real")
    p.add_argument("--out", type=Path, default=REPO / "wsiseg/resources/models")
    p.add_argument("--status", default="", help="a paragraph on the model's standing (card)")
    a = p.parse_args(argv)
    name = a.name or a.dataset
    runs = _runs(a.results, a.dataset, a.budget)
    if not runs:
        print(f"error: no finished learned {a.budget} run of {a.dataset}", file=sys.stderr)
        return 2
    rec = max(runs, key=_best_val)  # among every finished seed, not only those at hand
    ckpt = a.work / "runs" / rec["key"] / "best.safetensors"
    if not ckpt.is_file():
        print(
            f"error: the best-validated run {rec['key']} (seed {rec['seed']}) has no checkpoint "
            f"at {ckpt}; rerun it there (pipelines/benchmark_real.py --work {a.work} --only ...)",
            file=sys.stderr,
        )
        return 2
    state, meta = load_checkpoint(ckpt)
    if json.loads(json.dumps(ModelConfig.from_dict(meta["model"]).to_dict())) != rec["model"]:
        print(
            f"error: checkpoint of run {rec['key']} does not match its result file", file=sys.stderr
        )
        return 2
    card = CARDS[a.dataset]
    meta = {
        **meta,
        "name": name,
        "notice": card["notice"],
        "benchmark_run": rec["key"],
        "test_table": {"split": "GlaS test A", "fg_iou": rec["fg_iou"], "fg_dice": rec["fg_dice"]},
    }
    a.out.mkdir(parents=True, exist_ok=True)
    weights = save_checkpoint(a.out / name, state, meta, half=True)
    size = weights.stat().st_size
    if size > MAX_BYTES:
        print(f"error: {weights} is {size / 2**20:.1f} MiB, over the 25 MB limit", file=sys.stderr)
        return 2
    report_path = a.results / "real.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    md_path = a.results / "real.md"
    if md_path.is_file():
        report["markdown"] = md_path.read_text()
    card_md = card_markdown(name, card, rec, len(runs), _table(report, a.dataset))
    if a.status:
        head, sep, rest = card_md.partition("\n## ")
        card_md = f"{head}\n**Status.** {a.status}\n{sep}{rest}"
    (a.out / f"{name}.md").write_text(card_md)
    print(f"bundled {weights} ({size / 2**20:.1f} MiB) from run {rec['key']} (seed {rec['seed']})")
    print(card_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
