"""Advisory file locks (``fcntl.flock``) that leave nothing behind.

A lock is a hidden file ``OUT/.NAME.lock``; it is removed by its holder on release
(while still held), and a process that got a lock on a file that was removed
meanwhile tries again, so at most one process holds the lock of a name at a time. A
killed holder's lock is released by the kernel; its file stays until the next holder
removes it. Locks hold between processes on one machine and on file systems whose
``flock`` works across machines (local disks, NFS v4 with lock support).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LockBusy", "file_lock", "lock_path"]

log = logging.getLogger(__name__)


class LockBusy(Exception):
    """The lock is held by another process (raised only when not waiting)."""


def lock_path(folder: Path, name: str) -> Path:
    """The lock file of ``name`` in ``folder`` (hidden, so never taken for an output)."""
    return folder / f".{name}.lock"


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block.

    Raises
    ------
    LockBusy
        ``wait`` is False and another process holds the lock.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise LockBusy(str(path)) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder before us removed this file: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
