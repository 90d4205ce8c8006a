"""Fully connected layer, as `torch.nn.Linear`: out = x @ W.T + b.

x: (N, D_in), W: (D_out, D_in), b: (D_out,). Backward:

    dx = dout @ W          (N, D_in)
    dW = dout.T @ x        (D_out, D_in)
    db = sum_n dout[n]     (D_out,)
"""

from __future__ import annotations

from typing import NamedTuple

from numpy.typing import NDArray

from skscratch._checks import float_array, nonempty, same_dtype, shape_is


class LinearCache(NamedTuple):
    x: NDArray
    w: NDArray
    has_bias: bool


def linear_forward(x: NDArray, w: NDArray, b: NDArray | None = None) -> tuple[NDArray, LinearCache]:
    """x: (N, D_in); w: (D_out, D_in); b: (D_out,) or None. Returns (out (N, D_out), cache)."""
    x = float_array("x", x, ndim=2)
    w = float_array("w", w, ndim=2)
    nonempty("x", x)
    nonempty("w", w, batch=False)
    same_dtype("w", w, "x", x)
    if w.shape[1] != x.shape[1]:
        raise ValueError(
            f"w must have shape (D_out, D_in) with D_in = {x.shape[1]} (from x), got {w.shape}"
        )
    out = x @ w.T
    if b is not None:
        b = float_array("b", b, ndim=1)
        same_dtype("b", b, "x", x)
        shape_is("b", b, (w.shape[0],))
        out += b
    return out, LinearCache(x, w, b is not None)


def linear_backward(dout: NDArray, cache: LinearCache) -> tuple[NDArray, NDArray, NDArray | None]:
    """dout: (N, D_out). Returns dx (N, D_in), dw (D_out, D_in), db (D_out,) or None."""
    x, w, has_bias = cache
    dout = float_array("dout", dout, ndim=2)
    same_dtype("dout", dout, "x", x)
    shape_is("dout", dout, (x.shape[0], w.shape[0]))
    # See the module docstring; db only when the forward had a bias.
    # BEGIN SOLUTION
    dx = dout @ w
    dw = dout.T @ x
    db = dout.sum(axis=0) if has_bias else None
    return dx, dw, db
    # END SOLUTION
