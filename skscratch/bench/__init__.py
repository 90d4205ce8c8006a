"""Benchmarks: `python -m skscratch bench`.

Times, in one run and float32 throughout:

- the machine's memory bandwidth (a large array copy), the yardstick for memory-bound kernels;
- each operation forward and backward on the SK unit's shapes, by every path skscratch has
  (the plain-NumPy reference, im2col with compiled kernels, the direct kernels);
- the SK unit forward + backward at two sizes;
- a whole training step (forward, loss, backward, SGD) of two networks at two batch sizes;
- the peak memory and the speed of a training step of each framework alone, in a fresh process
  with its own default settings, and the time the first step spends compiling kernels.

With `compare="torch"` every timing has a PyTorch twin built from the same weights; the two are
checked to agree, then timed alternately (one of each, repeated), so that a slow moment of the
machine hits both; in that one process PyTorch runs under the settings skscratch makes (freed
memory kept for reuse, passive OpenMP waiting), which make it faster here. The fresh-process
steps show each framework as it runs by itself. Figures are medians over the repeats, after
warm-up.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from skscratch import _kernels
from skscratch._memory import reuse_freed_memory
from skscratch.activations import relu_backward, relu_forward
from skscratch.batchnorm import (
    batchnorm_backward,
    batchnorm_forward,
    batchnorm_relu_backward,
    batchnorm_relu_forward,
)
from skscratch.conv import conv2d_backward, conv2d_forward
from skscratch.models import PRESETS, SKResNeXt
from skscratch.nn import SKUnit
from skscratch.optim import SGD
from skscratch.train import train_step


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

    @classmethod
    def full(cls) -> Settings:
        return cls(
            op_shape=(64, 64, 32, 32),
            groups=32,
            sk_shapes=((64, 64, 32, 32), (64, 256, 8, 8)),
            step_presets=("default", "bench535k"),
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
            step_presets=("default", "bench535k"),
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


# -- the benchmarks ---------------------------------------------------------------------------
#
# Each returns rows: {"name", "times": {path: seconds}, "fast": the path skscratch picks,
# and optionally "flops" (of one call) or "images" (per call)}.


def _torch_grad(out, inputs, dout):
    import torch

    return lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True)


def _conv_rows(name, x, wt, opts, fast, s: Settings, torch_on: bool) -> list[dict]:
    methods = ("reference", "im2col", "direct") if fast == "direct" else ("reference", fast)
    caches = {m: conv2d_forward(x, wt, **opts, method=m)[1] for m in methods}
    out = conv2d_forward(x, wt, **opts, method=fast)[0]
    dout = np.random.default_rng(1).standard_normal(out.shape, dtype=np.float32)
    fwd = {m: (lambda m=m: conv2d_forward(x, wt, **opts, method=m)) for m in methods}
    bwd = {m: (lambda m=m: conv2d_backward(dout, caches[m])) for m in methods}
    if torch_on:
        import torch

        xt, wtt = (torch.tensor(a, requires_grad=True) for a in (x, wt))
        fwd["torch"] = lambda: torch.nn.functional.conv2d(xt, wtt, **opts)
        out_t = fwd["torch"]()
        _agree(f"{name} forward", out, out_t)
        bwd["torch"] = _torch_grad(out_t, (xt, wtt), torch.from_numpy(dout))
        dx = conv2d_backward(dout, caches[fast])[0]
        _agree(f"{name} backward dx", dx, bwd["torch"]()[0])
    macs = out.size * np.prod(wt.shape[1:])
    return [
        dict(
            name=f"{name} forward",
            times=median_times(fwd, s.repeats, s.warmup),
            fast=fast,
            flops=int(2 * macs),
            # The least a forward pass must move: read x and w, write the output.
            bytes=int(x.nbytes + wt.nbytes + out.nbytes),
        ),
        dict(
            name=f"{name} backward",
            times=median_times(bwd, s.repeats, s.warmup),
            fast=fast,
            flops=int(4 * macs),
        ),
    ]


def op_rows(s: Settings, torch_on: bool) -> list[dict]:
    rng = np.random.default_rng(0)
    n, c, h, w = s.op_shape
    x = rng.standard_normal(s.op_shape, dtype=np.float32)
    rows = []
    for d in (1, 2):
        wt = rng.standard_normal((c, c // s.groups, 3, 3), dtype=np.float32) * 0.1
        opts = dict(padding=d, dilation=d, groups=s.groups)
        name = f"conv 3x3, G={s.groups}, dilation {d}"
        rows += _conv_rows(name, x, wt, opts, "direct", s, torch_on)
    wt = rng.standard_normal((2 * c, c, 1, 1), dtype=np.float32) * 0.1
    rows += _conv_rows(f"conv 1x1, {c} -> {2 * c}", x, wt, {}, "im2col", s, torch_on)

    gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
    stats = (np.zeros(c, np.float32), np.ones(c, np.float32))

    def bn_relu_reference():
        out, _, _, bn_cache = batchnorm_forward(x, gamma, beta, *stats)
        return relu_forward(out) + (bn_cache,)

    _, relu_cache, bn_cache = bn_relu_reference()
    fused = batchnorm_relu_forward(x, gamma, beta, *stats)
    dout = rng.standard_normal(x.shape, dtype=np.float32)
    fwd = {
        "reference": bn_relu_reference,
        "fused": lambda: batchnorm_relu_forward(x, gamma, beta, *stats),
    }
    bwd = {
        "reference": lambda: batchnorm_backward(relu_backward(dout, relu_cache), bn_cache),
        "fused": lambda: batchnorm_relu_backward(dout, fused[3]),
    }
    if torch_on:
        import torch

        xt = torch.tensor(x, requires_grad=True)
        bn = torch.nn.BatchNorm2d(c)
        fwd["torch"] = lambda: torch.relu(bn(xt))
        out_t = fwd["torch"]()
        _agree("batch norm + ReLU forward", fused[0], out_t)
        bwd["torch"] = _torch_grad(out_t, (xt, bn.weight, bn.bias), torch.from_numpy(dout))
        _agree(
            "batch norm + ReLU backward",
            batchnorm_relu_backward(dout, fused[3])[0],
            bwd["torch"]()[0],
        )
    for label, fns in (("forward", fwd), ("backward", bwd)):
        times = median_times(fns, s.repeats, s.warmup)
        rows.append(dict(name=f"batch norm + ReLU {label}", times=times, fast="fused"))
    return rows


def sk_rows(s: Settings, torch_on: bool) -> list[dict]:
    rows = []
    for shape in s.sk_shapes:
        n, c, h, w = shape
        unit = SKUnit(c, groups=32, rng=np.random.default_rng(0))
        x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
        dout = np.random.default_rng(2).standard_normal(shape, dtype=np.float32)

        def ours(unit=unit, x=x, dout=dout):
            unit.forward(x)
            return unit.backward(dout)

        fns = {"skscratch": ours}
        if torch_on:
            import torch

            from skscratch.interop.torch import TorchSKUnit

            twin = TorchSKUnit(c, groups=32)
            twin.load_state_dict(_torch_state(unit.state_dict(), twin.state_dict()))
            xt = torch.tensor(x, requires_grad=True)
            dt = torch.from_numpy(dout)

            def theirs(twin=twin, xt=xt, dt=dt):
                return torch.autograd.grad(twin(xt), xt, dt)[0]

            fns["torch"] = theirs
            _agree(f"SK unit {shape} dx", ours(), theirs())
        times = median_times(fns, s.repeats, s.warmup)
        rows.append(
            dict(name=f"SK unit fwd+bwd, N={n}, C={c}, {h}x{w}", times=times, fast="skscratch")
        )
    return rows


def step_rows(s: Settings, torch_on: bool) -> list[dict]:
    rows = []
    for preset in s.step_presets:
        for batch in s.step_batches:
            ours, theirs = make_steps(preset, batch, torch_on)
            fns = {"skscratch": ours} | ({"torch": theirs} if torch_on else {})
            times = median_times(fns, s.repeats, s.warmup)
            rows.append(
                dict(
                    name=f"training step, {preset} network, batch {batch}",
                    times=times,
                    fast="skscratch",
                    images=batch,
                )
            )
    return rows


def make_steps(preset: str, batch: int, torch_on: bool, *, check: bool = True):
    """A training step of the preset network on one random batch, as a function, for skscratch
    and (when torch_on) for its PyTorch twin with the same weights; unless check=False, their
    outputs and gradients are checked to agree first."""
    model = SKResNeXt(PRESETS[preset])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    optimizer = SGD(model, lr=0.01)
    theirs = None
    if torch_on:
        import torch

        from skscratch.interop.torch import to_torch

        net = to_torch(model)
        # skscratch decays only the weights of convolutions and FC layers; so does this twin.
        decay = [p for p in net.parameters() if p.ndim > 1]
        rest = [p for p in net.parameters() if p.ndim <= 1]
        opt = torch.optim.SGD(
            [dict(params=decay, weight_decay=5e-4), dict(params=rest, weight_decay=0.0)],
            lr=0.01,
            momentum=0.9,
            nesterov=True,
        )
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def theirs():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xt), yt)
            loss.backward()
            opt.step()

        if check:
            _check_twin(model, net, x, y)
    return (lambda: train_step(model, optimizer, x, y)), theirs


# -- agreement checks (compare mode) ----------------------------------------------------------


class DisagreementError(RuntimeError):
    """skscratch and its PyTorch twin gave different results."""


def _rel_diff(ours, theirs) -> float:
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-30))


def _agree(what: str, ours, theirs, tol: float = 1e-4) -> None:
    err = _rel_diff(ours, theirs)
    if not err < tol:
        raise DisagreementError(f"{what}: skscratch and PyTorch differ by {err:.2e} (relative)")


def _torch_state(state, reference):
    from skscratch.interop.torch import state_dict_to_torch

    return state_dict_to_torch(state, reference)


def _check_twin(model, net, x, y) -> None:
    """One forward and backward of both networks on the same batch: outputs, input gradients
    and every parameter gradient must agree to float32 rounding."""
    import torch

    from skscratch.losses import softmax_cross_entropy

    logits = model.forward(x)
    _, dlogits = softmax_cross_entropy(logits, y)
    model.backward(dlogits)
    net.zero_grad()
    out = net(torch.from_numpy(x))
    torch.nn.functional.cross_entropy(out, torch.from_numpy(y)).backward()
    _agree("network output", logits, out)
    theirs = dict(net.named_parameters())
    for name, p in model.named_parameters():
        # bn3 starts at zero, so the gradients behind it are zero on both sides.
        if np.any(p.grad):
            _agree(f"gradient of {name}", p.grad, theirs[name].grad, tol=2e-3)
    # The check ran a training-mode forward; put the running statistics back in step.
    net.load_state_dict(_torch_state(model.state_dict(), net.state_dict()))
    model.zero_grad()
    net.zero_grad()


# -- each framework alone, and compile time: fresh processes ----------------------------------


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
    keeps freed memory for reuse, as `skscratch train` does; PyTorch gets glibc's allocator
    and, being imported before skscratch (`_in_subprocess`), its OpenMP runtime's own waiting."""
    torch_on = framework == "torch"
    if not torch_on:
        reuse_freed_memory()
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


# Runs this module as `python -m skscratch.bench`, but with PyTorch imported before skscratch,
# whose process settings (OMP_WAIT_POLICY, in skscratch._kernels) then no longer reach it.
_TORCH_FIRST = "import torch, runpy; runpy.run_module('skscratch.bench', run_name='__main__')"


def _in_subprocess(task: str, *args: str, env: dict | None = None, torch_first=False) -> dict:
    launch = ["-c", _TORCH_FIRST] if torch_first else ["-m", "skscratch.bench"]
    out = subprocess.run(
        [sys.executable, *launch, task, *args],
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
        alone = {f: _in_subprocess("alone", f, *args, torch_first=f == "torch") for f in frameworks}
        name = f"training step, {preset} network, batch {s.memory_batch}"
        rows.append(dict(name=name, images=s.memory_batch, **alone))
    return rows


def compile_times() -> dict:
    """The first training step in a new process with an empty kernel cache (numba compiles
    every kernel) and with the cache that run left (numba loads them)."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cold = _in_subprocess("first-step", env=env)
        warm = _in_subprocess("first-step", env=env)
    return {"cold": cold["first"], "warm": warm["first"], "later": warm["second"]}


# -- the whole run ----------------------------------------------------------------------------


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "kernel_threads": _kernels.num_threads(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return info


def run(settings: Settings, *, compare: str | None = None, progress=print) -> dict:
    """Every benchmark; returns the results as a JSON-ready dict."""
    reuse_freed_memory()
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
    progress("first-step compile time (fresh processes) ...")
    result["compile"] = compile_times()
    return result


if __name__ == "__main__":
    # The fresh-process measurements: `python -m skscratch.bench alone|first-step ...`.
    task, *rest = sys.argv[1:]
    if task == "alone":
        framework, preset, batch, repeats = rest
        print(json.dumps(_measure_step_alone(framework, preset, int(batch), int(repeats))))
    elif task == "first-step":
        print(json.dumps(_first_step_seconds()))
    else:
        sys.exit(f"unknown task {task!r}")


# -- the report -------------------------------------------------------------------------------

_PATHS = ("reference", "im2col", "direct", "fused", "skscratch", "torch")


def _table(rows: list[dict], gbs: float) -> list[str]:
    paths = [p for p in _PATHS if any(p in r["times"] for r in rows)]
    width = max(len(r["name"]) for r in rows)
    head = f"{'':<{width}}" + "".join(f"{p:>11}" for p in paths)
    lines = [head + ("   torch/skscratch" if "torch" in paths else "")]
    for r in rows:
        t = r["times"]
        cells = "".join(f"{t[p] * 1e3:9.1f}ms" if p in t else f"{'':>11}" for p in paths)
        if "torch" in t:
            cells += f"   {t['torch'] / t[r['fast']]:6.2f}x"
        lines.append(f"{r['name']:<{width}}{cells}")
        fast = t[r["fast"]]
        notes = []
        if "flops" in r:
            notes.append(f"{r['fast']}: {r['flops'] / fast / 1e9:.1f} GFLOP/s")
        if "bytes" in r:
            notes.append(f"{r['bytes'] / fast / gbs:.0%} of the copy bandwidth")
        if "images" in r:
            notes += [
                f"{p}: {r['images'] / t[p]:.1f} images/s" for p in ("skscratch", "torch") if p in t
            ]
        if notes:
            lines.append(f"{'':<4}" + ", ".join(notes))
    return lines


def format_report(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores; kernels on {m['kernel_threads']} threads"
        + (f"; torch {m['torch']} on {m['torch_threads']} threads" if "torch" in m else ""),
        f"times are medians of {result['settings']['repeats']} runs after "
        f"{result['settings']['warmup']} warm-up, float32",
        f"memory bandwidth (array copy, read + write): {result['copy_bandwidth'] / 1e9:.1f} GB/s",
    ]
    gbs = result["copy_bandwidth"]
    for title, key in (
        ("operations", "ops"),
        ("SK unit", "sk_unit"),
        ("training steps", "steps"),
    ):
        lines += ["", title, *_table(result[key], gbs)]
    lines += ["", "peak resident memory of a training step (fresh process, 3 steps)"]
    for r in result["memory"]:
        cells = [
            f"{f}: {r[f]['peak'] / 2**20:,.0f} MiB "
            f"({(r[f]['peak'] - r[f]['before']) / 2**20:+,.0f} over the model and data)"
            for f in ("skscratch", "torch")
            if f in r
        ]
        lines.append(f"  {r['name']}: " + ", ".join(cells))
    lines += ["", "training step of each framework alone (fresh process, its own default settings)"]
    for r in result["memory"]:
        cells = [
            f"{f}: {r['images'] / r[f]['step']:.1f} images/s"
            for f in ("skscratch", "torch")
            if f in r
        ]
        ratio = f" ({r['torch']['step'] / r['skscratch']['step']:.2f}x)" if "torch" in r else ""
        lines.append(f"  {r['name']}: " + ", ".join(cells) + ratio)
    c = result["compile"]
    lines += [
        "",
        f"first training step in a new process: {c['cold']:.1f} s with an empty kernel cache "
        f"(compiling), {c['warm']:.2f} s with the cache; later steps {c['later'] * 1e3:.0f} ms",
    ]
    return "\n".join(lines)
