"""What each check runs of the student's code: one small program per kind of check.

A program takes the check's inputs (arrays, by name) and options (numbers, by name), calls the
student's functions, and returns their results by name: arrays, None where a function returns
None, or a string. It judges nothing: whether the results are right is decided elsewhere, from
expected values the program never sees (in the grader's own process, or from the visible
checks' stored answers). So a program cannot be talked into a pass, only into wrong results.

The programs import the student's functions inside their bodies, after the student copy is
first on the path. This module is part of the student copy too: `skscratch assignment check`
runs the same programs on the visible checks.
"""

from __future__ import annotations

import numpy as np


def im2col(inputs, options):
    from skscratch.im2col import im2col

    return {"cols": im2col(inputs["x"], **options)}


def col2im(inputs, options):
    from skscratch.im2col import col2im

    x_shape = tuple(int(v) for v in inputs["x_shape"])
    return {"dx": col2im(inputs["cols"], x_shape, **options)}


def conv_forward(inputs, options):
    from skscratch.conv import conv2d_forward

    out, _ = conv2d_forward(inputs["x"], inputs["w"], inputs.get("b"), **options)
    return {"out": out}


def conv_backward(inputs, options):
    from skscratch.conv import conv2d_backward, conv2d_forward

    input_grad = options.pop("input_grad", True)  # options is the caller's copy
    _, cache = conv2d_forward(inputs["x"], inputs["w"], inputs.get("b"), **options)
    dx, dw, db = conv2d_backward(inputs["dout"], cache, input_grad=input_grad)
    return {"dx": dx, "dw": dw, "db": db}


def _batchnorm(inputs, options):
    """The student's batchnorm_forward on the case's inputs: (out, mean, var, cache)."""
    from skscratch.batchnorm import batchnorm_forward

    names = ("x", "gamma", "beta", "running_mean", "running_var")
    return batchnorm_forward(*(inputs[name] for name in names), **options)


def batchnorm_forward(inputs, options):
    out, mean, var, _ = _batchnorm(inputs, options)
    return {"out": out, "running_mean": mean, "running_var": var}


def batchnorm_backward(inputs, options):
    from skscratch.batchnorm import batchnorm_backward

    dx, dgamma, dbeta = batchnorm_backward(inputs["dout"], _batchnorm(inputs, options)[3])
    return {"dx": dx, "dgamma": dgamma, "dbeta": dbeta}


def relu_backward(inputs, options):
    from skscratch.activations import relu_backward, relu_forward

    _, cache = relu_forward(inputs["x"])
    return {"dx": relu_backward(inputs["dout"], cache)}


def pool_backward(inputs, options):
    from skscratch.pooling import global_avg_pool_backward, global_avg_pool_forward

    _, cache = global_avg_pool_forward(inputs["x"])
    return {"dx": global_avg_pool_backward(inputs["dout"], cache)}


def linear_backward(inputs, options):
    from skscratch.linear import linear_backward, linear_forward

    _, cache = linear_forward(inputs["x"], inputs["w"], inputs["b"])
    dx, dw, db = linear_backward(inputs["dout"], cache)
    return {"dx": dx, "dw": dw, "db": db}


def branch_softmax_forward(inputs, options):
    from skscratch.activations import branch_softmax_forward

    a, _ = branch_softmax_forward(inputs["z"])
    return {"a": a}


def branch_softmax_backward(inputs, options):
    from skscratch.activations import branch_softmax_backward, branch_softmax_forward

    _, cache = branch_softmax_forward(inputs["z"])
    return {"dz": branch_softmax_backward(inputs["da"], cache)}


def _sk_params(inputs):
    return {k.removeprefix("p."): v for k, v in inputs.items() if k.startswith("p.")}


def sk_unit_forward(inputs, options):
    from skscratch.sk import sk_unit_forward

    out, cache = sk_unit_forward(inputs["x"], _sk_params(inputs), **options)
    return {"out": out}


def sk_unit_backward(inputs, options):
    from skscratch.sk import sk_unit_backward, sk_unit_forward

    _, cache = sk_unit_forward(inputs["x"], _sk_params(inputs), **options)
    dx, grads = sk_unit_backward(inputs["dout"], cache)
    if not isinstance(grads, dict):
        raise TypeError(f"sk_unit_backward returned {type(grads).__name__} for the parameters' "
                        f"gradients, not a dict")  # fmt: skip
    return {"dx": dx} | {f"d.{name}": g for name, g in grads.items()}


def softmax_ce(inputs, options):
    from skscratch.losses import softmax_cross_entropy

    loss, dlogits = softmax_cross_entropy(inputs["logits"], inputs["labels"], **options)
    return {"loss": np.asarray(loss, dtype=np.float64), "dlogits": dlogits}


def centred_difference(inputs, options):
    from skscratch.exercises.gradient_checking import centred_difference

    x = inputs["x"].copy()
    grad = centred_difference(lambda v: float(np.sum(np.sin(v) * v**2)), x)
    return {"grad": grad, "x_after": x}


def best_float32_step(inputs, options):
    from skscratch.exercises.gradient_checking import best_float32_step

    result = best_float32_step(np.exp, np.exp, float(inputs["x0"]))
    return {"step": None if result is None else np.float64(result[0])}


def find_the_planted_bug(inputs, options):
    from skscratch.exercises.gradient_checking import find_the_planted_bug

    return {"name": find_the_planted_bug()}


def relu_kink_entries(inputs, options):
    from skscratch.exercises.gradient_checking import relu_kink_entries

    got = relu_kink_entries(inputs["x"], float(inputs["h"]))
    return {"kink": None if got is None else np.asarray(got, dtype=bool)}


PROGRAMS = {
    f.__name__: f
    for f in (
        im2col, col2im, conv_forward, conv_backward, batchnorm_forward, batchnorm_backward,
        relu_backward, pool_backward, linear_backward, branch_softmax_forward,
        branch_softmax_backward, sk_unit_forward, sk_unit_backward, softmax_ce,
        centred_difference, best_float32_step, find_the_planted_bug, relu_kink_entries,
    )
}  # fmt: skip
