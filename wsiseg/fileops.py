"""The package's one atomic writer and its stale-temporary cleanup.

Every final file or folder the package writes (segment outputs, checkpoints,
synthetic slides, training state, benchmark records) appears only by ``os.replace``
of a complete, hidden temporary ``.NAME.XXXXXXXX.partial`` made by
:func:`atomic_path`. A writer's scratch beside it is named after the temporary
(``.NAME.XXXXXXXX.partial.SUFFIX``), and a folder being replaced is moved aside as
``.NAME.XXXXXXXX.old``. So a killed process leaves finished files or names that
:func:`is_temporary_name` recognises and :func:`remove_stale_temporaries` removes,
never a half-written file under a final name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import Collection, Iterator
from pathlib import Path

__all__ = ["atomic_path", "remove_path", "remove_stale_temporaries", "is_temporary_name"]

log = logging.getLogger(__name__)

# Names of atomic_path's temporaries: ".NAME.8HEX.partial[...]" and ".NAME.8HEX.old".
_TEMP_RE = re.compile(r"^\.(.+)\.[0-9a-f]{8}\.(partial(\..*)?|old)$")


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree if present."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _temporary_target(name: str) -> str:
    """The final name a temporary stands for (``.NAME.8HEX.partial`` -> ``NAME``)."""
    m = _TEMP_RE.match(name)
    return m.group(1) if m else ""


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` is one of :func:`atomic_path`'s temporaries (or their scratch)."""
    return _TEMP_RE.match(name) is not None


def remove_stale_temporaries(folder: Path, names: Collection[str] | None = None) -> list[Path]:
    """Remove temporaries that a killed writer left in ``folder``; return them.

    With ``names``, only the temporaries of those final names. Only call this where
    no other process is writing (those names) into ``folder``.
    """
    removed = []
    if folder.is_dir():
        for child in sorted(folder.iterdir()):
            if is_temporary_name(child.name) and (
                names is None or _temporary_target(child.name) in names
            ):
                with contextlib.suppress(FileNotFoundError):
                    remove_path(child)
                removed.append(child)
    if removed:
        log.info("removed %d stale temporaries in %s", len(removed), folder)
    return removed


def _fsync(path: Path) -> None:
    """Flush a file's data (or a folder's entries) to disk; best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: Path, *, overwrite: bool = False, sync: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; rename it to ``final`` on success.

    ``sync=False`` skips the fsync before the rename: for scratch records that a
    reader checks anyway (after a power loss they may be empty, never half-renamed).

    On error the temporary is removed and ``final`` is untouched. With ``overwrite``
    an existing ``final`` is replaced only after the new output is complete: a file
    in one atomic ``os.replace`` (``final`` never goes missing); a folder by moving
    the old one aside first (a kill in between leaves it as ``.NAME.XXXXXXXX.old``).
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (use --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        yield tmp
    except BaseException:
        remove_path(tmp)
        raise
    try:
        if sync and tmp.is_file():
            _fsync(tmp)  # data on disk before the name: a crash never shows an empty final
        if final.exists() and (final.is_dir() or tmp.is_dir()):  # os.replace needs two files
            old = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(final, old)
            os.replace(tmp, final)
            remove_path(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        remove_path(tmp)  # a failed rename leaves no temporary either (no-op once renamed)
        raise
    _fsync(final.parent)
