"""Two backends for the same operations: "reference", the plain-NumPy pairs of the teaching
modules, and "fast", the compiled pairs of `skscratch.fast`.

A network runs on one backend, chosen where it is built and visible on it:

    model = SKResNeXt(config, backend="reference")   # the student's own functions, end to end
    model.backend                                    # "reference"
    model.set_backend("fast")                        # every module of the tree, as .eval() does

Modules built without a backend take the one of the innermost `use_backend` block, else
"fast". Code that calls the pairs directly takes them from a backend by name:

    ops = get_backend("fast")
    out, cache = ops.conv2d_forward(x, w, padding=1, groups=8)
    dx, dw, db = ops.conv2d_backward(dout, cache)

    with use_backend("reference") as ops:           # the same, and the default inside the block
        unit = SKUnit(64, groups=8, rng=rng)         # built on "reference"

`skscratch.conv2d_forward` and the other top-level functions are always the reference pairs:
nothing decides behind their back that other code runs in their place. A cache is only
understood by the backward of the backend whose forward made it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

BACKENDS = ("reference", "fast")
DEFAULT = "fast"


@dataclass(frozen=True)
class Backend:
    """The operation pairs a network runs, by name. Each backward takes its forward's cache."""

    name: str
    conv2d_forward: Callable
    conv2d_backward: Callable
    batchnorm_forward: Callable
    batchnorm_backward: Callable
    batchnorm_relu_forward: Callable  # batch norm then ReLU (relu=False: batch norm alone)
    batchnorm_relu_backward: Callable
    relu_forward: Callable
    add_relu_forward: Callable  # ReLU(x + residual); its backward is relu_backward
    relu_backward: Callable
    global_avg_pool_forward: Callable
    global_avg_pool_backward: Callable
    max_pool2d_forward: Callable
    max_pool2d_backward: Callable
    linear_forward: Callable
    linear_backward: Callable
    sk_unit_forward: Callable
    sk_unit_backward: Callable

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


def _reference() -> Backend:
    from skscratch import activations, batchnorm, conv, layers, linear, pooling, sk

    return Backend(
        "reference",
        conv.conv2d_forward,
        conv.conv2d_backward,
        batchnorm.batchnorm_forward,
        batchnorm.batchnorm_backward,
        layers.batchnorm_relu_forward,
        layers.batchnorm_relu_backward,
        activations.relu_forward,
        layers.add_relu_forward,
        activations.relu_backward,
        pooling.global_avg_pool_forward,
        pooling.global_avg_pool_backward,
        pooling.max_pool2d_forward,
        pooling.max_pool2d_backward,
        linear.linear_forward,
        linear.linear_backward,
        sk.sk_unit_forward,
        sk.sk_unit_backward,
    )


def _fast() -> Backend:
    # Imported on first use: numba loads only for code that asks for the fast backend.
    from skscratch import fast, linear, pooling

    return Backend(
        "fast",
        fast.conv2d_forward,
        fast.conv2d_backward,
        fast.batchnorm_forward,
        fast.batchnorm_backward,
        fast.batchnorm_relu_forward,
        fast.batchnorm_relu_backward,
        fast.relu_forward,
        fast.add_relu_forward,
        fast.relu_backward,
        pooling.global_avg_pool_forward,  # already one NumPy reduction or broadcast each
        pooling.global_avg_pool_backward,
        pooling.max_pool2d_forward,  # once per network, in the ImageNet stem
        pooling.max_pool2d_backward,
        linear.linear_forward,  # a matrix product either way
        linear.linear_backward,
        fast.sk_unit_forward,
        fast.sk_unit_backward,
    )


_built: dict[str, Backend] = {}
_current = contextvars.ContextVar("skscratch_backend", default=DEFAULT)


def get_backend(backend: str | Backend) -> Backend:
    """The backend of that name ("reference" or "fast"); a Backend is returned as it is."""
    if isinstance(backend, Backend):
        return backend
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend not in _built:
        _built[backend] = _reference() if backend == "reference" else _fast()
    return _built[backend]


def current_backend_name() -> str:
    """The name of the backend modules built here get, without loading it."""
    return _current.get()


def current_backend() -> Backend:
    """The backend that modules built here get: the innermost `use_backend`'s, else "fast"."""
    return get_backend(_current.get())


@contextmanager
def use_backend(backend: str | Backend) -> Iterator[Backend]:
    """Within the block, modules built without a backend are built on this one; yields it."""
    ops = get_backend(backend)
    token = _current.set(ops.name)
    try:
        yield ops
    finally:
        _current.reset(token)
