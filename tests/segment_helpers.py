"""Helpers of the hostile-input tests: the CLI in-process, stderr parsing, a tiny model,
one dask cluster shared by many `wsiseg segment` runs, and folder snapshots."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from wsiseg.cli import main

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``wsiseg ARGS`` in-process; (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def segment_cli(
    args: list[str], model: Path, cluster: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """``wsiseg segment`` with ``model`` on the CPU through the shared ``cluster``; options
    come first so that ``args`` may hold ``--`` before slide names."""
    options = ["--model", str(model), "--cluster", cluster, "--device", "cpu"]
    return run_cli(["segment", *options, *args], capsys)


def stderr_lines(err: str) -> list[str]:
    """Lines of stderr without progress bars (tqdm redraws with \\r and ANSI moves)."""
    lines = []
    for raw in re.split(r"[\r\n]", _ANSI.sub("", err)):
        line = raw.strip()
        if line and not re.search(r"\d+(region|slide)/s|\?(region|slide)/s|it/s\]", line):
            lines.append(line)
    return lines


def error_lines(err: str) -> list[str]:
    """The ``error:`` lines of stderr."""
    return [line for line in stderr_lines(err) if line.startswith("error:")]


def assert_clean_failure(err: str) -> None:
    """No traceback and no log record at ERROR level besides the ``error:`` lines."""
    assert "Traceback" not in err, err
    assert "MemoryError" not in err, err
    noise = [line for line in stderr_lines(err) if re.match(r"(ERROR|CRITICAL)\b", line)]
    assert not noise, noise


def tiny_checkpoint(folder: Path) -> Path:
    """An untrained tiny model (fast; the tests check plumbing, not accuracy)."""
    import torch

    from wsiseg.models.checkpoint import save_checkpoint
    from wsiseg.models.config import packaged_model_config
    from wsiseg.models.deformseg import DeformSeg
    from wsiseg.models.loading import checkpoint_config

    cfg = packaged_model_config("tiny")
    torch.manual_seed(0)
    return save_checkpoint(folder / "tiny", DeformSeg(cfg).state_dict(), checkpoint_config(cfg))


@contextmanager
def local_cluster() -> Iterator[str]:
    """One single-worker local dask cluster; yields its address for ``--cluster``."""
    import logging

    from distributed import LocalCluster

    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # any free port: no clash with other clusters
        silence_logs=logging.ERROR,
        env=env,
    ) as cluster:
        yield cluster.scheduler_address


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """{relative path: (sha256, mtime_ns)} of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
