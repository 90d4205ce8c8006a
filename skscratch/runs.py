"""What surrounds a training run: its folder and the files in it, how it is stopped, and the
model it leaves.

`skscratch train --out FOLDER` (skscratch.train.run_training) writes there:

    checkpoint.npz   the model, the optimiser and where the run stands: after every epoch, and
                     when a StopRequest (Ctrl-C or SIGTERM) ends the run between two steps
    metrics.jsonl    one JSON line per finished epoch
    curves.png       loss and accuracy per epoch, at the end
    .lock            held while a run trains in the folder, so that two runs never share it

load_model rebuilds the trained model from a checkpoint, to evaluate or analyse it.
"""

from __future__ import annotations

import json
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from skscratch.backends import get_backend
from skscratch.checkpoint import CheckpointError, atomic_write, load_checkpoint
from skscratch.models import SKNetConfig, SKResNeXt
from skscratch.plots import pyplot
from skscratch.recipe import TrainConfig

try:
    import fcntl
except ImportError:  # Windows has no fcntl: runs there are not locked against each other
    fcntl = None

CHECKPOINT = "checkpoint.npz"
LOCK = ".lock"
METRICS = "metrics.jsonl"
CURVES = "curves.png"


class TrainingError(RuntimeError):
    """Training cannot go on (the loss diverged, or the output folder holds another run).

    Raised here for the folder and in skscratch.train for the loop."""


@contextmanager
def exclusive(out: Path):
    """Create the folder `out` if need be, and hold an exclusive lock on out/.lock while
    training, so that two runs never write to one folder. The operating system releases the
    lock when the process ends, however it ends, so a crashed run never leaves the folder locked."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"cannot create the output folder {out}: {exc.strerror}") from exc
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


class StopRequest:
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
    tested = [h for h in history if "test_accuracy" in h]  # every epoch, or every few (eval_every)
    tested_epochs = [h["epoch"] for h in tested]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (as minimised)")
    ax_loss.plot(tested_epochs, [h["test_loss"] for h in tested], "o-", label="test")
    # The training loss is the one minimised, label-smoothed if the run smoothed its labels;
    # the test loss is the plain cross-entropy.
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train (augmented)")
    ax_acc.plot(tested_epochs, [h["test_accuracy"] for h in tested], "o-", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return True


def load_model(path: str | Path, backend: str = "fast") -> tuple[SKResNeXt, NDArray, NDArray]:
    """Rebuild the model stored in a checkpoint, on `backend` ("fast" or "reference").

    Returns (model in evaluation mode, mean (3,), std (3,)): the normalisation it was trained with.
    """
    return load_run(path, backend)[:3]


def load_run(
    path: str | Path, backend: str = "fast"
) -> tuple[SKResNeXt, NDArray, NDArray, TrainConfig]:
    """load_model's (model, mean, std), and the training configuration the run recorded."""
    get_backend(backend)  # before the `try`: a wrong name is the caller's error, not the file's
    meta, model_state, _ = load_checkpoint(Path(path))
    try:
        model = SKResNeXt(SKNetConfig.from_dict(meta["model_config"]), backend=backend)
        model.load_state_dict(model_state)
        norm = meta["normalization"]
        mean, std = (np.array(norm[k], dtype=np.float32) for k in ("mean", "std"))
        config = TrainConfig.from_dict(meta["train_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path} does not hold a model this skscratch can build: {exc}"
        ) from exc
    return model.eval(), mean, std, config
