"""The dask task `predict_batch` gives exactly what `DeformSeg.predict` gives (no dask)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wsiseg.io.open import open_slide
from wsiseg.models.checkpoint import save_checkpoint
from wsiseg.models.config import packaged_model_config
from wsiseg.models.deformseg import DeformSeg
from wsiseg.models.loading import checkpoint_config, load_model
from wsiseg.models.slide_source import SlideRegionSource
from wsiseg.pipeline.stitch import core_of
from wsiseg.pipeline.worker import predict_batch
from wsiseg.tiling import plan_regions


@pytest.mark.parametrize("sampler", ["learned", "uniform", "tiled"])
def test_worker_outputs_equal_predict(small_synthetic, tmp_path: Path, sampler: str) -> None:
    cfg = packaged_model_config("tiny").replace(sampler=sampler)
    torch.manual_seed(0)
    model_path = save_checkpoint(
        tmp_path / f"tiny-{sampler}", DeformSeg(cfg).state_dict(), checkpoint_config(cfg)
    )
    with open_slide(small_synthetic.image) as reader:
        ref = reader.ref()
        plan = plan_regions(
            reader.level_dimensions[0],
            reader.mpp[0],
            task_mpp=cfg.task_mpp,
            region_px=cfg.region_px,
            margin_px=32,
            output_mpp=2.0,
        )
        middle = len(plan.regions) // 2
        regions = plan.regions[middle : middle + 3]  # over tissue
        got = predict_batch(ref, str(model_path), "cpu", plan, regions)

        model = load_model(model_path, device="cpu")
        source = SlideRegionSource(reader, [(r.x0, r.y0, r.side) for r in regions], plan.region_px)
        out_px = plan.region_out_px
        with torch.inference_mode():
            probs, fwd = model.predict(source, (out_px, out_px))
    labels = probs.argmax(1).to(torch.uint8).numpy()
    assert [i for i, _ in got.cores] == [r.index for r in regions]
    for (_, core), region, lab in zip(got.cores, regions, labels, strict=True):
        np.testing.assert_array_equal(core, core_of(plan, region, lab))
    assert any(len(np.unique(c)) > 1 for _, c in got.cores), "a constant output proves little"
    if sampler == "learned":
        assert fwd is not None and fwd.density is not None
        dens = fwd.density.float().numpy()[:, 0]
        assert [i for i, _ in got.densities] == [r.index for r in regions]
        for (_, d_got), d in zip(got.densities, dens, strict=True):
            np.testing.assert_array_equal(d_got, d * d.size)
    else:
        assert got.densities == []
    assert got.pixels_decoded == source.pixels_decoded
    phases = {"segmenter"} if sampler == "tiled" else {"saliency", "sampling", "backprojection"}
    assert set(got.seconds) == {"load", "read", "segmenter"} | phases


def test_worker_threads_starting_together_build_the_model_once(tmp_path, monkeypatch) -> None:
    """Under ``--cluster threads`` the workers share a process: two threads asking for
    the model at once get the same object, built once (not two copies racing)."""
    import threading
    import time

    from wsiseg.pipeline import worker

    built: list[str] = []

    def slow_load(path: str, device: str = "auto") -> object:
        built.append(path)
        time.sleep(0.3)  # both threads arrive while the first one builds
        return object()

    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"x")
    monkeypatch.setattr(worker, "load_model", slow_load)
    worker._cached_model.cache_clear()
    got: list[object] = []
    threads = [
        threading.Thread(target=lambda: got.append(worker.cached_model(str(ckpt), "cpu", 0)))
        for _ in range(2)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        worker._cached_model.cache_clear()
    assert len(built) == 1 and len(got) == 2 and got[0] is got[1]
