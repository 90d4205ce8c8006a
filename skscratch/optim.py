"""SGD with momentum, Nesterov and weight decay, and the learning-rate schedule.

SGD as `torch.optim.SGD` writes it, for every parameter p with gradient g:

    g <- g + weight_decay * p          (not for batch-norm parameters and biases, see below)
    v <- momentum * v + g
    p <- p - lr * (g + momentum * v)   with Nesterov,   p - lr * v   without

Weight decay pulls weights towards zero to keep the network from fitting noise. By convention
(Goyal et al. 2017; the usual ResNet recipes) it applies to the convolution and FC weight
matrices only, and the one-dimensional parameters, batch-norm scales and shifts and the biases,
are left out: they are few, they set each channel's scale and offset rather than fit patterns,
and pulling them to zero mostly fights the optimiser (a BN scale at zero switches its channel
off). A weight matrix that feeds a batch norm is the case where decay changes no function at all:
BN undoes its scale, so decay there only shrinks the weights and with them raises the effective
learning rate.

Schedule: a linear warm-up (large steps on random weights are unstable) that starts at
peak / warmup_steps on the first step and reaches the peak on step warmup_steps - 1, the peak
again on step warmup_steps, then a fall towards 0 along a half cosine, or a straight line
("one-cycle").
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from skscratch.nn import Module


class SGD:
    def __init__(
        self,
        model: Module,
        *,
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
    ):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError("lr, momentum and weight_decay must not be negative")
        self.model, self.lr, self.momentum = model, lr, momentum
        self.nesterov, self.weight_decay = nesterov, weight_decay
        self.velocity: dict[str, NDArray] = {}

    def step(self) -> None:
        """Update every parameter in place from its gradient."""
        for name, p in self.model.named_parameters():
            if p.grad is None:
                continue
            g = p.grad
            if self.weight_decay and p.data.ndim > 1:
                g = g + self.weight_decay * p.data
            v = self.velocity.get(name)
            v = g.copy() if v is None else self.momentum * v + g
            self.velocity[name] = v
            update = g + self.momentum * v if self.nesterov else v
            p.data -= self.lr * update

    def state_dict(self) -> dict[str, NDArray]:
        return {f"velocity.{name}": v.copy() for name, v in self.velocity.items()}

    def load_state_dict(self, state: dict[str, NDArray]) -> None:
        params = dict(self.model.named_parameters())
        velocity = {}
        for key, value in state.items():
            name = key.removeprefix("velocity.")
            if name not in params or params[name].data.shape != np.shape(value):
                raise ValueError(f"optimiser state {key} does not fit this model")
            velocity[name] = np.array(value, dtype=params[name].data.dtype)
        self.velocity = velocity


def learning_rate(
    step: int, total_steps: int, *, peak: float, warmup_steps: int, kind: str = "cosine"
) -> float:
    """The learning rate at `step` (0-based) of `total_steps`: a linear warm-up that reaches
    `peak` at step warmup_steps - 1, then a fall from `peak` (again at step warmup_steps) towards
    0, along a half cosine or a straight line (kind="onecycle"); 0 would be step total_steps,
    one after the last."""
    if kind not in ("cosine", "onecycle"):
        raise ValueError(f"kind must be 'cosine' or 'onecycle', got {kind!r}")
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(progress, 1.0)
    if kind == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    return peak * (1 - progress)
