"""Data parallelism by hand: W processes share every training step, each on 1/W of the batch.

A step of batch B on W workers (W - 1 helper processes beside this one):

    this process     writes the helpers' shares of the batch (B/W images each) to shared
                     memory and tells each helper to start
    every worker     forward + backward on its share, with the current weights: the gradient
                     g_w of the mean loss over its n_w images
    this process     g = sum_w (n_w / B) g_w, the gradient of the mean loss over the batch,
                     then the SGD step, then the new weights to shared memory for the next step

The gradient of a mean is the weighted mean of the shares' gradients, so this is the step of one
process, except for batch norm: each worker normalises with its own share's statistics ("ghost
batch norm", Hoffer et al. 2017, which trains as well or better), and the running statistics are
those of this process's shares. A run records its number of workers, and resumes with it.

Why it pays here: on 2 cores, two single-threaded processes each trained a batch of 64 images at
about 225 images/s, while one process with 2 threads trained 383 images/s: the kernels' threads
do not double the speed, and separate processes nearly do (`docs/bench/workers.py`; figures in
the README, "Speed"). Every worker computes on one thread: the helpers have NUMBA_NUM_THREADS
and OPENBLAS_NUM_THREADS set to 1 in their environment, and this process runs its share with
numba's parallel loops and OpenBLAS (through threadpoolctl) limited to one thread, and all its
threads for everything else (evaluation above all). With OpenBLAS left at two threads in this
process, the team was no faster than one process. The helpers are started with "spawn": a
fresh interpreter that builds the model again, so no thread state is copied into a fork.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import traceback
from multiprocessing import shared_memory

import numpy as np
from numpy.typing import NDArray

from skscratch.losses import softmax_cross_entropy
from skscratch.models import SKNetConfig, SKResNeXt
from skscratch.optim import SGD

# Every helper computes on one thread: the cores are shared out between processes instead.
_HELPER_ENV = {"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


class WorkerError(RuntimeError):
    """A helper process failed or stopped; the message says which and why."""


def shares(batch: int, workers: int) -> list[slice]:
    """The images of a batch each worker takes: W nearly equal, consecutive slices."""
    bounds = np.linspace(0, batch, workers + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class _Buffers:
    """The arrays the processes share, in one block of shared memory: the weights, each
    helper's gradients, and each helper's share of the batch (images and labels)."""

    def __init__(self, n_params: int, helpers: int, images: int, dtype, name: str | None = None):
        itemsize = np.dtype(dtype).itemsize
        sizes = {
            "weights": n_params * itemsize,
            "grads": helpers * n_params * itemsize,
            "x": helpers * images * 3 * 32 * 32 * itemsize,
            "y": helpers * images * 8,
        }
        self.memory = shared_memory.SharedMemory(
            name=name, create=name is None, size=max(sum(sizes.values()), 1)
        )
        offsets = np.cumsum([0, *sizes.values()])
        buf = self.memory.buf

        def view(i, shape, dtype):
            return np.ndarray(shape, dtype=dtype, buffer=buf, offset=int(offsets[i]))

        self.weights = view(0, (n_params,), dtype)
        self.grads = view(1, (helpers, n_params), dtype)
        self.x = view(2, (helpers, images, 3, 32, 32), dtype)
        self.y = view(3, (helpers, images), np.int64)

    def close(self) -> None:
        # The views must go before the block can close.
        del self.weights, self.grads, self.x, self.y
        self.memory.close()


def _flat(model: SKResNeXt, what: str, out: NDArray) -> None:
    """Write every parameter's data ("data") or gradient ("grad"), in order, into out."""
    start = 0
    for p in model.parameters():
        value = getattr(p, what)
        out[start : start + value.size] = value.ravel()
        start += value.size


def _unflat(model: SKResNeXt, flat: NDArray) -> None:
    """Set every parameter's data from flat, in order."""
    start = 0
    for p in model.parameters():
        p.data[...] = flat[start : start + p.data.size].reshape(p.data.shape)
        start += p.data.size


def _share_gradients(
    model: SKResNeXt, x: NDArray, y: NDArray, smoothing: float
) -> tuple[float, int]:
    """A worker's part of a step: forward and backward on its share, leaving every parameter's
    gradient of the share's mean loss in .grad. Returns (mean loss, correct predictions)."""
    logits = model.forward(x)
    loss, dlogits = softmax_cross_entropy(logits, y, smoothing=smoothing)
    model.backward(dlogits, input_grad=False)
    return loss, int((logits.argmax(axis=1) == y).sum())


class Team:
    """The helper processes of a data-parallel run, as a context manager: `step` trains one
    batch on all of them. workers=1 is a team of this process alone (no helpers, no shared
    memory): `step` is then `skscratch.train.train_step`."""

    def __init__(self, model: SKResNeXt, workers: int, batch_size: int, backend: str):
        if not 1 <= workers <= batch_size // 2:
            raise ValueError(
                f"workers must be from 1 to half the batch ({batch_size // 2}): every share "
                f"needs 2 images for batch norm; got {workers}"
            )
        self.workers, self.batch_size = workers, batch_size
        self.shares = shares(batch_size, workers)
        self._helpers: list[tuple[multiprocessing.Process, object]] = []
        self._buffers: _Buffers | None = None
        if workers == 1:
            return
        try:
            self._start(model, backend)
        except BaseException:
            self.close()  # the helpers started so far, and the shared memory
            raise

    def _start(self, model: SKResNeXt, backend: str) -> None:
        from threadpoolctl import ThreadpoolController

        workers = self.workers
        self._blas = ThreadpoolController()
        n_params = model.num_parameters()
        dtype = model.parameters()[0].data.dtype
        largest = max(s.stop - s.start for s in self.shares)
        self._buffers = _Buffers(n_params, workers - 1, largest, dtype)
        _flat(model, "data", self._buffers.weights)
        context = multiprocessing.get_context("spawn")
        saved = {k: os.environ.get(k) for k in _HELPER_ENV}
        os.environ.update(_HELPER_ENV)  # read by the helpers when they start
        try:
            for rank in range(1, workers):
                ours, theirs = context.Pipe()
                process = context.Process(
                    target=_helper,
                    args=(theirs, rank, model.config.to_dict(), backend,
                          self._buffers.memory.name, n_params, workers - 1, largest,
                          np.dtype(dtype).str),
                    daemon=True,
                    name=f"skscratch-worker-{rank}",
                )  # fmt: skip
                process.start()
                theirs.close()
                self._helpers.append((process, ours))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        for rank, (_, conn) in enumerate(self._helpers, start=1):
            self._receive(rank, conn)  # "ready": the helper has built its model

    def __enter__(self) -> Team:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the helpers and free the shared memory (safe to call twice)."""
        for process, conn in self._helpers:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop",))
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
            conn.close()
        self._helpers = []
        if self._buffers is not None:
            self._buffers.close()
            self._buffers.memory.unlink()
            self._buffers = None

    def _receive(self, rank: int, conn) -> tuple:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            raise WorkerError(f"worker {rank} stopped without a word") from None
        if message[0] == "error":
            raise WorkerError(f"worker {rank} failed:\n{message[1]}")
        return message

    def step(
        self, model: SKResNeXt, optimizer: SGD, x: NDArray, y: NDArray, *, smoothing: float
    ) -> tuple[float, int]:
        """One SGD step on the batch x (B, 3, 32, 32), y (B,) shared among the workers.
        Returns (mean loss over the batch, correct predictions)."""
        from skscratch.train import train_step

        if not self._helpers:
            return train_step(model, optimizer, x, y, label_smoothing=smoothing)
        if len(x) != self.batch_size:
            raise ValueError(f"the team shares batches of {self.batch_size}, got {len(x)}")
        buffers, batch, parts = self._buffers, len(x), self.shares
        for rank, (part, (_, conn)) in enumerate(zip(parts[1:], self._helpers, strict=True)):
            n = part.stop - part.start
            buffers.x[rank, :n] = x[part]
            buffers.y[rank, :n] = y[part]
            conn.send(("step", n, smoothing))
        with _numba_threads(1), self._blas.limit(limits=1, user_api="blas"):
            loss, correct = _share_gradients(model, x[parts[0]], y[parts[0]], smoothing)
        n0 = parts[0].stop - parts[0].start
        loss_sum = loss * n0
        grads = [p.grad * (n0 / batch) for p in model.parameters()]
        for rank, (part, (_, conn)) in enumerate(zip(parts[1:], self._helpers, strict=True)):
            _, loss, right = self._receive(rank + 1, conn)
            n = part.stop - part.start
            loss_sum, correct = loss_sum + loss * n, correct + right
            start = 0
            for g in grads:
                g += buffers.grads[rank, start : start + g.size].reshape(g.shape) * (n / batch)
                start += g.size
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g
        optimizer.step()
        _flat(model, "data", buffers.weights)
        return loss_sum / batch, correct

    def publish(self, model: SKResNeXt) -> None:
        """Give the helpers the model's weights (after they were loaded or changed)."""
        if self._buffers is not None:
            _flat(model, "data", self._buffers.weights)


@contextlib.contextmanager
def _numba_threads(n: int):
    """Run numba's parallel loops on n threads inside the block (if numba is loaded)."""
    numba = sys.modules.get("numba")
    if numba is None:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(min(n, before))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _helper(conn, rank, config, backend, memory_name, n_params, helpers, images, dtype) -> None:
    """A helper process: build the model, then train shares of batches until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    buffers = None
    try:
        from skscratch.tuning import reuse_freed_memory

        reuse_freed_memory()
        model = SKResNeXt(SKNetConfig.from_dict(config), backend=backend).astype(dtype)
        buffers = _Buffers(n_params, helpers, images, dtype, name=memory_name)
        me = rank - 1
        conn.send(("ready",))
        while True:
            message = conn.recv()
            if message[0] == "stop":
                break
            _, n, smoothing = message
            _unflat(model, buffers.weights)
            loss, correct = _share_gradients(model, buffers.x[me, :n], buffers.y[me, :n], smoothing)
            _flat(model, "grad", buffers.grads[me])
            conn.send(("done", loss, correct))
    except (EOFError, OSError, KeyboardInterrupt):
        pass  # the main process has gone: nothing to report to
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
    finally:
        if buffers is not None:
            buffers.close()
