"""Reproduce the bundled default model and its evaluation table.

    python pipelines/train_default.py --work runs/default [--steps N] [--install]

1. writes synthetic slides: seeds 100-107 for training, 200-201 for validation and
   300-311 (12 slides) held out for testing;
2. trains the learned model (configs/models/default.yaml) and, with the same
   architecture, data, steps and seed, the uniform and tiled full-resolution baselines;
3. evaluates all three on the held-out slides (bootstrap 95% intervals over slides)
   and writes WORK/eval/eval.md;
4. with --install, copies the learned model's best checkpoint (fp16 weights) to
   wsiseg/resources/models/default.{safetensors,json}.

Every step skips work already done, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from wsiseg.cli import invoke

REPO = Path(__file__).resolve().parents[1]
SLIDE_PX = (8192, 6144)
SPLITS = {"train": range(100, 108), "val": range(200, 202), "test": range(300, 312)}


def make_slides(work: Path) -> dict[str, Path]:
    folders = {}
    for split, seeds in SPLITS.items():
        folder = work / "data" / split
        for seed in seeds:
            if not (folder / f"synth-{seed}_mask.tiff").exists():
                invoke(
                    [
                        "synth",
                        "-o",
                        str(folder),
                        "--name",
                        f"synth-{seed}",
                        "--seed",
                        str(seed),
                        "--width",
                        str(SLIDE_PX[0]),
                        "--height",
                        str(SLIDE_PX[1]),
                    ]
                )
        folders[split] = folder
    return folders


def train_all(work: Path, data: dict[str, Path], steps: int | None) -> dict[str, Path]:
    best = {}
    for sampler in ("learned", "uniform", "tiled"):
        run = work / "runs" / sampler
        ckpt = run / "best.safetensors"
        done = run / "train_state.json"
        target = steps
        if done.exists() and target is not None and json.loads(done.read_text())["step"] >= target:
            best[sampler] = ckpt
            continue
        args = [
            "train",
            "--config",
            str(REPO / "configs" / "models" / "default.yaml"),
            "--sampler",
            sampler,
            "--data",
            str(data["train"]),
            "--val-data",
            str(data["val"]),
            "-o",
            str(run),
        ]
        if steps is not None:
            args += ["--steps", str(steps)]
        if run.exists():
            args.append("--resume")
        invoke(args)
        best[sampler] = ckpt
    return best


def install(ckpt: Path) -> None:
    from wsiseg.models.checkpoint import load_checkpoint, save_checkpoint

    state, meta = load_checkpoint(ckpt)
    target = REPO / "wsiseg" / "resources" / "models" / "default"
    meta = {**meta, "note": "demo model trained on synthetic slides only; not for diagnosis"}
    save_checkpoint(target, state, meta, half=True)
    print(f"installed {target}.safetensors")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--work", type=Path, default=Path("runs/default"))
    p.add_argument("--steps", type=int, default=None, help="override the config's steps")
    p.add_argument("--install", action="store_true", help="copy the learned model into the package")
    a = p.parse_args()
    data = make_slides(a.work)
    best = train_all(a.work, data, a.steps)
    eval_dir = a.work / "eval"
    if not (eval_dir / "eval.json").exists():
        invoke(
            [
                "evaluate",
                "--model",
                str(best["learned"]),
                "--baseline",
                str(best["uniform"]),
                "--baseline",
                str(best["tiled"]),
                "--data",
                str(data["test"]),
                "-o",
                str(eval_dir),
            ]
        )
    print((eval_dir / "eval.md").read_text())
    if a.install:
        install(best["learned"])
        shutil.copy(
            eval_dir / "eval.md", REPO / "wsiseg" / "resources" / "models" / "default-eval.md"
        )


if __name__ == "__main__":
    main()
