"""Keep freed memory for reuse, so that training steps do not page-fault.

glibc's malloc serves every request above 32 MiB with a fresh mmap and returns it to the system
on free. A training step allocates dozens of such arrays (a batch of 128 activations of
64 x 32 x 32 is 32 MiB) and the kernel must then zero and map every page again each step: a
direct convolution measured 50 ms that way against 13 ms with reused memory. Turning off mmap
for large blocks and raising the trim threshold makes freed blocks stay in the heap for the next
step. This changes the whole process's allocator, so only the training and benchmark entry
points ask for it; it does nothing where glibc is not the C library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def reuse_freed_memory(keep_bytes: int = 2**30) -> bool:
    """Ask glibc to serve large blocks from the heap and keep up to `keep_bytes` of freed
    memory. Returns True if the allocator accepted."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, keep_bytes))
