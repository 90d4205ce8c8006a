"""A recorded run's first epochs again, in skscratch's PyTorch twin: the same recipe, side by side.

    python docs/training/twin.py docs/training/checkpoint.npz --epochs 4 \
        --data ../shared/data/cifar-10-python.tar.gz

The twin (skscratch.interop.torch) starts from the weights the run started from (the same
configuration and seed), and trains on the same batches in the same order with the same
augmentation, learning-rate schedule, label smoothing, weight decay (matrices only) and Nesterov
momentum, and is evaluated on the test images alone after each epoch, as the run's metrics
are (where the run evaluated: with `--eval-every`, its column has "-" between). It prints, per
epoch, the test accuracy and training images per second of both. Equal accuracies, within
the noise of a few epochs' float32 rounding, say that the recipe is the same one; the speeds are
measured on this machine, in this process for PyTorch and from the run's metrics for skscratch.

Needs PyTorch (`pip install torch`).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from skscratch.augmentation import training_batch
from skscratch.checkpoint import load_checkpoint
from skscratch.data import channel_stats, load_cifar10, normalize
from skscratch.interop.torch import to_torch
from skscratch.models import SKNetConfig, SKResNeXt
from skscratch.optim import learning_rate
from skscratch.train import TrainConfig


def evaluate(net, x, y, mean, std, batch_size: int = 500) -> float:
    net.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            images = torch.from_numpy(normalize(x[start : start + batch_size], mean, std))
            logits = net(images)
            correct += int((logits.argmax(1).numpy() == y[start : start + batch_size]).sum())
    net.train()
    return correct / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="the recorded run's checkpoint.npz")
    parser.add_argument("--epochs", type=int, default=3, help="epochs to train (default: 3)")
    parser.add_argument("--data", help="cifar-10-python.tar.gz or its folder")
    args = parser.parse_args()

    meta = load_checkpoint(args.checkpoint)[0]
    model_config = SKNetConfig.from_dict(meta["model_config"])
    config = TrainConfig.from_dict(meta["train_config"])
    history = meta["history"]
    data = load_cifar10(args.data)
    x_train, y_train = data.x_train[: config.subset], data.y_train[: config.subset]
    x_test, y_test = data.x_test[: config.test_subset], data.y_test[: config.test_subset]
    mean, std = channel_stats(x_train)

    net = to_torch(SKResNeXt(model_config, seed=config.seed, backend="reference")).train()
    decayed = [p for p in net.parameters() if p.ndim > 1]  # skscratch.optim decays matrices only
    others = [p for p in net.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [
            {"params": decayed, "weight_decay": config.weight_decay},
            {"params": others, "weight_decay": 0.0},
        ],
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
    )
    n_batches = len(x_train) // config.batch_size
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| epoch | skscratch test | PyTorch test | skscratch img/s | PyTorch img/s |")
    print("| --- | --- | --- | --- | --- |")
    for epoch in range(args.epochs):
        order = np.random.default_rng([config.seed, 1, epoch]).permutation(len(x_train))
        started = time.perf_counter()
        for b in range(n_batches):
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            xb = training_batch(config, x_train, idx, epoch, b)
            lr = learning_rate(
                epoch * n_batches + b,
                config.epochs * n_batches,
                peak=config.lr,
                warmup_steps=round(config.warmup_epochs * n_batches),
                kind=config.schedule,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits = net(torch.from_numpy(normalize(xb, mean, std)))
            loss = F.cross_entropy(
                logits,
                torch.from_numpy(y_train[idx].astype(np.int64)),
                label_smoothing=config.label_smoothing,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seconds = time.perf_counter() - started
        accuracy = evaluate(net, x_test, y_test, mean, std)
        ours = history[epoch] if epoch < len(history) else None
        print(
            f"| {epoch + 1} | "
            + (f"{ours['test_accuracy']:.4f}" if ours and "test_accuracy" in ours else "-")
            + f" | {accuracy:.4f} | "
            + (f"{ours['images_per_second']:.0f}" if ours else "-")
            + f" | {n_batches * config.batch_size / seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
