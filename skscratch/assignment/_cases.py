"""The grader's checks as data: for each exercise, cases of inputs and the answers they must give.

A case names its check (the unit that earns points, e.g. conv's "backward"), says in words what
it tries, names the program of `_programs.py` that runs the student's code on its inputs, and
holds each result's expected value and rule: "close" (relative error below the limit, NaN
entries not compared: a large tensor's finite differences are sampled), "equal" (booleans,
names) or "none" (the function must return None here).

Expected values come from `_references.py` alone: forward passes from the loops and formulas,
backward passes from float64 centred differences of those, over every entry of a tensor of up
to FULL entries; worked out where the cases are built (the grader's process, or `make`'s for
the visible checks a copy stores), never where student code runs. Visible cases are stored in
every copy for `skscratch assignment check`; `grade` builds hidden ones from its own seed with
other shapes, so a function that fits the visible cases alone does not pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from skscratch.assignment._references import (
    batch_stats,
    batchnorm_formula,
    col2im_loops,
    conv_loops,
    im2col_loops,
    out_size,
    sk_unit_reference,
    softmax,
)

FULL = 400  # tensors up to this many entries have every entry's finite difference checked
H = 1e-6  # the finite-difference step


@dataclass
class Case:
    check: str
    what: str
    program: str
    inputs: dict[str, np.ndarray]
    options: dict = field(default_factory=dict)
    expected: dict[str, tuple[str, object]] = field(default_factory=dict)  # name: (rule, value)
    source: dict[str, str] = field(default_factory=dict)  # name: what the value comes from
    exercise: str = ""  # set by build


def numeric_gradient(f, x, dout, rng):
    """Centred differences of sum(f(x) * dout) in float64: at every entry of x if it has at most
    FULL entries, else at FULL entries drawn at random (NaN elsewhere)."""
    x = np.array(x, dtype=np.float64)
    flat = x.reshape(-1)
    grad = np.full(flat.size, np.nan)
    idx = np.arange(flat.size) if flat.size <= FULL else rng.choice(flat.size, FULL, False)
    for i in idx:
        old = flat[i]
        flat[i] = old + H
        plus = np.sum(f(x) * dout)
        flat[i] = old - H
        minus = np.sum(f(x) * dout)
        flat[i] = old
        grad[i] = (plus - minus) / (2 * H)
    return grad.reshape(x.shape)


def _reference(case: Case, name: str, value) -> None:
    case.expected[name] = ("close", np.asarray(value, dtype=np.float64))
    case.source[name] = "the reference"


def _gradient(case: Case, name: str, f, x, dout, rng) -> None:
    case.expected[name] = ("close", numeric_gradient(f, x, dout, rng))
    case.source[name] = "finite differences of the reference"


# -- im2col -------------------------------------------------------------------------------------

WINDOWS = {  # (kh, kw, stride, padding, dilation, h, w)
    False: [(3, 3, 1, 1, 1, 5, 6), (3, 2, 2, 2, 2, 7, 6), (2, 3, 3, 0, 1, 7, 8)],
    True: [(3, 3, 2, 1, 1, 6, 5), (2, 2, 1, 1, 3, 8, 7), (3, 1, 1, 0, 2, 6, 4)],
}


def _im2col(rng, hidden):
    cases = []
    for kh, kw, s, p, d, h, w in WINDOWS[hidden]:
        opts = dict(kh=kh, kw=kw, stride=s, padding=p, dilation=d)
        words = f"kernel {kh}x{kw}, stride {s}, padding {p}, dilation {d}"
        x = rng.standard_normal((2, 3, h, w))
        case = Case("im2col", f"im2col, {words}", "im2col", {"x": x}, opts)
        _reference(case, "cols", im2col_loops(x, kh, kw, s, p, d))
        cases.append(case)
        ho, wo = out_size(h, kh, s, p, d), out_size(w, kw, s, p, d)
        cols = rng.standard_normal((2, 3 * kh * kw, ho * wo))
        inputs = {"cols": cols, "x_shape": np.array((2, 3, h, w))}
        case = Case("col2im", f"col2im, {words}", "col2im", inputs, opts)
        _reference(case, "dx", col2im_loops(cols, (2, 3, h, w), kh, kw, s, p, d))
        cases.append(case)
    return cases


CONV = {  # (n, c_in, c_out, groups, kernel, stride, padding, dilation, h, w, bias)
    False: [
        (2, 4, 6, 2, 3, 1, 1, 1, 5, 5, True),
        (2, 4, 4, 4, 3, 2, 2, 2, 7, 6, False),
        (1, 3, 2, 1, 2, 1, 0, 1, 4, 5, True),
    ],
    True: [
        (2, 6, 4, 2, 3, 2, 1, 1, 6, 5, True),
        (1, 4, 8, 4, 3, 1, 2, 2, 5, 6, False),
        (2, 2, 3, 1, 1, 1, 0, 1, 3, 4, True),
    ],
}


def _conv(rng, hidden):
    return [case for shape in CONV[hidden] for case in _conv_cases(rng, *shape)]


def _conv_cases(rng, n, c_in, c_out, g, k, s, p, d, h, w, bias):
    opts = dict(stride=s, padding=p, dilation=d, groups=g)
    words = f"{k}x{k}, stride {s}, padding {p}, dilation {d}, groups {g}" + (
        ", with bias" if bias else ""
    )
    x = rng.standard_normal((n, c_in, h, w))
    wt = rng.standard_normal((c_out, c_in // g, k, k))
    b = rng.standard_normal(c_out) if bias else None
    inputs = {"x": x, "w": wt} | ({"b": b} if bias else {})
    forward = Case("forward", f"conv2d_forward, {words}", "conv_forward", inputs, opts)
    _reference(forward, "out", conv_loops(x, wt, b, **opts))
    cases = [forward]

    dout = rng.standard_normal(forward.expected["out"][1].shape)
    for input_grad in (True, False):
        check = "backward" if input_grad else "backward without the input gradient"
        what = f"conv2d_backward, {words}" + ("" if input_grad else ", input_grad=False")
        case = Case(check, what, "conv_backward", inputs | {"dout": dout},
                    opts | {"input_grad": input_grad})  # fmt: skip
        if input_grad:
            _gradient(case, "dx", lambda v: conv_loops(v, wt, b, **opts), x, dout, rng)
        else:
            case.expected["dx"] = ("none", None)
        _gradient(case, "dw", lambda v: conv_loops(x, v, b, **opts), wt, dout, rng)
        if bias:
            _gradient(case, "db", lambda v: conv_loops(x, wt, v, **opts), b, dout, rng)
        else:
            case.expected["db"] = ("none", None)
        cases.append(case)
    return cases


def _bn_inputs(rng, shape):
    c = shape[1]
    per = (1, c) + (1,) * (len(shape) - 2)
    x = rng.standard_normal(shape) * rng.uniform(0.5, 2, per) + rng.uniform(-1, 1, per)
    return {
        "x": x,
        "gamma": rng.uniform(0.5, 1.5, c),
        "beta": rng.normal(0, 0.5, c),
        "running_mean": rng.normal(0, 1, c),
        "running_var": rng.uniform(0.5, 2, c),
    }


def _batchnorm(rng, hidden):
    shapes = [(3, 5), (2, 3, 3, 4)] if hidden else [(4, 3), (3, 2, 4, 5)]
    return [case for shape in shapes for case in _batchnorm_cases(rng, shape)]


def _batchnorm_cases(rng, shape):
    inputs = _bn_inputs(rng, shape)
    x, gamma, beta = inputs["x"], inputs["gamma"], inputs["beta"]
    rm, rv = inputs["running_mean"], inputs["running_var"]
    mean, var = batch_stats(x)
    m = x.size // x.shape[1]
    dout = rng.standard_normal(shape)
    cases = []
    for training in (True, False):
        mode = "training" if training else "evaluation"
        opts = {"training": training}
        case = Case(f"forward, {mode}", f"batchnorm_forward, {mode}, x {shape}",
                    "batchnorm_forward", inputs, opts)  # fmt: skip
        if training:
            _reference(case, "out", batchnorm_formula(x, gamma, beta, mean, var))
            _reference(case, "running_mean", 0.9 * rm + 0.1 * mean)
            _reference(case, "running_var", 0.9 * rv + 0.1 * var * m / (m - 1))
        else:  # the running statistics normalise, and stay as they were
            _reference(case, "out", batchnorm_formula(x, gamma, beta, rm, rv))
            _reference(case, "running_mean", rm)
            _reference(case, "running_var", rv)
        cases.append(case)

        def f(x=x, gamma=gamma, beta=beta, training=training):
            stats = batch_stats(x) if training else (rm, rv)
            return batchnorm_formula(x, gamma, beta, *stats)

        case = Case(f"backward, {mode}", f"batchnorm_backward, {mode}, x {shape}",
                    "batchnorm_backward", inputs | {"dout": dout}, opts)  # fmt: skip
        _gradient(case, "dx", lambda v, f=f: f(x=v), x, dout, rng)
        _gradient(case, "dgamma", lambda v, f=f: f(gamma=v), gamma, dout, rng)
        _gradient(case, "dbeta", lambda v, f=f: f(beta=v), beta, dout, rng)
        cases.append(case)
    return cases


def _relu_pool_fc(rng, hidden):
    shape = (2, 3, 4) if hidden else (3, 4, 5)
    # Values at least 0.1 from 0: a centred difference across the kink would measure the kink.
    x = rng.uniform(0.1, 2, shape) * rng.choice([-1, 1], shape)
    dout = rng.standard_normal(shape)
    relu = Case("ReLU backward", f"relu_backward, x {shape}", "relu_backward",
                {"x": x, "dout": dout})  # fmt: skip
    _gradient(relu, "dx", lambda v: np.maximum(v, 0), x, dout, rng)

    shape = (3, 2, 3, 3) if hidden else (2, 3, 4, 5)
    x = rng.standard_normal(shape)
    dout = rng.standard_normal(shape[:2])
    pool = Case("pool backward", f"global_avg_pool_backward, x {shape}", "pool_backward",
                {"x": x, "dout": dout})  # fmt: skip
    _gradient(pool, "dx", lambda v: v.mean(axis=(2, 3)), x, dout, rng)

    n, k, m = (5, 4, 2) if hidden else (4, 5, 3)
    x, w, b = rng.standard_normal((n, k)), rng.standard_normal((m, k)), rng.standard_normal(m)
    dout = rng.standard_normal((n, m))
    fc = Case("FC backward", f"linear_backward, x ({n}, {k}), w ({m}, {k})", "linear_backward",
              {"x": x, "w": w, "b": b, "dout": dout})  # fmt: skip
    _gradient(fc, "dx", lambda v: v @ w.T + b, x, dout, rng)
    _gradient(fc, "dw", lambda v: x @ v.T + b, w, dout, rng)
    _gradient(fc, "db", lambda v: x @ w.T + v, b, dout, rng)
    return [relu, pool, fc]


def _branch_softmax(rng, hidden):
    shape = (2, 3, 5) if hidden else (3, 2, 4)
    z = rng.standard_normal(shape) * 3
    z[0, 0, 0] = 800.0  # exp(800) overflows: subtract the maximum first
    forward = Case("forward", f"branch_softmax_forward, z {shape} with one logit of 800",
                   "branch_softmax_forward", {"z": z})  # fmt: skip
    _reference(forward, "a", softmax(z, 1))
    z = rng.standard_normal(shape)
    da = rng.standard_normal(shape)
    backward = Case("backward", f"branch_softmax_backward, z {shape}", "branch_softmax_backward",
                    {"z": z, "da": da})  # fmt: skip
    _gradient(backward, "dz", lambda v: softmax(v, 1), z, da, rng)
    return [forward, backward]


def _sk_params(rng, c, branches, groups, d, kernels=None):
    p = {}
    for m, k in enumerate(kernels or [3] * branches):
        fan_in = k * k * c // groups
        p[f"convs.{m}.weight"] = rng.standard_normal((c, c // groups, k, k)) / np.sqrt(fan_in)
        p[f"bns.{m}.weight"] = rng.uniform(0.5, 1.5, c)
        p[f"bns.{m}.bias"] = rng.normal(0, 0.5, c)
        p[f"bns.{m}.running_mean"] = rng.normal(0, 0.3, c)
        p[f"bns.{m}.running_var"] = rng.uniform(0.5, 2, c)
    p["fc.weight"] = rng.standard_normal((d, c)) / np.sqrt(c)
    p["fc_bn.weight"], p["fc_bn.bias"] = rng.uniform(0.5, 1.5, d), rng.uniform(0.5, 1.5, d)
    p["fc_bn.running_mean"], p["fc_bn.running_var"] = rng.normal(0, 0.3, d), rng.uniform(1, 2, d)
    p["select.weight"] = rng.standard_normal((branches * c, d)) / np.sqrt(d)
    return p


SK = {  # (n, c, h, branches, groups, d, stride[, kernel sizes, dilations])
    False: [(3, 4, 5, 2, 2, 3, 1), (3, 4, 6, 2, 2, 3, 2), (2, 4, 4, 3, 4, 2, 1),
            (2, 4, 5, 2, 2, 2, 1, (3, 5), (1, 1))],
    True: [(2, 6, 4, 2, 3, 2, 1), (3, 4, 5, 2, 4, 3, 2), (3, 2, 5, 3, 1, 2, 2),
           (3, 4, 6, 2, 2, 3, 2, (5, 3), (1, 2))],
}  # fmt: skip


def _sk_unit(rng, hidden):
    return [case for shape in SK[hidden] for case in _sk_unit_cases(rng, *shape)]


def _sk_unit_cases(rng, n, c, h, branches, groups, d, stride, kernels=None, dilations=None):
    p = _sk_params(rng, c, branches, groups, d, kernels)
    x = rng.standard_normal((n, c, h, h))
    inputs = {"x": x} | {f"p.{k}": v for k, v in p.items()}
    words = f"M={branches}, G={groups}, stride {stride}, x {x.shape}"
    split = {"stride": stride, "groups": groups}
    if kernels is not None:  # the paper's ablations: other kernel sizes and dilations
        words += f", kernel sizes {kernels}, dilations {dilations}"
        split["dilations"] = dilations
    cases = []
    for training in (True, False):
        mode = "training" if training else "evaluation"
        check = "forward" if training else "forward, evaluation"
        case = Case(check, f"sk_unit_forward, {words}, {mode}", "sk_unit_forward", inputs,
                    split | {"training": training})  # fmt: skip
        out = sk_unit_reference(x, p, stride, groups, training=training, dilations=dilations)
        _reference(case, "out", out)
        cases.append(case)
    dout = rng.standard_normal(case.expected["out"][1].shape)
    case = Case("backward", f"sk_unit_backward, {words}", "sk_unit_backward",
                inputs | {"dout": dout}, split)  # fmt: skip

    def reference(x, p):
        return sk_unit_reference(x, p, stride, groups, dilations=dilations)

    _gradient(case, "dx", lambda v: reference(v, p), x, dout, rng)
    for key, value in p.items():
        if key.endswith(("running_mean", "running_var")):
            continue  # statistics, not parameters: they have no gradient

        def f(v, key=key):
            return reference(x, p | {key: v})

        _gradient(case, f"d.{key}", f, value, dout, rng)
    cases.append(case)
    return cases


def _softmax_ce(rng, hidden):
    cases = []
    n, k = (6, 3) if hidden else (5, 4)
    for smoothing in (0.0, 0.2):
        z = rng.standard_normal((n, k)) * 2
        z[1, 2] = 1000.0  # logsumexp must not overflow
        y = rng.integers(0, k, n)
        q = np.full((n, k), smoothing / k)
        q[np.arange(n), y] += 1 - smoothing

        def loss(v, q=q):
            top = v.max(axis=1, keepdims=True)
            log_sum = np.log(np.exp(v - top).sum(axis=1)) + top[:, 0]
            return np.mean(log_sum - (q * v).sum(axis=1))

        what = "softmax_cross_entropy, one logit of 1000" + (
            f", label smoothing {smoothing}" if smoothing else ""
        )
        case = Case("loss and gradient", what, "softmax_ce", {"logits": z, "labels": y},
                    {"smoothing": smoothing})  # fmt: skip
        _reference(case, "loss", loss(z))
        _gradient(case, "dlogits", loss, z, np.float64(1.0), rng)
        cases.append(case)
    return cases


STEPS = tuple(10.0**-k for k in range(1, 8))  # the exercise's STEPS, written out again


def _gradient_checking(rng, hidden):
    x = rng.standard_normal((2, 5) if hidden else (3, 4))
    centred = Case("centred difference", "centred_difference of sum(sin(x) * x^2)",
                   "centred_difference", {"x": x})  # fmt: skip
    _reference(centred, "grad", np.cos(x) * x**2 + 2 * x * np.sin(x))
    centred.expected["x_after"] = ("equal", x)
    centred.source["x_after"] = "x as it was passed (centred_difference must leave it alone)"

    x0 = 0.5 if hidden else 1.0
    x32 = np.float32(x0)
    errors = [
        abs(float((np.exp(x32 + np.float32(h)) - np.exp(x32 - np.float32(h)))
                  / np.float32(2 * h)) - np.exp(x0))
        for h in STEPS
    ]  # fmt: skip
    step = Case("float32 step", f"best_float32_step(exp, exp, {x0})", "best_float32_step",
                {"x0": np.float64(x0)})  # fmt: skip
    step.expected["step"] = ("close", np.float64(STEPS[int(np.argmin(errors))]))
    step.source["step"] = "the step of the smallest float32 error among STEPS"

    bug = Case("planted bug", "find_the_planted_bug()", "find_the_planted_bug", {})
    bug.expected["name"] = ("equal", np.str_("softplus"))
    bug.source["name"] = "the one suspect whose backward pass is wrong"

    h = 2e-3 if hidden else 1e-3
    x = np.concatenate([rng.uniform(-3 * h, 3 * h, 40), [0.0, h / 2, -h / 2, 2 * h, -2 * h]])
    numeric = (np.maximum(x + h, 0) - np.maximum(x - h, 0)) / (2 * h)
    kink = Case("ReLU kink", f"relu_kink_entries(x, h={h:g})", "relu_kink_entries",
                {"x": x, "h": np.float64(h)})  # fmt: skip
    kink.expected["kink"] = ("equal", ~np.isclose(numeric, (x > 0).astype(float), 0, 1e-9))
    kink.source["kink"] = "where the centred difference of ReLU is neither 0 nor 1"
    return [centred, step, bug, kink]


BUILDERS = {
    "im2col": _im2col,
    "conv": _conv,
    "batchnorm": _batchnorm,
    "relu_pool_fc": _relu_pool_fc,
    "branch_softmax": _branch_softmax,
    "sk_unit": _sk_unit,
    "softmax_ce": _softmax_ce,
    "gradient_checking": _gradient_checking,
}


def build(exercise: str, seed: int, *, hidden: bool) -> list[Case]:
    """The cases of one exercise: the visible ones, or the hidden ones of `seed`."""
    rng = np.random.default_rng([seed, int(hidden), *exercise.encode()])
    cases = BUILDERS[exercise](rng, hidden)
    for case in cases:
        case.exercise = exercise
    return cases
