"""Gradient checking: compare a hand-written backward pass with finite differences.

For an operation out = f(x) and a random upstream gradient dout, the scalar
L(x) = sum(f(x) * dout) has gradient dL/dx = backward(dout). Its centred difference

    dL/dx[i] ~ (L(x + h e_i) - L(x - h e_i)) / (2h)

has a truncation error of about h^2 |L'| / 6 (the third derivative along e_i) plus a rounding
error of about u |L| / h (u the unit roundoff: 1.1e-16 in float64, 6e-8 in float32), so h ~ 1e-6
suits float64 and float32 is hopeless for fine checks: check gradients in float64.

A random dout matters: with dout = 1 everywhere, L is the sum of a batch-norm output, which is
the same for every x (the normalised values of a channel sum to zero). Then the true dx is 0, and
so is the variance term xhat * mean(dxhat * xhat) of the backward pass: a backward pass that
forgets that term still "passes".

`check_all_operations` (what `python -m skscratch gradcheck` prints) checks the reference pairs,
the ones a student reads and writes, then the fast backend's pairs against finite differences
and against the reference pairs. In a course's student copy an operation whose function is not
written yet raises NotImplementedError naming its exercise, and its rows say so.
"""

from __future__ import annotations

import re
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


def check_sk_unit(
    rng: np.random.Generator, backend: str = "reference", **options
) -> dict[str, float]:
    """Gradient check of the SK unit (x and every parameter) on the "reference" or the "fast"
    backend; options as `sk_case`'s. Returns {input name: max relative error}."""
    from skscratch.gradcheck_cases import sk_case  # which builds on this module's tools

    case = sk_case(rng, backend, **options)
    return check_gradients(case.forward, case.backward, case.inputs, seed=int(rng.integers(2**31)))


def agreement(fast, reference, seed: int = 0) -> float:
    """The largest relative difference between the two pairs' outputs and gradients, for the
    same inputs and the same random upstream gradient."""
    results = []
    for case in (fast, reference):
        out = case.forward(**case.inputs, **case.fixed)
        dout = np.random.default_rng(seed).standard_normal(np.shape(out[0]))
        grads = case.backward(dout, out[-1])
        if isinstance(grads, np.ndarray):
            grads = (grads,)
        if isinstance(grads, Mapping):
            grads = [grads[k] for k in sorted(grads)]
        results.append([out[0], *(g for g in grads if g is not None)])
    return max(rel_error(a, b) for a, b in zip(*results, strict=True))


def exercise_of(error: NotImplementedError) -> str:
    """The course exercise named by a student copy's NotImplementedError ("exercise conv: ..."),
    or "?" for one raised by anything else."""
    found = re.match(r"exercise (\w+):", str(error))
    return found.group(1) if found else "?"


# A row of check_all_operations: which pair, which gradient, its error, and for a function not
# written yet (error nan) the exercise it belongs to.
Row = tuple[str, str, str, float, "str | None"]


def check_all_operations(
    seed: int = 0, backends: tuple[str, ...] = ("reference", "fast")
) -> list[Row]:
    """Check every operation's gradients; return rows (backend, operation, input, max relative
    error, None) in order: the reference pairs, then the fast ones (each against finite
    differences, then "= reference": against the reference pair).

    An operation whose code raises NotImplementedError (in a course's student copy) gives one
    row (backend, operation, "-", nan, exercise) instead."""
    from skscratch.gradcheck_cases import (  # which build on this module's tools
        Case,
        centred_difference_error,
        cross_entropy_error,
        fast_cases,
        reference_cases,
        sk_case,
    )

    rng = np.random.default_rng(seed)
    reference = reference_cases(rng)
    sk_options = [dict(branches=2, stride=1), dict(branches=3, stride=2)]
    sk_seeds = [int(rng.integers(2**31)) for _ in sk_options]
    checks: list[tuple[str, str, Callable[[], dict[str, float]]]] = []

    def gradients(case: Case) -> Callable[[], dict[str, float]]:
        return lambda: check_gradients(
            case.forward, case.backward, case.inputs, fixed=case.fixed, seed=seed
        )

    if "reference" in backends:
        checks += [("reference", case.name, gradients(case)) for case in reference]
        checks.append(("reference", "softmax cross-entropy", lambda: cross_entropy_error(rng)))
        for options, s in zip(sk_options, sk_seeds, strict=True):
            case = sk_case(np.random.default_rng(s), "reference", **options)
            checks.append(("reference", case.name, gradients(case)))
        checks.append(
            ("reference", "gradient checking exercise", lambda: centred_difference_error(rng))
        )
    if "fast" in backends:
        for fast_case, ref_case in fast_cases(reference, rng):
            checks.append(("fast", fast_case.name, gradients(fast_case)))
            checks.append(
                ("fast", fast_case.name,
                 lambda f=fast_case, r=ref_case: {"= reference": agreement(f, r, seed)})
            )  # fmt: skip
        for options, s in zip(sk_options, sk_seeds, strict=True):
            fast_case = sk_case(np.random.default_rng(s), "fast", **options)
            ref_case = sk_case(np.random.default_rng(s), "reference", **options)
            checks.append(("fast", fast_case.name, gradients(fast_case)))
            checks.append(
                ("fast", fast_case.name,
                 lambda f=fast_case, r=ref_case: {"= reference": agreement(f, r, seed)})
            )  # fmt: skip

    rows: list[Row] = []
    for backend, name, check in checks:
        try:
            rows += [(backend, name, key, err, None) for key, err in check().items()]
        except NotImplementedError as exc:
            rows.append((backend, name, "-", float("nan"), exercise_of(exc)))
    return rows
