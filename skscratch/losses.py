"""Softmax cross-entropy with integer labels, averaged over the batch, with label smoothing.

For logits z (N, K), labels y (N,) and targets q[n] = onehot(y[n]) (a distribution over the K
classes):

    loss = (1/N) * sum_n [ logsumexp(z[n]) - sum_k q[n, k] z[n, k] ]
    dz   = (1/N) * (softmax(z) - q)

With one-hot targets the sum is z[n, y[n]]. Label smoothing (Szegedy et al. 2016, "Rethinking
the Inception Architecture", Section 7) trains towards softened targets instead,

    q[n] = (1 - eps) * onehot(y[n]) + eps / K,

so the loss stops rewarding ever larger logit gaps once the softmax gives the label
1 - eps + eps/K: a network then fits its training images less tightly and generalises better.
The formulas above hold for any targets q whose entries sum to 1 (that makes
logsumexp(z) - sum_k q_k z_k unchanged when a constant is added to every logit).

logsumexp is computed as max + log(sum(exp(z - max))), so logits of size 1e4 do not overflow.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from skscratch._checks import float_array, int_array, nonempty


def softmax_cross_entropy(
    logits: NDArray, labels: NDArray, *, smoothing: float = 0.0
) -> tuple[float, NDArray]:
    """logits: (N, K), N >= 1; labels: (N,) integers in [0, K); smoothing: eps in [0, 1).

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
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    q = np.full(z.shape, smoothing / k, dtype=z.dtype)  # the targets: eps/K everywhere...
    q[np.arange(n), labels] += 1 - smoothing  # ...and 1 - eps more on each label

    # Mean over the batch of logsumexp(z[n]) - sum_k q[n, k] z[n, k]; its gradient is
    # (softmax - q) / N.
    # BEGIN SOLUTION
    shifted = z - z.max(axis=1, keepdims=True)  # the largest logit of each row is now 0
    log_sum = np.log(np.exp(shifted).sum(axis=1))
    loss = float(np.mean(log_sum - (q * shifted).sum(axis=1)))
    dlogits = np.exp(shifted - log_sum[:, None])  # softmax
    dlogits -= q
    dlogits /= n
    return loss, dlogits
    # END SOLUTION
