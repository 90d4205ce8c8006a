"""A fuzz of every public operation and module, with one argument corrupted.

Each test builds a valid call from strategies that only build valid cases (as the other tests
do), then picks one argument, or none, and one way to corrupt it:

- a dtype the package refuses: integers, bool, float16, complex, object;
- the other float dtype (float32 for float64 and back), or a nested Python list of the values;
- a size-0 axis, an axis too many, an axis too few;
- NaN or infinite values;
- the same values as a non-contiguous view (strided, Fortran-ordered or reversed) or as a
  read-only array;
- a ragged nested list, or None.

The call must then either succeed, with the result of the nested-loop references of
tests/reference.py, or raise ValueError or TypeError with a message that names the corrupted
argument. Any other exception fails the test, and so does a change to any argument. Which of the
two outcomes is required is spelled out in `expected_outcome`; it follows the package's rules:

- only float32 and float64 arrays are accepted, and the two are not mixed; a list of floats is
  converted to float64;
- the batch axis (axis 0) may be empty where images are independent, and the result is then
  empty: convolution, im2col, linear, pooling, the branch softmax, and batch norm and the SK unit
  in evaluation mode. Batch norm in training mode needs values to average and the cross-entropy
  is a mean over examples, so they refuse an empty batch. No other axis may be empty, except in
  ReLU, which is elementwise and takes any shape;
- NaN and inf are not looked for: they propagate, and only the result's shape and dtype are
  checked.

A backward result is compared with the same backward on a plain (C-contiguous, writable) copy of
the same values; the gradient checks of test_ops.py establish that one.

The pairs that each backend has its own of (convolution, with every algorithm of the fast one,
batch norm, ReLU, im2col / col2im, the SK unit) and the modules run on a backend drawn with the
other arguments: the same rules hold for both.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import reference
from conftest import (
    CONV_VERSIONS,
    any_shapes,
    batchnorm_cases,
    branch_shapes,
    classification_shapes,
    conv_cases,
    conv_pair,
    linear_shapes,
    nchw_shapes,
    seeds,
    windows,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from skscratch import (
    branch_softmax_backward,
    branch_softmax_forward,
    global_avg_pool_backward,
    global_avg_pool_forward,
    linear_backward,
    linear_forward,
    nn,
    softmax_cross_entropy,
)
from skscratch.backends import BACKENDS, get_backend
from skscratch.fast import im2col as fast_im2col
from skscratch.im2col import col2im, im2col
from skscratch.sk import sk_param_shapes

KINDS = (
    "none",
    "int8",
    "int64",
    "uint8",
    "bool",
    "float16",
    "complex",
    "object",
    "other float",
    "list",
    "empty axis",
    "extra axis",
    "missing axis",
    "nan",
    "inf",
    "non-contiguous",
    "read-only",
    "ragged list",
    "None",
)
REFUSED_DTYPES = {
    "int8": np.int8,
    "int64": np.int64,
    "uint8": np.uint8,
    "bool": np.bool_,
    "float16": np.float16,
    "complex": np.complex128,
    "object": object,
}
dtypes = st.sampled_from([np.float32, np.float64])
backends = st.sampled_from(BACKENDS).map(get_backend)
# NaN and inf are among the inputs on purpose: numpy's warnings about them are expected.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
# Every corruption is a test of its own (by parametrize), which hypothesis gives a few examples:
# shapes, options, dtype and the argument corrupted. The SK unit and the modules, which run
# several operations and references per example, get fewer.
fuzz_settings = settings(max_examples=10, deadline=None)
slow_fuzz_settings = settings(max_examples=5, deadline=None)


# ----------------------------------------------------------------------------- the corruptions


@dataclass(frozen=True)
class Arg:
    """An argument that the fuzz may corrupt, and what the package must accept in its place."""

    kind: str = "floats"  # "floats", "labels" (integers), "shape" (of ints), "dict" (of floats)
    alone: bool = False  # the call's only float array: the other float dtype is fine
    optional: bool = False  # None is a valid value
    empty_batch: bool = False  # axis 0 may have size 0
    any_shape: bool = False  # elementwise: any number of axes, any of them empty
    # An argument whose shape this one's must equal: an error about the two may name either.
    partner: str | None = None


def corrupt(value, how: str, data) -> tuple[object, int | None]:
    """`value` (an array) corrupted the way `how` says; and the axis emptied, if any."""
    a = np.asarray(value)
    if how == "none":
        return value, None
    if how in REFUSED_DTYPES:
        return a.astype(REFUSED_DTYPES[how]), None
    if how == "other float":
        return a.astype(np.float32 if a.dtype == np.float64 else np.float64), None
    if how == "list":
        return a.tolist(), None
    if how == "ragged list":
        return ([[1, 0], [1]] if a.dtype.kind in "iu" else [[0.5, 1.5], [2.5]]), None
    if how == "None":
        return None, None
    if how == "empty axis":
        axis = data.draw(st.integers(0, a.ndim - 1), label="axis")
        return a[(slice(None),) * axis + (slice(0, 0),)].copy(), axis
    if how == "extra axis":
        return a[np.newaxis].copy(), None
    if how == "missing axis":
        if a.ndim == 1:
            return a[0], None  # a numpy scalar
        return a.reshape(a.shape[0] * a.shape[1], *a.shape[2:]), None
    if how in ("nan", "inf"):
        special = a.astype(a.dtype if a.dtype.kind == "f" else np.float64)  # a copy
        rng = np.random.default_rng(data.draw(seeds, label="seed"))
        hit = rng.random(a.shape) < 0.5
        if a.size:
            hit.flat[rng.integers(a.size)] = True
        infinities = np.where(rng.random(a.shape) < 0.5, np.inf, -np.inf)
        special[hit] = np.nan if how == "nan" else infinities[hit]
        return special, None
    if how == "non-contiguous":
        layout = data.draw(st.sampled_from(["strided", "fortran", "reversed"]), label="layout")
        if layout == "fortran" and a.ndim > 1:
            return np.asfortranarray(a), None
        if layout == "reversed":
            return np.flip(np.flip(a, axis=0).copy(), axis=0), None
        return np.repeat(a, 2, axis=-1)[..., ::2], None
    if how == "read-only":
        frozen = a.copy()
        frozen.flags.writeable = False
        return frozen, None
    raise AssertionError(f"unknown corruption {how!r}")


def expected_outcome(arg: Arg, how: str, original, axis: int | None, dtype) -> str:
    """Whether the package must accept the corrupted argument ("ok") or refuse it ("error")."""
    if how in ("none", "non-contiguous", "read-only"):
        return "ok"
    if how == "empty axis" and np.shape(original)[axis] == 0:
        return "ok"  # that axis was empty already: nothing changed
    if how == "list" and np.size(original) == 0 and not arg.any_shape:
        return "error"  # [] has lost the shape of the empty array
    if arg.kind == "labels":
        return "ok" if how in ("int8", "int64", "uint8", "list") else "error"
    if how in ("nan", "inf"):
        return "ok"
    if how == "None":
        return "ok" if arg.optional else "error"
    if how == "other float" or (how == "list" and dtype == np.float32):
        return "ok" if arg.alone else "error"  # float64 now, unlike the other arrays
    if how == "list":
        return "ok"
    if how == "empty axis":
        return "ok" if arg.any_shape or (axis == 0 and arg.empty_batch) else "error"
    if how in ("extra axis", "missing axis"):
        return "ok" if arg.any_shape else "error"
    return "error"  # a refused dtype or a ragged list


def corrupt_shape(shape: tuple[int, ...], how: str, data) -> tuple[object, str]:
    """A shape argument (a sequence of ints) corrupted; and "ok" or "error" as above."""
    if how in ("int8", "int64", "uint8"):
        return np.array(shape, dtype=REFUSED_DTYPES[how]), "ok"
    corrupted = {
        "none": shape,
        "list": list(shape),
        "object": np.array(shape, dtype=object),  # of Python ints: still a sequence of ints
        "non-contiguous": np.repeat(np.array(shape), 2)[::2],
        "read-only": corrupt(np.array(shape), "read-only", data)[0],
    }
    if how in corrupted:
        return corrupted[how], "ok"
    if how == "empty axis":
        axis = data.draw(st.integers(0, len(shape) - 1), label="axis")
        emptied = shape[:axis] + (0,) + shape[axis + 1 :]
        return emptied, "ok" if emptied == shape else "error"
    refused = {
        "bool": tuple(bool(s) for s in shape),
        "float16": tuple(float(s) for s in shape),
        "other float": np.array(shape, dtype=np.float64),
        "complex": tuple(complex(s) for s in shape),
        "extra axis": (*shape, 1),
        "missing axis": shape[:-1],
        "nan": (np.nan, *shape[1:]),
        "inf": (*shape[:-1], np.inf),
        "ragged list": [shape[0], list(shape[1:])],
        "None": None,
    }
    return refused[how], "error"


def corrupt_argument(arg: Arg, value, how: str, dtype, data) -> tuple[object, str]:
    """`value` corrupted the way `how` says, and the outcome the package must give."""
    if arg.kind == "shape":
        return corrupt_shape(value, how, data)
    if arg.kind == "dict":  # one entry of a dict of arrays
        key = data.draw(st.sampled_from(sorted(value)), label="key")
        entry, expected = corrupt_argument(Arg(), value[key], how, dtype, data)
        return {**value, key: entry}, expected
    corrupted, axis = corrupt(value, how, data)
    return corrupted, expected_outcome(arg, how, value, axis, dtype)


# --------------------------------------------------------------------------------- the harness


REFUSED = object()


def attempt(call: Callable, blamed: str | None, partner: str | None = None):
    """call(); or REFUSED if it raised ValueError or TypeError naming `blamed` (or its partner,
    see Arg); anything else raised fails the test, as does an error when nothing was corrupted."""
    try:
        return call()
    except (ValueError, TypeError) as exc:
        assert blamed is not None, f"a valid call was refused: {exc!r}"
        names = "|".join(re.escape(name) for name in (blamed, partner) if name)
        assert re.search(rf"\b({names})\b", str(exc)), f"{exc!r} does not name {blamed}"
        return REFUSED


def snapshot(value):
    """Everything `value` holds, to compare before and after a call: arrays by their bytes."""
    if isinstance(value, np.ndarray):
        flags = (value.flags.writeable, value.flags.c_contiguous)
        return ("array", value.dtype.str, value.shape, value.strides, flags, value.tobytes())
    if isinstance(value, dict):
        return {key: snapshot(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [snapshot(v) for v in value])
    return repr(value)  # so that a NaN equals itself


def plain(value):
    """The same values as C-contiguous, writable arrays (None and shapes stay as they are)."""
    if value is None or isinstance(value, tuple):
        return value
    if isinstance(value, dict):
        return {key: plain(v) for key, v in value.items()}
    return np.array(value, order="C")


def as_arrays(value):
    if value is None:
        return None
    if isinstance(value, dict):
        return {key: as_arrays(v) for key, v in value.items()}
    return np.asarray(value)


def tolerance(dtype) -> dict:
    return dict(rtol=1e-9, atol=1e-9) if dtype == np.float64 else dict(rtol=1e-3, atol=1e-3)


def check_results(actual: tuple, expected: tuple, dtype, values: bool) -> None:
    """Same shapes, the given dtype, and (if `values`) the same values up to rounding."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        if e is None:
            assert a is None
            continue
        if isinstance(e, float):  # a loss
            assert isinstance(a, float)
        else:
            assert isinstance(a, np.ndarray), type(a)
            assert a.shape == np.shape(e)
            assert a.dtype == dtype, (a.dtype, dtype)
        if values:
            np.testing.assert_allclose(a, e, **tolerance(dtype))


@dataclass
class Call:
    """An operation under test: its forward, backward, reference and valid arguments."""

    forward: Callable  # (**args) -> (outputs tuple, cache)
    backward: Callable | None  # (dout, cache) -> gradients tuple
    reference: Callable  # (**args as arrays) -> the outputs, by the nested-loop references
    args: dict
    specs: dict[str, Arg]  # the arguments the fuzz may corrupt, the upstream gradient among them
    dtype_of: str = "x"  # the argument whose dtype the outputs have
    dout_name: str = "dout"


def fuzz(call: Call, how: str, data) -> None:
    """Corrupt one argument of `call` the way `how` says, run forward and backward, and check
    the outcomes."""
    target = None if how == "none" else data.draw(st.sampled_from(list(call.specs)), label="arg")
    dtype = np.asarray(call.args[call.dtype_of]).dtype
    in_forward = target is not None and target != call.dout_name
    args, expected = dict(call.args), "ok"
    if in_forward:
        args[target], expected = corrupt_argument(
            call.specs[target], args[target], how, dtype, data
        )

    before = snapshot(args)
    partner = call.specs[target].partner if in_forward else None
    result = attempt(lambda: call.forward(**args), target if in_forward else None, partner)
    assert snapshot(args) == before, "the forward pass changed an argument"
    if result is REFUSED:
        assert expected == "error", f"{target} ({how}) was refused"
        return
    assert expected == "ok", f"{target} ({how}) was accepted"
    outputs, cache = result
    finite = how not in ("nan", "inf")
    dtype = np.asarray(args[call.dtype_of]).dtype
    # The references do not take NaN and inf; their shapes come from the valid arguments.
    expected_outputs = call.reference(**as_arrays(args if finite else call.args))
    check_results(outputs, expected_outputs, dtype, values=finite)
    if call.backward is None:
        return

    rng = np.random.default_rng(0)
    dout = np.asarray(rng.standard_normal(outputs[0].shape), dtype=outputs[0].dtype)
    expected = "ok"
    if target == call.dout_name:
        dout, expected = corrupt_argument(call.specs[target], dout, how, dtype, data)
    dout_before = snapshot(dout)
    grads = attempt(lambda: call.backward(dout, cache), None if in_forward else target)
    assert snapshot(dout) == dout_before, "the backward pass changed its upstream gradient"
    assert snapshot(args) == before, "the backward pass changed an argument of the forward"
    if grads is REFUSED:
        assert expected == "error", f"{target} ({how}) was refused"
        return
    assert expected == "ok", f"{target} ({how}) was accepted"
    _, plain_cache = call.forward(**plain(args))
    check_results(grads, call.backward(plain(dout), plain_cache), dtype, values=finite)


# ------------------------------------------------------------------------------ the operations


@pytest.mark.parametrize("how", KINDS)
@given(conv_cases(), st.sampled_from(CONV_VERSIONS), dtypes, st.data())
@fuzz_settings
def test_conv2d(how, case, version, dtype, data):
    conv2d_forward, conv2d_backward = conv_pair(version)

    def forward(x, w, b):
        out, cache = conv2d_forward(x, w, b, **case.options)
        return (out,), cache

    def ref(x, w, b):
        return (reference.conv2d(x, w, b, **case.options),)

    args = case.arrays(dtype)
    specs = {"x": Arg(empty_batch=True), "w": Arg(), "dout": Arg()}
    if args["b"] is not None:
        specs["b"] = Arg(optional=True)
    fuzz(Call(forward, conv2d_backward, ref, args, specs), how, data)


BN_KEYS = ("gamma", "beta", "running_mean", "running_var")


@pytest.mark.parametrize("how", KINDS)
@given(batchnorm_cases(), backends, dtypes, st.data())
@fuzz_settings
def test_batchnorm(how, case, ops, dtype, data):
    def forward(**args):
        out, mean, var, cache = ops.batchnorm_forward(**args, training=case.training)
        return (out, mean, var), cache

    def ref(**args):
        return reference.batchnorm(**args, training=case.training)

    specs = {"x": Arg(empty_batch=not case.training), **{k: Arg() for k in BN_KEYS}}
    fuzz(
        Call(forward, ops.batchnorm_backward, ref, case.arrays(dtype), specs | {"dout": Arg()}),
        how,
        data,
    )


@pytest.mark.parametrize("how", KINDS)
@given(batchnorm_cases(), st.booleans(), backends, dtypes, st.data())
@fuzz_settings
def test_batchnorm_relu(how, case, relu, ops, dtype, data):
    def forward(**args):
        out, mean, var, cache = ops.batchnorm_relu_forward(
            **args, training=case.training, relu=relu
        )
        return (out, mean, var), cache

    def ref(**args):
        out, mean, var = reference.batchnorm(**args, training=case.training)
        return (reference.relu(out) if relu else out), mean, var

    specs = {"x": Arg(empty_batch=not case.training), **{k: Arg() for k in BN_KEYS}}
    call = Call(
        forward, ops.batchnorm_relu_backward, ref, case.arrays(dtype), specs | {"dout": Arg()}
    )
    fuzz(call, how, data)


def _pair(forward_fn: Callable, backward_fn: Callable) -> tuple[Callable, Callable]:
    """forward and backward of a pair with one output and one gradient, as `Call` wants them."""

    def forward(**args):
        out, cache = forward_fn(*args.values())
        return (out,), cache

    def backward(dout, cache):
        return (backward_fn(dout, cache),)

    return forward, backward


@pytest.mark.parametrize("how", KINDS)
@given(any_shapes(), seeds, backends, dtypes, st.data())
@fuzz_settings
def test_relu(how, shape, seed, ops, dtype, data):
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    specs = {"x": Arg(alone=True, any_shape=True), "dout": Arg()}
    call = Call(
        *_pair(ops.relu_forward, ops.relu_backward),
        lambda x: (reference.relu(x),),
        {"x": x},
        specs,
    )
    fuzz(call, how, data)


@pytest.mark.parametrize("how", KINDS)
@given(any_shapes(), seeds, backends, dtypes, st.data())
@fuzz_settings
def test_add_relu(how, shape, seed, ops, dtype, data):
    rng = np.random.default_rng(seed)
    args = {name: rng.standard_normal(shape).astype(dtype) for name in ("x", "residual")}
    # Elementwise, so any shape goes, but x and residual must have the same one.
    specs = {"x": Arg(partner="residual"), "residual": Arg(partner="x"), "dout": Arg()}
    forward, backward = _pair(ops.add_relu_forward, ops.relu_backward)
    ref = lambda x, residual: (reference.relu(x + residual),)  # noqa: E731
    fuzz(Call(forward, backward, ref, args, specs), how, data)


@pytest.mark.parametrize("how", KINDS)
@given(nchw_shapes(), seeds, dtypes, st.data())
@fuzz_settings
def test_global_avg_pool(how, shape, seed, dtype, data):
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    forward, backward = _pair(global_avg_pool_forward, global_avg_pool_backward)
    specs = {"x": Arg(alone=True, empty_batch=True), "dout": Arg()}
    fuzz(
        Call(forward, backward, lambda x: (reference.global_avg_pool(x),), {"x": x}, specs),
        how,
        data,
    )


@pytest.mark.parametrize("how", KINDS)
@given(linear_shapes(), st.booleans(), seeds, dtypes, st.data())
@fuzz_settings
def test_linear(how, shape, bias, seed, dtype, data):
    n, d_in, d_out = shape
    rng = np.random.default_rng(seed)
    args = {
        "x": rng.standard_normal((n, d_in)).astype(dtype),
        "w": rng.standard_normal((d_out, d_in)).astype(dtype),
        "b": rng.standard_normal(d_out).astype(dtype) if bias else None,
    }

    def forward(x, w, b):
        out, cache = linear_forward(x, w, b)
        return (out,), cache

    specs = {"x": Arg(empty_batch=True), "w": Arg(), "dout": Arg()}
    if bias:
        specs["b"] = Arg(optional=True)
    ref = lambda x, w, b: (reference.linear(x, w, b),)  # noqa: E731
    fuzz(Call(forward, linear_backward, ref, args, specs), how, data)


@pytest.mark.parametrize("how", KINDS)
@given(branch_shapes(), seeds, dtypes, st.data())
@fuzz_settings
def test_branch_softmax(how, shape, seed, dtype, data):
    logits = (3 * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)
    forward, backward = _pair(branch_softmax_forward, branch_softmax_backward)
    specs = {"logits": Arg(alone=True, empty_batch=True), "da": Arg()}
    ref = lambda logits: (reference.branch_softmax(logits),)  # noqa: E731
    call = Call(forward, backward, ref, {"logits": logits}, specs, "logits", dout_name="da")
    fuzz(call, how, data)


@pytest.mark.parametrize("how", KINDS)
@given(classification_shapes(), seeds, dtypes, st.data())
@fuzz_settings
def test_softmax_cross_entropy(how, shape, seed, dtype, data):
    n, k = shape
    rng = np.random.default_rng(seed)
    args = {
        "logits": (3 * rng.standard_normal(shape)).astype(dtype),
        "labels": rng.integers(0, k, n),
    }

    def forward(logits, labels):
        return softmax_cross_entropy(logits, labels), None

    specs = {"logits": Arg(alone=True), "labels": Arg(kind="labels")}
    call = Call(forward, None, reference.softmax_cross_entropy, args, specs, dtype_of="logits")
    fuzz(call, how, data)


@pytest.mark.parametrize("how", KINDS)
@given(windows(), st.integers(0, 2), st.integers(1, 3), seeds, dtypes, st.data())
@fuzz_settings
def test_im2col(how, win, n, c, seed, dtype, data):
    gather = data.draw(st.sampled_from([im2col, fast_im2col.im2col]), label="version")
    x = np.random.default_rng(seed).standard_normal((n, c, win.h, win.w)).astype(dtype)

    def forward(x):
        return (gather(x, win.kh, win.kw, **win.options),), None

    def ref(x):
        return (reference.im2col(x, win.kh, win.kw, **win.options),)

    fuzz(Call(forward, None, ref, {"x": x}, {"x": Arg(alone=True, empty_batch=True)}), how, data)


@pytest.mark.parametrize("how", KINDS)
@given(windows(), st.integers(0, 2), st.integers(1, 3), seeds, dtypes, st.data())
@fuzz_settings
def test_col2im(how, win, n, c, seed, dtype, data):
    scatter = data.draw(st.sampled_from([col2im, fast_im2col.col2im]), label="version")
    ho, wo = win.out_hw
    rng = np.random.default_rng(seed)
    args = {
        "cols": rng.standard_normal((n, c * win.kh * win.kw, ho * wo)).astype(dtype),
        "x_shape": (n, c, win.h, win.w),
    }

    def forward(cols, x_shape):
        return (scatter(cols, x_shape, win.kh, win.kw, **win.options),), None

    def ref(cols, x_shape):
        shape = tuple(int(s) for s in x_shape)
        return (reference.col2im(cols, shape, win.kh, win.kw, **win.options),)

    specs = {"cols": Arg(alone=True), "x_shape": Arg(kind="shape")}
    fuzz(Call(forward, None, ref, args, specs, dtype_of="cols"), how, data)


# ---------------------------------------------------------------------------------- the SK unit


def sk_reference(x, params, *, stride, groups, training):
    """V of the SK unit, composed from the nested-loop references: Split, Fuse, Select."""
    n_branches = sum(key.startswith("convs.") for key in params)

    def bn(v, prefix):
        stats = [params[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]
        return reference.batchnorm(v, *stats, training=training)[0]

    branches = []
    for m in range(n_branches):
        w = params[f"convs.{m}.weight"]
        u = reference.conv2d(x, w, stride=stride, padding=m + 1, dilation=m + 1, groups=groups)
        branches.append(reference.relu(bn(u, f"bns.{m}")))
    s = reference.global_avg_pool(sum(branches))  # (N, C)
    z = reference.relu(bn(reference.linear(s, params["fc.weight"]), "fc_bn"))
    logits = reference.linear(z, params["select.weight"])  # (N, M*C)
    a = reference.branch_softmax(logits.reshape(s.shape[0], n_branches, s.shape[1]))
    return sum(a[:, m, :, None, None] * u for m, u in enumerate(branches))


def sk_params(rng, channels, branches, groups, r, L, dtype) -> dict:
    """Well-scaled parameters: weights N(0, 1/fan_in), batch-norm scales and variances near 1."""
    params = {}
    for key, shape in sk_param_shapes(channels, branches=branches, groups=groups, r=r, L=L).items():
        if key.endswith("running_var") or (len(shape) == 1 and key.endswith("weight")):
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) == 1:
            value = rng.normal(0.0, 0.5, shape)
        else:
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        params[key] = value.astype(dtype)
    return params


@st.composite
def sk_units(draw):
    """An SK unit's options and arguments: 1-3 branches, channels a multiple of the groups,
    and in training mode at least 2 images (its fuse step's batch norm averages over them)."""
    training = draw(st.booleans())
    groups = draw(st.integers(1, 2))
    channels = groups * draw(st.integers(1, 2))
    n = draw(st.integers(2 if training else 1, 3))
    shape = (n, channels, draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    rng = np.random.default_rng(draw(seeds))
    dtype = draw(dtypes)
    branches, r, L = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    options = {"stride": draw(st.sampled_from([1, 2])), "groups": groups, "training": training}
    x = rng.standard_normal(shape).astype(dtype)
    return options, x, sk_params(rng, channels, branches, groups, r, L, dtype)


@pytest.mark.parametrize("how", KINDS)
@given(sk_units(), backends, st.data())
@slow_fuzz_settings
def test_sk_unit(how, unit, ops, data):
    options, x, params = unit

    def forward(x, params):
        out, cache = ops.sk_unit_forward(x, params, **options)
        return (out,), cache

    def backward(dout, cache):
        dx, grads = ops.sk_unit_backward(dout, cache)
        return dx, *(grads[key] for key in sorted(grads))

    def ref(x, params):
        return (sk_reference(x, params, **options),)

    specs = {"x": Arg(empty_batch=not options["training"]), "params": Arg(kind="dict")}
    fuzz(
        Call(forward, backward, ref, {"x": x, "params": params}, specs | {"dout": Arg()}), how, data
    )


# ------------------------------------------------------------------------------------ modules


def module_reference(module: nn.Module, x):
    """The module's forward by the nested-loop references, from its parameters and buffers."""
    p = {name: param.data for name, param in module.params.items()}
    if isinstance(module, nn.Sequential):
        for child in module.children.values():
            x = module_reference(child, x)
        return x
    if isinstance(module, nn.Conv2d):
        return reference.conv2d(x, p["weight"], p.get("bias"), **module.options)
    if isinstance(module, nn.BatchNorm):
        stats = module.buffers["running_mean"], module.buffers["running_var"]
        options = dict(training=module.training, momentum=module.momentum, eps=module.eps)
        out = reference.batchnorm(x, p["weight"], p["bias"], *stats, **options)[0]
        return reference.relu(out) if module.relu else out
    if isinstance(module, nn.ReLU):
        return reference.relu(x)
    if isinstance(module, nn.GlobalAvgPool):
        return reference.global_avg_pool(x)
    if isinstance(module, nn.Linear):
        return reference.linear(x, p["weight"], p.get("bias"))
    if isinstance(module, nn.SKUnit):
        options = dict(stride=module.stride, groups=module.groups, training=module.training)
        return sk_reference(x, p | module.buffers, **options)
    raise AssertionError(f"no reference for {type(module).__name__}")


def _batchnorm(rng, channels: int, relu: bool) -> nn.BatchNorm:
    """A batch-norm module with assorted scales, shifts and running statistics."""
    bn = nn.BatchNorm(channels, relu=relu)
    bn.params["weight"].data = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    bn.params["bias"].data = rng.normal(0.0, 0.5, channels).astype(np.float32)
    bn.buffers["running_mean"] = rng.normal(0.0, 0.5, channels).astype(np.float32)
    bn.buffers["running_var"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    return bn


@st.composite
def modules(draw, name: str) -> tuple[nn.Module, np.ndarray, bool]:
    """A small module of the given class, in float32 or float64, training or evaluating, an
    input for it, and whether that input may have an empty batch."""
    rng = np.random.default_rng(draw(seeds))
    training = draw(st.booleans())
    n = draw(st.integers(2, 3))
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    empty_batch = True
    if name == "Conv2d":
        groups = draw(st.integers(1, 2))
        c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
        k, dilation, padding = (
            draw(st.integers(1, 3)),
            draw(st.integers(1, 2)),
            draw(st.integers(0, 1)),
        )
        h = w = max(1, dilation * (k - 1) + 1 - 2 * padding) + draw(st.integers(0, 2))
        options = dict(stride=draw(st.integers(1, 2)), padding=padding, dilation=dilation)
        bias = draw(st.booleans())
        module = nn.Conv2d(c_in, c_out, k, **options, groups=groups, bias=bias, rng=rng)
        shape = (n, c_in, h, w)
    elif name == "BatchNorm":
        module = _batchnorm(rng, c, relu=draw(st.booleans()))
        shape = draw(st.sampled_from([(n, c), (n, c, h, w)]))
        empty_batch = not training
    elif name == "ReLU":
        module, shape = nn.ReLU(), draw(any_shapes())
    elif name == "GlobalAvgPool":
        module, shape = nn.GlobalAvgPool(), (n, c, h, w)
    elif name == "Linear":
        module = nn.Linear(c, draw(st.integers(1, 3)), bias=draw(st.booleans()), rng=rng)
        shape = (n, c)
    elif name == "SKUnit":
        groups = draw(st.integers(1, 2))
        c = groups * draw(st.integers(1, 2))
        branches, stride = draw(st.integers(1, 3)), draw(st.integers(1, 2))
        module = nn.SKUnit(c, stride=stride, branches=branches, groups=groups, r=1, L=2, rng=rng)
        shape, empty_batch = (n, c, h, w), not training
    else:  # a small network: conv, batch norm + ReLU, pooling, a classifier
        c_hidden = draw(st.integers(1, 3))
        module = nn.Sequential(
            nn.Conv2d(c, c_hidden, 3, padding=1, rng=rng),
            _batchnorm(rng, c_hidden, relu=True),
            nn.GlobalAvgPool(),
            nn.Linear(c_hidden, draw(st.integers(1, 3)), rng=rng),
        )
        shape, empty_batch = (n, c, h, w), not training
    dtype = draw(dtypes)
    module.astype(dtype).train(training)
    return module, rng.standard_normal(shape).astype(dtype), empty_batch


MODULES = ["Conv2d", "BatchNorm", "ReLU", "GlobalAvgPool", "Linear", "SKUnit", "Sequential"]


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("how", KINDS)
@given(data=st.data())
@slow_fuzz_settings
def test_module(how, name, data):
    """Each forward and backward runs on a fresh copy of the module; its parameters and its
    running statistics are replaced, never changed in place."""
    module, x, empty_batch = data.draw(modules(name), label="module")
    module.set_backend(data.draw(st.sampled_from(BACKENDS), label="backend"))

    def forward(x):
        copied = copy.deepcopy(module)
        arrays = [p.data for p in copied.parameters()] + [b for _, b in copied.named_buffers()]
        out = copied.forward(x)
        return (out,), (copied, arrays, snapshot(arrays))

    def backward(dout, cache):
        copied, arrays, before = cache
        dx = copied.backward(dout)
        assert snapshot(arrays) == before, "a parameter or buffer was changed in place"
        return dx, *(p.grad for p in copied.parameters())

    no_params = isinstance(module, (nn.ReLU, nn.GlobalAvgPool))
    x_arg = Arg(alone=no_params, empty_batch=empty_batch, any_shape=isinstance(module, nn.ReLU))
    ref = lambda x: (module_reference(module, x),)  # noqa: E731
    fuzz(Call(forward, backward, ref, {"x": x}, {"x": x_arg, "dout": Arg()}), how, data)
