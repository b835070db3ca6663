"""Run one ``wsiseg`` command with the driver's phases timed; used by the scale, GPU and
peer benchmarks (``pipelines/benchmark_scale.py`` starts it as a child process).

    python pipelines/segment_probe.py PHASES.json -- segment SLIDE -o OUT [options]

The pipeline is not changed: before the command runs, a few of its module-level
functions are wrapped with timers (the driver looks them up at call time), and the
wall-clock spans are written to PHASES.json when the command ends, with the
command's exit code. Few-call phases are kept as spans (``[name, t0, t1]``, so a
memory timeline sampled by the parent can be cut by them); per-region phases as
totals (``{name: [seconds, calls]}``). A function the pipeline no longer has is
listed under ``missing`` instead of failing the run. Only the standard library is
imported before the command's own imports, which are timed as ``import``.
"""

from __future__ import annotations

import time

T_START = time.time()

import contextlib  # noqa: E402 - the start time is taken before any other import
import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

#: (module, attribute, phase, kind): "span" few calls, "sum" per region, "cm" a context
#: manager whose entry and exit are timed as PHASE_start and PHASE_close.
HOOKS: tuple[tuple[str, str, str, str], ...] = (
    ("wsiseg.pipeline.batch", "prepare_model", "model_check", "span"),
    ("wsiseg.pipeline.batch", "open_client", "cluster", "cm"),
    ("wsiseg.pipeline.batch", "merge_run_file", "report", "span"),
    ("wsiseg.pipeline.batch", "segment_slide", "slide", "span"),  # looked up in batch
    ("wsiseg.pipeline.run", "detect_tissue", "tissue", "span"),
    ("wsiseg.pipeline.run", "admit_slide", "admission", "span"),
    ("wsiseg.pipeline.run", "plan_regions", "plan", "span"),
    ("wsiseg.pipeline.run", "_run_regions", "regions", "span"),
    ("wsiseg.pipeline.run", "_result", "fetch_results", "sum"),
    ("wsiseg.pipeline.stitch", "Stitcher.add_core", "stitch", "sum"),
    ("wsiseg.pipeline.stitch", "Stitcher.add_density", "stitch_density", "sum"),
    ("wsiseg.pipeline.run", "_write_outputs", "write_outputs", "span"),
    ("wsiseg.pipeline.run", "write_label_ome_tiff", "mask_tiff", "span"),
    ("wsiseg.pipeline.run", "iter_features", "geojson_trace", "span"),
    ("wsiseg.pipeline.run", "write_geojson", "geojson_write", "span"),
    ("wsiseg.pipeline.run", "write_overlay_png", "overlay", "span"),
    ("wsiseg.pipeline.run", "write_png", "png", "sum"),
    ("wsiseg.pipeline.run", "_scan_labels", "scan_labels", "span"),
)


class Record:
    def __init__(self) -> None:
        self.spans: list[tuple[str, float, float]] = []
        self.sums: dict[str, list[float]] = {}
        self.missing: list[str] = []

    def span(self, name: str, t0: float, t1: float) -> None:
        self.spans.append((name, t0, t1))

    def add(self, name: str, seconds: float) -> None:
        total = self.sums.setdefault(name, [0.0, 0])
        total[0] += seconds
        total[1] += 1


def _timed(fn: Callable[..., Any], phase: str, kind: str, rec: Record) -> Callable[..., Any]:
    if kind == "cm":

        @contextlib.contextmanager
        def managed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            t0 = time.time()
            cm = fn(*args, **kwargs)
            value = cm.__enter__()
            rec.span(f"{phase}_start", t0, time.time())
            try:
                yield value
            except BaseException:
                if not cm.__exit__(*sys.exc_info()):
                    raise
            else:
                t1 = time.time()
                cm.__exit__(None, None, None)
                rec.span(f"{phase}_close", t1, time.time())

        return managed

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            t1 = time.time()
            if kind == "sum":
                rec.add(phase, t1 - t0)
            else:
                rec.span(phase, t0, t1)

    return timed


def install(rec: Record) -> None:
    """Wrap every hook's function that exists; list the others in ``rec.missing``."""
    for module, attr, phase, kind in HOOKS:
        try:
            owner: Any = importlib.import_module(module)
        except ImportError:
            rec.missing.append(f"{module}.{attr}")
            continue
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        fn = getattr(owner, name, None) if owner is not None else None
        if not callable(fn):
            rec.missing.append(f"{module}.{attr}")
            continue
        setattr(owner, name, _timed(fn, phase, kind, rec))


def _device_info() -> dict[str, Any]:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return {}
    return {"cuda_device": torch.cuda.get_device_name(0)}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] != "--":
        print("usage: segment_probe.py PHASES.json -- WSISEG_ARGS...", file=sys.stderr)
        return 2
    out, args = Path(argv[0]), argv[2:]
    rec = Record()
    t0 = time.time()
    from wsiseg.cli import main as wsiseg_main

    install(rec)  # imports the pipeline modules the command would import
    rec.span("import", t0, time.time())
    code = 0
    t_cmd = time.time()
    sys.argv = ["wsiseg", *args]  # as the console script runs it (its exit included)
    try:
        wsiseg_main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        rec.span("command", t_cmd, time.time())
        data = {
            "exit_code": code,
            "process_start": T_START,
            "spans": rec.spans,
            "sums": rec.sums,
            "missing": rec.missing,
            "wsiseg_path": str(Path(sys.modules["wsiseg"].__file__ or "").parent),
            **_device_info(),
        }
        out.write_text(json.dumps(data, indent=1) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
