"""Argument checks shared by the operations.

Every public operation validates its inputs here first, so that a wrong shape or dtype is
reported with the argument's name instead of surfacing as a broadcasting error deep inside.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def float_array(name: str, a: object, ndim: int | Sequence[int] | None = None) -> NDArray:
    """Return `a` as a float32/float64 ndarray, or raise naming `name`.

    Lists of floats are converted; integer, bool, complex, float16 and object arrays are refused
    rather than silently cast, because a silent cast would hide a bug in the caller.
    """
    if isinstance(a, np.ndarray):
        arr = a
    else:
        try:
            arr = np.asarray(a)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} must be an array of floats, got {type(a).__name__}") from exc
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            want = " or ".join(str(d) for d in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {arr.shape}")
    return arr


def int_array(name: str, a: object) -> NDArray:
    """Return `a` as an integer ndarray, or raise naming `name`; bool does not count."""
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{name} must be an array of integers, got {type(a).__name__}") from exc
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    return arr


def nonempty(name: str, a: NDArray, *, batch: bool = True) -> None:
    """Refuse an axis of size 0, except the batch axis (axis 0) when `batch`.

    An empty batch has an empty result, which the operations return; an empty channel axis,
    image plane or kernel is nearly always a bug in the caller.
    """
    for axis in range(1 if batch else 0, a.ndim):
        if a.shape[axis] == 0:
            only = " (only the batch axis, axis 0, may be empty)" if batch else ""
            raise ValueError(f"{name} must have a non-empty axis {axis}{only}, got shape {a.shape}")


def int_tuple(name: str, value: object) -> tuple[int, ...]:
    """A sequence of ints (a tuple, a list or a 1-D integer array) as a tuple of ints."""
    sequence = isinstance(value, (tuple, list)) or (
        isinstance(value, np.ndarray) and value.ndim == 1
    )
    if not sequence or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}")
    return tuple(int(v) for v in value)


def same_dtype(name: str, a: NDArray, ref_name: str, ref: NDArray) -> None:
    """Refuse to mix float32 and float64, which would silently promote the result."""
    if a.dtype != ref.dtype:
        raise TypeError(
            f"{name} has dtype {a.dtype} but {ref_name} has dtype {ref.dtype}; "
            f"convert one of them with .astype()"
        )


def shape_is(name: str, a: NDArray, shape: tuple[int, ...]) -> None:
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")


def pair(name: str, value: int | Sequence[int], minimum: int) -> tuple[int, int]:
    """An int or an (h, w) pair of ints, each at least `minimum`, as a pair."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        values = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        values = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(values) < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")
    return values


def positive_int(name: str, value: object) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return int(value)
