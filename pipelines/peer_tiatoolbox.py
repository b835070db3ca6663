"""The peer side of ``pipelines/benchmark_peer.py``: TIAToolbox's ``SemanticSegmentor``
segments a whole slide, tiled at full resolution. Runs in TIAToolbox's own virtual
environment (it imports nothing of wsiseg):

    runs/tiatoolbox-venv/bin/python pipelines/peer_tiatoolbox.py SLIDE OUT_DIR RESULT.json \
        [--mpp 1.0] [--patch 512] [--stride 448] [--save-mpp 2.0] [--mask tissue|none]

The model is segmentation-models-pytorch's Unet with a ResNet-18 encoder and random
weights (no download: only the cost is measured), 3 -> 4 classes, wrapped as a
TIAToolbox ``ModelABC``. Patches of ``--patch`` px at ``--mpp`` µm/px with a
``--stride`` step are read from the slide, segmented, and merged by TIAToolbox into its
own output at ``--save-mpp``. ``--mask tissue``: TIAToolbox's own tissue mask picks
the patches (as wsiseg segments tissue only); ``none``: every patch of the slide.
Seconds (imports, model build, prediction) and the patch count go to RESULT.json.
"""

from __future__ import annotations

import time

T_START = time.time()

import argparse  # noqa: E402 - the start time is taken before any other import
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("slide", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("result", type=Path)
    p.add_argument("--mpp", type=float, default=1.0)
    p.add_argument("--patch", type=int, default=512)
    p.add_argument("--stride", type=int, default=448)
    p.add_argument("--save-mpp", type=float, default=2.0)
    p.add_argument("--mask", choices=("tissue", "none"), default="tissue")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--loader-workers", type=int, default=1)
    a = p.parse_args(argv)

    t_import = time.time()
    import numpy as np
    import segmentation_models_pytorch as smp
    import tiatoolbox
    import torch
    import torch.nn.functional as F
    from tiatoolbox.models.engine.semantic_segmentor import (
        IOSegmentorConfig,
        SemanticSegmentor,
    )
    from tiatoolbox.models.models_abc import ModelABC

    seconds = {"import": time.time() - t_import}

    class UnetR18(ModelABC):
        """smp Unet-ResNet18 behind TIAToolbox's model interface (uint8 NHWC in)."""

        def __init__(self) -> None:
            super().__init__()
            self.net = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        @staticmethod
        def infer_batch(model: torch.nn.Module, batch_data: torch.Tensor, on_gpu: bool) -> list:
            device = "cuda" if on_gpu else "cpu"
            x = batch_data.to(device).float().permute(0, 3, 1, 2) / 255.0
            with torch.inference_mode():
                probs = F.softmax(model(x), 1).permute(0, 2, 3, 1)
            return [probs.cpu().numpy()]

    t0 = time.time()
    torch.manual_seed(0)
    model = UnetR18().eval()
    seconds["model"] = time.time() - t0

    res = {"units": "mpp", "resolution": a.mpp}
    ioconfig = IOSegmentorConfig(
        input_resolutions=[res],
        output_resolutions=[res],
        patch_input_shape=[a.patch, a.patch],
        patch_output_shape=[a.patch, a.patch],
        stride_shape=[a.stride, a.stride],
        save_resolution={"units": "mpp", "resolution": a.save_mpp},
    )
    segmentor = SemanticSegmentor(
        model=model,
        batch_size=a.batch,
        num_loader_workers=a.loader_workers,
        auto_generate_mask=a.mask == "tissue",
        verbose=False,
    )
    # Count the patches it will run (the same placement and filter it uses).
    reader, mask_reader = segmentor.get_reader(a.slide, None, "wsi", a.mask == "tissue")
    shape = reader.slide_dimensions(**ioconfig.highest_input_resolution)
    _, outputs = segmentor.get_coordinates(shape, ioconfig)
    total_patches = len(outputs)
    if mask_reader is not None:
        sel = segmentor.filter_coordinates(
            mask_reader, outputs, **ioconfig.highest_input_resolution
        )
        patches = int(np.count_nonzero(sel))
    else:
        patches = total_patches

    if a.out.exists():
        shutil.rmtree(a.out)
    t0 = time.time()
    output = segmentor.predict(
        [a.slide],
        mode="wsi",
        on_gpu=False,
        ioconfig=ioconfig,
        save_dir=a.out,
        crash_on_exception=True,
    )
    seconds["predict"] = time.time() - t0
    if not output:
        print("TIAToolbox produced no output", file=sys.stderr)
        return 1
    saved = Path(str(output[0][1]) + ".raw.0.npy")
    shape_out = list(np.load(saved, mmap_mode="r").shape) if saved.exists() else None
    result = {
        "tiatoolbox": tiatoolbox.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "segmentation_models_pytorch": smp.__version__,
        "mask": a.mask,
        "mpp": a.mpp,
        "patch_px": a.patch,
        "stride_px": a.stride,
        "save_mpp": a.save_mpp,
        "batch_size": a.batch,
        "loader_workers": a.loader_workers,
        "slide_px_at_mpp": [int(v) for v in shape],
        "patches": patches,
        "patches_whole_slide": total_patches,
        "output_shape": shape_out,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "process_start": T_START,
    }
    a.result.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
