"""Shared hypothesis strategies and settings.

The strategies only build valid cases, so no test draws and then skips: groups are drawn first
and channel counts as multiples of them; kernel, dilation, padding and stride are drawn before the
input size, which then starts from the smallest one that leaves an output of at least 1 x 1.
Everything is kept small so that the nested-loop references and finite differences stay fast.

Array values come from a drawn seed rather than from hypothesis' array strategies: the shapes
and options are where the bugs hide, and well-scaled random values keep finite differences
meaningful.

Profiles: "fast" (the default), "thorough" for a longer search, "nojit" for the run of
test_fast.py's `nojit` tests with NUMBA_DISABLE_JIT=1. Choose one with
`pytest --hypothesis-profile=thorough`.

`conv_pair` names the convolutions under test: the reference pair of skscratch.conv and the fast
pair of skscratch.fast with each of its algorithms.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

# The gradient checks call the parallel kernels thousands of times on tiny arrays. With numba's
# OpenMP threading layer, idle threads spin waiting for work, and on a machine whose cores are
# busy with other processes each call then takes milliseconds instead of microseconds. Passive
# waiting costs nothing measurable here. libgomp reads this when the first parallel kernel runs,
# which is after this file is imported; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

settings.register_profile("fast", max_examples=30, deadline=None)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.register_profile("nojit", max_examples=5, deadline=None)
# In CI the same examples every run, so that a result can be reproduced and a rare input found
# by chance does not decide whether a change lands; local runs keep drawing new ones (and
# `--hypothesis-profile=thorough` draws many), which is where such inputs should turn up.
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "fast")

seeds = st.integers(0, 2**32 - 1)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "nojit: also run in a subprocess with NUMBA_DISABLE_JIT=1 (test_fast.py)"
    )


# The convolutions: the reference pair, and the fast pair with each algorithm it can run.
CONV_VERSIONS = ("reference", "fast-auto", "fast-im2col", "fast-direct")


def conv_pair(version: str):
    """(forward, backward) of the convolution `version` names (one of CONV_VERSIONS)."""
    if version == "reference":
        from skscratch import conv

        return conv.conv2d_forward, conv.conv2d_backward
    from skscratch import fast

    backend, algorithm = version.split("-")
    assert backend == "fast", version
    return partial(fast.conv2d_forward, algorithm=algorithm), fast.conv2d_backward


def pair_or_int(pair: tuple[int, int]) -> int | tuple[int, int]:
    """Pass equal pairs as a single int, so that both spellings of an option get exercised."""
    return pair[0] if pair[0] == pair[1] else pair


@dataclass(frozen=True)
class Window:
    """A convolution window and an input plane large enough for it."""

    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    h: int
    w: int

    @property
    def options(self) -> dict:
        return {
            "stride": pair_or_int(self.stride),
            "padding": pair_or_int(self.padding),
            "dilation": pair_or_int(self.dilation),
        }

    @property
    def out_hw(self) -> tuple[int, int]:
        """(H_out, W_out) = ((H + 2*padding - dilation*(KH - 1) - 1) // stride + 1, ...)."""
        return (
            _out_size(self.h, self.kh, self.stride[0], self.padding[0], self.dilation[0]),
            _out_size(self.w, self.kw, self.stride[1], self.padding[1], self.dilation[1]),
        )


def _out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@st.composite
def windows(draw, max_kernel=3, max_stride=3, max_dilation=2, max_padding=2, max_extra=3) -> Window:
    """Kernel, stride, padding and dilation first, then an input size that leaves output >= 1.

    The output is at least 1 when H + 2*padding >= dilation*(KH - 1) + 1, so H starts there (and
    at 1) and grows by up to `max_extra`, which also makes strides that do not divide evenly.
    """
    kh, kw = draw(st.integers(1, max_kernel)), draw(st.integers(1, max_kernel))
    stride = (draw(st.integers(1, max_stride)), draw(st.integers(1, max_stride)))
    padding = (draw(st.integers(0, max_padding)), draw(st.integers(0, max_padding)))
    dilation = (draw(st.integers(1, max_dilation)), draw(st.integers(1, max_dilation)))
    min_h = max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0])
    min_w = max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1])
    h = min_h + draw(st.integers(0, max_extra))
    w = min_w + draw(st.integers(0, max_extra))
    return Window(kh, kw, stride, padding, dilation, h, w)


@dataclass(frozen=True)
class ConvCase:
    n: int
    c_in: int
    c_out: int
    groups: int
    window: Window
    bias: bool
    seed: int

    @property
    def options(self) -> dict:
        return {**self.window.options, "groups": self.groups}

    def arrays(self, dtype=np.float64) -> dict:
        """{"x", "w", "b"} (b is None without bias), standard normal values."""
        rng = np.random.default_rng(self.seed)
        win = self.window
        x = rng.standard_normal((self.n, self.c_in, win.h, win.w))
        w = rng.standard_normal((self.c_out, self.c_in // self.groups, win.kh, win.kw))
        b = rng.standard_normal(self.c_out) if self.bias else None
        return {
            "x": x.astype(dtype),
            "w": w.astype(dtype),
            "b": None if b is None else b.astype(dtype),
        }


@st.composite
def conv_cases(draw, max_groups=3, max_per_group=2, **window_limits) -> ConvCase:
    """Groups first, then channels per group, so that both channel counts divide evenly."""
    groups = draw(st.integers(1, max_groups))
    c_in = groups * draw(st.integers(1, max_per_group))
    c_out = groups * draw(st.integers(1, max_per_group))
    return ConvCase(
        n=draw(st.integers(1, 2)),
        c_in=c_in,
        c_out=c_out,
        groups=groups,
        window=draw(windows(**window_limits)),
        bias=draw(st.booleans()),
        seed=draw(seeds),
    )


@dataclass(frozen=True)
class BatchNormCase:
    shape: tuple[int, ...]  # (N, C) or (N, C, H, W) with at least 2 values per channel
    training: bool
    seed: int

    def arrays(self, dtype=np.float64) -> dict:
        """x with channels of assorted means and scales; gamma, beta; positive running_var."""
        rng = np.random.default_rng(self.seed)
        c = self.shape[1]
        per_channel = (1, c) if len(self.shape) == 2 else (1, c, 1, 1)
        x = rng.standard_normal(self.shape) * rng.uniform(0.5, 3, per_channel)
        x += rng.uniform(-2, 2, per_channel)
        return {
            "x": x.astype(dtype),
            "gamma": rng.uniform(0.5, 2, c).astype(dtype),
            "beta": rng.standard_normal(c).astype(dtype),
            "running_mean": rng.standard_normal(c).astype(dtype),
            "running_var": rng.uniform(0.5, 2, c).astype(dtype),
        }


@st.composite
def batchnorm_shapes(draw, min_per_channel=2, ndim=None) -> tuple[int, ...]:
    """(N, C) or (N, C, H, W) (ndim 2 or 4, else either) with at least `min_per_channel` values
    (N or N*H*W) per channel.

    Training needs 2. The gradient checks ask for 3: with 2 values the normalised ones are
    +-1 whatever x is, so dx is of order eps and finite differences measure only rounding.
    """
    c = draw(st.integers(1, 4))
    if ndim == 2 or (ndim is None and draw(st.booleans())):
        return (draw(st.integers(min_per_channel, 6)), c)
    n = draw(st.integers(1, 3))
    h = draw(st.integers(1, 3))
    w = draw(st.integers(max(1, -(-min_per_channel // (n * h))), 3))
    return (n, c, h, w)


@st.composite
def batchnorm_cases(draw, training=None, min_per_channel=2, ndim=None) -> BatchNormCase:
    return BatchNormCase(
        shape=draw(batchnorm_shapes(min_per_channel, ndim)),
        training=draw(st.booleans()) if training is None else training,
        seed=draw(seeds),
    )


small_sides = st.integers(1, 4)


@st.composite
def nchw_shapes(draw, max_side=4) -> tuple[int, int, int, int]:
    return tuple(draw(st.integers(1, max_side)) for _ in range(4))


@st.composite
def any_shapes(draw) -> tuple[int, ...]:
    """1 to 4 dimensions of 1 to 4 entries each, for elementwise operations."""
    return tuple(draw(small_sides) for _ in range(draw(st.integers(1, 4))))


@st.composite
def linear_shapes(draw) -> tuple[int, int, int]:
    """(N, D_in, D_out)."""
    return (draw(small_sides), draw(st.integers(1, 5)), draw(st.integers(1, 5)))


@st.composite
def branch_shapes(draw) -> tuple[int, int, int]:
    """(N, M, C): M branches, one softmax over them per image and channel."""
    return (draw(st.integers(1, 3)), draw(small_sides), draw(small_sides))


@st.composite
def classification_shapes(draw) -> tuple[int, int]:
    """(N, K): N examples, K classes."""
    return (draw(small_sides), draw(st.integers(1, 6)))


# --- the SK unit -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SKCase:
    n: int
    channels: int
    h: int
    w: int
    branches: int
    groups: int
    stride: int
    r: int
    L: int
    training: bool
    seed: int
    kernels: tuple[int, ...] | None = None  # per branch; None: the paper's 3x3 everywhere
    dilations: tuple[int, ...] | None = None  # per branch; None: the paper's 1, 2, ..., M

    @property
    def options(self) -> dict:
        options = {"stride": self.stride, "groups": self.groups, "training": self.training}
        return options | ({} if self.dilations is None else {"dilations": self.dilations})

    def arrays(self, dtype=np.float64) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """x (N, C, H, W) and the parameters, all well scaled.

        Weights are N(0, 1/fan_in), so every layer's output is of order 1 and the softmax is not
        saturated; batch-norm scales lie in [0.5, 1.5] and running variances in [0.5, 2]. With
        standard normal weights, eval-mode logits reach 30 and more, the attention saturates at
        1e-20, and its gradients drown in rounding: the check would measure noise.
        """
        from skscratch.sk import sk_param_shapes

        rng = np.random.default_rng(self.seed)
        shapes = sk_param_shapes(
            self.channels, branches=self.branches, groups=self.groups, r=self.r, L=self.L,
            kernel_sizes=self.kernels,
        )  # fmt: skip
        params = {}
        for key, shape in shapes.items():
            if key.endswith("running_var"):
                value = rng.uniform(0.5, 2.0, shape)
            elif key == "fc_bn.bias":
                # Mostly positive, so z = ReLU(BN(...)) is not all 0 (which happens for d = 2
                # and cuts the gradient of fc, fc_bn and select to exactly 0): in most images
                # the fuse path is open, in some closed.
                value = rng.uniform(0.5, 1.5, shape)
            elif key.endswith(("running_mean", ".bias")):
                value = rng.normal(0.0, 0.5, shape)
            elif len(shape) == 1:  # batch-norm scales
                value = rng.uniform(0.5, 1.5, shape)
            else:
                value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
            params[key] = value.astype(dtype)
        x = rng.standard_normal((self.n, self.channels, self.h, self.w)).astype(dtype)
        return x, params


@st.composite
def sk_cases(draw, min_n: int = 3) -> SKCase:
    """Groups first and channels as a multiple of them (at least 2 channels). Half the cases
    have the paper's branches (3x3, dilations 1..M), half kernel sizes of 1, 3 or 5 and
    dilations of 1 or 2 drawn per branch.

    The plane is at least P + 2 on each side, P the largest padding D (k - 1) / 2 of a branch
    (M for the paper's): on a smaller plane that branch's outer taps only ever read padding. Its
    output is then one weight times one pixel per channel, which the batch norm after it divides
    out again, so those weights get a gradient of exactly 0 and finite differences measure
    rounding.

    N >= 3: with N = 2 the fuse step's batch norm maps each channel to +-1 whatever its input
    (see `check_sk_unit`), which zeroes the gradient of fc.weight in the same way.
    """
    branches = draw(st.sampled_from([2, 3]))
    groups = draw(st.integers(1, 3))
    channels = groups * draw(st.integers(2 if groups == 1 else 1, 2))
    training = draw(st.booleans())
    kernels = dilations = None
    padding = branches
    if draw(st.booleans()):
        kernels = tuple(draw(st.sampled_from([1, 3, 5])) for _ in range(branches))
        dilations = tuple(draw(st.integers(1, 2)) for _ in range(branches))
        padding = max(d * (k - 1) // 2 for k, d in zip(kernels, dilations, strict=True))
    return SKCase(
        # Training-mode batch norm of z (N, d) needs at least 2 images.
        n=draw(st.integers(max(min_n, 2) if training else min_n, 4)),
        channels=channels,
        h=padding + 2 + draw(st.integers(0, 2)),
        w=padding + 2 + draw(st.integers(0, 2)),
        branches=branches,
        groups=groups,
        stride=draw(st.sampled_from([1, 2])),
        r=draw(st.integers(1, 4)),
        L=draw(st.integers(2, 4)),
        training=training,
        seed=draw(seeds),
        kernels=kernels,
        dilations=dilations,
    )


# Cases every run checks, whatever hypothesis draws: both M, both strides, both modes, groups.
M3_STRIDE2_TRAIN = SKCase(
    3, 6, 6, 5, branches=3, groups=3, stride=2, r=2, L=2, training=True, seed=1
)
M2_STRIDE1_EVAL = SKCase(
    4, 4, 5, 4, branches=2, groups=2, stride=1, r=1, L=3, training=False, seed=2
)
M2_STRIDE2_EVAL = SKCase(
    3, 2, 4, 6, branches=2, groups=1, stride=2, r=4, L=2, training=False, seed=3
)
M3_STRIDE1_TRAIN = SKCase(
    3, 3, 5, 5, branches=3, groups=1, stride=1, r=3, L=4, training=True, seed=4
)
