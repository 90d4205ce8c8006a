"""Softmax cross-entropy with integer labels, averaged over the batch.

For logits z (N, K) and labels y (N,):

    loss = (1/N) * sum_n [ logsumexp(z[n]) - z[n, y[n]] ]
    dz   = (1/N) * (softmax(z) - onehot(y))

logsumexp is computed as max + log(sum(exp(z - max))), so logits of size 1e4 do not overflow.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from skscratch._checks import float_array, int_array, nonempty


def softmax_cross_entropy(logits: NDArray, labels: NDArray) -> tuple[float, NDArray]:
    """logits: (N, K), N >= 1; labels: (N,) integers in [0, K).

    Returns (loss, dlogits): the mean loss as a float and its gradient (N, K), in the logits' dtype.
    """
    z = float_array("logits", logits, ndim=2)
    if z.shape[0] == 0:
        raise ValueError("logits must hold at least one example, got N = 0")
    nonempty("logits", z)
    labels = int_array("labels", labels)
    n, k = z.shape
    if labels.shape != (n,):
        raise ValueError(
            f"labels must have shape ({n},) to match logits {z.shape}, got {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(
            f"labels must lie in [0, {k}), got values from {labels.min()} to {labels.max()}"
        )

    # Mean over the batch of logsumexp(z[n]) - z[n, y[n]]; its gradient is (softmax - onehot) / N.
    # BEGIN SOLUTION
    shifted = z - z.max(axis=1, keepdims=True)  # the largest logit of each row is now 0
    log_sum = np.log(np.exp(shifted).sum(axis=1))
    rows = np.arange(n)
    loss = float(np.mean(log_sum - shifted[rows, labels]))
    dlogits = np.exp(shifted - log_sum[:, None])  # softmax
    dlogits[rows, labels] -= 1
    dlogits /= n
    return loss, dlogits
    # END SOLUTION
