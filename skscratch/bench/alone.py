"""Each framework's training step alone, and the first step's compile time: fresh processes.

The measurements run as `python -m skscratch.bench TASK ...` (see `__main__.py`), each in a
process of its own, so that one framework's settings and memory never reach the other's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from skscratch import tuning
from skscratch.bench.rows import make_steps
from skscratch.bench.timing import Settings, median_times


def _vm_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_step_alone(framework: str, preset: str, batch: int, repeats: int) -> dict:
    """Run in a fresh process: resident memory with the model and batch in place (after a step
    of a tiny network has loaded every kernel), its peak over three training steps, then the
    median time of `repeats` more steps. Each framework runs with its own defaults: skscratch
    with the process settings of `skscratch train` (`_environment`, and freed memory kept for
    reuse); PyTorch with none of them."""
    torch_on = framework == "torch"
    if not torch_on:
        tuning.reuse_freed_memory()
    warm = make_steps("tiny", 2, torch_on=torch_on, check=False)
    warm[torch_on]()
    step = make_steps(preset, batch, torch_on=torch_on, check=False)[torch_on]
    del warm
    before = _vm_status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current size
    for _ in range(3):
        step()
    peak = _vm_status("VmHWM")
    seconds = median_times({framework: step}, repeats, 0)[framework]
    return {"before": before, "peak": peak, "step": seconds}


def _first_step_seconds() -> dict:
    """Run in a fresh process: the first training step (which compiles or loads the kernels)
    and the second, of the tiny network."""
    ours, _ = make_steps("tiny", 4, torch_on=False)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        ours()
        times.append(time.perf_counter() - start)
    return {"first": times[0], "second": times[1]}


def _environment(framework: str) -> dict[str, str]:
    """The environment of a fresh process for `framework`: skscratch's with the variables that
    `skscratch.tune_process()` sets (a user's own values win), PyTorch's without them."""
    if framework == "torch":
        return {k: v for k, v in os.environ.items() if k not in tuning.SETTINGS}
    return tuning.SETTINGS | dict(os.environ)


def _in_subprocess(task: str, *args: str, env: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "skscratch.bench", task, *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"benchmark subprocess {task} {args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def alone_rows(s: Settings, torch_on: bool) -> list[dict]:
    """Peak memory and step time of each framework alone, in a fresh process of its own."""
    rows = []
    for preset in s.step_presets:
        frameworks = ("skscratch", "torch") if torch_on else ("skscratch",)
        args = (preset, str(s.memory_batch), str(s.repeats))
        alone = {f: _in_subprocess("alone", f, *args, env=_environment(f)) for f in frameworks}
        name = f"training step, {preset} network, batch {s.memory_batch}"
        rows.append(dict(name=name, images=s.memory_batch, **alone))
    return rows


def compile_times() -> dict:
    """The first training step in a new process with an empty kernel cache (numba compiles
    every kernel) and with the cache that run left (numba loads them)."""
    with tempfile.TemporaryDirectory() as cache:
        env = _environment("skscratch") | {"NUMBA_CACHE_DIR": cache}
        cold = _in_subprocess("first-step", env=env)
        warm = _in_subprocess("first-step", env=env)
    return {"cold": cold["first"], "warm": warm["first"], "later": warm["second"]}
