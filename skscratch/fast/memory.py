"""Memory the fast backend reuses: large arrays come from a pool of blocks that return to it
when the last array made from them is gone.

A fresh large array is slow to fill the first time: glibc hands every block above its mmap
threshold (up to 32 MiB) straight from the operating system and returns it on free, so each
page of it is mapped and zeroed again on first write (a grouped 3x3 convolution of 64 x 64 x
32 x 32 float32 measured 7.5 ms so, against 4.0 ms in memory already touched). Changing glibc's
settings would change the whole process (`skscratch.tune_process` does that, for the command
line). Instead, `empty` serves the fast pairs' large arrays (outputs and scratch) from blocks
kept here: an array is an ordinary NumPy array whose memory belongs to a `_Lease`; when the last
array or view of it is released, the lease gives its block back for the next array of that size.
A training step asks for the same sizes every step, so after the first it faults in no memory.

At most KEEP_BYTES of free blocks are kept; `release()` hands them all back to the allocator.
In a process whose allocator already keeps freed memory (after `skscratch.tune_process()`, as
the command line runs), the pool steps aside: glibc's heap then serves the same purpose and,
unlike blocks kept by size, lends freed memory to a request of any size, which keeps a training
step's peak memory lower.
"""

from __future__ import annotations

import threading

import numpy as np
from numpy.typing import DTypeLike, NDArray

from skscratch import tuning

KEEP_BYTES = 2**30  # free blocks kept for reuse, at most
MIN_BYTES = 2**20  # smaller arrays come from np.empty: malloc reuses those itself
_PAGE = 4096

_free: dict[int, list[NDArray]] = {}  # block size -> free blocks (uint8 arrays) of that size
_kept = 0  # bytes in _free
_lock = threading.RLock()  # a lease may be released (__del__) while this thread holds it


class _Lease:
    """Holds one block while any array made from it is alive (NumPy keeps it as their base)."""

    __slots__ = ("block", "__array_interface__")

    def __init__(self, block: NDArray):
        self.block = block
        self.__array_interface__ = block.__array_interface__

    def __del__(self):
        try:
            _give_back(self.block)
        except Exception:  # noqa: BLE001 - at interpreter exit the module may be gone
            pass


def empty(shape: tuple[int, ...], dtype: DTypeLike) -> NDArray:
    """An uninitialised C-contiguous array, as np.empty, in reused memory when it is large."""
    global _kept
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < MIN_BYTES or tuning.freed_memory_kept():
        return np.empty(shape, dtype)
    size = -(-nbytes // _PAGE) * _PAGE
    with _lock:
        blocks = _free.get(size)
        block = blocks.pop() if blocks else None
        if block is not None:
            _kept -= size
    if block is None:
        block = np.empty(size, np.uint8)
    return np.asarray(_Lease(block))[:nbytes].view(dtype).reshape(shape)


def _give_back(block: NDArray) -> None:
    global _kept
    with _lock:
        if _kept + block.nbytes <= KEEP_BYTES:
            _free.setdefault(block.nbytes, []).append(block)
            _kept += block.nbytes


def kept_bytes() -> int:
    """Bytes of free blocks kept for reuse."""
    return _kept


def release() -> None:
    """Hand every free block back to the allocator (arrays in use are not touched)."""
    global _kept
    with _lock:
        _free.clear()
        _kept = 0
