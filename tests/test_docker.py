"""The container image of docker/Dockerfile: build the CPU target, run the demo in it.

Needs a Docker engine whose CLI builds with BuildKit (Debian's ``docker.io``:
``DOCKER_BUILDKIT=1 /usr/bin/docker build``; ``.ci/run`` installs and starts it) and,
unless ``WSISEG_DOCKER_BASE`` names a base image to use, root and ``debootstrap`` to make
one without a registry (``docker/make_base_image.sh``). The tests skip with a reason only
when those are missing. ``WSISEG_DOCKER`` picks the docker CLI.

The image gets its packages the way the host's pip does: ``file://`` indexes in the
host's pip configuration (wheels already on disk) are served on 127.0.0.1 for the
build (``--network host``), everything else comes from the index as usual; the host's
CA bundle is passed as a BuildKit secret, and a test checks that no certificate of
``/usr/local/share/ca-certificates`` ends up in the image. Every image the tests build,
the base included, is removed at the end, and then the daemon's unused build cache
(``docker builder prune --all``; ~13 GB per build) unless ``WSISEG_DOCKER_KEEP_CACHE``
is set. Timings and sizes: docs/docker.md.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[1]
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_TIMEOUT_S = 3600
RUN_TIMEOUT_S = 900
RUN_UID = 4321  # a uid the image does not know: outputs must still be written, and owned by it


@dataclass
class Image:
    tag: str
    build_seconds: float
    secret: Path | None


def _docker_cli() -> str:
    env = os.environ.get("WSISEG_DOCKER")
    if env:
        return env
    # Debian's 20.10 CLI builds with the daemon's own BuildKit; a newer CLI elsewhere on
    # PATH may need the buildx plugin for that (docs/docker.md).
    if Path("/usr/bin/docker").exists():
        return "/usr/bin/docker"
    found = shutil.which("docker")
    if not found:
        pytest.skip("docker CLI not found (apt-get install docker.io; .ci/run does)")
    return found


def _run(cmd: list[str], timeout: float = RUN_TIMEOUT_S, check: bool = True, **kw):  # type: ignore[no-untyped-def]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{shlex.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def _pip_config_indexes() -> tuple[str | None, list[str]]:
    """index-url and extra-index-url as the host's pip sees them (config files and env)."""
    out = _run([sys.executable, "-m", "pip", "config", "list"], check=False).stdout
    index: str | None = None
    extra: list[str] = []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        value = value.strip().strip("'\"")
        if key.endswith(".index-url") and not key.endswith("extra-index-url"):
            index = value
        elif key.endswith(".extra-index-url"):
            extra = value.split()
    if os.environ.get("PIP_INDEX_URL"):
        index = os.environ["PIP_INDEX_URL"]
    if os.environ.get("PIP_EXTRA_INDEX_URL"):
        extra = os.environ["PIP_EXTRA_INDEX_URL"].split()
    return index, extra


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def _serve(root: Path) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _local_index_args(stack: ExitStack) -> list[str]:
    """Build arguments that let the build use the host's file:// indexes over 127.0.0.1."""

    def translate(url: str) -> str | None:
        if not url.startswith("file:"):
            return url
        path = Path(unquote(urlparse(url).path))
        if not path.is_dir():
            return None
        # Serve the index's parent, so that links such as ../../files/X.whl resolve.
        root, sub = (path.parent, path.name) if path.name == "simple" else (path, "")
        port = stack.enter_context(_serve(root))
        return f"http://127.0.0.1:{port}/{sub}".rstrip("/") + "/"

    index, extra = _pip_config_indexes()
    args: list[str] = []
    local = False
    if index:
        served = translate(index)
        if served:
            args += ["--build-arg", f"PIP_INDEX_URL={served}"]
            local |= served.startswith("http://127.0.0.1:")
    extras = [u for u in (translate(x) for x in extra) if u]
    if extras:
        args += ["--build-arg", f"PIP_EXTRA_INDEX_URL={' '.join(extras)}"]
        local |= any(u.startswith("http://127.0.0.1:") for u in extras)
    if local:
        args += ["--network", "host"]
    return args


def _image_exists(docker: str, ref: str) -> bool:
    return _run([docker, "image", "inspect", ref], check=False).returncode == 0


@pytest.fixture(scope="module")
def docker() -> str:
    cli = _docker_cli()
    info = _run([cli, "info", "--format", "{{.ServerVersion}}"], timeout=60, check=False)
    if info.returncode != 0:
        pytest.skip(f"no Docker daemon answers {cli} info: {info.stderr.strip()[:300]}")
    return cli


@pytest.fixture(scope="module")
def image(docker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    """The cpu target, built from the repository as a user would; removed afterwards."""
    suffix = uuid.uuid4().hex[:10]
    built: list[str] = []
    base = os.environ.get("WSISEG_DOCKER_BASE")
    try:
        if not base:
            if os.geteuid() != 0:
                pytest.skip("making the base image needs root (or set WSISEG_DOCKER_BASE)")
            if not shutil.which("debootstrap"):
                pytest.skip("debootstrap not found (apt-get install debootstrap; .ci/run does)")
            base = f"wsiseg-test/debian-python:{suffix}"
            built.append(base)
            _run(
                [str(REPO / "docker" / "make_base_image.sh"), base],
                timeout=BUILD_TIMEOUT_S,
                env={**os.environ, "DOCKER": docker},
            )
        tag = f"wsiseg-test/wsiseg:cpu-{suffix}"
        secret = HOST_CA_BUNDLE if HOST_CA_BUNDLE.is_file() else None
        with ExitStack() as stack:
            cmd = [docker, "build", "-f", "docker/Dockerfile", "--target", "cpu"]
            cmd += ["--build-arg", f"BASE_IMAGE={base}", "--progress", "plain"]
            cmd += _local_index_args(stack)
            if secret:
                cmd += ["--secret", f"id=cacert,src={secret}"]
            cmd += ["-t", tag, "."]
            log = tmp_path_factory.mktemp("docker-build") / "build.log"
            start = time.monotonic()
            built.append(tag)
            with log.open("w") as fh:
                proc = subprocess.run(
                    cmd,
                    cwd=REPO,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    timeout=BUILD_TIMEOUT_S,
                    env={**os.environ, "DOCKER_BUILDKIT": "1"},
                )
            seconds = time.monotonic() - start
        assert proc.returncode == 0, f"{shlex.join(cmd)} failed:\n{log.read_text()[-6000:]}"
        yield Image(tag, seconds, secret)
    finally:
        for ref in reversed(built):
            if _image_exists(docker, ref):
                _run([docker, "rmi", "--force", ref], check=False)
        # Each build leaves ~13 GB of BuildKit cache (the venv in the build stage and
        # in the image); it is only cache, and a full disk breaks everything else.
        if built and not os.environ.get("WSISEG_DOCKER_KEEP_CACHE"):
            _run([docker, "builder", "prune", "--all", "--force"], check=False)


def _ca_pem_lines() -> list[str]:
    """Distinctive base64 lines of the host's extra CA certificates (none on most hosts)."""
    lines: list[str] = []
    for crt in sorted(HOST_CA_DIR.glob("*.crt")):
        body = [
            line.strip()
            for line in crt.read_text(errors="replace").splitlines()
            if line.strip() and not line.startswith("-----")
        ]
        lines += [b for b in body[:6] if len(b) == 64]
    return lines


def test_image_runs_wsiseg_as_non_root(docker: str, image: Image) -> None:
    print(f"\nbuilt {image.tag} in {image.build_seconds:.0f} s")
    info = json.loads(_run([docker, "image", "inspect", image.tag]).stdout)[0]
    cfg = info["Config"]
    print(f"image size {info['Size'] / 1e9:.2f} GB")
    assert cfg["Entrypoint"] == ["wsiseg"]
    assert cfg["User"] and cfg["User"].split(":")[0] not in ("", "0", "root")
    assert not any(e.startswith(("PIP_CERT=", "PIP_INDEX_URL=")) for e in cfg["Env"])

    ident = _run([docker, "run", "--rm", "--entrypoint", "id", image.tag]).stdout
    assert re.match(r"uid=1000\(\w+\) gid=1000", ident), ident

    for args in ([], ["--help"]):  # the default CMD is --help
        out = _run([docker, "run", "--rm", image.tag, *args]).stdout
        assert "segment" in out and "synth" in out, out

    versions = _run(
        [
            docker,
            "run",
            "--rm",
            "--entrypoint",
            "python",
            image.tag,
            "-c",
            "import importlib.metadata as m, sys; "
            "print(sys.version_info[:2] >= (3, 11), m.version('torch'), m.version('numpy'))",
        ]
    ).stdout.split()
    pins = dict(
        line.split("==", 1)
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line
    )
    assert versions[0] == "True"
    assert versions[1].split("+")[0] == pins["torch"]
    assert versions[2] == pins["numpy"]


def test_build_ca_is_not_in_the_image(docker: str, image: Image) -> None:
    """The CA bundle is a build secret: it must not be in any file of the image."""
    as_root = [docker, "run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "sh"]
    script = "find /run/secrets /usr/local/share/ca-certificates ! -type d 2>/dev/null; true"
    listing = _run([*as_root, image.tag, "-c", script]).stdout
    assert listing.strip() == "", listing
    patterns = _ca_pem_lines()
    if not patterns:
        return  # no extra CA on this host: nothing host-specific that could leak
    assert image.secret is not None
    bundle = image.secret.read_text(errors="replace")
    assert all(p in bundle for p in patterns), "the build secret lacks the host's CA"
    # Every file of the image's filesystem, as root (grep: 0 found, 1 none, 2 error).
    script = 'grep -rlF "$@" $(ls -d /* | grep -vxE "/(proc|sys|dev)")'
    args = [a for p in patterns for a in ("-e", p)]
    scan = _run([*as_root, image.tag, "-c", script, "scan", *args], check=False)
    assert scan.returncode == 1, f"host CA found in the image:\n{scan.stdout}{scan.stderr[-2000:]}"


def test_demo_in_container(docker: str, image: Image, tmp_path: Path) -> None:
    """The demo's steps in the container: synth, then segment a read-only slide folder."""
    slides, out = tmp_path / "slides", tmp_path / "out"
    slides.mkdir()
    out.mkdir()
    # Writable by the container's users (image default uid 1000, and RUN_UID).
    slides.chmod(0o777)
    out.chmod(0o777)
    run = [docker, "run", "--rm", "--init"]

    _run(
        [
            *run,
            "-v",
            f"{slides}:/data/slides",
            image.tag,
            "synth",
            "-o",
            "/data/slides",
            "--name",
            "demo",
            "--seed",
            "4242",
            "--width",
            "4096",
            "--height",
            "3072",
        ]
    )
    before = {p.name: p.stat().st_mtime_ns for p in slides.iterdir()}
    assert set(before) == {"demo.tiff", "demo_mask.tiff"}

    ro = ["-v", f"{slides}:/data/slides:ro"]
    probe = _run(
        [*run, *ro, "--entrypoint", "python", image.tag, "-c", "open('/data/slides/x', 'w')"],
        check=False,
    )
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr, probe.stderr

    start = time.monotonic()
    seg = _run(
        [
            *run,
            "--user",
            f"{RUN_UID}:{RUN_UID}",
            *ro,
            "-v",
            f"{out}:/data/out",
            image.tag,
            "segment",
            "/data/slides",
            "-o",
            "/data/out",
            "--workers",
            "1",
        ]
    )
    print(f"\nsegment in the container: {time.monotonic() - start:.0f} s")
    assert "done" in seg.stdout and "error:" not in seg.stdout + seg.stderr, seg.stdout

    result = out / "demo"
    for name in ("mask.ome.tif", "annotations.geojson", "summary.json", "overlay.png"):
        assert (result / name).is_file(), f"{name} missing: {sorted(os.listdir(result))}"
    assert (out / "run.json").is_file() and (out / "report.html").is_file()
    for path in [out, *out.rglob("*")]:
        if path != out:
            st = path.stat()
            assert (st.st_uid, st.st_gid) == (RUN_UID, RUN_UID), path
    assert {p.name: p.stat().st_mtime_ns for p in slides.iterdir()} == before

    summary = json.loads((result / "summary.json").read_text())
    assert summary["slide"] == "/data/slides/demo.tiff"
    assert summary["regions"] > 0 and summary["tissue_area_mm2"] > 0
    fractions = [c["fraction_of_tissue"] for c in summary["classes"].values()]
    assert abs(sum(f for f in fractions if f is not None) - 1) < 1e-3
    assert summary["versions"]["torch"].split("+")[0] == "2.14.1"
    geojson = json.loads((result / "annotations.geojson").read_text())
    assert geojson["features"]

    # The container's mask against the slide's ground truth, read on the host.
    from wsiseg.export.ome_tiff import read_label_ome_tiff
    from wsiseg.train.datasets import LabelMask
    from wsiseg.train.metrics import confusion_matrix, mean_iou

    pred = read_label_ome_tiff(result / "mask.ome.tif")
    truth = LabelMask(slides / "demo_mask.tiff").at_grid(pred.shape)
    miou = mean_iou(confusion_matrix(pred, truth, 4))
    print(f"mIoU of the container's mask: {miou:.3f}")
    assert miou > 0.85
