"""Modules: the bookkeeping that composes the forward/backward pairs into networks.

A module owns its parameters (each a `Parameter`: the array and its gradient) and its buffers
(batch-norm running statistics), remembers the cache of its last forward, and in `backward`
hands that cache to the operation's backward pair and stores the gradients. The mathematics stays
in the pairs; nothing here computes a derivative.

Which pairs a module runs is its backend (`skscratch.backends`), `self.ops`: the plain-NumPy
pairs ("reference") or their compiled versions ("fast"). It is chosen when the module is built
and changed for a whole tree with `set_backend`, as `train()` and `eval()` change the mode.

Names follow a PyTorch module tree: a parameter `weight` of a child `conv1` of a child `0` of
`stages` is `stages.0.conv1.weight`, so `state_dict()` maps one to one onto a PyTorch state_dict.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from numpy.typing import DTypeLike, NDArray

from skscratch.backends import Backend, current_backend, get_backend
from skscratch.sk import branch_dilations, sk_param_shapes


class Parameter:
    """A trainable array and the gradient of the loss with respect to it (None before backward)."""

    __slots__ = ("data", "grad")

    def __init__(self, data: NDArray):
        self.data = data
        self.grad: NDArray | None = None

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: parameters, buffers and children, registered by name."""

    def __init__(self) -> None:
        self.params: dict[str, Parameter] = {}
        self.buffers: dict[str, NDArray] = {}
        self.children: dict[str, Module] = {}
        self.training = True
        self.ops: Backend = current_backend()
        self._cache = None

    def forward(self, x: NDArray) -> NDArray:
        raise NotImplementedError

    def backward(self, dout: NDArray) -> NDArray:
        raise NotImplementedError

    def __call__(self, x: NDArray) -> NDArray:
        return self.forward(x)

    def _saved_cache(self):
        """The forward's cache, handed over once: backward frees it (as PyTorch frees its
        graph), so that a finished step holds no activations."""
        if self._cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward called before forward (or twice for one "
                f"forward: the first backward frees what the forward saved)"
            )
        cache, self._cache = self._cache, None
        return cache

    # -- the tree -------------------------------------------------------------------------------

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self.children.items():
            yield from child.named_modules(f"{prefix}{name}.")

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        for prefix, module in self.named_modules():
            for name, p in module.params.items():
                yield prefix + name, p

    def named_buffers(self) -> Iterator[tuple[str, NDArray]]:
        for prefix, module in self.named_modules():
            for name, b in module.buffers.items():
                yield prefix + name, b

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(p.data.size for p in self.parameters())

    def train(self, mode: bool = True) -> Module:
        for _, module in self.named_modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    @property
    def backend(self) -> str:
        """The name of the backend this module runs on: "reference" or "fast"."""
        return self.ops.name

    def set_backend(self, backend: str | Backend) -> Module:
        """Run this module and every module below it on `backend` ("reference" or "fast").
        Caches of forwards already run are dropped: another backend cannot read them."""
        ops = get_backend(backend)
        for _, module in self.named_modules():
            module.ops, module._cache = ops, None
        return self

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def astype(self, dtype: DTypeLike) -> Module:
        """Convert every parameter and buffer (float32 to train, float64 to check gradients)."""
        for _, module in self.named_modules():
            for p in module.params.values():
                p.data = p.data.astype(dtype)
                p.grad = None
            for name, b in module.buffers.items():
                module.buffers[name] = b.astype(dtype)
        return self

    # -- saving and loading ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, NDArray]:
        """A flat {name: array copy} of every parameter and buffer."""
        state = {name: p.data.copy() for name, p in self.named_parameters()}
        state.update((name, b.copy()) for name, b in self.named_buffers())
        return state

    def load_state_dict(self, state: dict[str, NDArray]) -> None:
        """Copy arrays into the module; the names and shapes must match exactly.

        Everything is checked before anything is copied, so a failed load changes nothing.
        """
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"state does not fit this model: missing {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{' ...' if len(unexpected) > 5 else ''}"
            )
        for name, value in own.items():
            if np.shape(state[name]) != value.shape:
                raise ValueError(
                    f"{name} has shape {np.shape(state[name])} in the state, {value.shape} in "
                    f"the model"
                )
        for prefix, module in self.named_modules():
            for name, p in module.params.items():
                p.data = np.array(state[prefix + name], dtype=p.data.dtype)
            for name, b in module.buffers.items():
                module.buffers[name] = np.array(state[prefix + name], dtype=b.dtype)


def _kaiming_normal(rng: np.random.Generator, shape: tuple[int, ...], fan: int) -> NDArray:
    """He initialisation for layers followed by ReLU: N(0, 2 / fan)."""
    return rng.normal(0.0, np.sqrt(2.0 / fan), size=shape).astype(np.float32)


class Conv2d(Module):
    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        rng: np.random.Generator,
    ):
        super().__init__()
        shape = (c_out, c_in // groups, kernel_size, kernel_size)
        # He initialisation by fan-out: each input value feeds C_out/G * KH*KW outputs, so this
        # keeps the variance of the gradient flowing back steady through a ReLU network.
        # (torchvision's ResNets count C_out*KH*KW, whatever the groups.)
        fan_out = c_out // groups * kernel_size * kernel_size
        self.params["weight"] = Parameter(_kaiming_normal(rng, shape, fan_out))
        if bias:
            self.params["bias"] = Parameter(np.zeros(c_out, dtype=np.float32))
        self.options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    def forward(self, x):
        b = self.params.get("bias")
        out, self._cache = self.ops.conv2d_forward(
            x, self.params["weight"].data, None if b is None else b.data, **self.options
        )
        return out

    def backward(self, dout, *, input_grad: bool = True):
        """input_grad=False: the weights' gradients only (dx is None), as for a network's
        first layer."""
        dx, dw, db = self.ops.conv2d_backward(dout, self._saved_cache(), input_grad=input_grad)
        self.params["weight"].grad = dw
        if db is not None:
            self.params["bias"].grad = db
        return dx


class BatchNorm(Module):
    """Batch norm over (N, C) or (N, C, H, W) (PyTorch's BatchNorm1d and BatchNorm2d in one),
    optionally followed by ReLU (batchnorm_relu_forward, which the fast backend fuses into one
    pass); a ReLU has no parameters, so the names stay PyTorch's."""

    def __init__(
        self, channels: int, *, relu: bool = False, momentum: float = 0.1, eps: float = 1e-5
    ):
        super().__init__()
        self.params["weight"] = Parameter(np.ones(channels, dtype=np.float32))
        self.params["bias"] = Parameter(np.zeros(channels, dtype=np.float32))
        self.buffers["running_mean"] = np.zeros(channels, dtype=np.float32)
        self.buffers["running_var"] = np.ones(channels, dtype=np.float32)
        self.relu, self.momentum, self.eps = relu, momentum, eps

    def forward(self, x):
        out, mean, var, self._cache = self.ops.batchnorm_relu_forward(
            x,
            self.params["weight"].data,
            self.params["bias"].data,
            self.buffers["running_mean"],
            self.buffers["running_var"],
            training=self.training,
            momentum=self.momentum,
            eps=self.eps,
            relu=self.relu,
        )
        self.buffers["running_mean"], self.buffers["running_var"] = mean, var
        return out

    def backward(self, dout):
        dx, dgamma, dbeta = self.ops.batchnorm_relu_backward(dout, self._saved_cache())
        self.params["weight"].grad, self.params["bias"].grad = dgamma, dbeta
        return dx


class ReLU(Module):
    def forward(self, x, residual=None):
        """max(x, 0); with a residual, max(x + residual, 0) (the end of a residual block)."""
        if residual is None:
            out, self._cache = self.ops.relu_forward(x)
        else:
            out, self._cache = self.ops.add_relu_forward(x, residual)
        return out

    def backward(self, dout):
        return self.ops.relu_backward(dout, self._saved_cache())


class GlobalAvgPool(Module):
    def forward(self, x):
        out, self._cache = self.ops.global_avg_pool_forward(x)
        return out

    def backward(self, dout):
        return self.ops.global_avg_pool_backward(dout, self._saved_cache())


class MaxPool2d(Module):
    def __init__(self, kernel_size: int = 3, *, stride: int = 2, padding: int = 1):
        super().__init__()
        self.options = dict(kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x):
        out, self._cache = self.ops.max_pool2d_forward(x, **self.options)
        return out

    def backward(self, dout):
        return self.ops.max_pool2d_backward(dout, self._saved_cache())


class Linear(Module):
    def __init__(self, d_in: int, d_out: int, *, bias: bool = True, rng: np.random.Generator):
        super().__init__()
        # torch.nn.Linear's default: U(-1/sqrt(d_in), 1/sqrt(d_in)).
        bound = 1.0 / np.sqrt(d_in)
        w = rng.uniform(-bound, bound, size=(d_out, d_in)).astype(np.float32)
        self.params["weight"] = Parameter(w)
        if bias:
            b = rng.uniform(-bound, bound, size=d_out).astype(np.float32)
            self.params["bias"] = Parameter(b)

    def forward(self, x):
        b = self.params.get("bias")
        out, self._cache = self.ops.linear_forward(
            x, self.params["weight"].data, None if b is None else b.data
        )
        return out

    def backward(self, dout):
        dx, dw, db = self.ops.linear_backward(dout, self._saved_cache())
        self.params["weight"].grad = dw
        if db is not None:
            self.params["bias"].grad = db
        return dx


ATTENTION_INITS = ("kaiming", "official")


class SKUnit(Module):
    """The SK unit of `skscratch.sk` as a module; `attention` keeps the last a (N, M, C).
    kernel_sizes and dilations: one per branch (None: 3 and 1, 2, ..., M, the paper's unit).

    attention_init: how the fc and select weights start. "kaiming" draws them as every other
    weight here (normal, std sqrt(2 / fan_in)): the select logits then differ by O(1) between
    branches and the attention starts close to hard routing. "official" draws them from
    N(0, 0.01^2) as the authors' official code does: every select logit starts near 0, so
    every attention starts near 1/M and training decides the routing.
    """

    def __init__(
        self,
        channels: int,
        *,
        stride: int = 1,
        branches: int = 2,
        groups: int = 32,
        r: int = 16,
        L: int = 32,
        kernel_sizes: Sequence[int] | None = None,
        dilations: Sequence[int] | None = None,
        attention_init: str = "kaiming",
        rng: np.random.Generator,
    ):
        super().__init__()
        if attention_init not in ATTENTION_INITS:
            raise ValueError(
                f"attention_init must be one of {ATTENTION_INITS}, got {attention_init!r}"
            )
        self.stride, self.groups = stride, groups
        self.dilations = branch_dilations(dilations, branches)
        shapes = dict(branches=branches, groups=groups, r=r, L=L, kernel_sizes=kernel_sizes)
        for name, shape in sk_param_shapes(channels, **shapes).items():
            if name.endswith("running_mean"):
                self.buffers[name] = np.zeros(shape, dtype=np.float32)
            elif name.endswith("running_var"):
                self.buffers[name] = np.ones(shape, dtype=np.float32)
            elif name.startswith(("bns.", "fc_bn.")):
                fill = np.ones if name.endswith("weight") else np.zeros
                self.params[name] = Parameter(fill(shape, dtype=np.float32))
            elif name.startswith("convs."):
                fan_out = shape[0] // groups * shape[2] * shape[3]
                self.params[name] = Parameter(_kaiming_normal(rng, shape, fan_out))
            elif attention_init == "kaiming":  # fc.weight, select.weight
                self.params[name] = Parameter(_kaiming_normal(rng, shape, shape[1]))
            else:
                self.params[name] = Parameter(rng.normal(0.0, 0.01, size=shape).astype(np.float32))
        self.attention: NDArray | None = None

    def forward(self, x):
        params = {name: p.data for name, p in self.params.items()} | self.buffers
        options = dict(stride=self.stride, groups=self.groups, dilations=self.dilations)
        out, self._cache = self.ops.sk_unit_forward(x, params, **options, training=self.training)
        self.buffers.update(self._cache.running_stats)
        self.attention = self._cache.a
        return out

    def backward(self, dout):
        dx, grads = self.ops.sk_unit_backward(dout, self._saved_cache())
        for name, g in grads.items():
            self.params[name].grad = g
        return dx


class Sequential(Module):
    """Children named 0, 1, 2, ...; forward runs them in order, backward in reverse."""

    def __init__(self, *modules: Module):
        super().__init__()
        for i, m in enumerate(modules):
            self.children[str(i)] = m

    def __getitem__(self, i: int) -> Module:
        return self.children[str(i)]

    def __len__(self) -> int:
        return len(self.children)

    def forward(self, x):
        for m in self.children.values():
            x = m.forward(x)
        return x

    def backward(self, dout):
        for m in reversed(self.children.values()):
            dout = m.backward(dout)
        return dout
