"""How good a model is: its loss and accuracy on a set of labelled images, overall and per class.

The images are normalised the way the model was trained (the training images' channel mean and
standard deviation), and the model runs in evaluation mode: batch norm uses its running
statistics, so the result does not depend on how the images are batched.

With flips, every image is classified twice, as it is and mirrored left to right, and the two
logits are averaged ("test-time augmentation"): training flips images at random, so the network
has learned both views, and their mean is a steadier guess than either. With shifts, each view
is also classified moved one pixel up and left and one pixel down and right (the border that
comes in is the image's own edge, mirrored), as training's random crops moved it. With flips
that is six views, the multi-crop evaluation of Jordan's airbench (K. Jordan, "94% on CIFAR-10
in 3.29 seconds on a single GPU", arXiv:2404.00498, 2024), here with equal weights.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from skscratch.data import normalize
from skscratch.losses import softmax_cross_entropy
from skscratch.nn import Module


def evaluate(
    model: Module,
    x: NDArray,
    y: NDArray,
    mean: NDArray,
    std: NDArray,
    *,
    batch_size: int = 500,
    num_classes: int = 10,
    flips: bool = False,
    shifts: bool = False,
) -> dict:
    """Accuracy and loss of `model` (in evaluation mode) on uint8 images x (N, 3, 32, 32); with
    flips, of the mean logits of each image and its mirror image; with shifts, of the mean over
    each view as it is and moved one pixel diagonally either way.

    Returns {"loss", "accuracy", "per_class_accuracy": list of num_classes floats}.
    """
    training = model.training
    model.eval()
    loss_sum, predictions = 0.0, []
    for start in range(0, len(x), batch_size):
        images = normalize(x[start : start + batch_size], mean, std)
        views = [images, images[..., ::-1]] if flips else [images]
        if shifts:
            views += [shifted(v, step) for v in views for step in (-1, 1)]
        logits = sum(model.forward(v) for v in views) / len(views)
        loss, _ = softmax_cross_entropy(logits, y[start : start + batch_size])
        loss_sum += loss * len(logits)
        predictions.append(logits.argmax(axis=1))
    model.train(training)
    pred = np.concatenate(predictions)
    per_class = [
        float(np.mean(pred[y == k] == k)) if np.any(y == k) else float("nan")
        for k in range(num_classes)
    ]
    return {
        "loss": loss_sum / len(x),
        "accuracy": float(np.mean(pred == y)),
        "per_class_accuracy": per_class,
    }


def shifted(images: NDArray, step: int) -> NDArray:
    """Images (N, C, H, W) moved `step` pixels down and right (up and left if negative), the rows
    and columns that come in mirrored from the edge they enter at."""
    k = abs(step)
    padded = np.pad(images, ((0, 0), (0, 0), (k, k), (k, k)), mode="reflect")
    h, w = images.shape[-2:]
    return padded[..., k - step : k - step + h, k - step : k - step + w]
