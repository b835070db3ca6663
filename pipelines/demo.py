"""Demo: write a synthetic prostate-biopsy slide, describe it, save a thumbnail.

Run as ``python pipelines/demo.py --out demo-out`` (``make demo``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wsiseg.cli import main as wsiseg


def run(out: Path, size: tuple[int, int], seed: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = f"demo-seed{seed}"
    image = out / f"{name}.tiff"
    common = ["--name", name, "--width", str(size[0]), "--height", str(size[1])]
    if not image.exists():
        _call(["synth", "-o", str(out), *common, "--seed", str(seed)])
    _call(["info", str(image)])
    _call(["thumbnail", str(image), "-o", str(out / f"{name}-thumbnail.png"), "--thumb-mpp", "8"])
    print(f"\ndemo outputs are in {out.resolve()}")


def _call(args: list[str]) -> None:
    print(f"$ wsiseg {' '.join(args)}", flush=True)
    try:
        wsiseg(args)
    except SystemExit as exc:
        if exc.code:
            raise


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    p.add_argument("--width", type=int, default=12288)
    p.add_argument("--height", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


if __name__ == "__main__":
    a = parse()
    run(a.out, (a.width, a.height), a.seed)
    sys.exit(0)
