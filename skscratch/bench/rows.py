"""The benchmarks: operations by every path, the SK unit, training steps; each beside its
PyTorch twin (same weights, checked to agree) when PyTorch is compared."""

from __future__ import annotations

import numpy as np

from skscratch import conv, fast, layers
from skscratch.bench.timing import Settings, median_times
from skscratch.models import PRESETS, SKResNeXt
from skscratch.nn import SKUnit
from skscratch.optim import SGD
from skscratch.train import train_step

# Each benchmark returns rows: {"name", "times": {path: seconds}, "fast": the path skscratch's
# fast backend takes, and optionally "flops" (of one call) or "images" (per call)}. The paths of
# an operation: "reference" (the teaching pair), "im2col", "direct" (the fast backend's two
# convolution algorithms), "fused" (its batch norm + ReLU).


def _torch_grad(out, inputs, dout):
    import torch

    return lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True)


def _conv_forward(path: str):
    """The forward of one path: the reference pair, or the fast one with that algorithm."""
    if path == "reference":
        return conv.conv2d_forward
    return lambda *args, **opts: fast.conv2d_forward(*args, **opts, algorithm=path)


def _conv_backward(path: str):
    return conv.conv2d_backward if path == "reference" else fast.conv2d_backward


def _conv_rows(name, x, wt, opts, chosen, s: Settings, torch_on: bool) -> list[dict]:
    """chosen: the algorithm the fast backend takes for this convolution."""
    paths = ("reference", "im2col", "direct") if chosen == "direct" else ("reference", chosen)
    caches = {p: _conv_forward(p)(x, wt, **opts)[1] for p in paths}
    out = _conv_forward(chosen)(x, wt, **opts)[0]
    dout = np.random.default_rng(1).standard_normal(out.shape, dtype=np.float32)
    fwd = {p: (lambda p=p: _conv_forward(p)(x, wt, **opts)) for p in paths}
    bwd = {p: (lambda p=p: _conv_backward(p)(dout, caches[p])) for p in paths}
    if torch_on:
        import torch

        xt, wtt = (torch.tensor(a, requires_grad=True) for a in (x, wt))
        fwd["torch"] = lambda: torch.nn.functional.conv2d(xt, wtt, **opts)
        out_t = fwd["torch"]()
        _agree(f"{name} forward", out, out_t)
        bwd["torch"] = _torch_grad(out_t, (xt, wtt), torch.from_numpy(dout))
        dx = fast.conv2d_backward(dout, caches[chosen])[0]
        _agree(f"{name} backward dx", dx, bwd["torch"]()[0])
    macs = out.size * np.prod(wt.shape[1:])
    return [
        dict(
            name=f"{name} forward",
            times=median_times(fwd, s.repeats, s.warmup),
            fast=chosen,
            flops=int(2 * macs),
            # The least a forward pass must move: read x and w, write the output.
            bytes=int(x.nbytes + wt.nbytes + out.nbytes),
        ),
        dict(
            name=f"{name} backward",
            times=median_times(bwd, s.repeats, s.warmup),
            fast=chosen,
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

    reference = layers.batchnorm_relu_forward(x, gamma, beta, *stats)
    fused = fast.batchnorm_relu_forward(x, gamma, beta, *stats)
    dout = rng.standard_normal(x.shape, dtype=np.float32)
    fwd = {
        "reference": lambda: layers.batchnorm_relu_forward(x, gamma, beta, *stats),
        "fused": lambda: fast.batchnorm_relu_forward(x, gamma, beta, *stats),
    }
    bwd = {
        "reference": lambda: layers.batchnorm_relu_backward(dout, reference[3]),
        "fused": lambda: fast.batchnorm_relu_backward(dout, fused[3]),
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
            fast.batchnorm_relu_backward(dout, fused[3])[0],
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
        unit = SKUnit(c, groups=32, rng=np.random.default_rng(0)).set_backend(s.backend)
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
            ours, theirs = make_steps(preset, batch, torch_on, backend=s.backend)
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


def make_steps(
    preset: str, batch: int, torch_on: bool, *, check: bool = True, backend: str = "fast"
):
    """A training step of the preset network on one random batch, as a function, for skscratch
    (on `backend`) and (when torch_on) for its PyTorch twin with the same weights; unless
    check=False, their outputs and gradients are checked to agree first."""
    model = SKResNeXt(PRESETS[preset], backend=backend)
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
