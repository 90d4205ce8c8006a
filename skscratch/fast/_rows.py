"""Small loops over rows that the compiled kernels share, inlined where they are called.

Each takes 1-D views. Written as explicit loops over a view (rather than slices assigned from
slices) so that the compiler vectorises them without creating temporaries.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, inline="always")
def _valid_range(offset: int, stride: int, size: int, n_out: int) -> tuple[int, int]:
    """Output indices o in [lo, hi) whose input index o * stride + offset lies in [0, size)."""
    lo = max(0, -(offset // stride))
    hi = min(n_out, (size - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


@njit(cache=True, inline="always")
def _copy_every(dst, src, start, step):
    """dst[k] = src[start + k * step] for every k of dst."""
    if step == 1:
        s = src[start : start + dst.size]  # a view indexed by the loop variable vectorises
        for k in range(dst.size):
            dst[k] = s[k]
    else:
        for k in range(dst.size):
            dst[k] = src[start + k * step]


@njit(cache=True, inline="always")
def _add_every(dst, start, step, src):
    """dst[start + k * step] += src[k] for every k of src."""
    if step == 1:
        d = dst[start : start + src.size]
        for k in range(src.size):
            d[k] += src[k]
    else:
        for k in range(src.size):
            dst[start + k * step] += src[k]


@njit(cache=True, inline="always")
def _zero(a):
    for k in range(a.size):
        a[k] = 0


@njit(cache=True, inline="always")
def _put(dst, src, add):
    """dst[:] = src, or dst += src if add (1-D, of one length)."""
    for k in range(dst.size):
        dst[k] = dst[k] + src[k] if add else src[k]
