"""Shared fixtures: real data from ../shared/data, small synthetic slides, CI skip policy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WSISEG_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; tests that need it skip with a reason when absent."""
    if not (SHARED_DATA / "slides").is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA} (set WSISEG_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic slide (3072 x 2048 at 0.5 µm/px, 4x pyramid), made once per run."""
    from wsiseg.synthetic import SynthSpec, write_synthetic_slide

    out = tmp_path_factory.mktemp("synth")
    spec = SynthSpec(width_px=3072, height_px=2048, seed=7, tile_px=256, level_factor=2)
    return write_synthetic_slide(out, "small", spec)


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    """Address of a local dask cluster shared by a module's `wsiseg segment` runs."""
    from tests.segment_helpers import local_cluster

    with local_cluster() as address:
        yield address


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained checkpoint for fast `wsiseg segment` runs."""
    from tests.segment_helpers import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


# -- CI policy: only GPU tests may skip ------------------------------------------------
_bad_skips: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "gpu" not in report.keywords:
        _bad_skips.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI") and _bad_skips and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    if os.environ.get("CI") and _bad_skips:
        terminalreporter.write_line(
            f"CI: {len(_bad_skips)} non-GPU test(s) skipped; CI must install every tool:",
            red=True,
        )
        for nodeid in _bad_skips:
            terminalreporter.write_line(f"  {nodeid}", red=True)
