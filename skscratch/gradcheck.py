"""Gradient checking: compare a hand-written backward pass with finite differences.

For an operation out = f(x) and a random upstream gradient dout, the scalar
L(x) = sum(f(x) * dout) has gradient dL/dx = backward(dout). Its centred difference

    dL/dx[i] ~ (L(x + h e_i) - L(x - h e_i)) / (2h)

has error O(h^2) from the curvature of f plus O(eps * |L| / h) from rounding, so h ~ 1e-6 suits
float64 and float32 is hopeless for fine checks (eps ~ 1e-7): check gradients in float64.

A random dout matters: with dout = 1 everywhere, L is the sum of a batch-norm output, which is
the same for every x (the normalised values of a channel sum to zero). Then the true dx is 0, and
so is the variance term xhat * mean(dxhat * xhat) of the backward pass: a backward pass that
forgets that term still "passes".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from numpy.typing import NDArray


def numerical_gradient(
    f: Callable[[NDArray], NDArray],
    x: NDArray,
    dout: NDArray,
    *,
    h: float = 1e-6,
    indices: NDArray | None = None,
) -> NDArray:
    """Centred-difference gradient of sum(f(x) * dout) with respect to x.

    f: a function of x alone; x: any shape, float64; dout: the shape of f(x).
    indices: flat indices of x to perturb (others are left 0), for sampling large tensors.
    Returns an array shaped like x. x itself is not modified.
    """
    x = np.array(x, dtype=x.dtype, copy=True)
    flat = x.reshape(-1)
    grad = np.zeros_like(flat)
    for i in range(flat.size) if indices is None else indices:
        old = flat[i]
        flat[i] = old + h
        plus = np.sum(f(x) * dout)
        flat[i] = old - h
        minus = np.sum(f(x) * dout)
        flat[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad.reshape(x.shape)


def rel_error(analytic: NDArray, numeric: NDArray) -> float:
    """Largest difference relative to the size of the gradient: max|a - n| / max(|a|, |n|).

    Scaling by the largest entry rather than entry by entry keeps the measure meaningful where
    single gradient entries are (near) zero. Two all-zero gradients have error 0.
    """
    analytic = np.asarray(analytic, dtype=np.float64)
    numeric = np.asarray(numeric, dtype=np.float64)
    if analytic.shape != numeric.shape:
        raise ValueError(f"gradient shapes differ: {analytic.shape} vs {numeric.shape}")
    if analytic.size == 0:
        return 0.0
    scale = max(np.abs(analytic).max(), np.abs(numeric).max())
    if not np.isfinite(scale):
        return float("inf")
    if scale == 0.0:
        return 0.0
    return float(np.abs(analytic - numeric).max() / scale)


def check_gradients(
    forward: Callable,
    backward: Callable,
    inputs: Mapping[str, NDArray],
    *,
    fixed: Mapping[str, object] | None = None,
    h: float = 1e-6,
    max_entries: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Check every gradient of a forward/backward pair; return {input name: max relative error}.

    forward(**inputs, **fixed) returns (out, cache) or (out, ..., cache): the output first and
    the cache last (as batchnorm_forward, which also returns running statistics).
    backward(dout, cache) returns one gradient per input, in the order of `inputs`, as a tuple
    (or a single array for one input, or a dict keyed by input name); a None gradient is
    skipped. max_entries: check at most this many randomly chosen entries of each input.
    """
    fixed = dict(fixed or {})
    rng = np.random.default_rng(seed)
    names = list(inputs)
    values = {name: np.asarray(inputs[name]) for name in names}
    result = forward(**values, **fixed)
    out, cache = result[0], result[-1]
    dout = rng.standard_normal(np.shape(out)).astype(np.asarray(out).dtype)
    grads = backward(dout, cache)
    if isinstance(grads, np.ndarray):
        grads = (grads,)
    if not isinstance(grads, Mapping):
        grads = dict(zip(names, grads, strict=False))

    errors = {}
    for name in names:
        analytic = grads.get(name)
        if analytic is None:
            continue

        def f(value, name=name):
            return forward(**{**values, name: value}, **fixed)[0]

        indices = None
        size = values[name].size
        if max_entries is not None and size > max_entries:
            indices = rng.choice(size, max_entries, replace=False)
        numeric = numerical_gradient(f, values[name], dout, h=h, indices=indices)
        if indices is not None:
            analytic = np.asarray(analytic).reshape(-1)[indices]
            numeric = numeric.reshape(-1)[indices]
        errors[name] = rel_error(analytic, numeric)
    return errors


def _operation_cases(rng: np.random.Generator) -> list[tuple[str, Callable, Callable, dict, dict]]:
    """(name, forward, backward, inputs, fixed) for every operation, on random float64 shapes."""
    # Imported here: the operations' tests import this module, not the other way round.
    from skscratch import activations, batchnorm, conv, linear, pooling

    def normal(*shape):
        return rng.standard_normal(shape)

    n = int(rng.integers(2, 4))
    groups = int(rng.integers(1, 4))
    c_in, c_out = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    h, w = (int(v) for v in rng.integers(5, 9, size=2))
    # Keep ReLU inputs away from its kink at 0, where finite differences straddle it.
    relu_x = normal(n, 3, 4, 4)
    relu_x += np.where(relu_x >= 0, 0.1, -0.1)
    return [
        (
            "conv2d 3x3 grouped",
            conv.conv2d_forward,
            conv.conv2d_backward,
            {
                "x": normal(n, c_in, h, w),
                "w": normal(c_out, c_in // groups, 3, 3),
                "b": normal(c_out),
            },
            {"stride": 1, "padding": 1, "groups": groups},
        ),
        (
            "conv2d 3x3 dilated, stride 2",
            conv.conv2d_forward,
            conv.conv2d_backward,
            {"x": normal(n, c_in, h, w), "w": normal(c_out, c_in // groups, 3, 3)},
            {"stride": 2, "padding": 2, "dilation": 2, "groups": groups},
        ),
        (
            "conv2d depthwise",
            conv.conv2d_forward,
            conv.conv2d_backward,
            {"x": normal(n, c_in, h, w), "w": normal(c_in, 1, 3, 3)},
            {"padding": 1, "groups": c_in},
        ),
        (
            "batchnorm 2d (training)",
            batchnorm.batchnorm_forward,
            batchnorm.batchnorm_backward,
            {"x": normal(n, 3, 4, 5), "gamma": normal(3), "beta": normal(3)},
            {"running_mean": np.zeros(3), "running_var": np.ones(3)},
        ),
        (
            "batchnorm 1d (training)",
            batchnorm.batchnorm_forward,
            batchnorm.batchnorm_backward,
            {"x": normal(n + 3, 4), "gamma": normal(4), "beta": normal(4)},
            {"running_mean": np.zeros(4), "running_var": np.ones(4)},
        ),
        (
            "batchnorm 2d (eval)",
            batchnorm.batchnorm_forward,
            batchnorm.batchnorm_backward,
            {"x": normal(n, 3, 4, 5), "gamma": normal(3), "beta": normal(3)},
            {"running_mean": normal(3), "running_var": rng.uniform(0.5, 2, 3), "training": False},
        ),
        ("relu", activations.relu_forward, activations.relu_backward, {"x": relu_x}, {}),
        (
            "global average pool",
            pooling.global_avg_pool_forward,
            pooling.global_avg_pool_backward,
            {"x": normal(n, 3, h, w)},
            {},
        ),
        (
            "linear",
            linear.linear_forward,
            linear.linear_backward,
            {"x": normal(n, 7), "w": normal(5, 7), "b": normal(5)},
            {},
        ),
        (
            "branch softmax",
            activations.branch_softmax_forward,
            activations.branch_softmax_backward,
            {"logits": normal(n, 3, 6)},
            {},
        ),
    ]


def _cross_entropy_error(rng: np.random.Generator) -> dict[str, float]:
    """The loss returns its own gradient: check it against differences of the loss."""
    from skscratch.losses import softmax_cross_entropy

    logits = rng.standard_normal((4, 10))
    labels = rng.integers(0, 10, size=4)
    _, analytic = softmax_cross_entropy(logits, labels)
    numeric = numerical_gradient(
        lambda z: np.asarray(softmax_cross_entropy(z, labels)[0]), logits, np.ones(())
    )
    return {"logits": rel_error(analytic, numeric)}


def check_sk_unit(
    rng: np.random.Generator,
    *,
    n: int = 4,
    channels: int = 8,
    size: tuple[int, int] = (6, 5),
    branches: int = 2,
    groups: int = 4,
    stride: int = 1,
    training: bool = True,
) -> dict[str, float]:
    """Gradient check of the SK unit (x and every parameter) on random float64 values.

    With n = 2 the fuse step's batch norm maps each channel to about +-1 whatever its input, so
    the gradient of fc.weight is nearly zero and the check measures only rounding: use n >= 3.
    """
    from skscratch.sk import sk_param_shapes, sk_unit_backward, sk_unit_forward

    shapes = sk_param_shapes(channels, branches=branches, groups=groups, r=2, L=4)
    stats = {k: rng.uniform(0.5, 2.0, s) for k, s in shapes.items() if k.endswith("running_var")}
    stats |= {k: rng.normal(0, 0.1, s) for k, s in shapes.items() if k.endswith("running_mean")}
    inputs = {"x": rng.standard_normal((n, channels, *size))}
    inputs |= {k: rng.standard_normal(s) for k, s in shapes.items() if k not in stats}

    def forward(x, **params):
        return sk_unit_forward(x, params | stats, stride=stride, groups=groups, training=training)

    def backward(dout, cache):
        dx, grads = sk_unit_backward(dout, cache)
        return {"x": dx, **grads}

    return check_gradients(forward, backward, inputs, seed=int(rng.integers(2**31)))


NOT_WRITTEN = "not written yet"


def check_all_operations(seed: int = 0) -> list[tuple[str, str, float]]:
    """Run the gradient check of every operation; return rows (operation, input, max rel error).

    An operation whose code raises NotImplementedError (in a course assignment's student copy)
    gives one row (operation, NOT_WRITTEN, nan) instead."""
    rng = np.random.default_rng(seed)
    checks = [
        (name, lambda f=forward, b=backward, i=inputs, x=fixed: check_gradients(
            f, b, i, fixed=x, seed=seed
        ))
        for name, forward, backward, inputs, fixed in _operation_cases(rng)
    ]  # fmt: skip
    checks.append(("softmax cross-entropy", lambda: _cross_entropy_error(rng)))
    for branches, stride in [(2, 1), (3, 2)]:
        checks.append(
            (
                f"SK unit M={branches} stride {stride}",
                lambda m=branches, s=stride: check_sk_unit(rng, branches=m, stride=s),
            )
        )
    rows = []
    for name, check in checks:
        try:
            rows += [(name, input_name, err) for input_name, err in check().items()]
        except NotImplementedError:
            rows.append((name, NOT_WRITTEN, float("nan")))
    return rows
