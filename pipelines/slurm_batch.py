"""Run ``wsiseg segment`` on a SLURM cluster: a dask driver, or an ``sbatch --array``.

Three ways, all with the same outputs (``OUT/<slide>/...``; finished slides are skipped
on a rerun, so any of them can simply be resubmitted after a failure):

``driver``
    One ``wsiseg segment --cluster PROFILE`` process (the dask scheduler and driver)
    submits the worker jobs through dask-jobqueue and farms regions out to them.
    Run it on a login node (``python pipelines/slurm_batch.py driver ...``; keep the
    session alive, e.g. in tmux), or with ``--sbatch`` as a small batch job of its own
    that then submits the workers (the compute nodes must be allowed to run ``sbatch``
    and to reach each other).

``array``
    Writes (``--write``), prints, or submits (``--submit``) an ``sbatch --array=0-(N-1)``
    script whose task ``i`` runs ``wsiseg segment ... --shard i/N --cluster local`` on
    its own node: slides are split between the tasks, and there is no long-lived
    scheduler. Best for many slides and clusters that limit job run times.

``job-script``
    Prints the batch script of one dask worker job for a cluster profile (packaged
    name or YAML file), to check queue, memory and GPU directives before a run.

Examples
--------
::

    python pipelines/slurm_batch.py driver /data/slides -o out --cluster slurm-cpu --workers 8
    python pipelines/slurm_batch.py driver /data/slides -o out \\
        --cluster configs/clusters/slurm-gpu.yaml --workers 4 --sbatch --submit \\
        --driver-time 12:00:00
    python pipelines/slurm_batch.py array /data/slides -o out --tasks 20 \\
        --cpus-per-task 8 --mem 32G --time 04:00:00 --write segment-array.sh
    python pipelines/slurm_batch.py job-script --cluster slurm-gpu

Arguments after ``--`` go to ``wsiseg segment`` unchanged (``--device``, ``--roi``,
``--output-mpp``, ``--overwrite`` ...).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["array_script", "driver_script", "main", "segment_command"]


def segment_command(
    slides: Sequence[str],
    out: str,
    *,
    model: str | None,
    cluster: str,
    workers: str | None,
    shard: str | None = None,
    extra: Sequence[str] = (),
) -> str:
    """The ``wsiseg segment`` command line (shell-quoted; ``$VARS`` in workers/shard kept).

    Parameters
    ----------
    slides, out
        Slide files or folders and the output folder (made absolute).
    model
        ``--model`` (None: the CLI's default).
    cluster
        ``--cluster`` value.
    workers, shard
        ``--workers`` and ``--shard`` values; may hold shell variables, which are quoted
        with double quotes so that they expand in the job.
    extra
        More ``wsiseg segment`` arguments.

    Returns
    -------
    str
        One shell command.
    """
    py = shlex.quote(sys.executable)
    parts = [f"{py} -m wsiseg.cli segment"]
    parts += [shlex.quote(str(Path(s).resolve())) for s in slides]
    parts += ["-o", shlex.quote(str(Path(out).resolve()))]
    if model is not None:
        m = Path(model)
        parts += ["--model", shlex.quote(str(m.resolve()) if m.exists() else model)]
    c = Path(cluster)
    parts += ["--cluster", shlex.quote(str(c.resolve()) if c.is_file() else cluster)]
    if workers is not None:
        parts += ["--workers", f'"{workers}"']
    if shard is not None:
        parts += ["--shard", f'"{shard}"']
    parts += [shlex.quote(a) for a in extra]
    return " ".join(parts)


def _directives(
    *,
    name: str,
    time: str,
    mem: str,
    cpus: int,
    partition: str | None,
    account: str | None,
    gres: str | None,
    log_dir: Path,
    log_pattern: str,
    extra: Sequence[str],
) -> list[str]:
    lines = [
        f"#SBATCH -J {name}",
        f"#SBATCH -o {log_dir.resolve()}/{log_pattern}.out",
        f"#SBATCH -e {log_dir.resolve()}/{log_pattern}.err",
        "#SBATCH -n 1",
        f"#SBATCH --cpus-per-task={cpus}",
        f"#SBATCH --mem={mem}",
        f"#SBATCH -t {time}",
    ]
    if partition:
        lines.append(f"#SBATCH -p {partition}")
    if account:
        lines.append(f"#SBATCH -A {account}")
    if gres:
        lines.append(f"#SBATCH --gres={gres}")
    lines += [f"#SBATCH {d}" for d in extra]
    return lines


_PROLOGUE = [
    "set -euo pipefail",
    "export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1",
]


def driver_script(args: argparse.Namespace) -> str:
    """sbatch script that runs the dask driver (which submits the worker jobs itself).

    Parameters
    ----------
    args
        Parsed ``driver`` arguments.

    Returns
    -------
    str
        The batch script.
    """
    cmd = segment_command(
        args.slides,
        args.out,
        model=args.model,
        cluster=args.cluster,
        workers=str(args.workers) if args.workers else None,
        extra=args.segment_args,
    )
    lines = ["#!/usr/bin/env bash"]
    lines += _directives(
        name="wsiseg-driver",
        time=args.driver_time,
        mem=args.driver_mem,
        cpus=args.driver_cpus,
        partition=args.partition,
        account=args.account,
        gres=None,
        log_dir=args.log_dir,
        log_pattern="wsiseg-driver-%j",
        extra=args.sbatch_extra,
    )
    lines += [
        "# The driver runs the dask scheduler; worker jobs are submitted from here with",
        "# the cluster profile's settings, and cancelled when the driver exits.",
        *_PROLOGUE,
        f"cd {shlex.quote(str(Path.cwd()))}",
        cmd,
        "",
    ]
    return "\n".join(lines)


def _count_slides(paths: Sequence[str]) -> int | None:
    """Number of slides when every path is a slide file; None when folders are given."""
    n = 0
    for p in map(Path, paths):
        if p.is_dir():
            return None
        n += 1
    return n


def array_script(args: argparse.Namespace) -> str:
    """sbatch ``--array`` script: task ``i`` of ``N`` segments shard ``i/N`` locally.

    Parameters
    ----------
    args
        Parsed ``array`` arguments.

    Returns
    -------
    str
        The batch script.
    """
    n = args.tasks
    cmd = segment_command(
        args.slides,
        args.out,
        model=args.model,
        cluster="local",
        workers="${SLURM_CPUS_PER_TASK:-1}",
        shard=f"${{SLURM_ARRAY_TASK_ID}}/{n}",
        extra=args.segment_args,
    )
    array = f"0-{n - 1}" + (f"%{args.max_parallel}" if args.max_parallel else "")
    lines = ["#!/usr/bin/env bash"]
    lines += _directives(
        name="wsiseg-array",
        time=args.time,
        mem=args.mem,
        cpus=args.cpus_per_task,
        partition=args.partition,
        account=args.account,
        gres=args.gres,
        log_dir=args.log_dir,
        log_pattern="wsiseg-%A_%a",
        extra=[f"--array={array}", *args.sbatch_extra],
    )
    lines += [
        f"# Task i (0..{n - 1}) segments slides i, i+{n}, i+{2 * n}, ... of the sorted list,",
        "# with a local dask cluster of one single-threaded worker per allocated CPU.",
        "# Resubmitting the script skips finished slides.",
        *_PROLOGUE,
        f"cd {shlex.quote(str(Path.cwd()))}",
        cmd,
        "",
    ]
    return "\n".join(lines)


def _emit(script: str, write: Path | None, submit: bool) -> int:
    """Write, print or submit ``script``; returns an exit code."""
    if write is None and not submit:
        sys.stdout.write(script)
        return 0
    path = write
    if path is None:
        path = Path("wsiseg-sbatch.sh")
    path.write_text(script)
    path.chmod(0o755)
    print(f"wrote {path}", file=sys.stderr)
    if submit:
        proc = subprocess.run(["sbatch", str(path)], capture_output=True, text=True, check=False)
        sys.stderr.write(proc.stderr)
        if proc.returncode != 0:
            return proc.returncode
        print(proc.stdout.strip())
    return 0


def _run_driver(args: argparse.Namespace) -> int:
    from wsiseg.cli import main as wsiseg

    argv = ["segment", *args.slides, "-o", args.out, "--cluster", args.cluster]
    if args.model:
        argv += ["--model", args.model]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    argv += list(args.segment_args)
    print("$ wsiseg " + " ".join(shlex.quote(a) for a in argv), file=sys.stderr, flush=True)
    try:
        wsiseg(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python pipelines/slurm_batch.py",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Arguments after -- are passed to `wsiseg segment`. See docs/cluster.md.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("slides", nargs="+", help="slide files or folders")
        sp.add_argument("-o", "--out", required=True, help="output folder")
        sp.add_argument("--model", default=None, help="'default' or a checkpoint")
        sp.add_argument("--partition", default=None, help="sbatch -p for the script's job(s)")
        sp.add_argument("--account", default=None, help="sbatch -A for the script's job(s)")
        sp.add_argument(
            "--sbatch-extra",
            action="append",
            default=[],
            metavar="DIRECTIVE",
            help="extra #SBATCH directive, e.g. --qos=long (repeatable)",
        )
        sp.add_argument("--log-dir", type=Path, default=Path("slurm-logs"), help="job .out/.err")
        sp.add_argument("--write", type=Path, default=None, help="write the script here")
        sp.add_argument("--submit", action="store_true", help="sbatch the script")

    d = sub.add_parser(
        "driver",
        help="run `wsiseg segment --cluster PROFILE` here, or as an sbatch'd driver job",
        description=(
            "Run the dask driver with SLURM worker jobs (dask-jobqueue). Without --sbatch it "
            "runs here (a login node); with --sbatch it writes/prints/submits a driver job."
        ),
    )
    common(d)
    d.add_argument(
        "--cluster", required=True, help="packaged profile (slurm-cpu, slurm-gpu) or YAML file"
    )
    d.add_argument("--workers", type=int, default=None, help="number of SLURM worker jobs")
    d.add_argument("--sbatch", action="store_true", help="make a driver batch job instead")
    d.add_argument("--driver-time", default="24:00:00", help="driver job walltime")
    d.add_argument("--driver-mem", default="8G", help="driver job memory (stitching, outputs)")
    d.add_argument("--driver-cpus", type=int, default=2, help="driver job CPUs")

    a = sub.add_parser(
        "array",
        help="write/submit an sbatch --array script, one --shard per task, no scheduler",
        description="An sbatch --array script whose task i runs `wsiseg segment --shard i/N`.",
    )
    common(a)
    a.add_argument("--tasks", type=int, required=True, help="array size N (<= number of slides)")
    a.add_argument("--max-parallel", type=int, default=None, help="at most this many at once")
    a.add_argument("--cpus-per-task", type=int, default=4, help="CPUs (= local workers) per task")
    a.add_argument("--mem", default="16G", help="memory per task")
    a.add_argument("--time", default="04:00:00", help="walltime per task")
    a.add_argument("--gres", default=None, help="e.g. gpu:1 (then pass -- --device cuda)")

    j = sub.add_parser("job-script", help="print a cluster profile's worker job script")
    j.add_argument("--cluster", required=True, help="packaged profile or YAML file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Parameters
    ----------
    argv
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit code.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    segment_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, segment_args = argv[:i], argv[i + 1 :]
    args = _parser().parse_args(argv)
    args.segment_args = segment_args

    if args.command == "job-script":
        from wsiseg.errors import WsisegError
        from wsiseg.pipeline.cluster import slurm_job_script

        try:
            sys.stdout.write(slurm_job_script(args.cluster))
        except WsisegError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0

    args.log_dir.mkdir(parents=True, exist_ok=True)
    if args.command == "driver":
        if not args.sbatch:
            if args.write or args.submit:
                print("error: --write/--submit need --sbatch", file=sys.stderr)
                return 2
            return _run_driver(args)
        return _emit(driver_script(args), args.write, args.submit)

    if args.tasks < 1:
        print("error: --tasks must be >= 1", file=sys.stderr)
        return 2
    n_slides = _count_slides(args.slides)
    if n_slides is not None and args.tasks > n_slides:
        print(
            f"note: --tasks {args.tasks} > {n_slides} slides; using {n_slides} "
            "(a task without slides would fail)",
            file=sys.stderr,
        )
        args.tasks = n_slides
    return _emit(array_script(args), args.write, args.submit)


if __name__ == "__main__":
    sys.exit(main())
