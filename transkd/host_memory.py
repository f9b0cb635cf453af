"""Keep freed host memory for reuse instead of handing it back to the kernel after every op.

glibc serves every block of 32 MiB or more (its largest mmap threshold) with a fresh ``mmap`` and
unmaps it on ``free``. A segmentation network allocates such blocks on every forward: one
256×128×256 fp32 map of SegFormer's head at 512×1024 is exactly 32 MiB. Each one comes back as
new pages that the kernel must fault in and zero on first touch, so at 512×1024 a SegFormer-B0
forward took about 59,000 page faults and 1.6× the time it takes with the memory kept (421 →
258 ms, 2 threads, AMD EPYC; ``benchmarks`` and docs/performance.md have the measurements).

:func:`reuse_freed_memory` tells glibc to serve large blocks from its heap and never to trim the
heap, so a block freed by one op is reused by the next. The process's resident memory then stays
at its peak instead of shrinking between ops; the peak itself is what training and inference
need anyway. The command-line tool calls it at start-up; ``TRANSKD_HOST_ALLOCATOR=system`` keeps
the C library's defaults. Off glibc (macOS, Windows, musl) nothing changes. A process that
preloads jemalloc or tcmalloc is not affected either: those allocators never read these settings.
"""

from __future__ import annotations

import ctypes
import os
import platform

#: Environment variable: ``system`` keeps the C library's allocation settings.
ENV_VAR = "TRANSKD_HOST_ALLOCATOR"

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_NEVER_TRIM = (1 << (8 * ctypes.sizeof(ctypes.c_int) - 1)) - 1  # mallopt takes an int

_state = "system"


def reuse_freed_memory() -> str:
    """Switch glibc to keeping freed memory for reuse (see the module docstring); idempotent.

    Returns :func:`host_allocator`'s description of the state afterwards."""
    global _state
    if os.environ.get(ENV_VAR, "").strip().lower() == "system":
        _state = f"system ({ENV_VAR}=system)"
        return _state
    if _state.startswith("reuse"):
        return _state
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return _state
    # mallopt returns 1 on success; both must hold, or large blocks would still be unmapped.
    if mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1:
        _state = "reuse (glibc: large blocks from the heap, freed memory kept)"
    return _state


def host_allocator() -> str:
    """How host memory is allocated in this process, for the record of a measurement:
    ``reuse (...)`` after :func:`reuse_freed_memory`, else ``system`` (the C library's defaults)."""
    return _state


def _glibc_mallopt():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt
