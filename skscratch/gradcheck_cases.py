"""The cases `python -m skscratch gradcheck` checks: every reference pair on random float64
shapes, the fast backend's pairs on the same inputs, the SK unit on either backend.

Each case is a forward, its backward, the inputs whose gradients are checked and the fixed
arguments, for `skscratch.gradcheck.check_gradients`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from skscratch.gradcheck import numerical_gradient, rel_error


class Case(NamedTuple):
    """One gradient check: forward(**inputs, **fixed) and its backward(dout, cache)."""

    name: str
    forward: Callable
    backward: Callable
    inputs: dict
    fixed: dict


def reference_cases(rng: np.random.Generator) -> list[Case]:
    """Every reference pair on random float64 shapes (the im2col gather with col2im as its
    backward: col2im is the adjoint that the gradient of a gather must be)."""
    from skscratch import activations, batchnorm, conv, im2col, linear, pooling

    def normal(*shape):
        return rng.standard_normal(shape)

    n = int(rng.integers(2, 4))
    groups = int(rng.integers(1, 4))
    c_in, c_out = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    h, w = (int(v) for v in rng.integers(5, 9, size=2))
    window = dict(stride=2, padding=1, dilation=2)
    x = normal(n, c_in, h, w)
    # Keep ReLU inputs away from its kink at 0, where finite differences straddle it.
    relu_x = normal(n, 3, 4, 4)
    relu_x += np.where(relu_x >= 0, 0.1, -0.1)
    return [
        Case(
            "im2col / col2im",
            lambda x: (im2col.im2col(x, 3, 2, **window), None),
            lambda dcols, _: im2col.col2im(dcols, x.shape, 3, 2, **window),
            {"x": x},
            {},
        ),
        Case(
            "conv2d 3x3 grouped",
            conv.conv2d_forward,
            conv.conv2d_backward,
            {"x": x, "w": normal(c_out, c_in // groups, 3, 3), "b": normal(c_out)},
            {"stride": 1, "padding": 1, "groups": groups},
        ),
        Case(
            "conv2d 3x3 dilated, stride 2",
            conv.conv2d_forward,
            conv.conv2d_backward,
            {"x": x, "w": normal(c_out, c_in // groups, 3, 3)},
            {"stride": 2, "padding": 2, "dilation": 2, "groups": groups},
        ),
        Case(
            "conv2d depthwise",
            conv.conv2d_forward,
            conv.conv2d_backward,
            {"x": x, "w": normal(c_in, 1, 3, 3)},
            {"padding": 1, "groups": c_in},
        ),
        Case(
            "batchnorm 2d (training)",
            batchnorm.batchnorm_forward,
            batchnorm.batchnorm_backward,
            {"x": normal(n, 3, 4, 5), "gamma": normal(3), "beta": normal(3)},
            {"running_mean": np.zeros(3), "running_var": np.ones(3)},
        ),
        Case(
            "batchnorm 1d (training)",
            batchnorm.batchnorm_forward,
            batchnorm.batchnorm_backward,
            {"x": normal(n + 3, 4), "gamma": normal(4), "beta": normal(4)},
            {"running_mean": np.zeros(4), "running_var": np.ones(4)},
        ),
        Case(
            "batchnorm 2d (eval)",
            batchnorm.batchnorm_forward,
            batchnorm.batchnorm_backward,
            {"x": normal(n, 3, 4, 5), "gamma": normal(3), "beta": normal(3)},
            {"running_mean": normal(3), "running_var": rng.uniform(0.5, 2, 3), "training": False},
        ),
        Case("relu", activations.relu_forward, activations.relu_backward, {"x": relu_x}, {}),
        Case(
            "global average pool",
            pooling.global_avg_pool_forward,
            pooling.global_avg_pool_backward,
            {"x": normal(n, 3, h, w)},
            {},
        ),
        Case(
            "max pool 3x3 stride 2",
            pooling.max_pool2d_forward,
            pooling.max_pool2d_backward,
            {"x": normal(n, 3, h + 2, w + 2)},
            {"kernel_size": 3, "stride": 2, "padding": 1},
        ),
        Case(
            "linear",
            linear.linear_forward,
            linear.linear_backward,
            {"x": normal(n, 7), "w": normal(5, 7), "b": normal(5)},
            {},
        ),
        Case(
            "branch softmax",
            activations.branch_softmax_forward,
            activations.branch_softmax_backward,
            {"logits": normal(n, 3, 6)},
            {},
        ),
    ]


def fast_cases(reference: list[Case], rng: np.random.Generator) -> list[tuple[Case, Case]]:
    """(fast case, the reference case it must agree with), on the inputs of the reference
    cases, for every pair the fast backend computes itself."""
    from skscratch import fast, layers

    by_name = {case.name: case for case in reference}
    pairs = []
    for name, case in by_name.items():
        if name.startswith("conv2d"):
            for algorithm in ("direct", "im2col"):
                fixed = case.fixed | {"algorithm": algorithm}
                fast_case = Case(f"{name} ({algorithm})", fast.conv2d_forward,
                                 fast.conv2d_backward, case.inputs, fixed)  # fmt: skip
                pairs.append((fast_case, case))
        elif name.startswith("batchnorm"):
            fast_case = case._replace(
                forward=fast.batchnorm_forward, backward=fast.batchnorm_backward
            )
            pairs.append((fast_case, case))
    bn = by_name["batchnorm 2d (training)"]
    x = bn.inputs["x"]
    relu_inputs = bn.inputs | {"x": x + np.where(x >= 0, 0.1, -0.1)}  # away from the kink
    bn_relu = Case("batchnorm + ReLU", layers.batchnorm_relu_forward,
                   layers.batchnorm_relu_backward, relu_inputs, bn.fixed)  # fmt: skip
    pairs.append(
        (bn_relu._replace(forward=fast.batchnorm_relu_forward,
                          backward=fast.batchnorm_relu_backward), bn_relu)
    )  # fmt: skip
    relu = by_name["relu"]
    pairs.append((relu._replace(forward=fast.relu_forward, backward=fast.relu_backward), relu))
    # The residual sum passes its gradient to both terms.
    residual = rng.standard_normal(relu.inputs["x"].shape)
    inputs = {"x": relu.inputs["x"] - residual, "residual": residual}
    pairs.append(
        (Case("residual + ReLU", fast.add_relu_forward,
              lambda d, cache: (fast.relu_backward(d, cache),) * 2, inputs, {}),
         Case("residual + ReLU", layers.add_relu_forward,
              lambda d, cache: (layers.relu_backward(d, cache),) * 2, inputs, {}))
    )  # fmt: skip
    return pairs


def sk_case(
    rng: np.random.Generator,
    backend: str = "reference",
    *,
    n: int = 4,
    channels: int = 8,
    size: tuple[int, int] = (6, 5),
    branches: int = 2,
    groups: int = 4,
    stride: int = 1,
    training: bool = True,
) -> Case:
    """The SK unit of `backend` as a check: x and every parameter random float64 values.

    With n = 2 the fuse step's batch norm maps each channel to about +-1 whatever its input, so
    the gradient of fc.weight is nearly zero and the check measures only rounding: use n >= 3.
    """
    from skscratch.backends import get_backend
    from skscratch.sk import sk_param_shapes

    ops = get_backend(backend)
    shapes = sk_param_shapes(channels, branches=branches, groups=groups, r=2, L=4)
    stats = {k: rng.uniform(0.5, 2.0, s) for k, s in shapes.items() if k.endswith("running_var")}
    stats |= {k: rng.normal(0, 0.1, s) for k, s in shapes.items() if k.endswith("running_mean")}
    inputs = {"x": rng.standard_normal((n, channels, *size))}
    inputs |= {k: rng.standard_normal(s) for k, s in shapes.items() if k not in stats}

    def forward(x, **params):
        return ops.sk_unit_forward(
            x, params | stats, stride=stride, groups=groups, training=training
        )

    def backward(dout, cache):
        dx, grads = ops.sk_unit_backward(dout, cache)
        return {"x": dx, **grads}

    return Case(f"SK unit M={branches} stride {stride}", forward, backward, inputs, {})


def cross_entropy_error(rng: np.random.Generator) -> dict[str, float]:
    """The loss returns its own gradient: check it against differences of the loss."""
    from skscratch.losses import softmax_cross_entropy

    logits = rng.standard_normal((4, 10))
    labels = rng.integers(0, 10, size=4)
    errors = {}
    for smoothing in (0.0, 0.2):  # one-hot targets, and label-smoothed ones
        _, analytic = softmax_cross_entropy(logits, labels, smoothing=smoothing)
        numeric = numerical_gradient(
            lambda z, s=smoothing: np.asarray(softmax_cross_entropy(z, labels, smoothing=s)[0]),
            logits,
            np.ones(()),
        )
        errors["logits" if smoothing == 0 else f"logits, smoothing {smoothing}"] = rel_error(
            analytic, numeric
        )
    return errors


def centred_difference_error(rng: np.random.Generator) -> dict[str, float]:
    """The gradient-checking exercise's centred difference, on sum(sin(x)), against cos(x)."""
    from skscratch.exercises.gradient_checking import centred_difference

    x = rng.standard_normal((3, 4))
    estimate = centred_difference(lambda v: float(np.sum(np.sin(v))), x)
    return {"x": rel_error(estimate, np.cos(x))}
