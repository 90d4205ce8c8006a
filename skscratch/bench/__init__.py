"""Benchmarks: `python -m skscratch bench`.

Times, in one run and float32 throughout:

- the machine's memory bandwidth (a large array copy), the yardstick for memory-bound kernels;
- each operation forward and backward on the SK unit's shapes, by every path skscratch has
  (the plain-NumPy reference pair, and the fast backend's im2col, direct and fused kernels);
- the SK unit forward + backward at two sizes;
- a whole training step (forward, loss, backward, SGD) of two networks at two batch sizes, on
  the backend asked for ("fast" unless told otherwise);
- the peak memory and the speed of a training step of each framework alone, in a fresh process
  with its own default settings, and the time the first step spends compiling kernels.

With `compare="torch"` every timing has a PyTorch twin built from the same weights; the two are
checked to agree, then timed alternately (one of each, repeated), so that a slow moment of the
machine hits both; run from the command line, which calls `skscratch.tune_process()`, PyTorch
then runs under the same process settings (freed memory kept for reuse, passive OpenMP
waiting), which make it faster here. The fresh-process steps show each framework as it runs by
itself. Figures are medians over the repeats, after warm-up.

Modules: `timing` (settings and the timer), `rows` (the benchmarks), `alone` (fresh
processes), `report` (the text report).
"""

from __future__ import annotations

import dataclasses
import os
import platform

import numpy as np

from skscratch.backends import get_backend
from skscratch.bench.alone import alone_rows, compile_times
from skscratch.bench.report import format_report
from skscratch.bench.rows import DisagreementError, op_rows, sk_rows, step_rows
from skscratch.bench.timing import Settings, copy_bandwidth, median_times

__all__ = ["DisagreementError", "Settings", "format_report", "median_times", "run"]


def machine() -> dict:
    from skscratch.fast import num_threads

    info = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "kernel_threads": num_threads(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return info


def run(
    settings: Settings, *, compare: str | None = None, backend: str = "fast", progress=print
) -> dict:
    """Every benchmark, the SK unit and the training steps on `backend`; returns the results as
    a JSON-ready dict. Changes no process setting itself (the command line tunes the process
    before it calls this)."""
    settings = dataclasses.replace(settings, backend=get_backend(backend).name)
    torch_on = compare == "torch"
    result = {"machine": machine(), "settings": settings.__dict__, "compare": compare}
    if torch_on:
        import torch

        result["machine"] |= {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    progress("memory bandwidth ...")
    result["copy_bandwidth"] = copy_bandwidth(settings.copy_mib, settings.repeats)
    for key, fn in (("ops", op_rows), ("sk_unit", sk_rows), ("steps", step_rows)):
        progress(f"{key.replace('_', ' ')} ...")
        result[key] = fn(settings, torch_on)
    progress("peak memory and steps alone (fresh processes) ...")
    result["memory"] = alone_rows(settings, torch_on)
    progress("first-step compile time of the fast backend (fresh processes) ...")
    result["compile"] = compile_times()
    return result
