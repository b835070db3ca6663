"""SLURM clusters via dask-jobqueue: config handling, and end-to-end runs on a real SLURM.

The tests marked ``slurm`` need a SLURM controller with an idle node and a ``debug``
partition, as started by ``tests/cluster/start_slurm.sh`` (single node on 127.0.0.1);
they skip with a reason when ``sinfo`` is missing or no controller answers. The others
only parse configs and render job scripts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import yaml

from wsiseg.errors import InputError, WsisegError
from wsiseg.pipeline.cluster import (
    load_cluster_config,
    open_client,
    slurm_job_script,
    task_resources,
)

REPO = Path(__file__).resolve().parents[1]
CI_YAML = REPO / "configs" / "clusters" / "localhost-ci.yaml"
JOB_NAME = "wsiseg-ci"


# -- config handling (no SLURM needed) ------------------------------------------------------


def test_packaged_profiles_match_examples_and_render() -> None:
    from wsiseg.resources import packaged, packaged_names

    assert {"slurm-cpu", "slurm-gpu"} <= set(packaged_names("clusters"))
    for name in ("slurm-cpu", "slurm-gpu"):
        text = packaged("clusters", name).read_text()
        assert text == (REPO / "configs" / "clusters" / f"{name}.yaml").read_text()
    gpu = slurm_job_script("slurm-gpu")
    assert "#SBATCH --gres=gpu:1" in gpu
    assert "--resources GPU=1" in gpu and "--lifetime 55m --lifetime-stagger 4m" in gpu
    assert "export OMP_NUM_THREADS=1" in gpu
    assert "#SBATCH --mem=32G" in gpu
    cpu = slurm_job_script("slurm-cpu")
    assert "--nthreads 1" in cpu and "--nworkers 4" in cpu and "--gres" not in cpu
    assert load_cluster_config(packaged("clusters", "slurm-gpu")).task_resources == {"GPU": 1.0}


def test_user_dask_config_beats_packaged_profile_but_not_a_file(tmp_path: Path) -> None:
    site = {
        "jobqueue.slurm.queue": "site-queue",
        "jobqueue.slurm.account": "site-acct",
        "jobqueue.slurm.job-extra-directives": ["--qos=site"],
    }
    with dask.config.set(site):
        gpu = slurm_job_script("slurm-gpu")
        assert "#SBATCH -p site-queue" in gpu and "#SBATCH -A site-acct" in gpu
        assert "#SBATCH --qos=site" in gpu and "#SBATCH --gres=gpu:1" in gpu
        mine = tmp_path / "mine.yaml"
        mine.write_text(
            "jobqueue:\n  slurm:\n    cores: 2\n    memory: 4GiB\n    queue: mine\n"
            "    job-directives-skip: ['--mem']\n"
            "    job-extra-directives: ['--mem-per-gpu=8G']\n"
        )
        script = slurm_job_script(str(mine))
        assert "#SBATCH -p mine" in script and "#SBATCH -A site-acct" in script
        assert "#SBATCH --mem-per-gpu=8G" in script and "--mem=" not in script
        assert "--qos=site" not in script
    assert dask.config.get("jobqueue.slurm.queue") != "site-queue"  # restored


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("jobqueue: {slurm: {corez: 2}}", "unknown jobqueue.slurm key"),
        ("jobqueue: {pbs: {cores: 2}}", "only jobqueue.slurm"),
        ("wsiseg: {jobs: 2, adapt: {maximum: 3}}", "not both"),
        ("wsiseg: {jobs: 0}", "wsiseg.jobs"),
        ("wsiseg: {wait_timeout_s: -1}", "wait_timeout_s"),
        ("wsiseg: {retries: 1}", "unknown wsiseg key"),
        ("[1, 2", "not valid YAML"),
    ],
)
def test_bad_cluster_yaml(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_cluster_config(path)


def test_unknown_cluster_name_lists_profiles() -> None:
    with (
        pytest.raises(InputError, match=r"slurm-cpu, slurm-gpu"),
        open_client("no-such-profile"),
    ):
        pass
    with pytest.raises(InputError, match="no such cluster config file"), open_client("nope.yaml"):
        pass


# -- a real SLURM ------------------------------------------------------------------------------


def _slurm_unavailable() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "SLURM client tools not installed (run tests/cluster/start_slurm.sh as root)"
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-p", "debug", "-o", "%T"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    states = proc.stdout.split()
    if proc.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed") for s in states):
        why = (proc.stderr.strip().splitlines() or [f"node states {states}"])[0]
        return f"no SLURM with an idle node in partition 'debug' ({why}); run tests/cluster/start_slurm.sh"
    return None


@pytest.fixture(scope="module")
def slurm() -> Iterator[None]:
    """Skip without a usable SLURM; cancel any of this module's jobs left at the end."""
    reason = _slurm_unavailable()
    if reason:
        pytest.skip(reason)
    yield
    left = _squeue()
    if left:
        subprocess.run(["scancel", *left], check=False, timeout=20)


def _squeue(name: str = JOB_NAME) -> dict[str, str]:
    """job id -> state of this test's jobs (by job name)."""
    proc = subprocess.run(
        ["squeue", "-h", "-n", name, "-o", "%i|%T"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return dict(line.split("|", 1) for line in proc.stdout.split() if "|" in line)


def _wait_gone(ids: set[str], timeout: float = 20.0) -> set[str]:
    """Wait until none of ``ids`` is in squeue; return the ones still there."""
    end = time.monotonic() + timeout
    left = ids & set(_squeue())
    while left and time.monotonic() < end:
        time.sleep(0.3)
        left = ids & set(_squeue())
    return left


class _QueueWatch:
    """Polls squeue in a thread and records which of our jobs were seen RUNNING."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.running |= {j for j, s in _squeue().items() if s == "RUNNING"}
            self._stop.wait(0.3)

    def __enter__(self) -> _QueueWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _ci_yaml(tmp: Path, name: str, **slurm: Any) -> Path:
    """The localhost-ci profile with job logs under ``tmp`` and ``slurm`` keys changed."""
    data = yaml.safe_load(CI_YAML.read_text())
    wsiseg = slurm.pop("wsiseg", {})
    data["jobqueue"]["slurm"]["log-directory"] = str(tmp / "joblogs")
    data["jobqueue"]["slurm"].update(slurm)
    data["wsiseg"].update(wsiseg)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two small synthetic slides and an untrained tiny model checkpoint."""
    import torch

    from wsiseg.models.checkpoint import save_checkpoint
    from wsiseg.models.config import packaged_model_config
    from wsiseg.models.deformseg import DeformSeg
    from wsiseg.models.loading import checkpoint_config
    from wsiseg.synthetic import SynthSpec, write_synthetic_slide

    tmp = tmp_path_factory.mktemp("slurm-inputs")
    slides = [
        write_synthetic_slide(
            tmp / "slides", f"s{i}", SynthSpec(width_px=2048, height_px=1536, seed=seed)
        ).image
        for i, seed in enumerate((11, 12))
    ]
    cfg = packaged_model_config("tiny")
    torch.manual_seed(0)
    model = save_checkpoint(tmp / "tiny", DeformSeg(cfg).state_dict(), checkpoint_config(cfg))
    return {"slides": slides, "model": Path(model), "tmp": tmp}


def _segment_cli(args: list[str]) -> None:
    from wsiseg.cli import main

    main(["segment", *args])


@pytest.fixture(scope="module")
def local_ref(inputs: dict[str, Any]) -> Path:
    """Outputs of a local run (one worker): the reference for SLURM runs."""
    out = inputs["tmp"] / "out-local"
    slides = [str(s) for s in inputs["slides"]]
    _segment_cli([*slides, "-o", str(out), "--model", str(inputs["model"]), "--workers", "1"])
    return out


def _geojson(path: Path) -> Any:
    return json.loads(path.read_text())


def _assert_same_slide(a: Path, b: Path) -> None:
    from wsiseg.export.ome_tiff import read_label_ome_tiff

    ma, mb = read_label_ome_tiff(a / "mask.ome.tif"), read_label_ome_tiff(b / "mask.ome.tif")
    assert ma.shape == mb.shape
    np.testing.assert_array_equal(ma, mb)
    assert _geojson(a / "annotations.geojson") == _geojson(b / "annotations.geojson")


@pytest.mark.slurm
def test_segment_on_slurm_equals_local(
    slurm: None, inputs: dict[str, Any], local_ref: Path, tmp_path: Path
) -> None:
    cluster = _ci_yaml(tmp_path, "ci")
    out = tmp_path / "out-slurm"
    slides = [str(s) for s in inputs["slides"]]
    with _QueueWatch() as watch:
        _segment_cli(
            [*slides, "-o", str(out), "--model", str(inputs["model"]), "--cluster", str(cluster)]
        )
    # Two single-core jobs ran (wsiseg.jobs: 2), each a dask worker with its own job log.
    assert len(watch.running) >= 2, f"jobs seen running: {watch.running}"
    logs = tmp_path / "joblogs"
    for job in watch.running:
        err = (logs / f"{JOB_NAME}-{job}.err").read_text()
        assert "Registered to" in err, err[-2000:]
    assert not _wait_gone(watch.running), "worker jobs still queued after the run"
    run = json.loads((out / "run.json").read_text())
    assert [s["status"] for s in run["slides"]] == ["done", "done"]
    for slide in inputs["slides"]:
        _assert_same_slide(local_ref / slide.stem, out / slide.stem)


@pytest.mark.slurm
def test_cancelled_worker_job_gives_identical_result(
    slurm: None, inputs: dict[str, Any], tmp_path: Path
) -> None:
    from wsiseg.pipeline.config import SegmentConfig
    from wsiseg.pipeline.run import model_info, segment_slide

    slide = inputs["slides"][0]
    info = model_info(inputs["model"])
    config = SegmentConfig(batch_regions=1)  # one task per region: many batches left
    with open_client("local", workers=1) as client:
        ref = segment_slide(slide, tmp_path / "ref", info, config, client)
    assert ref.status == "done" and ref.out_dir is not None

    cancelled: dict[str, Any] = {}
    with open_client(str(_ci_yaml(tmp_path, "ci")), workers=2) as client:
        client.wait_for_workers(2, timeout=120)
        jobs = sorted(set(client.run(os.getenv, "SLURM_JOB_ID").values()))
        assert len(jobs) == 2 and all(jobs), jobs

        def on_region(done: int, total: int) -> None:
            if not cancelled:
                subprocess.run(["scancel", jobs[0]], check=True, timeout=20)
                cancelled.update(job=jobs[0], done=done, total=total)

        got = segment_slide(slide, tmp_path / "slurm", info, config, client, on_region=on_region)
        assert got.status == "done", got.message
        assert cancelled["done"] < cancelled["total"] // 2, cancelled
        left = {w["name"]: w for w in client.scheduler_info(n_workers=-1)["workers"].values()}
        assert len(left) == 1, f"expected one worker left after scancel, got {list(left)}"
    assert not _wait_gone(set(jobs))
    err = (tmp_path / "joblogs" / f"{JOB_NAME}-{jobs[0]}.err").read_text()
    assert "CANCELLED" in err, err[-2000:]
    assert got.out_dir is not None
    _assert_same_slide(ref.out_dir, got.out_dir)


@pytest.mark.slurm
def test_cluster_without_workers_fails_clearly(
    slurm: None, inputs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = _ci_yaml(
        tmp_path, "held", **{"job-extra-directives": ["--hold"], "wsiseg": {"wait_timeout_s": 6}}
    )
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as info:
        _segment_cli(
            [
                str(inputs["slides"][0]),
                "-o",
                str(tmp_path / "out"),
                "--model",
                str(inputs["model"]),
                "--cluster",
                str(cluster),
            ]
        )
    elapsed = time.monotonic() - t0
    assert info.value.code == 1
    assert elapsed < 60, f"took {elapsed:.0f} s for a 6 s timeout"
    err_lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1, err_lines
    assert "no dask worker joined within 6 s" in err_lines[0]
    assert "PENDING (JobHeldUser)" in err_lines[0]
    assert not _wait_gone(set(_squeue()), timeout=20), "held jobs left in the queue"
    assert not (tmp_path / "out" / inputs["slides"][0].stem / "summary.json").exists()


@pytest.mark.slurm
def test_adaptive_profile_starts_jobs_on_demand(slurm: None, tmp_path: Path) -> None:
    cluster = _ci_yaml(tmp_path, "adapt", wsiseg={"jobs": None, "adapt": {"maximum": 2}})
    with open_client(str(cluster), workers=5) as client:  # workers ignored with adapt
        futs = [client.submit(os.getenv, "SLURM_JOB_ID", pure=False) for _ in range(4)]
        ids = set(client.gather(futs))
        assert ids and all(ids)
    assert not _wait_gone(ids)


@pytest.mark.slurm
def test_worker_jobs_that_die_fail_fast(slurm: None, tmp_path: Path) -> None:
    cluster = _ci_yaml(
        tmp_path, "dead", python="/nonexistent/python", wsiseg={"wait_timeout_s": 100}
    )
    t0 = time.monotonic()
    with (
        pytest.raises(WsisegError, match="ended before any dask worker joined"),
        open_client(str(cluster)),
    ):
        pass
    assert time.monotonic() - t0 < 40


@pytest.mark.slurm
def test_rejected_job_script_fails_before_submitting(slurm: None, tmp_path: Path) -> None:
    before = set(_squeue())
    cluster = _ci_yaml(tmp_path, "bad", queue="no-such-partition")
    with (
        pytest.raises(InputError, match="SLURM rejects the worker job script"),
        open_client(str(cluster)),
    ):
        pass
    assert set(_squeue()) == before


@pytest.mark.slurm
def test_gpu_resource_profile_tags_tasks(slurm: None, tmp_path: Path) -> None:
    # The GPU profile's worker resource and task request, minus --gres (no GPU here).
    cluster = _ci_yaml(
        tmp_path,
        "gpuish",
        **{
            "worker-extra-args": ["--resources", "GPU=1", "--lifetime", "14m"],
            "wsiseg": {"jobs": 1, "task_resources": {"GPU": 1}},
        },
    )
    with open_client(str(cluster)) as client:
        res = task_resources(client)
        assert res == {"GPU": 1.0}
        fut = client.submit(os.getenv, "SLURM_JOB_ID", resources=res, pure=False)
        assert fut.result(timeout=60)
        info = client.scheduler_info(n_workers=-1)["workers"]
        assert all(w["resources"] == {"GPU": 1.0} for w in info.values())
