"""Hand freed heap memory back to the operating system.

glibc keeps memory freed by large temporaries (the thumbnail's tissue detection,
the GeoJSON's traced rings) in its heap, where the process's RSS still counts it;
``malloc_trim`` returns it between a slide's phases. And glibc raises its mmap
threshold after each large block it frees (up to 32 MB), so that later blocks of a
few MB (per-region tensors and reads, thousands on a large slide) are carved from
the worker threads' heaps and fragment them; a fixed threshold keeps such blocks
mapped on their own and returned when freed (`fixed_mmap_threshold`). Elsewhere
(macOS, musl) both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from functools import cache

__all__ = ["MMAP_THRESHOLD_BYTES", "fixed_mmap_threshold", "release_freed_memory"]

log = logging.getLogger(__name__)

#: Blocks of at least this many bytes are mapped on their own (see the module notes).
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's <malloc.h>


@cache
def _glibc_function(name: str) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return getattr(libc, name)  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc
        return None


def fixed_mmap_threshold(nbytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Map blocks of ``nbytes`` or more on their own, in this process (glibc
    ``mallopt``) and in the processes it starts (``MALLOC_MMAP_THRESHOLD_``), unless
    the environment already sets that variable. For an application's entry point: it
    changes the whole process's allocator. True if the threshold was set here."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    mallopt = _glibc_function("mallopt")
    if mallopt is None or not mallopt(_M_MMAP_THRESHOLD, int(nbytes)):
        return False
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(int(nbytes))
    log.debug("mmap threshold fixed at %d bytes", nbytes)
    return True


def release_freed_memory() -> bool:
    """Return the heap's free pages to the system (glibc ``malloc_trim(0)``); True if
    anything was released, False when nothing was or the C library cannot."""
    trim = _glibc_function("malloc_trim")
    if trim is None:
        return False
    released = bool(trim(0))
    log.debug("malloc_trim released memory: %s", released)
    return released
