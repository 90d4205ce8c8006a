"""skscratch: Selective Kernel Networks from scratch in NumPy.

Every operation is a pair of pure functions, `*_forward(...) -> (out, cache)` and
`*_backward(dout, cache) -> gradients`, written by hand and checked by finite differences. The
names below are those plain-NumPy pairs (the teaching modules); `skscratch.fast` holds compiled
versions of them, and `skscratch.backends` says how a network chooses between the two.

Importing skscratch loads nothing else and changes nothing outside it: each name is imported
from its module when first used, and process settings are left to `tune_process()`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it
_HOME = {
    "batchnorm_backward": "batchnorm",
    "batchnorm_forward": "batchnorm",
    "branch_softmax_backward": "activations",
    "branch_softmax_forward": "activations",
    "conv2d_backward": "conv",
    "conv2d_forward": "conv",
    "conv_output_size": "im2col",
    "get_backend": "backends",
    "global_avg_pool_backward": "pooling",
    "global_avg_pool_forward": "pooling",
    "linear_backward": "linear",
    "linear_forward": "linear",
    "max_pool2d_backward": "pooling",
    "max_pool2d_forward": "pooling",
    "relu_backward": "activations",
    "relu_forward": "activations",
    "sk_unit_backward": "sk",
    "sk_unit_forward": "sk",
    "softmax_cross_entropy": "losses",
    "tune_process": "tuning",
    "use_backend": "backends",
}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(f"skscratch.{_HOME[name]}"), name)
        globals()[name] = value  # found once; later lookups do not come here
        return value
    raise AttributeError(f"module 'skscratch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
