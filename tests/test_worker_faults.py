"""Faults of dask workers during `segment_slide`, on a local cluster of 2 worker processes.

- A worker killed with SIGKILL while region tasks run: its tasks are rerun on the
  other worker (or the restarted one) and the outputs equal an uninterrupted run's.
- A task that raises a transient error is retried (``SegmentConfig.task_retries``);
  without retries the slide fails with one line and the cluster goes on.
- A task that kills its worker every time fails its slide (not the batch) once
  ``distributed.scheduler.allowed-failures`` is spent; the next slide is done.

``tests/test_slurm.py`` cancels a whole SLURM worker job; these kill one process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import psutil
import pytest
from distributed import Client
from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from wsiseg.export.ome_tiff import read_label_ome_tiff
from wsiseg.pipeline.cluster import open_client
from wsiseg.pipeline.config import SegmentConfig
from wsiseg.pipeline.run import ModelInfo, SlideOutcome, model_info, segment_slide

pytestmark = pytest.mark.slow

CONFIG = SegmentConfig(batch_regions=1, device="cpu")  # one task per region: many in flight


# -- helpers that run inside the scheduler and the workers -----------------------------


class TransitionLog(SchedulerPlugin):
    """Records task transitions and removed workers (the scheduler runs in this process)."""

    def __init__(self) -> None:
        self.transitions: list[tuple[str, str, str]] = []
        self.removed: list[str] = []

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        self.transitions.append((str(key), start, finish))

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        self.removed.append(worker)


LOG = TransitionLog()


def _install_log(dask_scheduler: Any) -> None:
    LOG.transitions.clear()
    LOG.removed.clear()
    dask_scheduler.add_plugin(LOG, name="test-transition-log", idempotent=True)


def _make_reader_flaky(failures: int) -> None:
    """In a worker: the next ``failures`` slide opens raise OSError."""
    import wsiseg.pipeline.worker as w

    original = getattr(w, "_test_original_reader", w.cached_reader)
    left = [failures]

    def flaky(ref: Any) -> Any:
        if left[0] > 0:
            left[0] -= 1
            raise OSError("transient read error (injected)")
        return original(ref)

    w._test_original_reader = original  # type: ignore[attr-defined]
    w._test_left = left  # type: ignore[attr-defined]
    w.cached_reader = flaky  # type: ignore[assignment]


def _reader_failures_left() -> int:
    import wsiseg.pipeline.worker as w

    return int(getattr(w, "_test_left", [0])[0])


def _restore_reader() -> None:
    import wsiseg.pipeline.worker as w

    w.cached_reader = getattr(w, "_test_original_reader", w.cached_reader)  # type: ignore[assignment]


class PoisonRegion(WorkerPlugin):
    """Makes a worker die (as the OOM killer would kill it) whenever it runs the task
    that holds region 0 of slide ``name``; other tasks run normally."""

    def __init__(self, name: str) -> None:
        self.name = name

    def setup(self, worker: Any) -> None:
        import wsiseg.pipeline.worker as w

        original = w.predict_batch
        name = self.name

        def predict_batch(ref: Any, *args: Any) -> Any:
            if Path(ref.path).name == name and any(r.index == 0 for r in args[3]):
                os._exit(137)
            return original(ref, *args)

        self._original = original
        w.predict_batch = predict_batch  # type: ignore[assignment]  # tasks unpickle this

    def teardown(self, worker: Any) -> None:
        import wsiseg.pipeline.worker as w

        w.predict_batch = self._original  # type: ignore[assignment]


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    """Two single-threaded worker processes; a task may kill its worker twice."""
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 1}),
        open_client("local", workers=2) as c,
    ):
        c.wait_for_workers(2, timeout=120)
        yield c


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, client: Client) -> dict[str, Any]:
    """A small synthetic slide, an untrained tiny model and its uninterrupted result."""
    import torch

    from wsiseg.models.checkpoint import save_checkpoint
    from wsiseg.models.config import packaged_model_config
    from wsiseg.models.deformseg import DeformSeg
    from wsiseg.models.loading import checkpoint_config
    from wsiseg.synthetic import SynthSpec, write_synthetic_slide

    tmp = tmp_path_factory.mktemp("faults")
    spec = SynthSpec(width_px=2048, height_px=1536, seed=31)
    slide = write_synthetic_slide(tmp / "slides", "f1", spec).image
    cfg = packaged_model_config("tiny")
    torch.manual_seed(0)
    info = model_info(
        save_checkpoint(tmp / "tiny", DeformSeg(cfg).state_dict(), checkpoint_config(cfg))
    )
    ref = segment_slide(slide, tmp / "ref", info, CONFIG, client)
    assert ref.status == "done", ref.message
    return {"slide": slide, "model": info, "ref": ref, "tmp": tmp}


def _idle(client: Client) -> None:
    """Wait until both workers are up and the scheduler forgot every earlier task."""
    client.wait_for_workers(2, timeout=120)
    deadline = time.monotonic() + 30
    while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
        assert time.monotonic() < deadline, "the scheduler still holds tasks"
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def assert_same(ref: SlideOutcome, got: SlideOutcome) -> None:
    assert got.status == "done", got.message
    assert ref.out_dir is not None and got.out_dir is not None
    a = read_label_ome_tiff(ref.out_dir / "mask.ome.tif")
    np.testing.assert_array_equal(a, read_label_ome_tiff(got.out_dir / "mask.ome.tif"))
    assert len(np.unique(a)) > 1, "a one-class mask would make the comparison weak"
    ga = json.loads((ref.out_dir / "annotations.geojson").read_text())
    assert ga == json.loads((got.out_dir / "annotations.geojson").read_text())
    timing = ("seconds", "wall_seconds")
    sa, sb = (
        {k: v for k, v in o.summary.to_json().items() if k not in timing}
        for o in (ref, got)
        if o.summary is not None
    )
    assert sa == sb


# -- tests -------------------------------------------------------------------------------


def test_killed_worker_tasks_are_rerun(
    inputs: dict[str, Any], client: Client, tmp_path: Path
) -> None:
    _idle(client)
    client.run_on_scheduler(_install_log)
    pids = client.run(os.getpid)
    killed: dict[str, Any] = {}

    def kill_busiest(done: int, total: int) -> None:
        if killed:
            return
        busy = {w: len(keys) for w, keys in client.processing().items()}
        victim = max(busy, key=lambda w: busy[w])
        assert busy[victim] > 0, busy
        os.kill(pids[victim], signal.SIGKILL)
        killed.update(worker=victim, pid=pids[victim], done=done, total=total)

    info: ModelInfo = inputs["model"]
    got = segment_slide(inputs["slide"], tmp_path, info, CONFIG, client, on_region=kill_busiest)
    assert killed and killed["done"] < killed["total"] // 2, killed
    assert_same(inputs["ref"], got)
    # The scheduler lost the worker; the tasks it was running went back and were
    # computed again elsewhere; every task ended in memory.
    assert killed["worker"] in LOG.removed
    assert _gone(killed["pid"])
    interrupted = {
        k for k, s, f in LOG.transitions if s == "processing" and f not in ("memory", "erred")
    }
    assert interrupted, "the killed worker had tasks in flight"
    computed = {k for k, _, f in LOG.transitions if f == "memory"}
    assert interrupted <= computed
    assert not any(f == "erred" for _, _, f in LOG.transitions)
    # The nanny restarts the killed worker.
    client.wait_for_workers(2, timeout=120)
    assert set(client.run(os.getpid).values()) != set(pids.values())


def test_failing_tasks_are_retried(inputs: dict[str, Any], client: Client, tmp_path: Path) -> None:
    _idle(client)
    client.run(_make_reader_flaky, 1)  # each worker's next task fails once
    try:
        got = segment_slide(inputs["slide"], tmp_path / "a", inputs["model"], CONFIG, client)
        assert set(client.run(_reader_failures_left).values()) == {0}, "the faults were injected"
        assert_same(inputs["ref"], got)

        # Without retries the slide fails with one line, and the cluster serves the next.
        _idle(client)
        client.run(_make_reader_flaky, 1)
        no_retries = SegmentConfig(batch_regions=1, device="cpu", task_retries=0)
        failed = segment_slide(inputs["slide"], tmp_path / "b", inputs["model"], no_retries, client)
        assert failed.status == "failed"
        assert failed.message == "transient read error (injected)"
        assert not (tmp_path / "b" / "f1" / "summary.json").exists()
    finally:
        client.run(_restore_reader)
    _idle(client)  # the failed slide's other tasks were cancelled


def test_task_killing_its_worker_fails_the_slide_not_the_batch(
    inputs: dict[str, Any], client: Client, tmp_path: Path
) -> None:
    poison = inputs["tmp"] / "slides" / "poison.tiff"
    shutil.copy(inputs["slide"], poison)
    _idle(client)
    client.register_plugin(PoisonRegion(poison.name), name="poison")
    try:
        bad = segment_slide(poison, tmp_path, inputs["model"], CONFIG, client)
        assert bad.status == "failed"
        assert "died 2 times" in bad.message and "\n" not in bad.message
        assert not (tmp_path / "poison" / "summary.json").exists()
        _idle(client)  # workers restarted, the slide's other tasks cancelled
        good = segment_slide(inputs["slide"], tmp_path, inputs["model"], CONFIG, client)
        assert_same(inputs["ref"], good)
    finally:
        client.unregister_worker_plugin("poison")
