"""Segment real slides with a model and draw a readable overlay of each for the docs.

    python pipelines/real_slide_overlays.py --model glas --out docs/real-slides \
        ../shared/data/slides/CMU-1-Small-Region.svs \
        ../shared/data/slides/tcga-cr-7395-01a-01-ts1.svs:0.5

A ``:MPP`` suffix gives a slide's pixel size where its metadata has none. Each slide
is segmented by ``wsiseg segment`` into WORK (default runs/real-slides), then the mask is drawn over the
slide at the mask's own resolution (the run's overlay.png is a thumbnail at 8 µm/px,
too coarse to see glands on a small slide): OUT/<slide>.png, plus the class areas
and warnings from its summary in OUT/slides.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from wsiseg.cli import main as wsiseg_main
from wsiseg.export.ome_tiff import read_label_ome_tiff
from wsiseg.export.overlay import write_overlay_png
from wsiseg.io import open_slide
from wsiseg.models.checkpoint import read_checkpoint_metadata
from wsiseg.models.config import ModelConfig
from wsiseg.models.loading import resolve_model_path


def _segment(slide: Path, mpp: float | None, model: str, run: Path) -> int:
    args = ["segment", str(slide), "-o", str(run), "--model", model]
    if mpp is not None:
        args += ["--mpp", str(mpp)]
    try:
        wsiseg_main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("slides", nargs="+", help="SLIDE or SLIDE:MPP")
    p.add_argument("--model", default="glas")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("runs/real-slides"), help="segment outputs")
    a = p.parse_args(argv)
    meta = read_checkpoint_metadata(resolve_model_path(a.model))
    cfg = ModelConfig.from_dict(meta.config["model"])
    names, colours = list(cfg.class_names), [c[1] for c in cfg.classes]
    run = a.work
    lines = [f"# Real slides segmented with `--model {a.model}`", ""]
    for item in a.slides:
        path, _, mpp_text = item.partition(":")
        slide, mpp = Path(path), (float(mpp_text) if mpp_text else None)
        code = _segment(slide, mpp, a.model, run)
        folder = run / slide.stem
        summary_path = folder / "summary.json"
        if code != 0 or not summary_path.is_file():
            lines.append(f"- `{slide.name}`: not segmented (exit {code})")
            continue
        summary = json.loads(summary_path.read_text())
        labels = read_label_ome_tiff(folder / "mask.ome.tif")
        with open_slide(slide, mpp=mpp) as reader:
            image = reader.thumbnail(float(summary["output_mpp"]))
        h, w = image.shape[:2]
        ys = np.minimum((np.arange(h) * labels.shape[0] / h).astype(int), labels.shape[0] - 1)
        xs = np.minimum((np.arange(w) * labels.shape[1] / w).astype(int), labels.shape[1] - 1)
        png = a.out / f"{slide.stem}.png"
        write_overlay_png(
            png, image, labels[ys[:, None], xs[None, :]], colours, legend=names, overwrite=True
        )
        areas = ", ".join(
            f"{n} {c['area_mm2']:.3f} mm²"
            + (
                f" ({100 * c['fraction_of_tissue']:.1f} % of tissue)"
                if c["fraction_of_tissue"]
                else ""
            )
            for n, c in summary["classes"].items()
        )
        extra = "; ".join(summary.get("warnings") or [])
        lines.append(
            f"- `{slide.name}` ({summary['slide_mpp']} µm/px, {summary['regions']} regions): "
            f"[{png.name}]({png.name}); {areas}" + (f"; warnings: {extra}" if extra else "")
        )
    lines += ["", f"Notice: {meta.config.get('notice', '')}", ""]
    (a.out / "slides.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
