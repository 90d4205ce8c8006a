"""What a benchmark runs and how it is timed."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Settings:
    """What to run: `full()` for the recorded figures, `quick()` to see that it works."""

    op_shape: tuple[int, int, int, int]  # (N, C, H, W) of the operation benchmarks
    groups: int
    sk_shapes: tuple[tuple[int, int, int, int], ...]
    step_presets: tuple[str, ...]
    step_batches: tuple[int, ...]
    memory_batch: int
    repeats: int
    warmup: int
    copy_mib: int
    backend: str = "fast"  # of the SK unit and the training steps

    @classmethod
    def full(cls) -> Settings:
        return cls(
            op_shape=(64, 64, 32, 32),
            groups=32,
            sk_shapes=((64, 64, 32, 32), (64, 256, 8, 8)),
            step_presets=("small", "bench535k"),
            step_batches=(64, 128),
            memory_batch=128,
            repeats=7,
            warmup=2,
            copy_mib=512,
        )

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            op_shape=(4, 64, 16, 16),
            groups=32,
            sk_shapes=((4, 64, 16, 16), (4, 256, 8, 8)),
            step_presets=("small", "bench535k"),
            step_batches=(8,),
            memory_batch=8,
            repeats=1,
            warmup=1,
            copy_mib=16,
        )


def median_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int):
    """Median seconds of each function, called in turn (one of each, `repeats` times)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def copy_bandwidth(mib: int, repeats: int) -> float:
    """Bytes per second of a large array copy (read + write), the memory bandwidth that a
    streaming kernel can hope for."""
    src = np.ones(mib * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    t = median_times({"copy": lambda: np.copyto(dst, src)}, max(repeats, 3), 1)["copy"]
    return 2 * src.nbytes / t
