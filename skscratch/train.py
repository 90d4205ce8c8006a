"""Training on CIFAR-10: the loop, and the checkpoints that let it stop and resume anywhere.

One training step, written out (the whole of what "training" means):

    logits = model.forward(x)                          (B, 10)
    loss, dlogits = softmax_cross_entropy(logits, y)
    model.backward(dlogits)                            every parameter's .grad is set
    optimizer.step()                                   SGD moves every parameter

Every random choice is a function of (seed, epoch, batch): the order of an epoch comes from a
generator seeded with (seed, epoch), the augmentation of a batch from one seeded with
(seed, epoch, batch). A run stopped anywhere and resumed from its checkpoint therefore repeats
the uninterrupted run exactly.

A run trains on a backend (skscratch.backends): "fast", the compiled pairs, by default, or
"reference", the plain-NumPy ones. The backend is how the model computes, not what it is: a
checkpoint does not record it, and a run may be resumed on either.

The loop evaluates the model with skscratch.evaluation after every epoch, or after every
eval_every-th and the last (time left for training in a run on a budget). What a run leaves in
its folder (checkpoint, metrics, curves), the lock that keeps two runs out of one folder, the
handling of Ctrl-C, and the rebuilding of a trained model from its checkpoint are in
skscratch.runs.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from skscratch.augmentation import training_batch
from skscratch.backends import get_backend
from skscratch.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from skscratch.data import Cifar10, channel_stats, normalize
from skscratch.evaluation import evaluate
from skscratch.losses import softmax_cross_entropy
from skscratch.models import SKNetConfig, SKResNeXt
from skscratch.optim import SGD, learning_rate
from skscratch.parallel import Team
from skscratch.recipe import TrainConfig
from skscratch.runs import (
    CHECKPOINT,
    CURVES,
    METRICS,
    StopRequest,
    TrainingError,
    exclusive,
    plot_history,
    write_metrics,
)


def train_step(
    model: SKResNeXt, optimizer: SGD, x: NDArray, y: NDArray, *, label_smoothing: float = 0.0
) -> tuple[float, int]:
    """One SGD step on a batch x (B, 3, 32, 32) float32, y (B,). Returns (loss, correct)."""
    logits = model.forward(x)
    loss, dlogits = softmax_cross_entropy(logits, y, smoothing=label_smoothing)
    model.backward(dlogits, input_grad=False)  # no gradient of the images themselves
    optimizer.step()
    return loss, int((logits.argmax(axis=1) == y).sum())


def run_training(
    data: Cifar10,
    out_dir: str | Path,
    *,
    model_config: SKNetConfig = SKNetConfig(),
    config: TrainConfig = TrainConfig(),
    resume: bool = False,
    progress: bool = True,
    backend: str = "fast",
) -> list[dict]:
    """Train an SK-ResNeXt, writing checkpoint.npz, metrics.jsonl and curves.png to `out_dir`.

    With resume, continue the run in out_dir from its checkpoint (its model and training
    configuration win over the arguments). backend is "fast" or "reference"
    (skscratch.backends); it is not part of the checkpoint, so a run may be resumed on either.
    Returns the history, one dict per finished epoch.
    """
    get_backend(backend)  # a wrong name fails here, before the folder is made
    out = Path(out_dir)
    with exclusive(out):
        run = _start(
            data, out, model_config, config, resume=resume, backend=backend, progress=progress
        )
        with Team(run.model, run.config.workers, run.config.batch_size, backend) as run.team:
            with StopRequest() as stop:
                while run.position.epoch < run.config.epochs:
                    _train_epoch(run, stop)
                    _finish_epoch(run)
        plot_history(run.history, out / CURVES)
    return run.history


@dataclass
class Position:
    """Where a run stands: the epoch in progress (0-based), the next batch of it, and that
    epoch's totals so far (loss summed over images, correct predictions, seconds spent).

    It is all a checkpoint needs, besides the weights and the history, to go on exactly where
    the run stopped: every random choice is a function of (seed, epoch, batch).
    """

    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seconds: float = 0.0


@dataclass
class _Run:
    """A run in progress: its settings, data, model and optimiser, and where it stands."""

    out: Path
    model_config: SKNetConfig
    config: TrainConfig
    model: SKResNeXt
    optimizer: SGD
    x_train: NDArray  # uint8 (N, 3, 32, 32)
    y_train: NDArray  # (N,)
    x_test: NDArray
    y_test: NDArray
    mean: NDArray  # (3,): the training images' channel statistics, to normalise with
    std: NDArray
    position: Position
    history: list[dict]  # one dict per finished epoch
    progress: bool  # show progress bars and a line per epoch
    steps: int = 0  # steps run_training has taken in this call (the first compiles kernels)
    team: Team | None = None  # the processes that share each step (config.workers of them)

    @property
    def checkpoint(self) -> Path:
        return self.out / CHECKPOINT

    @property
    def n_batches(self) -> int:
        """Batches per epoch: full ones only (the rest of the shuffled order is left out)."""
        return len(self.x_train) // self.config.batch_size


def _start(
    data: Cifar10,
    out: Path,
    model_config: SKNetConfig,
    config: TrainConfig,
    *,
    resume: bool,
    backend: str,
    progress: bool,
) -> _Run:
    """Set up a new run in `out`, or with resume the run whose checkpoint is there."""
    checkpoint = out / CHECKPOINT
    if resume:
        meta, model_state, optim_state = load_checkpoint(checkpoint)
        model_config, config, position, history = _read_meta(meta, checkpoint)
    elif checkpoint.exists():
        raise TrainingError(
            f"{out} already holds a run ({CHECKPOINT}); pass --resume to continue it, "
            f"or choose another --out"
        )
    else:
        position, history = Position(), []

    x_train, y_train = data.x_train[: config.subset], data.y_train[: config.subset]
    x_test, y_test = data.x_test[: config.test_subset], data.y_test[: config.test_subset]
    if len(x_train) < config.batch_size:
        raise TrainingError(
            f"batch size {config.batch_size} is larger than the {len(x_train)} training images"
        )
    mean, std = channel_stats(x_train)
    model = SKResNeXt(model_config, seed=config.seed, backend=backend)
    optimizer = SGD(
        model,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )
    if resume:
        try:
            model.load_state_dict(model_state)
            optimizer.load_state_dict(optim_state)
        except ValueError as exc:
            raise CheckpointError(f"{checkpoint} does not fit its own model: {exc}") from exc
    return _Run(
        out=out,
        model_config=model_config,
        config=config,
        model=model,
        optimizer=optimizer,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        mean=mean,
        std=std,
        position=position,
        history=history,
        progress=progress,
    )


def _read_meta(meta: dict, path: Path) -> tuple[SKNetConfig, TrainConfig, Position, list[dict]]:
    """The model and training configurations, position and history a checkpoint's header holds."""
    try:
        return (
            SKNetConfig.from_dict(meta["model_config"]),
            TrainConfig.from_dict(meta["train_config"]),
            Position(**meta["position"]),
            list(meta["history"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path} does not hold a run this skscratch can resume: {exc}"
        ) from exc


def _train_epoch(run: _Run, stop: StopRequest) -> None:
    """Train the rest of the epoch at run.position, batch by batch.

    On SIGINT or SIGTERM, finish the step in progress, save a checkpoint of the position after
    it and raise KeyboardInterrupt.
    """
    config, position = run.config, run.position
    # The order depends only on (seed, epoch): a resumed epoch draws the same one again.
    order = np.random.default_rng([config.seed, 1, position.epoch]).permutation(len(run.x_train))
    # The clock goes on from the seconds the epoch had taken before it was stopped.
    started = time.perf_counter() - position.seconds
    with tqdm(
        total=run.n_batches,
        initial=position.batch,
        desc=f"epoch {position.epoch + 1}/{config.epochs}",
        disable=not run.progress,
        unit="batch",
        dynamic_ncols=True,
    ) as bar:
        while position.batch < run.n_batches and stop.signal is None:
            _logged_step(run, order, bar, started)
    if stop.signal is not None:
        _save(run)
        name = signal.Signals(stop.signal).name
        print(f"\n{name}: saved a resumable checkpoint to {run.checkpoint}")
        raise KeyboardInterrupt(name)


def _logged_step(run: _Run, order: NDArray, bar: tqdm, started: float) -> None:
    """Train the batch at run.position (its images are order[batch * B : (batch + 1) * B]),
    check that the loss is finite, move the position on and show the running totals."""
    config, position = run.config, run.position
    epoch, b = position.epoch, position.batch
    idx = order[b * config.batch_size : (b + 1) * config.batch_size]
    xb = training_batch(config, run.x_train, idx, epoch, b)
    run.optimizer.lr = learning_rate(
        epoch * run.n_batches + b,
        config.epochs * run.n_batches,
        peak=config.lr,
        warmup_steps=round(config.warmup_epochs * run.n_batches),
        kind=config.schedule,
    )
    loss, correct = _train_batch(run, normalize(xb, run.mean, run.std), run.y_train[idx], bar)
    if not math.isfinite(loss):
        raise TrainingError(
            f"the loss became {loss} at epoch {epoch + 1}, batch {b + 1}: training diverged "
            f"(learning rate {run.optimizer.lr:.4g}); try a lower --lr. The last checkpoint in "
            f"{run.out} is kept as it was."
        )
    position.batch += 1
    position.loss_sum += loss * len(idx)
    position.correct += correct
    position.seconds = time.perf_counter() - started
    seen = position.batch * config.batch_size
    bar.update(1)
    bar.set_postfix(
        loss=f"{position.loss_sum / seen:.3f}",
        acc=f"{position.correct / seen:.3f}",
        img_s=f"{seen / position.seconds:.0f}",
    )


def _train_batch(run: _Run, x: NDArray, y: NDArray, bar: tqdm) -> tuple[float, int]:
    """One step (train_step, shared among the run's workers); around the first step of a
    run_training call on the fast backend, also say how many kernels numba compiled for it and
    how long it took, which explains a slow step."""
    smoothing = run.config.label_smoothing
    if run.steps > 0 or run.model.backend != "fast":
        run.steps += 1
        return run.team.step(run.model, run.optimizer, x, y, smoothing=smoothing)
    import skscratch.fast  # already loaded by the model: its backend is "fast"

    compiled, started = skscratch.fast.compilations(), time.perf_counter()
    result = run.team.step(run.model, run.optimizer, x, y, smoothing=smoothing)
    run.steps += 1
    compiled = skscratch.fast.compilations() - compiled
    if compiled and run.progress:
        bar.write(
            f"compiled {compiled} numba kernels in the first step: "
            f"{time.perf_counter() - started:.1f} s (once: later runs load them from the cache)"
        )
    return result


def _finish_epoch(run: _Run) -> None:
    """Evaluate on the test images if the epoch is one to evaluate (after the last also with
    flips and with shifts, if the run asks for them), add the epoch to the history, move to the
    next epoch, and save the checkpoint and then the metrics."""
    position, seen = run.position, run.n_batches * run.config.batch_size
    started = time.perf_counter()
    test = {}
    last = position.epoch + 1 == run.config.epochs
    if last or (position.epoch + 1) % run.config.eval_every == 0:
        result = evaluate(run.model, run.x_test, run.y_test, run.mean, run.std)
        test = {"test_loss": result["loss"], "test_accuracy": result["accuracy"]}
    if last:
        test |= _augmented_evaluations(run)
    test_seconds = time.perf_counter() - started
    # The run's time so far: every epoch's training and evaluation (not the time it stood still
    # between a stop and its resumption).
    before = run.history[-1].get("elapsed_seconds", math.nan) if run.history else 0.0
    run.history.append(
        {
            "epoch": position.epoch + 1,
            "train_loss": position.loss_sum / seen,
            "train_accuracy": position.correct / seen,
            **test,
            "lr": run.optimizer.lr,
            "seconds": position.seconds,
            "images_per_second": seen / position.seconds,
            "test_seconds": test_seconds,
            "elapsed_seconds": before + position.seconds + test_seconds,
        }
    )
    run.position = Position(epoch=position.epoch + 1)
    _save(run)
    try:
        write_metrics(run.out / METRICS, run.history)
    except OSError as exc:
        raise TrainingError(f"could not write {run.out / METRICS}: {exc.strerror}") from exc
    if run.progress:
        h = run.history[-1]
        parts = [
            f"epoch {h['epoch']}: train loss {h['train_loss']:.3f} acc {h['train_accuracy']:.3f}"
        ]
        if "test_accuracy" in h:  # (the test-time augmented ones only with it, after the last)
            parts.append(
                f"test loss {h['test_loss']:.3f} acc {h['test_accuracy']:.3f}"
                + "".join(f" ({how} {h[key]:.3f})" for how, key in _AUGMENTED if key in h)
            )
        tqdm.write(" | ".join([*parts, f"{h['seconds'] / 60:.1f} min"]))


# How the last epoch's test-time augmented accuracies are named in the history and the log.
_AUGMENTED = (("with flips", "test_accuracy_flips"), ("with shifts too", "test_accuracy_shifts"))


def _augmented_evaluations(run: _Run) -> dict:
    """The last epoch's evaluations with test-time augmentation: with flips (if the run asks for
    them), and with shifts of every view as well (if it asks for those)."""
    config, results = run.config, {}
    test = (run.model, run.x_test, run.y_test, run.mean, run.std)
    if config.test_flips:
        flipped = evaluate(*test, flips=True)
        results |= {"test_loss_flips": flipped["loss"], "test_accuracy_flips": flipped["accuracy"]}
    if config.test_shifts:
        both = evaluate(*test, flips=config.test_flips, shifts=True)
        results |= {"test_loss_shifts": both["loss"], "test_accuracy_shifts": both["accuracy"]}
    return results


def _save(run: _Run) -> None:
    """Write the run's checkpoint (atomically: a failure leaves the previous one whole)."""
    meta = {
        "model_config": run.model_config.to_dict(),
        "train_config": asdict(run.config),
        "position": asdict(run.position),
        "history": run.history,
        "normalization": {"mean": run.mean.tolist(), "std": run.std.tolist()},
    }
    try:
        save_checkpoint(run.checkpoint, meta, run.model.state_dict(), run.optimizer.state_dict())
    except OSError as exc:
        raise TrainingError(
            f"could not write the checkpoint {run.checkpoint}: {exc.strerror}. The previous "
            f"checkpoint, if any, is intact."
        ) from exc
