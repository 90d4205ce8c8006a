"""Modules, the SK-ResNeXt, the backends they run on, saving and loading, and the optimiser.

Every module must do the bookkeeping and nothing else: its forward and backward equal the pair of
functions it wraps, on either backend. The two backends give the same network. The network's
gradients are checked as a whole by centred differences in float64; names, the state dict,
parameter and multiply-add counts are checked against the PyTorch-style tree and formulas written
out here; SGD and the schedule against hand-computed numbers.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import skscratch
from skscratch import activations, backends, conv, fast, layers, linear, pooling, sk
from skscratch.activations import relu_backward, relu_forward
from skscratch.backends import BACKENDS, Backend, current_backend, get_backend, use_backend
from skscratch.batchnorm import batchnorm_backward, batchnorm_forward
from skscratch.conv import conv2d_backward, conv2d_forward
from skscratch.gradcheck import numerical_gradient, rel_error
from skscratch.linear import linear_backward, linear_forward
from skscratch.models import (
    BENCH_535K,
    PRESETS,
    SKBottleneck,
    SKNetConfig,
    SKResNeXt,
    count_macs,
)
from skscratch.nn import (
    BatchNorm,
    Conv2d,
    GlobalAvgPool,
    Linear,
    Module,
    Parameter,
    ReLU,
    Sequential,
    SKUnit,
)
from skscratch.optim import SGD, learning_rate
from skscratch.pooling import global_avg_pool_backward, global_avg_pool_forward
from skscratch.sk import sk_unit_backward, sk_unit_forward

# The smallest network with every kind of block: a projection shortcut at stride 1 (stage 0,
# 4 -> 8 channels), one at stride 2 (stage 1, block 0) and an identity shortcut (stage 1, block
# 1). Inputs of 8 x 8 pixels keep a forward pass at a few milliseconds.
# Kaiming-drawn attention weights: with the official N(0, 0.01^2) the fc's gradient is ~1e-7,
# too small for a finite-difference check to say anything about it.
SMALL = SKNetConfig(
    stem=4, depths=(1, 2), mids=(4, 4), outs=(8, 8), strides=(1, 2), groups=2, r=2, L=4,
    attention_init="kaiming",
)  # fmt: skip
on_both_backends = pytest.mark.parametrize("backend", BACKENDS)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------- modules = their pairs
#
# In float64, so that "equal" can mean equal to rounding. A module built on either backend is
# compared with the reference pair it stands for: on "reference" it calls that very pair, on
# "fast" the compiled one, which must compute the same thing.


def assert_same(actual, expected):
    assert actual.dtype == expected.dtype
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)


@on_both_backends
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    "options",
    [
        dict(stride=1, padding=1, dilation=1, groups=1),
        dict(stride=2, padding=2, dilation=2, groups=2),
        dict(stride=1, padding=0, dilation=1, groups=4),
    ],
)
def test_conv2d_module_is_its_pair(options, bias, backend):
    rng = _rng(1)
    conv_module = Conv2d(4, 8, 3, bias=bias, rng=rng, **options).astype(np.float64)
    conv_module.set_backend(backend)
    if bias:
        conv_module.params["bias"].data = rng.standard_normal(8)
    x = rng.standard_normal((2, 4, 7, 6))
    out = conv_module.forward(x)
    b = conv_module.params["bias"].data if bias else None
    expected, cache = conv2d_forward(x, conv_module.params["weight"].data, b, **options)
    assert_same(out, expected)

    dout = rng.standard_normal(out.shape)
    dx = conv_module.backward(dout)
    dx_ref, dw_ref, db_ref = conv2d_backward(dout, cache)
    assert_same(dx, dx_ref)
    assert_same(conv_module.params["weight"].grad, dw_ref)
    if bias:
        assert_same(conv_module.params["bias"].grad, db_ref)
    else:
        assert "bias" not in conv_module.params and db_ref is None


@on_both_backends
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4, 5)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_module_is_its_pair(shape, training, relu, backend):
    rng = _rng(2)
    bn = BatchNorm(3, relu=relu, momentum=0.2, eps=1e-3).astype(np.float64).set_backend(backend)
    bn.params["weight"].data = rng.uniform(0.5, 2, 3)
    bn.params["bias"].data = rng.standard_normal(3)
    bn.buffers["running_mean"] = rng.standard_normal(3)
    bn.buffers["running_var"] = rng.uniform(0.5, 2, 3)
    before = {k: v.copy() for k, v in bn.buffers.items()}
    bn.train(training)
    x = rng.standard_normal(shape) * 2 + 1

    out = bn.forward(x)
    expected, mean, var, cache = batchnorm_forward(
        x,
        bn.params["weight"].data,
        bn.params["bias"].data,
        before["running_mean"],
        before["running_var"],
        training=training,
        momentum=0.2,
        eps=1e-3,
    )
    if relu:
        expected, relu_cache = relu_forward(expected)
    assert_same(out, expected)
    # The module keeps the statistics the pair returns: moved in training, untouched in eval.
    assert_same(bn.buffers["running_mean"], mean)
    assert_same(bn.buffers["running_var"], var)
    changed = not np.array_equal(bn.buffers["running_mean"], before["running_mean"])
    assert changed == training

    dout = rng.standard_normal(shape)
    dx = bn.backward(dout)
    dx_ref, dgamma, dbeta = batchnorm_backward(
        relu_backward(dout, relu_cache) if relu else dout, cache
    )
    assert_same(dx, dx_ref)
    assert_same(bn.params["weight"].grad, dgamma)
    assert_same(bn.params["bias"].grad, dbeta)


@on_both_backends
def test_relu_pool_linear_modules_are_their_pairs(backend):
    rng = _rng(3)
    x = rng.standard_normal((3, 4, 5, 6))
    dout = rng.standard_normal(x.shape)

    with use_backend(backend):
        relu = ReLU()
        pool = GlobalAvgPool()
    expected, cache = relu_forward(x)
    assert_same(relu.forward(x), expected)
    assert_same(relu.backward(dout), relu_backward(dout, cache))
    # With a residual, the ReLU of the sum; its gradient reaches both terms alike.
    residual = rng.standard_normal(x.shape)
    expected, cache = relu_forward(x + residual)
    assert_same(relu.forward(x, residual=residual), expected)
    assert_same(relu.backward(dout), relu_backward(dout, cache))

    expected, cache = global_avg_pool_forward(x)
    assert_same(pool.forward(x), expected)
    dpool = rng.standard_normal((3, 4))
    assert_same(pool.backward(dpool), global_avg_pool_backward(dpool, cache))

    for bias in (True, False):
        with use_backend(backend):
            linear_module = Linear(6, 5, bias=bias, rng=rng).astype(np.float64)
        v = rng.standard_normal((3, 6))
        b = linear_module.params["bias"].data if bias else None
        expected, cache = linear_forward(v, linear_module.params["weight"].data, b)
        assert_same(linear_module.forward(v), expected)
        dv = rng.standard_normal((3, 5))
        dx_ref, dw_ref, db_ref = linear_backward(dv, cache)
        assert_same(linear_module.backward(dv), dx_ref)
        assert_same(linear_module.params["weight"].grad, dw_ref)
        if bias:
            assert_same(linear_module.params["bias"].grad, db_ref)
        else:
            assert set(linear_module.params) == {"weight"}


@on_both_backends
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("stride", [1, 2])
def test_sk_unit_module_is_its_pair(stride, training, backend):
    rng = _rng(4)
    unit = SKUnit(8, stride=stride, branches=3, groups=2, r=2, L=3, rng=rng)
    unit.astype(np.float64).train(training).set_backend(backend)
    for name in unit.buffers:
        unit.buffers[name] = rng.uniform(0.5, 2, unit.buffers[name].shape)
    state = {name: p.data.copy() for name, p in unit.params.items()} | {
        k: v.copy() for k, v in unit.buffers.items()
    }
    x = rng.standard_normal((3, 8, 6, 5))

    out = unit.forward(x)
    expected, cache = sk_unit_forward(x, state, stride=stride, groups=2, training=training)
    assert_same(out, expected)
    assert_same(unit.attention, cache.a)
    assert unit.attention.shape == (3, 3, 8)
    assert set(cache.running_stats) == set(unit.buffers)
    for name, value in cache.running_stats.items():
        assert_same(unit.buffers[name], value)

    dout = rng.standard_normal(out.shape)
    dx = unit.backward(dout)
    dx_ref, grads = sk_unit_backward(dout, cache)
    assert_same(dx, dx_ref)
    assert set(grads) == set(unit.params)
    for name, g in grads.items():
        assert_same(unit.params[name].grad, g)


@on_both_backends
def test_sequential_runs_children_forward_then_backward_in_reverse(backend):
    rng = _rng(5)
    with use_backend(backend):
        a = Conv2d(3, 3, 3, padding=1, rng=rng).astype(np.float64)
        b, c = BatchNorm(3).astype(np.float64), ReLU()
        seq = Sequential(a, b, c)
    assert len(seq) == 3 and seq[1] is b and list(seq.children) == ["0", "1", "2"]
    x = rng.standard_normal((2, 3, 4, 4))
    out = seq.forward(x)

    y, conv_cache = conv2d_forward(x, a.params["weight"].data, padding=1)
    y, _, _, bn_cache = batchnorm_forward(y, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3))
    y, relu_cache = relu_forward(y)
    assert_same(out, y)

    dout = rng.standard_normal(out.shape)
    d = relu_backward(dout, relu_cache)
    d, _, _ = batchnorm_backward(d, bn_cache)
    d, dw, _ = conv2d_backward(d, conv_cache)
    assert_same(seq.backward(dout), d)
    assert_same(a.params["weight"].grad, dw)


def _residual_path(block: SKBottleneck) -> list[Module]:
    """conv1 ... bn3: every child but the shortcut and the final ReLU, in order."""
    return [m for name, m in block.children.items() if name not in ("shortcut", "relu")]


@on_both_backends
@pytest.mark.parametrize("shortcut", [False, True])
def test_bottleneck_adds_the_shortcut_before_the_last_relu(shortcut, backend):
    rng = _rng(6)
    c_in = 4 if shortcut else 8
    block = SKBottleneck(c_in, 4, 8, groups=2, r=2, L=3, rng=rng).astype(np.float64)
    block.set_backend(backend)
    assert ("shortcut" in block.children) == shortcut
    # bn3 starts at zero (each block starts as its shortcut); make the residual path count.
    block.children["bn3"].params["weight"].data[:] = 1.5
    x = rng.standard_normal((3, c_in, 5, 5))
    out = block.forward(x)
    residual = x
    for module in _residual_path(block):
        residual = module.forward(residual)
    short = block.children["shortcut"].forward(x) if shortcut else x
    assert_same(out, np.maximum(residual + short, 0))

    # Backward: the gradient after the last ReLU goes down both paths, and their dx add.
    dout = rng.standard_normal(out.shape)
    dx = block.backward(dout)
    d = np.where(residual + short > 0, dout, 0.0)
    # The block's backward freed its parts' caches; their forwards run again for the reference.
    residual = x
    for module in _residual_path(block):
        residual = module.forward(residual)
    if shortcut:
        block.children["shortcut"].forward(x)
    dx_ref = d
    for module in reversed(_residual_path(block)):
        dx_ref = module.backward(dx_ref)
    dx_ref = dx_ref + (block.children["shortcut"].backward(d) if shortcut else d)
    assert_same(dx, dx_ref)


def test_fresh_bottleneck_is_its_shortcut():
    """bn3's scale starts at 0, so a new block computes ReLU(shortcut(x))."""
    rng = _rng(7)
    block = SKBottleneck(8, 4, 8, groups=2, r=2, L=3, rng=rng)
    x = rng.standard_normal((2, 8, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(block.forward(x), np.maximum(x, 0))


def test_without_zero_init_a_fresh_block_adds_its_residual_path():
    rng = _rng(7)
    block = SKBottleneck(8, 4, 8, groups=2, r=2, L=3, zero_init_residual=False, rng=rng)
    assert np.all(block.children["bn3"].params["weight"].data == 1)
    x = rng.standard_normal((2, 8, 4, 4)).astype(np.float32)
    assert not np.allclose(block.forward(x), np.maximum(x, 0))


def test_official_attention_init_starts_every_attention_near_one_over_m():
    """fc and select drawn from N(0, 0.01^2): the select logits are near 0, so the softmax over
    the branches starts near uniform; with Kaiming's draws it starts far from it."""
    x = _rng(1).standard_normal((8, 16, 6, 6)).astype(np.float32)
    spread = {}
    for init in ("kaiming", "official"):
        for m in (2, 3):
            unit = SKUnit(16, branches=m, groups=4, r=2, L=4, attention_init=init, rng=_rng(2))
            unit.forward(x)
            spread[init, m] = np.abs(unit.attention - 1 / m).max()
    official = SKUnit(16, groups=4, r=2, L=4, attention_init="official", rng=_rng(2))
    for name in ("fc.weight", "select.weight"):
        assert official.params[name].data.std() == pytest.approx(0.01, rel=0.2)
    assert spread["official", 2] < 0.05 and spread["official", 3] < 0.05
    assert spread["kaiming", 2] > 0.2 and spread["kaiming", 3] > 0.2


def test_an_unknown_attention_init_is_refused():
    message = r"attention_init must be one of \('kaiming', 'official'\), got 'zeros'"
    with pytest.raises(ValueError, match=message):
        SKUnit(8, groups=2, attention_init="zeros", rng=_rng())
    config = SKNetConfig(attention_init="official")
    assert SKNetConfig.from_dict(config.to_dict()) == config
    unit = SKResNeXt(config).sk_units()[0][1]
    assert unit.params["select.weight"].data.std() == pytest.approx(0.01, rel=0.2)


def test_backward_before_forward_is_refused():
    for module in (ReLU(), Conv2d(2, 2, 1, rng=_rng()), BatchNorm(2)):
        with pytest.raises(RuntimeError, match="before forward"):
            module.backward(np.zeros((1, 2, 1, 1), np.float32))


def test_backward_frees_the_cache_and_a_second_backward_is_refused():
    """Like PyTorch's graph, what a forward saved is freed by the backward that uses it."""
    model = SKResNeXt(PRESETS["tiny"])
    x = _rng(8).standard_normal((2, 3, 8, 8)).astype(np.float32)
    dout = np.ones((2, 10), np.float32)
    model.forward(x)
    model.backward(dout)
    assert all(m._cache is None for _, m in model.named_modules())
    with pytest.raises(RuntimeError, match="twice for one forward"):
        model.backward(dout)


# ---------------------------------------------------------------------------------- the backends


def _randomised(config: SKNetConfig, seed: int, training: bool) -> SKResNeXt:
    """The network in float64 with no parameter at a special value.

    Fresh batch-norm scales are 1 and shifts 0, and every bn3 scale is 0, which makes the whole
    residual path's gradient exactly 0 and any check of it vacuous. Scales are drawn from
    [0.5, 1.5], shifts from N(0, 0.2^2), and running statistics (used in eval mode) at random as
    well.
    """
    rng = _rng(seed)
    model = SKResNeXt(config, seed=seed).astype(np.float64).train(training)
    for name, p in model.named_parameters():
        if p.data.ndim == 1 and name.endswith("weight"):
            p.data = rng.uniform(0.5, 1.5, p.data.shape)
        elif name.endswith("bias"):
            p.data = rng.normal(0.0, 0.2, p.data.shape)
    for _, module in model.named_modules():
        for name, b in module.buffers.items():
            if name.endswith("running_var"):
                module.buffers[name] = rng.uniform(0.5, 2.0, b.shape)
            else:
                module.buffers[name] = rng.normal(0.0, 0.2, b.shape)
    return model


def _step(model: SKResNeXt, x: np.ndarray, dout: np.ndarray) -> dict[str, np.ndarray]:
    """Forward and backward: the logits, dx, every gradient, the attention of every SK unit and
    the state after the step (its running statistics moved in training mode)."""
    results = {"logits": model.forward(x), "dx": model.backward(dout)}
    results |= {f"grad {name}": p.grad for name, p in model.named_parameters()}
    results |= {f"attention {name}": unit.attention for name, unit in model.sk_units()}
    return results | {f"state {name}": v for name, v in model.state_dict().items()}


@pytest.mark.parametrize("training", [True, False])
def test_both_backends_give_the_same_network(training):
    """The tiny SK-ResNeXt in float64, forward and backward, on "reference" and on "fast"."""
    x = _rng(20).standard_normal((4, 3, 16, 16))
    dout = _rng(21).standard_normal((4, 10))
    results = {}
    for backend in BACKENDS:
        model = _randomised(PRESETS["tiny"], seed=22, training=training).set_backend(backend)
        assert model.backend == backend
        results[backend] = _step(model, x, dout)
    reference, fast_results = results["reference"], results["fast"]
    assert reference.keys() == fast_results.keys()
    for key, value in reference.items():
        assert fast_results[key].dtype == value.dtype == np.float64, key
        scale = np.abs(value).max()
        np.testing.assert_allclose(
            fast_results[key], value, rtol=1e-9, atol=1e-9 * scale, err_msg=key
        )


def test_set_backend_switches_the_whole_tree_and_drops_its_caches():
    model = SKResNeXt(PRESETS["tiny"], backend="fast")
    x = _rng(23).standard_normal((2, 3, 8, 8)).astype(np.float32)
    model.forward(x)
    assert all(m._cache is not None for _, m in model.named_modules() if m.params)
    assert model.set_backend("reference") is model
    assert model.backend == "reference"
    for name, module in model.named_modules():
        assert module.ops is get_backend("reference"), name
        assert module._cache is None, name  # a fast cache means nothing to a reference backward
    with pytest.raises(RuntimeError, match="before forward"):
        model.backward(np.ones((2, 10), np.float32))
    # A subtree alone, by name or by Backend.
    stem = model.children["stem"].set_backend(get_backend("fast"))
    assert {m.backend for _, m in stem.named_modules()} == {"fast"}
    assert model.backend == "reference"
    assert model.children["stages"].backend == "reference"


def test_modules_built_in_use_backend_run_on_it():
    assert current_backend().name == backends.DEFAULT == "fast"
    assert SKResNeXt(PRESETS["tiny"]).backend == "fast"
    with use_backend("reference") as ops:
        assert ops is get_backend("reference") and current_backend() is ops
        model = SKResNeXt(PRESETS["tiny"])
        assert {m.backend for _, m in model.named_modules()} == {"reference"}
        with use_backend("fast"):  # the innermost block wins
            assert Conv2d(2, 2, 1, rng=_rng()).backend == "fast"
        assert ReLU().backend == "reference"
        # An explicit backend wins over the block's.
        assert SKResNeXt(PRESETS["tiny"], backend="fast").backend == "fast"
    assert current_backend().name == "fast"  # restored after the block
    assert model.backend == "reference"  # and the model keeps the one it was built on
    with pytest.raises(KeyError), use_backend("reference"):
        raise KeyError("an error inside the block")
    assert current_backend().name == "fast"  # restored after an error too


@pytest.mark.parametrize(
    "call",
    [
        lambda: get_backend("numba"),
        lambda: use_backend("numba").__enter__(),
        lambda: SKResNeXt(PRESETS["tiny"], backend="numba"),
        lambda: ReLU().set_backend("numba"),
        lambda: get_backend(None),
    ],
    ids=["get_backend", "use_backend", "SKResNeXt", "set_backend", "None"],
)
def test_an_unknown_backend_is_refused_naming_the_choices(call):
    with pytest.raises(ValueError, match=r"backend must be one of \('reference', 'fast'\)"):
        call()
    assert current_backend().name == "fast"


def test_each_backend_holds_its_own_pairs():
    """The reference backend runs the teaching modules' functions, the ones skscratch exports;
    the fast backend the compiled pairs of skscratch.fast, and skscratch's own pooling and
    linear pairs (one NumPy call each already)."""
    ref, fst = get_backend("reference"), get_backend("fast")
    assert isinstance(ref, Backend) and get_backend(ref) is ref and repr(fst) == "Backend('fast')"
    homes = {
        "conv2d": conv,
        "batchnorm": skscratch.batchnorm,
        "batchnorm_relu": layers,
        "relu": activations,
        "global_avg_pool": pooling,
        "max_pool2d": pooling,
        "linear": linear,
        "sk_unit": sk,
    }
    for op, home in homes.items():
        for direction in ("forward", "backward"):
            name = f"{op}_{direction}"
            assert getattr(ref, name) is getattr(home, name), name
            if op in ("global_avg_pool", "max_pool2d", "linear"):
                assert getattr(fst, name) is getattr(home, name), name
            else:
                assert getattr(fst, name) is getattr(fast, name), name
            if hasattr(skscratch, name):
                assert getattr(skscratch, name) is getattr(ref, name), name
    assert ref.add_relu_forward is layers.add_relu_forward
    assert fst.add_relu_forward is fast.add_relu_forward
    assert fst.relu_backward is fast.relu_backward


def test_a_deep_copy_keeps_the_backend():
    model = SKResNeXt(PRESETS["tiny"], backend="reference")
    assert copy.deepcopy(model).backend == "reference"


# ------------------------------------------------------------------ the whole network's gradients


# In float64 with h = 1e-6 the largest error over all sampled entries is 1.4e-8 (training) and
# 3.5e-8 (eval) for these seeds, and stayed below 3e-7 for the others tried: 1e-6 holds with room
# to spare, no looser bound is needed. The network has ReLUs whose inputs cannot be steered away
# from 0; a perturbation that carried one across its kink would show as an error of order 1e-2,
# not as a near miss. The seeds are fixed, so the check is deterministic.
NETWORK_TOL = 1e-6
ENTRIES_PER_TENSOR = 6


@on_both_backends
def test_network_backward_without_the_input_gradient_gives_the_same_parameter_gradients(backend):
    model = _randomised(SMALL, seed=11, training=True).set_backend(backend)
    x = _rng(12).standard_normal((4, 3, 8, 8))
    dout = _rng(13).standard_normal(model.forward(x).shape)
    assert model.backward(dout).shape == x.shape
    grads = {name: p.grad for name, p in model.named_parameters()}
    model.forward(x)
    assert model.backward(dout, input_grad=False) is None
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, grads[name])


@on_both_backends
@pytest.mark.parametrize("training", [True, False])
def test_whole_network_gradients_match_finite_differences(training, backend):
    model = _randomised(SMALL, seed=11, training=training).set_backend(backend)
    rng = _rng(12)
    x = rng.standard_normal((4, 3, 8, 8))
    out = model.forward(x)
    dout = rng.standard_normal(out.shape)  # a random upstream gradient, not all ones
    model.zero_grad()
    dx = model.backward(dout)
    assert dx.shape == x.shape and dx.dtype == np.float64
    h = 1e-6

    def loss() -> float:
        return float(np.sum(model.forward(x) * dout))

    errors = {}
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.data.shape, name
        assert p.grad.dtype == np.float64, name
        idx = rng.choice(p.data.size, min(ENTRIES_PER_TENSOR, p.data.size), replace=False)
        numeric = np.empty(len(idx))
        for k, i in enumerate(idx):
            old = p.data.flat[i]
            p.data.flat[i] = old + h
            plus = loss()
            p.data.flat[i] = old - h
            minus = loss()
            p.data.flat[i] = old
            numeric[k] = (plus - minus) / (2 * h)
        analytic = p.grad.flat[idx]
        # A vanishing gradient would make the relative error meaningless: refuse it.
        assert np.abs(analytic).max() > 1e-6, f"{name}: gradient is ~0, the check says nothing"
        errors[name] = rel_error(analytic, numeric)

    idx = rng.choice(x.size, 20, replace=False)
    numeric = numerical_gradient(model.forward, x, dout, h=h, indices=idx)
    errors["x"] = rel_error(dx.flat[idx], numeric.flat[idx])
    assert len(errors) == len(model.parameters()) + 1
    bad = {k: v for k, v in errors.items() if not v < NETWORK_TOL}
    assert not bad, f"relative errors above {NETWORK_TOL}: {bad}"


# ----------------------------------------------------------------------------- train / eval mode


def test_train_and_eval_reach_every_module():
    model = SKResNeXt(PRESETS["tiny"])
    assert all(m.training for _, m in model.named_modules())
    assert model.eval() is model
    assert not any(m.training for _, m in model.named_modules())
    model.train()
    assert all(m.training for _, m in model.named_modules())


def test_eval_mode_uses_running_statistics_and_keeps_them():
    rng = _rng(13)
    model = SKResNeXt(PRESETS["tiny"])
    x = rng.standard_normal((6, 3, 16, 16)).astype(np.float32)

    # Training: batch statistics, so an image's output depends on the rest of the batch, and
    # every running statistic moves.
    before = model.state_dict()
    model.train()
    full = model.forward(x)
    alone = model.forward(x[:2])
    assert not np.allclose(full[:2], alone, rtol=1e-4, atol=1e-5)
    after = model.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not np.array_equal(before[k], after[k]) for k in stats)

    # Evaluation: each image on its own, and nothing in the model changes.
    model.eval()
    frozen = model.state_dict()
    full = model.forward(x)
    alone = model.forward(x[:2])
    np.testing.assert_allclose(full[:2], alone, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.forward(x), full)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, frozen[k])


# ------------------------------------------------------------------------- names and the state


def _expected_names(config: SKNetConfig) -> dict[str, tuple[int, ...]]:
    """The PyTorch module tree of an SK-ResNeXt, written out by hand: {name: shape}."""
    names: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for key in ("weight", "bias", "running_mean", "running_var"):
            names[f"{prefix}.{key}"] = (c,)

    names["stem.0.weight"] = (config.stem, 3, 3, 3)
    bn("stem.1", config.stem)
    c_in = config.stem
    for i, (depth, mid, out, stride) in enumerate(
        zip(config.depths, config.mids, config.outs, config.strides, strict=True)
    ):
        for j in range(depth):
            p = f"stages.{i}.{j}"
            d = max(mid // config.r, config.L)
            names[f"{p}.conv1.weight"] = (mid, c_in, 1, 1)
            bn(f"{p}.bn1", mid)
            for m in range(config.branches):
                names[f"{p}.sk.convs.{m}.weight"] = (mid, mid // config.groups, 3, 3)
                bn(f"{p}.sk.bns.{m}", mid)
            names[f"{p}.sk.fc.weight"] = (d, mid)
            bn(f"{p}.sk.fc_bn", d)
            names[f"{p}.sk.select.weight"] = (config.branches * mid, d)
            names[f"{p}.conv3.weight"] = (out, mid, 1, 1)
            bn(f"{p}.bn3", out)
            if (stride if j == 0 else 1) != 1 or c_in != out:
                names[f"{p}.shortcut.0.weight"] = (out, c_in, 1, 1)
                bn(f"{p}.shortcut.1", out)
            c_in = out
    names["fc.weight"] = (config.num_classes, c_in)
    names["fc.bias"] = (config.num_classes,)
    return names


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_names_follow_the_pytorch_module_tree(preset):
    config = PRESETS[preset]
    state = SKResNeXt(config).state_dict()
    assert {k: v.shape for k, v in state.items()} == _expected_names(config)
    for name in (
        "stem.0.weight",
        "stem.1.running_var",
        "stages.0.0.sk.convs.1.weight",
        "stages.0.0.bn1.running_mean",
        "stages.1.0.shortcut.0.weight",
        "stages.2.0.sk.fc_bn.running_var",
        "fc.bias",
    ):
        assert name in state
    assert all(v.dtype == np.float32 for v in state.values())


def test_parameters_and_buffers_are_told_apart():
    model = SKResNeXt(PRESETS["tiny"])
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    assert not set(params) & set(buffers)
    assert all(k.endswith(("running_mean", "running_var")) for k in buffers)
    assert set(params) | set(buffers) == set(model.state_dict())


def test_state_dict_is_a_copy():
    model = SKResNeXt(PRESETS["tiny"])
    state = model.state_dict()
    state["fc.bias"][:] = 123
    assert not np.any(dict(model.named_parameters())["fc.bias"].data == 123)


def _perturbed(model: SKResNeXt, seed: int) -> SKResNeXt:
    """Move every parameter and buffer away from its initial value, so that a load that skipped
    an entry would show."""
    rng = _rng(seed)
    model.load_state_dict(
        {
            k: (v + rng.uniform(0.1, 0.5, v.shape)).astype(v.dtype)
            for k, v in model.state_dict().items()
        }
    )
    return model


def test_state_dict_round_trips_through_npz_without_pickle(tmp_path):
    rng = _rng(14)
    model = _perturbed(SKResNeXt(PRESETS["tiny"], seed=0), seed=15)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    path = tmp_path / "weights.npz"
    np.savez(path, **model.state_dict())

    fresh = SKResNeXt(PRESETS["tiny"], seed=1)
    with np.load(path, allow_pickle=False) as f:
        loaded = {k: f[k] for k in f.files}
    fresh.load_state_dict(loaded)
    for k, v in model.state_dict().items():
        assert fresh.state_dict()[k].dtype == v.dtype
        np.testing.assert_array_equal(fresh.state_dict()[k], v)
    for mode in ("eval", "train"):
        getattr(model, mode)()
        getattr(fresh, mode)()
        np.testing.assert_array_equal(fresh.forward(x), model.forward(x))


def _break_state(state: dict, how: str) -> dict:
    state = dict(state)
    if how == "missing":
        del state["stages.0.0.sk.select.weight"]
    elif how == "extra":
        state["stages.0.0.sk.convs.2.weight"] = np.zeros((8, 2, 3, 3), np.float32)
    elif how == "shape":
        state["stages.1.0.bn1.running_var"] = np.ones(17, np.float32)
    return state


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("missing", r"missing \['stages\.0\.0\.sk\.select\.weight'\]"),
        ("extra", r"unexpected \['stages\.0\.0\.sk\.convs\.2\.weight'\]"),
        ("shape", r"stages\.1\.0\.bn1\.running_var has shape \(17,\)"),
    ],
)
def test_a_state_that_does_not_fit_changes_nothing(how, message):
    model = SKResNeXt(PRESETS["tiny"], seed=0)
    before = model.state_dict()
    other = _perturbed(SKResNeXt(PRESETS["tiny"], seed=0), seed=16).state_dict()
    with pytest.raises(ValueError, match=message):
        model.load_state_dict(_break_state(other, how))
    after = model.state_dict()
    assert set(after) == set(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_a_state_of_another_architecture_is_refused():
    model = SKResNeXt(PRESETS["tiny"])
    with pytest.raises(ValueError, match="does not fit"):
        model.load_state_dict(SKResNeXt(SMALL).state_dict())


def test_astype_converts_parameters_and_buffers_and_drops_gradients():
    model = SKResNeXt(PRESETS["tiny"])
    x = np.zeros((2, 3, 8, 8), np.float32)
    model.backward(np.ones_like(model.forward(x)))
    model.astype(np.float64)
    assert all(v.dtype == np.float64 for v in model.state_dict().values())
    assert all(p.grad is None for p in model.parameters())
    assert model.forward(x.astype(np.float64)).dtype == np.float64


# -------------------------------------------------------------------- parameter and MAC counts


def _count_parameters(config: SKNetConfig) -> int:
    """Trainable parameters (no running statistics), from the block formula."""
    stem_kernel = 3 if config.stem_type == "cifar" else 7
    total = 3 * config.stem * stem_kernel**2 + 2 * config.stem
    c_in = config.stem
    for depth, mid, out, stride in zip(
        config.depths, config.mids, config.outs, config.strides, strict=True
    ):
        for j in range(depth):
            d = max(mid // config.r, config.L)
            total += c_in * mid + 2 * mid  # conv1, bn1
            total += config.branches * (mid * (mid // config.groups) * 9 + 2 * mid)
            total += d * mid + 2 * d + config.branches * mid * d  # fc, fc_bn, select
            total += mid * out + 2 * out  # conv3, bn3
            if (stride if j == 0 else 1) != 1 or c_in != out:
                total += c_in * out + 2 * out
            c_in = out
    return total + c_in * config.num_classes + config.num_classes


def _count_macs(config: SKNetConfig, size: int = 32) -> int:
    """Multiply-adds of convolutions and FC layers per 32 x 32 image, from the block formula."""
    total = 3 * config.stem * 9 * size * size
    c_in, hw = config.stem, size
    for depth, mid, out, stride in zip(
        config.depths, config.mids, config.outs, config.strides, strict=True
    ):
        for j in range(depth):
            s = stride if j == 0 else 1
            out_hw = (hw - 1) // s + 1
            d = max(mid // config.r, config.L)
            total += c_in * mid * hw * hw  # conv1, before the stride
            total += config.branches * mid * (mid // config.groups) * 9 * out_hw * out_hw
            total += d * mid + config.branches * mid * d
            total += mid * out * out_hw * out_hw
            if s != 1 or c_in != out:
                total += c_in * out * out_hw * out_hw
            c_in, hw = out, out_hw
    return total + c_in * config.num_classes


def test_bench_network_has_534_922_parameters():
    assert SKResNeXt(BENCH_535K).num_parameters() == 534_922 == _count_parameters(BENCH_535K)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_parameter_count_matches_the_formula(preset):
    config = PRESETS[preset]
    model = SKResNeXt(config)
    assert model.num_parameters() == _count_parameters(config)
    assert sum(p.data.size for p in model.parameters()) == model.num_parameters()


@pytest.mark.parametrize(
    "preset, params, macs", [("default", 673_834, 31_878_144), ("small", 184_234, 30_006_784)]
)
def test_count_macs_of_the_default_and_small_networks(preset, params, macs):
    model = SKResNeXt(PRESETS[preset])
    before = model.state_dict()
    assert model.num_parameters() == params
    assert count_macs(model) == _count_macs(PRESETS[preset]) == macs
    assert model.training  # the mode is restored
    for k, v in model.state_dict().items():  # the eval-mode pass changed no statistic
        np.testing.assert_array_equal(v, before[k])


def test_count_macs_is_per_image_and_restores_eval_mode():
    config = PRESETS["tiny"]
    model = SKResNeXt(config).eval()
    assert count_macs(model, (3, 3, 32, 32)) == _count_macs(config)
    assert not model.training


# ----------------------------------------------------------------------------------------- SGD


class _TwoParams(Module):
    """A weight matrix (decayed) and a bias vector (never decayed)."""

    def __init__(self, w: np.ndarray, b: np.ndarray):
        super().__init__()
        self.params["weight"] = Parameter(w.copy())
        self.params["bias"] = Parameter(b.copy())


def test_sgd_nesterov_step_by_hand():
    # One-entry tensors, so every number below can be checked on paper.
    model = _TwoParams(np.array([[2.0]]), np.array([1.0]))
    opt = SGD(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)
    w, b = model.params["weight"], model.params["bias"]

    w.grad, b.grad = np.array([[0.5]]), np.array([0.5])
    opt.step()
    # weight: g = 0.5 + 0.1*2 = 0.7; v = 0.7; step = g + 0.9 v = 1.33; w = 2 - 0.133
    # bias:   g = 0.5 (no decay);    v = 0.5; step = 0.95;          b = 1 - 0.095
    assert w.data[0, 0] == pytest.approx(1.867, abs=1e-15)
    assert b.data[0] == pytest.approx(0.905, abs=1e-15)

    w.grad, b.grad = np.array([[0.5]]), np.array([0.5])
    opt.step()
    # weight: g = 0.5 + 0.1*1.867 = 0.6867; v = 0.9*0.7 + 0.6867 = 1.3167;
    #         step = 0.6867 + 0.9*1.3167 = 1.87173; w = 1.867 - 0.187173
    # bias:   v = 0.9*0.5 + 0.5 = 0.95; step = 0.5 + 0.855 = 1.355; b = 0.905 - 0.1355
    assert w.data[0, 0] == pytest.approx(1.679827, abs=1e-12)
    assert b.data[0] == pytest.approx(0.7695, abs=1e-12)


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("weight_decay", [0.0, 5e-2])
def test_sgd_matches_the_torch_formula(nesterov, momentum, weight_decay):
    rng = _rng(17)
    w0, b0 = rng.standard_normal((3, 4)), rng.standard_normal(3)
    model = _TwoParams(w0, b0)
    lr = 0.05
    opt = SGD(model, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    w, b = w0.copy(), b0.copy()
    vw = vb = None
    for _ in range(4):
        gw, gb = rng.standard_normal((3, 4)), rng.standard_normal(3)
        model.params["weight"].grad, model.params["bias"].grad = gw.copy(), gb.copy()
        opt.step()
        gw = gw + weight_decay * w  # decay on the matrix only
        vw = gw if vw is None else momentum * vw + gw
        vb = gb if vb is None else momentum * vb + gb
        w = w - lr * (gw + momentum * vw if nesterov else vw)
        b = b - lr * (gb + momentum * vb if nesterov else vb)
        np.testing.assert_allclose(model.params["weight"].data, w, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(model.params["bias"].data, b, rtol=1e-13, atol=1e-13)


def test_sgd_skips_parameters_without_gradient_and_keeps_its_state():
    model = _TwoParams(np.ones((2, 2)), np.ones(2))
    opt = SGD(model, lr=0.1)
    model.params["weight"].grad = np.ones((2, 2))
    opt.step()
    np.testing.assert_array_equal(model.params["bias"].data, np.ones(2))
    assert set(opt.state_dict()) == {"velocity.weight"}

    other = SGD(_TwoParams(np.ones((2, 2)), np.ones(2)), lr=0.1)
    other.load_state_dict(opt.state_dict())
    np.testing.assert_array_equal(other.velocity["weight"], opt.velocity["weight"])
    with pytest.raises(ValueError, match="velocity.weight"):
        other.load_state_dict({"velocity.weight": np.ones(3)})
    with pytest.raises(ValueError, match="velocity.nothing"):
        other.load_state_dict({"velocity.nothing": np.ones(2)})


def test_sgd_refuses_negative_settings():
    model = _TwoParams(np.ones((1, 1)), np.ones(1))
    for kwargs in (dict(lr=-1.0), dict(momentum=-0.1), dict(weight_decay=-1e-4)):
        with pytest.raises(ValueError, match="must not be negative"):
            SGD(model, **kwargs)


def test_sgd_decays_every_matrix_of_the_network_and_no_vector():
    """Zero gradients isolate the decay: only multi-dimensional parameters move."""
    model = SKResNeXt(PRESETS["tiny"])
    before = model.state_dict()
    for p in model.parameters():
        p.grad = np.zeros_like(p.data)
    SGD(model, lr=0.1, momentum=0.0, weight_decay=0.01).step()
    for name, p in model.named_parameters():
        if p.data.ndim > 1:
            np.testing.assert_allclose(p.data, before[name] * (1 - 0.1 * 0.01), rtol=1e-6)
        else:
            np.testing.assert_array_equal(p.data, before[name])


# --------------------------------------------------------------------------------- the schedule


@pytest.mark.parametrize("kind", ["cosine", "onecycle"])
def test_learning_rate_schedule_endpoints(kind):
    peak, warmup, total = 0.4, 10, 110
    lrs = [learning_rate(s, total, peak=peak, warmup_steps=warmup, kind=kind) for s in range(total)]
    # Warm-up: linear from peak / warmup at the first step up to the peak.
    assert lrs[0] == pytest.approx(peak / warmup)
    assert lrs[4] == pytest.approx(peak * 5 / warmup)
    assert lrs[warmup - 1] == pytest.approx(peak)
    assert lrs[warmup] == pytest.approx(peak)  # the decay starts at the peak
    # Half-way through the decay both schedules are at half the peak; both end at 0.
    assert lrs[warmup + 50] == pytest.approx(peak / 2)
    assert learning_rate(total, total, peak=peak, warmup_steps=warmup, kind=kind) == pytest.approx(
        0.0, abs=1e-15
    )
    assert lrs[-1] > 0
    assert all(a <= b for a, b in zip(lrs[:warmup], lrs[1 : warmup + 1], strict=True))
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :], strict=False))
    if kind == "cosine":
        expected = peak * 0.5 * (1 + math.cos(math.pi * 25 / 100))
    else:
        expected = peak * (1 - 25 / 100)
    assert lrs[warmup + 25] == pytest.approx(expected)


def test_learning_rate_without_warmup_and_past_the_end():
    assert learning_rate(0, 50, peak=0.1, warmup_steps=0) == pytest.approx(0.1)
    assert learning_rate(500, 50, peak=0.1, warmup_steps=5) == pytest.approx(0.0, abs=1e-15)
    assert learning_rate(500, 50, peak=0.1, warmup_steps=5, kind="onecycle") == 0.0


def test_learning_rate_refuses_an_unknown_schedule():
    with pytest.raises(ValueError, match="'cosine' or 'onecycle'"):
        learning_rate(0, 10, peak=0.1, warmup_steps=1, kind="step")
