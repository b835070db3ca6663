"""Every writer of the package leaves, when killed, only names the cleanup removes.

Each writer runs in a child process that kills itself with SIGKILL part-way (no
``finally`` or ``except`` runs), so what is left on disk is what a real kill leaves.
Every name left beside the finished files must be one of :mod:`wsiseg.fileops`'s
temporaries, and :func:`~wsiseg.fileops.remove_stale_temporaries` must remove them all.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wsiseg.fileops import is_temporary_name, remove_stale_temporaries

# The child: run WRITER in OUT, SIGKILL itself at the moment KILL describes.
_PRELUDE = """
import os, signal, sys
from pathlib import Path

out = Path(sys.argv[1])
kill_at_replace = int(sys.argv[2])  # kill before the n-th os.replace (0: never)
calls = 0
real_replace = os.replace

def replace(src, dst):
    global calls
    calls += 1
    if calls == kill_at_replace:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)

os.replace = replace  # in the package only wsiseg.fileops renames (a test checks)
"""

_SYNTH = """
from wsiseg.synthetic import SynthSpec, write_synthetic_slide

def progress(done, total):
    # Mid-pyramid: the level-0 temporary and raw scratch of lower levels exist.
    if kill_at_replace == 0 and any(p.name.endswith(".raw") for p in out.iterdir()):
        os.kill(os.getpid(), signal.SIGKILL)

spec = SynthSpec(width_px=1024, height_px=768, seed=3, level_factor=2)
write_synthetic_slide(out, "s", spec, progress=progress)
"""

_CHECKPOINT = """
import torch
from wsiseg.models.checkpoint import save_checkpoint

save_checkpoint(out / "ck", {"w": torch.ones(4, 4)}, {"x": 1})
"""

_FINALS = {
    "synth": {"s.tiff", "s_mask.tiff"},
    "checkpoint": {"ck.safetensors", "ck.json"},
}


def _killed_write(code: str, out: Path, kill_at_replace: int) -> list[str]:
    """Run ``code`` in a child that kills itself; return the names left in ``out``."""
    out.mkdir()
    script = textwrap.dedent(_PRELUDE) + textwrap.dedent(code)
    proc = subprocess.run(
        [sys.executable, "-c", script, str(out), str(kill_at_replace)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize(
    ("writer", "kill_at_replace", "finished"),
    [
        ("synth", 0, set()),  # while writing, raw lower levels on disk
        ("synth", 1, set()),  # both files complete, none renamed
        ("synth", 2, {"s_mask.tiff"}),  # the mask renamed, the image not yet
        ("checkpoint", 1, set()),  # both files complete, none renamed
        ("checkpoint", 2, {"ck.safetensors"}),  # weights renamed, the JSON not yet
    ],
)
def test_a_killed_writer_leaves_only_temporaries_the_cleanup_removes(
    tmp_path: Path, writer: str, kill_at_replace: int, finished: set[str]
) -> None:
    code = _SYNTH if writer == "synth" else _CHECKPOINT
    out = tmp_path / "out"
    left = _killed_write(code, out, kill_at_replace)
    finals = [n for n in left if n in _FINALS[writer]]
    others = [n for n in left if n not in _FINALS[writer]]
    assert set(finals) == finished
    assert others, "the kill came too late to leave anything behind"
    assert all(n.startswith(".") and is_temporary_name(n) for n in others), others
    if writer == "synth" and kill_at_replace == 0:
        assert any(n.endswith(".raw") for n in others), "scratch of the lower levels"
    removed = remove_stale_temporaries(out)
    assert sorted(p.name for p in removed) == others
    assert sorted(p.name for p in out.iterdir()) == finals
    # Cleanup by final name finds them too (the segment run cleans up that way).
    left = _killed_write(code, tmp_path / "again", kill_at_replace)
    mine = remove_stale_temporaries(tmp_path / "again", names=_FINALS[writer])
    assert sorted(p.name for p in mine) == [n for n in left if n not in _FINALS[writer]]


def test_writers_complete_leave_nothing_hidden(tmp_path: Path) -> None:
    """Uninterrupted, the same writers leave only their final names."""
    for code, writer in ((_SYNTH, "synth"), (_CHECKPOINT, "checkpoint")):
        out = tmp_path / writer
        out.mkdir()
        script = textwrap.dedent(_PRELUDE) + textwrap.dedent(code).replace(
            "kill_at_replace == 0 and", "False and"
        )
        proc = subprocess.run(
            [sys.executable, "-c", script, str(out), "0"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert sorted(p.name for p in out.iterdir()) == sorted(_FINALS[writer])


def test_only_fileops_renames_into_place() -> None:
    """One atomic writer: no other module of the package renames files itself."""
    package = Path(__file__).resolve().parents[1] / "wsiseg"
    spelled = ("os.replace(", "os.rename(", ".rename(", "shutil.move(")
    offenders = [
        f"{path.relative_to(package)}:{n}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "fileops.py" or path.parent != package
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if any(s in line for s in spelled)
    ]
    assert offenders == [], f"rename outside wsiseg/fileops.py: {offenders}"
