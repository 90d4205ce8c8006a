"""Process-wide settings that make training faster here, applied only when asked for.

Importing skscratch changes nothing outside it. The command line (`python -m skscratch ...`)
calls `tune_process()` before it loads NumPy; a script or notebook may call it too, first thing.
What it changes, for the whole process and the processes it starts:

- OPENBLAS_THREAD_TIMEOUT=18. After every matrix product OpenBLAS's threads spin for up to 2^28
  cycles (about 0.1 s) waiting for the next one. In a training step a matrix product is followed
  by compiled kernels whose own threads then share the cores with the spinning ones. 2^18 cycles
  (below a millisecond) keeps them awake between the per-image products of one 1x1 convolution,
  but not over the kernels that follow: on 2 cores a training step of an earlier default network
  (batch 128) ran at 143 images/s with the default, 200 with 2^4 cycles and 225 with 2^18.
  OpenBLAS reads it when it loads, with NumPy: it has no effect once NumPy is imported.
- OMP_WAIT_POLICY=PASSIVE. numba's parallel loops run on OpenMP threads, which by default spin
  after every loop, waiting for the next, and take the cores that OpenBLAS's threads need: a
  30 microsecond kernel was measured taking 16 ms. Read when the OpenMP runtime starts (the
  first parallel kernel). It reaches every library that uses OpenMP, PyTorch included.
- glibc's allocator keeps freed memory for reuse (`reuse_freed_memory`). It serves every request
  above 32 MiB with a fresh mmap and returns it to the system on free; a training step allocates
  dozens of such arrays, and the kernel must zero and map every page again each step (a direct
  convolution measured 50 ms that way against 13 ms with reused memory). This holds up to 1 GiB
  of freed memory in the process instead of returning it.

An environment variable that is already set is left as it is: the user's choice wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

SETTINGS = {"OPENBLAS_THREAD_TIMEOUT": "18", "OMP_WAIT_POLICY": "PASSIVE"}

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_freed_memory_kept = False  # set once glibc has accepted reuse_freed_memory's settings


def tune_process() -> list[str]:
    """Apply the settings above to this process; return a line for each that took effect."""
    done = []
    for name, value in SETTINGS.items():
        if name in os.environ:
            continue
        os.environ[name] = value
        if name == "OPENBLAS_THREAD_TIMEOUT" and "numpy" in sys.modules:
            continue  # set, but too late: OpenBLAS read the variable when NumPy loaded
        done.append(f"{name}={value}")
    if reuse_freed_memory():
        done.append("glibc keeps up to 1 GiB of freed memory for reuse")
    return done


def reuse_freed_memory(keep_bytes: int = 2**30) -> bool:
    """Ask glibc to serve large blocks from the heap and keep up to `keep_bytes` of freed
    memory. Returns True if the allocator accepted (False where glibc is not the C library)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    global _freed_memory_kept
    if bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, keep_bytes)):
        _freed_memory_kept = True
    return _freed_memory_kept


def freed_memory_kept() -> bool:
    """Whether this process's allocator keeps freed memory for reuse (`reuse_freed_memory`)."""
    return _freed_memory_kept
