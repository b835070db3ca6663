"""Dask clusters for the pipeline: local, a scheduler address, or SLURM via dask-jobqueue.

``--cluster`` (and :func:`open_client`) accepts

``local``
    A :class:`distributed.LocalCluster` on this machine: one single-threaded worker
    process per core (or ``workers``), with ``OMP_NUM_THREADS=1``.
``threads``
    The same in this process: one worker with a thread per core (or ``workers``), no
    spawned processes (one copy of torch and of the model; faster to start, less memory).
``tcp://host:port`` (or ``tls://``, ``inproc://``)
    An already running dask scheduler.
a packaged name (``slurm-cpu``, ``slurm-gpu``, ...)
    A cluster profile shipped in ``wsiseg/resources/configs/clusters/NAME.yaml``.
a path to a YAML file
    dask configuration (``jobqueue: slurm: {cores, memory, processes, walltime, queue,
    account, job-extra-directives, job-script-prologue, local-directory,
    worker-extra-args, scheduler-options, ...}``, optionally other dask sections such as
    ``distributed:``) plus a ``wsiseg:`` section::

        wsiseg:
          jobs: 4                 # scale(jobs=4); or
          adapt: {minimum: 0, maximum: 20}   # adaptive scaling (jobs)
          wait_timeout_s: 600     # how long to wait for the first worker (null: no limit)
          task_resources: {GPU: 1}  # per-task resources (default: GPU=1 when the
                                    # workers declare --resources GPU=...)

Precedence of dask-jobqueue settings, highest first: a YAML *file* given to
``--cluster``; the user's dask configuration (``~/.config/dask/*.yaml``, ``/etc/dask``,
``DASK_*`` variables); a *packaged* profile (which only fills in keys that the dask
configuration leaves at dask-jobqueue's defaults, and appends to lists); dask-jobqueue's
defaults. So a site ``~/.config/dask/jobqueue.yaml`` with ``queue`` and ``account`` works
with the packaged profiles unchanged.

Scaling of a SLURM cluster: ``wsiseg.adapt`` in the YAML means adaptive scaling
(``workers`` is then ignored); otherwise ``workers`` (``--workers N``) is the number of
SLURM *jobs*, falling back to ``wsiseg.jobs``, then 1. Each job runs ``processes`` dask
workers. With a fixed number of jobs, :func:`open_client` waits up to
``wait_timeout_s`` for the first worker and otherwise raises a one-line
:class:`~wsiseg.errors.WsisegError` naming the jobs' SLURM states.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import math
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.config
import yaml
from distributed import Client, LocalCluster

from wsiseg.errors import InputError, WsisegError

__all__ = [
    "ClusterConfig",
    "DEFAULT_WAIT_TIMEOUT_S",
    "WORKER_MEMORY_BYTES",
    "LOCAL_CLUSTERS",
    "check_workers",
    "is_local",
    "default_workers",
    "local_worker_cap",
    "load_cluster_config",
    "open_client",
    "slurm_job_script",
    "slurm_job_states",
    "task_resources",
]

log = logging.getLogger(__name__)

#: Seconds to wait for the first SLURM worker when the YAML does not say.
DEFAULT_WAIT_TIMEOUT_S = 600.0

#: ``--cluster`` values that run the workers on this machine.
LOCAL_CLUSTERS = ("local", "threads")
_ADDRESS_SCHEMES = ("tcp://", "tls://", "inproc://", "ucx://", "ws://", "wss://")
_WSISEG_KEYS = {"jobs", "adapt", "wait_timeout_s", "task_resources"}
_UNSET = object()

# Task resources of the clients that open_client made (id(client) -> resources).
_CLIENT_RESOURCES: dict[int, dict[str, float] | None] = {}


def default_workers() -> int:
    """Number of local workers by default: one single-threaded process per usable core.

    Returns
    -------
    int
        The cores this process may run on (at least 1).
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


#: Memory one local worker process needs (torch, the model, a batch of regions).
WORKER_MEMORY_BYTES = 1 << 30


def local_worker_cap() -> tuple[int, str]:
    """Most local workers this machine can hold, and why: one per usable core, and
    no more than the available memory allows at `WORKER_MEMORY_BYTES` each."""
    import psutil

    cores = default_workers()
    avail = int(psutil.virtual_memory().available)
    by_memory = max(1, avail // WORKER_MEMORY_BYTES)
    cap = min(cores, by_memory)
    why = f"{cores} usable cores, {avail / (1 << 30):.1f} GiB available at ~1 GiB per worker"
    return cap, why


def check_workers(cluster: str, workers: int | None) -> None:
    """Refuse a ``--workers`` value the machine cannot hold (local clusters only).

    Raises
    ------
    InputError
        ``workers`` < 1, or above `local_worker_cap` for ``cluster == "local"``.
    """
    if workers is None:
        return
    if workers < 1:
        raise InputError(f"--workers {workers}: need at least 1")
    if is_local(cluster):
        cap, why = local_worker_cap()
        if workers > cap:
            raise InputError(f"--workers {workers}: this machine holds at most {cap} ({why})")


@dataclass(frozen=True)
class ClusterConfig:
    """A SLURM cluster profile, read from YAML.

    Parameters
    ----------
    source
        Where it came from (a file path), for messages.
    packaged
        True for a profile shipped with wsiseg: its settings then only fill in what the
        user's dask configuration leaves unset.
    dask_config
        Flattened dask settings (``"jobqueue.slurm.cores" -> 4``); lists are leaves.
    jobs
        ``wsiseg.jobs``: the number of jobs when ``--workers`` is not given.
    adapt
        ``wsiseg.adapt``: ``(minimum, maximum)`` jobs for adaptive scaling, or None.
    wait_timeout_s
        Seconds to wait for the first worker; None waits as long as jobs are queued.
    task_resources
        ``wsiseg.task_resources``: resources each task requests, or None.
    task_resources_set
        Whether the YAML set ``task_resources`` (``{}`` or null then means none); when
        it did not, tasks request ``GPU=1`` if the workers declare ``--resources GPU=...``.
    """

    source: str
    packaged: bool
    dask_config: dict[str, Any] = field(default_factory=dict)
    jobs: int | None = None
    adapt: tuple[int, int] | None = None
    wait_timeout_s: float | None = DEFAULT_WAIT_TIMEOUT_S
    task_resources: dict[str, float] | None = None
    task_resources_set: bool = False


# -- YAML --------------------------------------------------------------------------------------


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def _jobqueue_slurm_defaults() -> dict[str, Any]:
    """dask-jobqueue's own defaults of ``jobqueue.slurm``, flattened."""
    import dask_jobqueue

    path = Path(dask_jobqueue.__file__).with_name("jobqueue.yaml")
    data = yaml.safe_load(path.read_text()) or {}
    out: dict[str, Any] = {}
    _flatten("jobqueue.slurm", data.get("jobqueue", {}).get("slurm", {}), out)
    return out


def _norm(key: str) -> str:
    return key.replace("_", "-")


def _positive_int(value: Any, what: str, source: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{source}: {what} must be an integer >= {minimum}, got {value!r}")
    return value


def load_cluster_config(path: Path | str, *, packaged: bool = False) -> ClusterConfig:
    """Read and check a cluster YAML (dask config schema plus a ``wsiseg:`` section).

    Parameters
    ----------
    path
        The YAML file.
    packaged
        Whether it is a packaged profile (see the module docstring on precedence).

    Returns
    -------
    ClusterConfig
        The parsed profile.

    Raises
    ------
    InputError
        Unreadable YAML, a section other than ``jobqueue.slurm`` under ``jobqueue``, an
        unknown ``jobqueue.slurm`` or ``wsiseg`` key, or a bad ``wsiseg`` value.
    """
    path = Path(path)
    src = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InputError(f"cannot read cluster config {src}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{src}: not valid YAML ({line})") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{src}: expected a mapping at the top level")
    data = dict(data)
    ws = data.pop("wsiseg", None) or {}
    if not isinstance(ws, dict):
        raise InputError(f"{src}: 'wsiseg' must be a mapping")
    jq = data.get("jobqueue")
    if jq is not None:
        if not isinstance(jq, dict):
            raise InputError(f"{src}: 'jobqueue' must be a mapping")
        other = sorted(k for k in jq if k != "slurm")
        if other:
            raise InputError(
                f"{src}: only jobqueue.slurm is supported, found jobqueue.{', jobqueue.'.join(other)}"
            )
        slurm = jq.get("slurm") or {}
        if not isinstance(slurm, dict):
            raise InputError(f"{src}: 'jobqueue.slurm' must be a mapping")
        known = {_norm(k.split(".")[2]) for k in _jobqueue_slurm_defaults()} | {
            "scheduler-options",
            "project",
            "header-skip",
        }
        unknown = sorted(k for k in slurm if _norm(str(k)) not in known)
        if unknown:
            raise InputError(
                f"{src}: unknown jobqueue.slurm key(s) {', '.join(map(str, unknown))} "
                f"(known: {', '.join(sorted(known))})"
            )
    flat: dict[str, Any] = {}
    _flatten("", data, flat)
    flat.pop("", None)

    unknown_ws = sorted(set(map(str, ws)) - _WSISEG_KEYS)
    if unknown_ws:
        raise InputError(
            f"{src}: unknown wsiseg key(s) {', '.join(unknown_ws)} (known: {', '.join(sorted(_WSISEG_KEYS))})"
        )
    jobs = ws.get("jobs")
    if jobs is not None:
        jobs = _positive_int(jobs, "wsiseg.jobs", src)
    adapt = None
    if ws.get("adapt") is not None:
        ad = ws["adapt"]
        if not isinstance(ad, dict) or set(ad) - {"minimum", "maximum"} or "maximum" not in ad:
            raise InputError(f"{src}: wsiseg.adapt must be {{minimum: M, maximum: N}}")
        lo = _positive_int(ad.get("minimum", 0), "wsiseg.adapt.minimum", src, minimum=0)
        hi = _positive_int(ad["maximum"], "wsiseg.adapt.maximum", src)
        if lo > hi:
            raise InputError(f"{src}: wsiseg.adapt.minimum {lo} > maximum {hi}")
        adapt = (lo, hi)
        if jobs is not None:
            raise InputError(f"{src}: give wsiseg.jobs or wsiseg.adapt, not both")
    wait: float | None = DEFAULT_WAIT_TIMEOUT_S
    if "wait_timeout_s" in ws:
        w = ws["wait_timeout_s"]
        if w is not None and (isinstance(w, bool) or not isinstance(w, int | float) or w <= 0):
            raise InputError(f"{src}: wsiseg.wait_timeout_s must be a positive number or null")
        wait = None if w is None else float(w)
    res_set = "task_resources" in ws
    res = ws.get("task_resources")
    if res is not None:
        if not isinstance(res, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in res.values()
        ):
            raise InputError(f"{src}: wsiseg.task_resources must map names to positive numbers")
        res = {str(k): float(v) for k, v in res.items()} or None
    return ClusterConfig(
        source=src,
        packaged=packaged,
        dask_config=flat,
        jobs=jobs,
        adapt=adapt,
        wait_timeout_s=wait,
        task_resources=res,
        task_resources_set=res_set,
    )


def is_local(cluster: str) -> bool:
    """True for the clusters on this machine (``local`` processes, ``threads``)."""
    return cluster in LOCAL_CLUSTERS


def _resolve_cluster(cluster: str) -> ClusterConfig | None:
    """None for ``local``/``threads``/addresses; else the cluster profile ``cluster`` names."""
    if is_local(cluster) or cluster.startswith(_ADDRESS_SCHEMES):
        return None
    p = Path(cluster).expanduser()
    if p.suffix.lower() in (".yaml", ".yml") or os.sep in cluster or p.is_file():
        if not p.is_file():
            raise InputError(f"--cluster {cluster!r}: no such cluster config file")
        return load_cluster_config(p, packaged=False)
    from wsiseg.resources import packaged, packaged_names

    try:
        path = packaged("clusters", cluster)
    except InputError as exc:
        raise InputError(
            f"--cluster {cluster!r}: expected 'local', 'threads', a scheduler address tcp://host:port, "
            f"a YAML file or a packaged cluster profile ({', '.join(packaged_names('clusters'))})"
        ) from exc
    return load_cluster_config(path, packaged=True)


# -- applying the profile to dask's config -------------------------------------------------------


def _overrides(cfg: ClusterConfig) -> dict[str, Any]:
    """The dotted dask-config keys to set for ``cfg`` (see the precedence rules)."""
    if not cfg.packaged:
        return dict(cfg.dask_config)
    builtin = {_norm(k): v for k, v in _jobqueue_slurm_defaults().items()}
    out: dict[str, Any] = {}
    for key, value in cfg.dask_config.items():
        current = dask.config.get(key, default=None)
        if current is None or current == builtin.get(_norm(key), _UNSET) or current in ([], {}):
            out[key] = value
        elif isinstance(current, list) and isinstance(value, list):
            out[key] = list(current) + [v for v in value if v not in current]
            log.debug("%s: your dask config's list extended by the profile's", key)
        else:
            log.info("%s: keeping your dask config's value %r over the profile's", key, current)
    return out


def _parse_resources(args: list[Any]) -> dict[str, float]:
    """Worker resources declared by ``--resources`` in ``worker-extra-args``."""
    tokens: list[str] = []
    for a in args:
        tokens.extend(shlex.split(str(a)))
    out: dict[str, float] = {}
    for i, tok in enumerate(tokens):
        spec = None
        if tok == "--resources" and i + 1 < len(tokens):
            spec = tokens[i + 1]
        elif tok.startswith("--resources="):
            spec = tok.split("=", 1)[1]
        if spec:
            for part in re.split(r"[,\s]+", spec.strip()):
                if "=" in part:
                    name, val = part.split("=", 1)
                    with contextlib.suppress(ValueError):
                        out[name] = float(val)
    return out


def _walltime_s(text: Any) -> float | None:
    """SLURM walltime (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``) in seconds."""
    if text is None:
        return None
    s = str(text).strip()
    days = 0
    if "-" in s:
        d, s = s.split("-", 1)
        days = int(d)
        parts = [int(x) for x in s.split(":")] + [0, 0]
        h, m, sec = parts[:3]
        return days * 86400 + h * 3600 + m * 60 + sec
    nums = [int(x) for x in s.split(":")]
    if len(nums) == 1:
        return nums[0] * 60.0
    if len(nums) == 2:
        return nums[0] * 60.0 + nums[1]
    return nums[0] * 3600.0 + nums[1] * 60 + nums[2]


def _check_lifetime(args: list[Any], walltime: Any) -> None:
    """Warn when workers do not retire before the walltime kills them."""
    from dask.utils import parse_timedelta

    tokens: list[str] = []
    for a in args:
        tokens.extend(shlex.split(str(a)))
    opts: dict[str, str] = {}
    for i, tok in enumerate(tokens):
        if tok.startswith("--lifetime") and "=" in tok:
            k, v = tok.split("=", 1)
            opts[k] = v
        elif tok in ("--lifetime", "--lifetime-stagger") and i + 1 < len(tokens):
            opts[tok] = tokens[i + 1]
    try:
        wall = _walltime_s(walltime)
        life = parse_timedelta(opts["--lifetime"]) if "--lifetime" in opts else None
        stagger = parse_timedelta(opts.get("--lifetime-stagger", "0s")) or 0.0
    except (ValueError, KeyError):
        return
    if wall is None:
        return
    if life is None:
        log.warning(
            "SLURM walltime %s but no --lifetime in worker-extra-args: workers killed at the "
            "walltime lose their tasks (add --lifetime / --lifetime-stagger)",
            walltime,
        )
    elif life + stagger >= wall:
        log.warning(
            "worker --lifetime %s + stagger %s is not below the walltime %s",
            opts["--lifetime"],
            opts.get("--lifetime-stagger", "0s"),
            walltime,
        )


# -- SLURM state ---------------------------------------------------------------------------------


def _squeue(job_ids: list[str]) -> dict[str, str] | None:
    """``job id -> "STATE (reason)"`` of the listed jobs in squeue; None if squeue failed."""
    try:
        proc = subprocess.run(
            ["squeue", "-h", "-u", getpass.getuser(), "-o", "%i|%T|%r"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("squeue failed: %s", exc)
        return None
    if proc.returncode != 0:
        log.debug("squeue failed: %s", proc.stderr.strip())
        return None
    wanted = set(job_ids)
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in wanted:
            state, reason = parts[1], parts[2]
            out[parts[0]] = f"{state} ({reason})" if reason and reason != "None" else state
    return out


def slurm_job_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM state of each job, e.g. ``{"12": "PENDING (JobHeldUser)"}``.

    Parameters
    ----------
    job_ids
        SLURM job ids.

    Returns
    -------
    dict
        ``job id -> "STATE (reason)"`` for the jobs that ``squeue`` still lists; jobs
        that ended are missing. Empty when ``squeue`` cannot be run.
    """
    if not job_ids:
        return {}
    return _squeue(job_ids) or {}


def _check_job_script(script: str, source: str) -> None:
    """Let SLURM validate the worker job (``sbatch --test-only``) before submitting any.

    Raises
    ------
    InputError
        ``sbatch`` is missing or rejects the job script (bad partition, gres, memory ...).
    """
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="wsiseg-job-") as fh:
        fh.write(script)
        fh.flush()
        try:
            proc = subprocess.run(
                ["sbatch", "--test-only", fh.name],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except FileNotFoundError as exc:
            raise InputError(
                f"{source}: sbatch not found; a SLURM cluster needs the SLURM client tools here"
            ) from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("sbatch --test-only did not answer (%s); submitting anyway", exc)
            return
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()] or lines or ["no message"]
        raise InputError(f"{source}: SLURM rejects the worker job script: {errors[0]}")


def _job_ids(cluster: Any) -> list[str]:
    ids = []
    for job in list(getattr(cluster, "workers", {}).values()):
        jid = getattr(job, "job_id", None)
        if jid:
            ids.append(str(jid))
    return ids


def _wait_for_first_worker(client: Client, cluster: Any, cfg: ClusterConfig, jobs: int) -> None:
    """Wait until a worker joins; raise a one-line WsisegError on timeout or dead jobs."""
    t0 = time.monotonic()
    deadline = None if cfg.wait_timeout_s is None else t0 + cfg.wait_timeout_s
    last_check = -math.inf
    log_dir = dask.config.get("jobqueue.slurm.log-directory", default=None)
    where = f"; worker logs in {log_dir}" if log_dir else f"; job logs in {os.getcwd()}"
    while True:
        n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        if n >= 1:
            log.info("first SLURM worker joined after %.1f s", time.monotonic() - t0)
            return
        now = time.monotonic()
        ids = _job_ids(cluster)
        if len(ids) >= jobs and now - last_check >= 2.0:
            last_check = now
            states = _squeue(ids)
            if states is not None and not states:
                # Recheck the workers: one may have joined just before its job ended.
                if client.scheduler_info(n_workers=-1).get("workers"):
                    continue
                raise WsisegError(
                    f"SLURM jobs {', '.join(ids)} ended before any dask worker joined "
                    f"(cluster {cfg.source}){where}"
                )
        if deadline is not None and now >= deadline:
            states = slurm_job_states(ids)
            desc = (
                ", ".join(f"{j} {states.get(j, 'not in squeue')}" for j in ids)
                if ids
                else "none submitted"
            )
            raise WsisegError(
                f"no dask worker joined within {cfg.wait_timeout_s:g} s "
                f"(wsiseg.wait_timeout_s in {cfg.source}); SLURM jobs: {desc}{where}"
            )
        time.sleep(0.5)


@contextlib.contextmanager
def _slurm_client(cfg: ClusterConfig, workers: int | None) -> Iterator[Client]:
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:  # pragma: no cover - dask-jobqueue is a dependency
        raise InputError("SLURM clusters need dask-jobqueue: pip install dask-jobqueue") from exc

    settings = _overrides(cfg)
    with dask.config.set(settings), contextlib.ExitStack() as stack:
        extra = list(dask.config.get("jobqueue.slurm.worker-extra-args", default=[]) or [])
        _check_lifetime(extra, dask.config.get("jobqueue.slurm.walltime", default=None))
        declared = _parse_resources(extra)
        if cfg.task_resources_set:
            resources = cfg.task_resources
        else:
            resources = {"GPU": 1.0} if declared.get("GPU", 0) >= 1 else None
        for name, amount in (resources or {}).items():
            if declared.get(name, 0) < amount:
                raise InputError(
                    f"{cfg.source}: tasks request {name}={amount:g} but the workers declare "
                    f"{name}={declared.get(name, 0):g} (add '--resources {name}={amount:g}' "
                    "to jobqueue.slurm.worker-extra-args)"
                )
        try:
            cluster = SLURMCluster()
        except ValueError as exc:
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"{cfg.source}: cannot set up the SLURM cluster: {line}") from exc
        stack.enter_context(cluster)
        script = cluster.job_script()
        log.debug("SLURM job script:\n%s", script)
        _check_job_script(script, cfg.source)
        client = stack.enter_context(Client(cluster))
        if cfg.adapt is not None:
            lo, hi = cfg.adapt
            if workers is not None:
                log.warning("--workers %d ignored: %s sets wsiseg.adapt", workers, cfg.source)
            cluster.adapt(minimum_jobs=lo, maximum_jobs=hi)
            log.info("SLURM cluster (%s): adaptive, %d-%d job(s)", cfg.source, lo, hi)
        else:
            jobs = workers if workers is not None else (cfg.jobs or 1)
            if jobs < 1:
                raise InputError(f"--workers {jobs}: need at least 1 SLURM job")
            cluster.scale(jobs=jobs)
            log.info(
                "SLURM cluster (%s): %d job(s), scheduler %s",
                cfg.source,
                jobs,
                cluster.scheduler_address,
            )
            _wait_for_first_worker(client, cluster, cfg, jobs)
        _CLIENT_RESOURCES[id(client)] = resources
        try:
            yield client
        finally:
            _CLIENT_RESOURCES.pop(id(client), None)


@contextlib.contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Start worker processes with SIGINT ignored (inherited across exec).

    A terminal's Ctrl-C goes to the whole process group; the driver alone handles it
    and closes the cluster, instead of every worker printing a traceback.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def open_client(cluster: str = "local", workers: int | None = None) -> Iterator[Client]:
    """A dask client for ``cluster``, closed (with its cluster and jobs) on exit.

    Parameters
    ----------
    cluster
        ``local``, a scheduler address (``tcp://host:port``), a packaged cluster profile
        name (``slurm-cpu``, ``slurm-gpu``) or a path to a cluster YAML file (see the
        module docstring for its keys and precedence).
    workers
        Local: worker processes (default: one per core). SLURM: number of jobs (default
        ``wsiseg.jobs`` or 1; ignored with ``wsiseg.adapt``). Ignored for an address.

    Yields
    ------
    distributed.Client
        Connected client; pass :func:`task_resources` of it to ``client.submit``.

    Raises
    ------
    InputError
        An unknown cluster name, a bad YAML or bad settings.
    WsisegError
        No SLURM worker joined within ``wsiseg.wait_timeout_s``.
    """
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers}: need at least 1")
    cfg = _resolve_cluster(cluster)
    if cfg is not None:
        with _slurm_client(cfg, workers) as client:
            yield client
    elif cluster == "local":
        n = workers or local_worker_cap()[0]
        env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        with _workers_ignore_sigint():  # only while the worker processes start
            lc = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                # A random port: the scheduler's HTTP server binds one even without a
                # dashboard, and a fixed 8787 warns on stderr when another run holds it.
                dashboard_address=":0",
                # Task errors come back to the driver, which names the slide; what the
                # workers would log besides (heartbeats failing while the cluster
                # closes, after Ctrl-C) is tracebacks of no use to a user.
                silence_logs=logging.CRITICAL,
                env=env,
            )
        with lc, Client(lc) as client:
            log.info("local dask cluster with %d worker(s)", n)
            yield client
    elif cluster == "threads":
        n = workers or local_worker_cap()[0]
        lc = LocalCluster(
            n_workers=1,
            threads_per_worker=n,
            processes=False,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,
        )
        with lc, Client(lc) as client:
            log.info("dask worker threads in this process: %d", n)
            yield client
    else:
        with Client(cluster) as client:
            yield client


def slurm_job_script(cluster: str) -> str:
    """The batch script that each SLURM worker job of ``cluster`` would run.

    Parameters
    ----------
    cluster
        A packaged cluster profile name or a cluster YAML path (as for :func:`open_client`),
        combined with the user's dask configuration by the same precedence rules.

    Returns
    -------
    str
        The script, with a placeholder scheduler address; nothing is submitted and no
        scheduler is started.

    Raises
    ------
    InputError
        ``cluster`` is ``local`` or an address, or the settings are incomplete.
    """
    cfg = _resolve_cluster(cluster)
    if cfg is None:
        raise InputError(f"--cluster {cluster!r} is not a SLURM cluster profile")
    from dask_jobqueue.slurm import SLURMJob

    with dask.config.set(_overrides(cfg)):
        try:
            job = SLURMJob(scheduler="tcp://<scheduler-address>:8786", name="<worker-name>")
        except ValueError as exc:
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"{cfg.source}: cannot make the SLURM job script: {line}") from exc
        return str(job.job_script())


def task_resources(client: Client) -> dict[str, float] | None:
    """Resources each ``predict_batch`` task should request on ``client``'s cluster.

    Parameters
    ----------
    client
        A client, usually from :func:`open_client`.

    Returns
    -------
    dict or None
        ``{"GPU": 1.0}`` on a GPU profile (whose workers declare ``--resources GPU=1``),
        the profile's ``wsiseg.task_resources`` if set, None otherwise. For a client that
        :func:`open_client` did not make from a profile (an address), ``{"GPU": 1.0}``
        when every connected worker declares a GPU resource. Pass it as
        ``client.submit(..., resources=task_resources(client))``.
    """
    if id(client) in _CLIENT_RESOURCES:
        res = _CLIENT_RESOURCES[id(client)]
        return dict(res) if res else None
    try:
        info = client.scheduler_info(n_workers=-1)
    except Exception:  # a closed or odd client: no resources
        return None
    ws = list(info.get("workers", {}).values())
    if ws and all((w.get("resources") or {}).get("GPU", 0) >= 1 for w in ws):
        return {"GPU": 1.0}
    return None
