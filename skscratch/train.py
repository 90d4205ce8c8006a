"""Training and evaluation on CIFAR-10: the loop, checkpoints, metrics and curves.

One training step, written out (the whole of what "training" means):

    logits = model.forward(x)                          (B, 10)
    loss, dlogits = softmax_cross_entropy(logits, y)
    model.backward(dlogits)                            every parameter's .grad is set
    optimizer.step()                                   SGD moves every parameter

Every random choice is a function of (seed, epoch, batch): the order of an epoch comes from a
generator seeded with (seed, epoch), the augmentation of a batch from one seeded with
(seed, epoch, batch). A run stopped anywhere and resumed from its checkpoint therefore repeats
the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from skscratch import _kernels
from skscratch._memory import reuse_freed_memory
from skscratch.checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from skscratch.data import Cifar10, augment, channel_stats, normalize
from skscratch.losses import softmax_cross_entropy
from skscratch.models import SKNetConfig, SKResNeXt
from skscratch.nn import Module
from skscratch.optim import SGD, learning_rate
from skscratch.plots import pyplot

try:
    import fcntl
except ImportError:  # Windows has no fcntl: runs there are not locked against each other
    fcntl = None

CHECKPOINT = "checkpoint.npz"
LOCK = ".lock"
METRICS = "metrics.jsonl"
CURVES = "curves.png"


class TrainingError(RuntimeError):
    """Training cannot go on (the loss diverged, or the output folder holds another run)."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1  # the peak of the schedule
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    schedule: str = "onecycle"
    seed: int = 0
    subset: int | None = None  # train on the first `subset` training images
    test_subset: int | None = None  # evaluate on the first `test_subset` test images
    augment: bool = True

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch size must be at least 2 (batch norm), got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


def train_step(model: SKResNeXt, optimizer: SGD, x: NDArray, y: NDArray) -> tuple[float, int]:
    """One SGD step on a batch x (B, 3, 32, 32) float32, y (B,). Returns (loss, correct)."""
    logits = model.forward(x)
    loss, dlogits = softmax_cross_entropy(logits, y)
    model.backward(dlogits, input_grad=False)  # no gradient of the images themselves
    optimizer.step()
    return loss, int((logits.argmax(axis=1) == y).sum())


def evaluate(
    model: Module,
    x: NDArray,
    y: NDArray,
    mean: NDArray,
    std: NDArray,
    *,
    batch_size: int = 500,
    num_classes: int = 10,
) -> dict:
    """Accuracy and loss of `model` (in evaluation mode) on uint8 images x (N, 3, 32, 32).

    Returns {"loss", "accuracy", "per_class_accuracy": list of num_classes floats}.
    """
    training = model.training
    model.eval()
    loss_sum, predictions = 0.0, []
    for start in range(0, len(x), batch_size):
        logits = model.forward(normalize(x[start : start + batch_size], mean, std))
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


class _StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps, so a stop never lands
    half-way through an update. A second Ctrl-C stops at once."""

    def __init__(self):
        self.signal: int | None = None

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)


def run_training(
    data: Cifar10,
    out_dir: str | Path,
    *,
    model_config: SKNetConfig = SKNetConfig(),
    config: TrainConfig = TrainConfig(),
    resume: bool = False,
    progress: bool = True,
) -> list[dict]:
    """Train an SK-ResNeXt, writing checkpoint.npz, metrics.jsonl and curves.png to `out_dir`.

    With resume, continue the run in out_dir from its checkpoint (its model and training
    configuration win over the arguments). Returns the history, one dict per finished epoch.
    """
    reuse_freed_memory()
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"cannot create the output folder {out}: {exc.strerror}") from exc
    with _exclusive(out):
        return _run(data, out, model_config, config, resume, progress)


@contextmanager
def _exclusive(out: Path):
    """Hold an exclusive lock on out/.lock while training, so that two runs never write to one
    folder. The operating system releases the lock when the process ends, however it ends, so
    a crashed run never leaves the folder locked."""
    try:
        f = open(out / LOCK, "a+")  # closed by the `with` below, which also drops the lock
    except OSError as exc:
        raise TrainingError(f"cannot write to the output folder {out}: {exc.strerror}") from exc
    with f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise TrainingError(
                    f"{out} is in use by another training run ({f.read().strip()}); wait for it "
                    f"to finish or choose another --out"
                ) from None
        f.truncate(0)
        f.write(f"process {os.getpid()}")
        f.flush()
        # A run killed while writing leaves its temporary file (never the real one): clear it.
        for name in (CHECKPOINT, METRICS, CURVES):
            for leftover in out.glob(f".{name}.*.tmp"):
                leftover.unlink()
        yield


def _run(data, out, model_config, config, resume, progress):
    ckpt_path = out / CHECKPOINT
    if resume:
        meta, model_state, optim_state = load_checkpoint(ckpt_path)
        model_config = SKNetConfig.from_dict(meta["model_config"])
        config = TrainConfig(**meta["train_config"])
    elif ckpt_path.exists():
        raise TrainingError(
            f"{out} already holds a run ({CHECKPOINT}); pass --resume to continue it, "
            f"or choose another --out"
        )

    x_train, y_train = data.x_train[: config.subset], data.y_train[: config.subset]
    x_test, y_test = data.x_test[: config.test_subset], data.y_test[: config.test_subset]
    n_batches = len(x_train) // config.batch_size
    if n_batches == 0:
        raise TrainingError(
            f"batch size {config.batch_size} is larger than the {len(x_train)} training images"
        )
    mean, std = channel_stats(x_train)
    model = SKResNeXt(model_config, seed=config.seed)
    optimizer = SGD(
        model,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    position = {"epoch": 0, "batch": 0, "loss_sum": 0.0, "correct": 0, "seconds": 0.0}
    history: list[dict] = []
    if resume:
        try:
            model.load_state_dict(model_state)
            optimizer.load_state_dict(optim_state)
        except ValueError as exc:
            raise CheckpointError(f"{ckpt_path} does not fit its own model: {exc}") from exc
        position, history = meta["position"], meta["history"]

    total_steps = config.epochs * n_batches
    warmup = round(config.warmup_epochs * n_batches)

    def save():
        try:
            _save()
        except OSError as exc:
            raise TrainingError(
                f"could not write the checkpoint {ckpt_path}: {exc.strerror}. The previous "
                f"checkpoint, if any, is intact."
            ) from exc

    def _save():
        meta = {
            "model_config": model_config.to_dict(),
            "train_config": asdict(config),
            "position": position,
            "history": history,
            "normalization": {"mean": mean.tolist(), "std": std.tolist()},
        }
        save_checkpoint(ckpt_path, meta, model.state_dict(), optimizer.state_dict())

    first_step = True
    with _StopRequest() as stop:
        while position["epoch"] < config.epochs:
            epoch = position["epoch"]
            order = np.random.default_rng([config.seed, 1, epoch]).permutation(len(x_train))
            bar = tqdm(
                total=n_batches,
                initial=position["batch"],
                desc=f"epoch {epoch + 1}/{config.epochs}",
                disable=not progress,
                unit="batch",
                dynamic_ncols=True,
            )
            started = time.perf_counter() - position["seconds"]
            while position["batch"] < n_batches:
                b = position["batch"]
                idx = order[b * config.batch_size : (b + 1) * config.batch_size]
                xb = x_train[idx]
                if config.augment:
                    xb = augment(xb, np.random.default_rng([config.seed, 2, epoch, b]))
                step = epoch * n_batches + b
                optimizer.lr = learning_rate(
                    step, total_steps, peak=config.lr, warmup_steps=warmup, kind=config.schedule
                )
                if first_step:  # of this process: it compiles or loads the kernels
                    step_started, compiled = time.perf_counter(), _kernels.compilations()
                loss, correct = train_step(model, optimizer, normalize(xb, mean, std), y_train[idx])
                if first_step:
                    first_step = False
                    compiled = _kernels.compilations() - compiled
                    if compiled and progress:
                        bar.write(
                            f"compiled {compiled} numba kernels in the first step: "
                            f"{time.perf_counter() - step_started:.1f} s (once: later runs load "
                            f"them from the cache)"
                        )
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {loss} at epoch {epoch + 1}, batch {b + 1}: training "
                        f"diverged (learning rate {optimizer.lr:.4g}); try a lower --lr. "
                        f"The last checkpoint in {out} is kept as it was."
                    )
                position["batch"] += 1
                position["loss_sum"] += loss * len(idx)
                position["correct"] += correct
                position["seconds"] = time.perf_counter() - started
                seen = position["batch"] * config.batch_size
                bar.update(1)
                bar.set_postfix(
                    loss=f"{position['loss_sum'] / seen:.3f}",
                    acc=f"{position['correct'] / seen:.3f}",
                    img_s=f"{seen / position['seconds']:.0f}",
                )
                if stop.signal is not None:
                    bar.close()
                    save()
                    name = signal.Signals(stop.signal).name
                    print(f"\n{name}: saved a resumable checkpoint to {ckpt_path}")
                    raise KeyboardInterrupt(name)
            bar.close()

            test = evaluate(model, x_test, y_test, mean, std)
            seen = n_batches * config.batch_size
            history.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": position["loss_sum"] / seen,
                    "train_accuracy": position["correct"] / seen,
                    "test_loss": test["loss"],
                    "test_accuracy": test["accuracy"],
                    "lr": optimizer.lr,
                    "seconds": position["seconds"],
                    "images_per_second": seen / position["seconds"],
                }
            )
            position = {
                "epoch": epoch + 1,
                "batch": 0,
                "loss_sum": 0.0,
                "correct": 0,
                "seconds": 0.0,
            }
            save()
            try:
                write_metrics(out / METRICS, history)
            except OSError as exc:
                raise TrainingError(f"could not write {out / METRICS}: {exc.strerror}") from exc
            if progress:
                h = history[-1]
                tqdm.write(
                    f"epoch {h['epoch']}: train loss {h['train_loss']:.3f} "
                    f"acc {h['train_accuracy']:.3f} | test loss {h['test_loss']:.3f} "
                    f"acc {h['test_accuracy']:.3f} | {h['seconds'] / 60:.1f} min"
                )
    plot_history(history, out / CURVES)
    return history


def write_metrics(path: Path, history: list[dict]) -> None:
    """Rewrite metrics.jsonl (one JSON line per epoch) atomically: never a half-written line."""
    text = "".join(json.dumps(h) + "\n" for h in history)
    atomic_write(path, lambda f: f.write(text.encode()))


def plot_history(history: list[dict], path: Path) -> bool:
    """Plot loss and accuracy per epoch to a PNG. Returns False if matplotlib is missing."""
    try:
        plt = pyplot()
    except ImportError as exc:
        print(f"{exc}: no curves plotted")
        return False
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], "o-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train (augmented)")
    ax_acc.plot(epochs, [h["test_accuracy"] for h in history], "o-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return True


def load_model(path: str | Path) -> tuple[SKResNeXt, NDArray, NDArray]:
    """Rebuild the model stored in a checkpoint.

    Returns (model in evaluation mode, mean (3,), std (3,)): the normalisation it was trained with.
    """
    meta, model_state, _ = load_checkpoint(Path(path))
    try:
        model = SKResNeXt(SKNetConfig.from_dict(meta["model_config"]))
        model.load_state_dict(model_state)
        norm = meta["normalization"]
        mean, std = (np.array(norm[k], dtype=np.float32) for k in ("mean", "std"))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path} does not hold a model this skscratch can build: {exc}"
        ) from exc
    return model.eval(), mean, std
