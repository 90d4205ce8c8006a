"""Bad inputs raise the documented error, and the message names the argument at fault.

ValueError for a wrong shape, size or value; TypeError for a wrong type or dtype (integer arrays,
float32 mixed with float64, float labels). Each bad call below differs from a valid call (see
test_the_valid_calls_succeed) in one argument only. The pairs that each backend has its own of
(convolution, batch norm, ReLU, im2col / col2im) are called on both: the fast pairs check their
arguments as the reference pairs do, before any kernel sees them.
"""

from __future__ import annotations

import numpy as np
import pytest

from skscratch import (
    branch_softmax_backward,
    branch_softmax_forward,
    global_avg_pool_backward,
    global_avg_pool_forward,
    linear_backward,
    linear_forward,
    softmax_cross_entropy,
)
from skscratch.backends import BACKENDS, get_backend
from skscratch.fast import im2col as fast_im2col
from skscratch.im2col import col2im, im2col

GATHERS = [("reference", im2col), ("fast", fast_im2col.im2col)]
SCATTERS = [("reference", col2im), ("fast", fast_im2col.col2im)]

rng = np.random.default_rng(0)


def normal(*shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


# Valid arguments. Convolution: 4 input channels in 2 groups, 6 output channels, 3x3 kernel,
# 5x5 input, so the output is (2, 6, 3, 3).
X = normal(2, 4, 5, 5)
W = normal(6, 2, 3, 3)
B = normal(6)
DOUT = normal(2, 6, 3, 3)
# Batch norm on (4, 3) and (2, 3, 2, 2).
BN_X, BN_X4 = normal(4, 3), normal(2, 3, 2, 2)
GAMMA, BETA, MEAN, VAR = normal(3), normal(3), normal(3), np.ones(3)
BN = {"gamma": GAMMA, "beta": BETA, "running_mean": MEAN, "running_var": VAR}
# Linear: (3, 4) -> (3, 2). Branch softmax: (2, 3, 4). Cross-entropy: 3 examples, 5 classes.
LIN_X, LIN_W, LIN_B = normal(3, 4), normal(2, 4), normal(2)
LOGITS3 = normal(2, 3, 4)
LOGITS, LABELS = normal(3, 5), np.array([0, 4, 2])
# im2col: 3x3 kernel, stride 2, padding 1 on a 5x5 input: 3x3 output, cols (2, 4*9, 9).
COLS = normal(2, 36, 9)
WIN = {"stride": 2, "padding": 1}


def _conv_cache(ops, x=X, w=W, b=B):
    return ops.conv2d_forward(x, w, b, groups=2)[1]


def _bn_cache(ops, x=BN_X, training=True):
    return ops.batchnorm_forward(x, **BN, training=training)[3]


def _with(params, **changes):
    return {**params, **changes}


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_valid_calls_succeed(backend):
    ops = get_backend(backend)
    ops.conv2d_backward(DOUT, _conv_cache(ops))
    ops.conv2d_backward(
        DOUT.astype(np.float32), _conv_cache(ops, *(a.astype(np.float32) for a in (X, W, B)))
    )
    ops.batchnorm_backward(BN_X, _bn_cache(ops))
    ops.batchnorm_backward(BN_X4, _bn_cache(ops, BN_X4, training=False))
    ops.relu_backward(BN_X, ops.relu_forward(BN_X)[1])
    ops.relu_backward(BN_X, ops.add_relu_forward(BN_X, BN_X)[1])
    global_avg_pool_backward(normal(2, 4), global_avg_pool_forward(X)[1])
    linear_backward(normal(3, 2), linear_forward(LIN_X, LIN_W, LIN_B)[1])
    branch_softmax_backward(LOGITS3, branch_softmax_forward(LOGITS3)[1])
    softmax_cross_entropy(LOGITS, LABELS)
    for _, gather in GATHERS:
        assert gather(X, 3, 3, **WIN).shape == COLS.shape
    for _, scatter in SCATTERS:
        assert scatter(COLS, X.shape, 3, 3, **WIN).shape == X.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_mode_accepts_one_value_per_channel(backend):
    # Only training needs batch statistics; evaluation uses the running ones.
    out = get_backend(backend).batchnorm_forward(normal(1, 3), **BN, training=False)[0]
    assert out.shape == (1, 3)


F32 = np.float32
# The pairs that each backend has its own of: every case runs on both.
PAIR_CASES = [
    # --- conv2d_forward
    (
        "conv x 3-D",
        lambda ops: ops.conv2d_forward(X[0], W, groups=2),
        ValueError,
        r"^x must have 4 dim",
    ),
    (
        "conv w 3-D",
        lambda ops: ops.conv2d_forward(X, W[0], groups=2),
        ValueError,
        r"^w must have 4 dim",
    ),
    (
        "conv input channels not divisible by groups",
        lambda ops: ops.conv2d_forward(normal(2, 3, 5, 5), normal(6, 1, 3, 3), groups=2),
        ValueError,
        r"input channels \(3\) must be divisible by groups \(2\)",
    ),
    (
        "conv output channels not divisible by groups",
        lambda ops: ops.conv2d_forward(X, normal(5, 2, 3, 3), groups=2),
        ValueError,
        r"output channels of w \(5\) must be divisible by groups \(2\)",
    ),
    (
        "conv weight shape mismatch",
        lambda ops: ops.conv2d_forward(X, normal(6, 4, 3, 3), groups=2),
        ValueError,
        r"^w must have shape \(C_out, C_in // groups, KH, KW\)",
    ),
    (
        "conv bias of wrong length",
        lambda ops: ops.conv2d_forward(X, W, normal(5), groups=2),
        ValueError,
        r"^b must have shape \(6,\)",
    ),
    (
        "conv bias 2-D",
        lambda ops: ops.conv2d_forward(X, W, normal(6, 1), groups=2),
        ValueError,
        r"^b ",
    ),
    (
        "conv output size < 1",
        lambda ops: ops.conv2d_forward(normal(1, 1, 2, 2), normal(1, 1, 3, 3)),
        ValueError,
        r"output size would be 0x0",
    ),
    (
        "conv output size < 1 by dilation",
        lambda ops: ops.conv2d_forward(
            normal(1, 1, 4, 9), normal(1, 1, 3, 3), dilation=2, padding=(0, 1)
        ),
        ValueError,
        r"output size would be 0x",
    ),
    (
        "conv stride 0",
        lambda ops: ops.conv2d_forward(X, W, stride=0, groups=2),
        ValueError,
        r"^stride",
    ),
    (
        "conv padding negative",
        lambda ops: ops.conv2d_forward(X, W, padding=(1, -1), groups=2),
        ValueError,
        r"^padding",
    ),
    (
        "conv dilation 0",
        lambda ops: ops.conv2d_forward(X, W, dilation=0, groups=2),
        ValueError,
        "^dilation",
    ),
    ("conv groups 0", lambda ops: ops.conv2d_forward(X, W, groups=0), ValueError, r"^groups"),
    (
        "conv stride float",
        lambda ops: ops.conv2d_forward(X, W, stride=1.5, groups=2),
        TypeError,
        "^stride",
    ),
    ("conv groups float", lambda ops: ops.conv2d_forward(X, W, groups=2.0), TypeError, r"^groups"),
    (
        "conv integer x",
        lambda ops: ops.conv2d_forward(X.astype(np.int64), W, groups=2),
        TypeError,
        r"^x must have dtype float32 or float64, got int64",
    ),
    (
        "conv integer w",
        lambda ops: ops.conv2d_forward(X, W.astype(np.int32), groups=2),
        TypeError,
        r"^w must have dtype",
    ),
    (
        "conv float32 x, float64 w",
        lambda ops: ops.conv2d_forward(X.astype(F32), W, groups=2),
        TypeError,
        r"^w has dtype float64 but x has dtype float32",
    ),
    (
        "conv float32 b",
        lambda ops: ops.conv2d_forward(X, W, B.astype(F32), groups=2),
        TypeError,
        r"^b has dtype float32",
    ),
    # --- conv2d_backward
    (
        "conv dout with wrong channels",
        lambda ops: ops.conv2d_backward(normal(2, 5, 3, 3), _conv_cache(ops)),
        ValueError,
        r"^dout",
    ),
    (
        "conv dout with wrong spatial size",
        lambda ops: ops.conv2d_backward(normal(2, 6, 3, 4), _conv_cache(ops)),
        ValueError,
        r"^dout",
    ),
    (
        # Same number of positions (6) as the forward output (2x3), in the wrong layout (3x2).
        "conv dout with spatial axes swapped",
        lambda ops: ops.conv2d_backward(
            normal(1, 1, 3, 2), ops.conv2d_forward(normal(1, 1, 3, 4), W[:1, :1, :2, :2])[1]
        ),
        ValueError,
        r"^dout",
    ),
    (
        "conv dout 3-D",
        lambda ops: ops.conv2d_backward(DOUT[0], _conv_cache(ops)),
        ValueError,
        r"^dout",
    ),
    (
        "conv float32 dout",
        lambda ops: ops.conv2d_backward(DOUT.astype(F32), _conv_cache(ops)),
        TypeError,
        r"^dout has dtype float32",
    ),
    # --- batchnorm_forward / batchnorm_backward
    (
        "batchnorm x 3-D",
        lambda ops: ops.batchnorm_forward(normal(2, 3, 4), **BN),
        ValueError,
        r"^x must have 2 or 4 dim",
    ),
    (
        "batchnorm integer x",
        lambda ops: ops.batchnorm_forward(BN_X.astype(np.int64), **BN),
        TypeError,
        r"^x must have dtype",
    ),
    (
        "batchnorm training, 1 value per channel (N, C)",
        lambda ops: ops.batchnorm_forward(normal(1, 3), **BN, training=True),
        ValueError,
        r"more than 1 value per channel, got x of shape \(1, 3\)",
    ),
    (
        "batchnorm training, 1 value per channel (N, C, H, W)",
        lambda ops: ops.batchnorm_forward(normal(1, 3, 1, 1), **BN, training=True),
        ValueError,
        r"more than 1 value per channel, got x of shape \(1, 3, 1, 1\)",
    ),
    *[
        (
            f"batchnorm {name} of wrong shape",
            lambda ops, name=name: ops.batchnorm_forward(BN_X, **_with(BN, **{name: normal(4)})),
            ValueError,
            rf"^{name} must have shape \(3,\)",
        )
        for name in BN
    ],
    (
        "batchnorm gamma 2-D",
        lambda ops: ops.batchnorm_forward(BN_X, **_with(BN, gamma=normal(1, 3))),
        ValueError,
        r"^gamma must have 1 dim",
    ),
    *[
        (
            f"batchnorm float32 {name}",
            lambda ops, name=name: ops.batchnorm_forward(
                BN_X, **_with(BN, **{name: BN[name].astype(F32)})
            ),
            TypeError,
            rf"^{name} has dtype float32 but x has dtype float64",
        )
        for name in BN
    ],
    (
        "batchnorm integer running_var",
        lambda ops: ops.batchnorm_forward(BN_X, **_with(BN, running_var=np.ones(3, dtype=int))),
        TypeError,
        r"^running_var must have dtype",
    ),
    (
        "batchnorm momentum above 1",
        lambda ops: ops.batchnorm_forward(BN_X, **BN, momentum=1.5),
        ValueError,
        r"^momentum",
    ),
    (
        "batchnorm eps 0",
        lambda ops: ops.batchnorm_forward(BN_X, **BN, eps=0.0),
        ValueError,
        r"^eps",
    ),
    (
        "batchnorm dout of wrong shape",
        lambda ops: ops.batchnorm_backward(normal(4, 2), _bn_cache(ops)),
        ValueError,
        r"^dout must have shape \(4, 3\)",
    ),
    (
        "batchnorm dout of wrong shape, eval",
        lambda ops: ops.batchnorm_backward(
            normal(2, 3, 2, 1), _bn_cache(ops, BN_X4, training=False)
        ),
        ValueError,
        r"^dout must have shape \(2, 3, 2, 2\)",
    ),
    (
        "batchnorm float32 dout",
        lambda ops: ops.batchnorm_backward(BN_X.astype(F32), _bn_cache(ops)),
        TypeError,
        r"^dout has dtype float32",
    ),
    # --- relu
    (
        "relu integer x",
        lambda ops: ops.relu_forward(np.arange(3)),
        TypeError,
        r"^x must have dtype",
    ),
    ("relu list of ints", lambda ops: ops.relu_forward([1, 2]), TypeError, r"^x must have dtype"),
    (
        "relu dout of wrong shape",
        lambda ops: ops.relu_backward(normal(3, 4), ops.relu_forward(BN_X)[1]),
        ValueError,
        r"^dout must have shape \(4, 3\)",
    ),
    (
        "add_relu residual of another shape",
        lambda ops: ops.add_relu_forward(BN_X, normal(3, 4)),
        ValueError,
        r"^residual must have shape \(4, 3\)",
    ),
    (
        "add_relu float32 residual",
        lambda ops: ops.add_relu_forward(BN_X, BN_X.astype(F32)),
        TypeError,
        r"^residual has dtype float32 but x has dtype float64",
    ),
    (
        "add_relu integer x",
        lambda ops: ops.add_relu_forward(BN_X.astype(int), BN_X),
        TypeError,
        r"^x must have dtype",
    ),
]

# The pairs that both backends share.
CASES = [
    # --- global average pooling
    ("pool x 3-D", lambda: global_avg_pool_forward(X[0]), ValueError, r"^x must have 4 dim"),
    (
        "pool empty plane",
        lambda: global_avg_pool_forward(normal(2, 3, 0, 4)),
        ValueError,
        r"^x must have a non-empty",
    ),
    (
        "pool integer x",
        lambda: global_avg_pool_forward(X.astype(np.int16)),
        TypeError,
        r"^x must have dtype",
    ),
    (
        "pool dout of wrong shape",
        lambda: global_avg_pool_backward(normal(2, 3), global_avg_pool_forward(X)[1]),
        ValueError,
        r"^dout must have shape \(2, 4\)",
    ),
    (
        "pool dout 4-D",
        lambda: global_avg_pool_backward(normal(2, 4, 1, 1), global_avg_pool_forward(X)[1]),
        ValueError,
        r"^dout must have 2 dim",
    ),
    # --- linear
    ("linear x 3-D", lambda: linear_forward(normal(3, 4, 1), LIN_W), ValueError, r"^x must have 2"),
    (
        "linear weight shape mismatch",
        lambda: linear_forward(LIN_X, normal(2, 5)),
        ValueError,
        r"^w must have shape \(D_out, D_in\) with D_in = 4",
    ),
    (
        "linear bias of wrong length",
        lambda: linear_forward(LIN_X, LIN_W, normal(3)),
        ValueError,
        r"^b must have shape \(2,\)",
    ),
    (
        "linear integer x",
        lambda: linear_forward(LIN_X.astype(np.int64), LIN_W),
        TypeError,
        r"^x must have dtype",
    ),
    (
        "linear float32 w",
        lambda: linear_forward(LIN_X, LIN_W.astype(F32)),
        TypeError,
        r"^w has dtype float32",
    ),
    (
        "linear float32 b",
        lambda: linear_forward(LIN_X, LIN_W, LIN_B.astype(F32)),
        TypeError,
        r"^b has dtype float32",
    ),
    (
        "linear dout of wrong shape",
        lambda: linear_backward(normal(3, 3), linear_forward(LIN_X, LIN_W)[1]),
        ValueError,
        r"^dout must have shape \(3, 2\)",
    ),
    (
        "linear float32 dout",
        lambda: linear_backward(normal(3, 2, dtype=F32), linear_forward(LIN_X, LIN_W)[1]),
        TypeError,
        r"^dout has dtype float32",
    ),
    # --- branch softmax
    (
        "branch softmax logits 2-D",
        lambda: branch_softmax_forward(LOGITS),
        ValueError,
        r"^logits must have 3 dim",
    ),
    (
        "branch softmax integer logits",
        lambda: branch_softmax_forward(np.ones((2, 3, 4), dtype=int)),
        TypeError,
        r"^logits must have dtype",
    ),
    (
        "branch softmax da of wrong shape",
        lambda: branch_softmax_backward(normal(2, 4, 3), branch_softmax_forward(LOGITS3)[1]),
        ValueError,
        r"^da must have shape \(2, 3, 4\)",
    ),
    (
        "branch softmax float32 da",
        lambda: branch_softmax_backward(LOGITS3.astype(F32), branch_softmax_forward(LOGITS3)[1]),
        TypeError,
        r"^da has dtype float32",
    ),
    # --- softmax cross-entropy
    (
        "cross-entropy logits 1-D",
        lambda: softmax_cross_entropy(LOGITS[0], LABELS[:1]),
        ValueError,
        r"^logits must have 2 dim",
    ),
    (
        "cross-entropy integer logits",
        lambda: softmax_cross_entropy(np.ones((3, 5), dtype=int), LABELS),
        TypeError,
        r"^logits must have dtype",
    ),
    (
        "cross-entropy label too large",
        lambda: softmax_cross_entropy(LOGITS, np.array([0, 5, 2])),
        ValueError,
        r"^labels must lie in \[0, 5\)",
    ),
    (
        "cross-entropy negative label",
        lambda: softmax_cross_entropy(LOGITS, np.array([0, -1, 2])),
        ValueError,
        r"^labels must lie in \[0, 5\)",
    ),
    (
        "cross-entropy labels (N, 1)",
        lambda: softmax_cross_entropy(LOGITS, LABELS[:, None]),
        ValueError,
        r"^labels must have shape \(3,\)",
    ),
    (
        "cross-entropy smoothing 1",
        lambda: softmax_cross_entropy(LOGITS, LABELS, smoothing=1.0),
        ValueError,
        r"^smoothing must be in \[0, 1\), got 1.0",
    ),
    (
        "cross-entropy smoothing NaN",
        lambda: softmax_cross_entropy(LOGITS, LABELS, smoothing=float("nan")),
        ValueError,
        r"^smoothing must be in \[0, 1\), got nan",
    ),
    (
        "cross-entropy too many labels",
        lambda: softmax_cross_entropy(LOGITS, np.array([0, 1, 2, 3])),
        ValueError,
        r"^labels must have shape \(3,\)",
    ),
    (
        "cross-entropy float labels",
        lambda: softmax_cross_entropy(LOGITS, LABELS.astype(float)),
        TypeError,
        r"^labels must be integers",
    ),
    (
        "cross-entropy bool labels",
        lambda: softmax_cross_entropy(LOGITS[:, :2], np.array([True, False, True])),
        TypeError,
        r"^labels must be integers",
    ),
    (
        "cross-entropy no examples",
        lambda: softmax_cross_entropy(normal(0, 5), np.zeros(0, dtype=int)),
        ValueError,
        r"^logits must hold at least one example",
    ),
    # --- im2col / col2im, the reference and the fast versions alike
    *[
        case
        for version, gather in GATHERS
        for case in [
            (
                f"{version} im2col x 3-D",
                lambda g=gather: g(X[0], 3, 3),
                ValueError,
                r"^x must have 4 dim",
            ),
            (
                f"{version} im2col integer x",
                lambda g=gather: g(X.astype(np.int64), 3, 3),
                TypeError,
                r"^x must have dtype",
            ),
            (f"{version} im2col kh 0", lambda g=gather: g(X, 0, 3), ValueError, r"^kh must be"),
            (f"{version} im2col kw float", lambda g=gather: g(X, 3, 3.0), TypeError, r"^kw must"),
            (
                f"{version} im2col output size < 1",
                lambda g=gather: g(X, 6, 3),
                ValueError,
                r"output size would be 0x3",
            ),
        ]
    ],
    *[
        case
        for version, scatter in SCATTERS
        for case in [
            (
                f"{version} col2im cols of wrong shape",
                lambda s=scatter: s(COLS[:, :-1], X.shape, 3, 3, **WIN),
                ValueError,
                r"^cols must have shape \(N, C\*KH\*KW, H_out\*W_out\) = \(2, 36, 9\)",
            ),
            (
                f"{version} col2im cols 2-D",
                lambda s=scatter: s(COLS[0], X.shape, 3, 3, **WIN),
                ValueError,
                r"^cols must have 3 dim",
            ),
            (
                f"{version} col2im x_shape 3-D",
                lambda s=scatter: s(COLS, X.shape[1:], 3, 3, **WIN),
                ValueError,
                r"^x_shape must be \(N, C, H, W\)",
            ),
            (
                f"{version} col2im integer cols",
                lambda s=scatter: s(COLS.astype(np.int64), X.shape, 3, 3, **WIN),
                TypeError,
                r"^cols must have dtype",
            ),
        ]
    ],
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "call, error, message", [pytest.param(*case[1:], id=case[0]) for case in PAIR_CASES]
)
def test_bad_input_to_a_pair_is_refused_naming_the_argument(call, error, message, backend):
    with pytest.raises(error, match=message):
        call(get_backend(backend))


@pytest.mark.parametrize(
    "call, error, message", [pytest.param(*case[1:], id=case[0]) for case in CASES]
)
def test_bad_input_is_refused_naming_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
