"""Keeping large freed buffers for reuse, as pyarrow's memory pool does.

Every batch of rows arrives in a buffer libzmq allocates (megabytes), and a collect's columns
are allocated once per call. glibc returns such buffers to the operating system when they are
freed (each is its own `mmap` above the mmap threshold, and the heap's top is trimmed above
the trim threshold), so the next call faults every page in again and the kernel zeroes it:
measured here, that was 40% of a 2M-row collect's time. Raising both thresholds keeps freed
buffers in the process for the next call. The cost is memory held after a large result is
dropped: up to `TRIM_BYTES` per malloc arena above what is in use.

`TESSERA_MALLOC=default` in the environment leaves the allocator as it is.
"""
from __future__ import annotations

import ctypes
import os
import sys

#: Allocations up to this size come from the heap (reusable) rather than their own mmap.
MMAP_THRESHOLD_BYTES = 64 << 20
#: Free memory at the top of a heap beyond this is returned to the operating system.
TRIM_BYTES = 128 << 20

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_tuned = False


def tune_allocator() -> bool:
    """Raises glibc's mmap and trim thresholds once per process; True when they were set
    (False on other C libraries and platforms, or when `TESSERA_MALLOC=default`)."""
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("TESSERA_MALLOC", "") == "default":
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl and others have no mallopt of this kind
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _tuned = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))
    return _tuned
