"""A network's layers with their output shapes, parameters and multiply-adds, from shapes alone.

No forward pass runs: each layer's output shape and cost follow from its input shape and its
own settings, so SKNet-101 at 224 x 224 is counted in a moment (`skscratch summary sknet101`).
Multiply-adds are those of convolutions and fully connected layers, per image, as the paper
counts its FLOPs (batch norm, ReLU, pooling and the softmax are not counted):

    convolution      C_out * (C_in / G) * KH * KW * H_out * W_out
    fully connected  D_in * D_out
    SK unit          M of its grouped 3x3 convolutions (dilation m, stride s), then fc C -> d
                     and select d -> M*C

`models.count_macs` counts the same by running a forward pass: the tests hold the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass

from skscratch.im2col import conv_output_size
from skscratch.models import BranchSum, SKBottleneck, SKResNeXt
from skscratch.nn import (
    BatchNorm,
    Conv2d,
    GlobalAvgPool,
    Linear,
    MaxPool2d,
    Module,
    ReLU,
    Sequential,
    SKUnit,
)


@dataclass(frozen=True)
class Row:
    name: str  # dotted, as in the state dict: "stages.0.1.sk"
    kind: str  # the module's class
    shape: tuple[int, ...]  # output shape of one image: (C, H, W) or (D,)
    params: int
    macs: int


def _conv(shape, c_out, c_in_per_group, k, stride, padding, dilation):
    h, w = (conv_output_size(s, k, stride, padding, dilation) for s in shape[1:])
    return (c_out, h, w), c_out * c_in_per_group * k * k * h * w


def _leaf(m: Module, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """(output shape, multiply-adds) of a layer given the shape of its input."""
    if isinstance(m, Conv2d):
        c_out, c_in_g, k, _ = m.params["weight"].data.shape
        o = m.options
        return _conv(shape, c_out, c_in_g, k, o["stride"], o["padding"], o["dilation"])
    if isinstance(m, (BatchNorm, ReLU)):
        return shape, 0
    if isinstance(m, MaxPool2d):
        o = m.options
        k, stride, padding = o["kernel_size"], o["stride"], o["padding"]
        size = (conv_output_size(s, k, stride, padding, 1) for s in shape[1:])
        return (shape[0], *size), 0
    if isinstance(m, GlobalAvgPool):
        return shape[:1], 0
    if isinstance(m, Linear):
        d_out, d_in = m.params["weight"].data.shape
        return (d_out,), d_out * d_in
    if isinstance(m, SKUnit):
        convs = [p.data for name, p in m.params.items() if name.startswith("convs.")]
        macs = 0
        for w, d in zip(convs, m.dilations, strict=True):  # each branch padded to keep the size
            k = w.shape[-1]
            out, cost = _conv(shape, w.shape[0], w.shape[1], k, m.stride, d * (k - 1) // 2, d)
            macs += cost
        macs += m.params["fc.weight"].data.size + m.params["select.weight"].data.size
        return out, macs
    raise TypeError(f"no shape rule for {type(m).__name__}")


def layers(
    model: Module, input_shape: tuple[int, ...] = (3, 32, 32), *, depth: int | None = None
) -> list[Row]:
    """Every layer of `model` in the order the forward pass runs them, for one image of
    `input_shape` (C, H, W). With `depth`, a module whose name has `depth` parts stands for all
    its layers in one row (depth 3: one row per block, "stages.0.1", kind "SKBottleneck")."""
    rows: list[Row] = []

    def walk(m: Module, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        first = len(rows)
        out = _walk(m, name, shape)
        if depth is not None and name and len(name.split(".")) == depth and len(rows) > first:
            inside = rows[first:]
            params, macs = sum(r.params for r in inside), sum(r.macs for r in inside)
            rows[first:] = [Row(name, type(m).__name__, out, params, macs)]
        return out

    def _walk(m: Module, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        def child(key: str, s: tuple[int, ...]) -> tuple[int, ...]:
            return walk(m.children[key], f"{name}.{key}" if name else key, s)

        if isinstance(m, SKResNeXt):
            for key in ("stem", "stages", "pool", "fc"):
                shape = child(key, shape)
            return shape
        if isinstance(m, Sequential):
            for key in m.children:
                shape = child(key, shape)
            return shape
        if isinstance(m, BranchSum):  # each branch sees the input; the sum has one's shape
            convs, bns = m.children["convs"], m.children["bns"]
            for i in range(len(convs)):
                out = walk(convs[i], f"{name}.convs.{i}", shape)
                out = walk(bns[i], f"{name}.bns.{i}", out)
            return out
        if isinstance(m, SKBottleneck):
            out = shape
            for key in ("conv1", "bn1", "sk", "conv3", "bn3"):
                out = child(key, out)
            if "shortcut" in m.children:
                child("shortcut", shape)
            return child("relu", out)
        out, macs = _leaf(m, shape)
        if min(out) < 1:
            raise ValueError(f"{name} would output {' x '.join(map(str, out))}")
        params = sum(p.data.size for p in m.params.values())
        rows.append(Row(name, type(m).__name__, out, params, macs))
        return out

    walk(model, "", tuple(input_shape))
    return rows


def table(rows: list[Row]) -> str:
    """The rows as a text table with totals, as torchinfo prints one."""
    lines = [f"{'layer':<28} {'kind':<14} {'output shape':<18} {'params':>12} {'mult-adds':>15}"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        shape = " x ".join(map(str, r.shape))
        lines.append(f"{r.name:<28} {r.kind:<14} {shape:<18} {r.params:>12,} {r.macs:>15,}")
    lines.append("-" * len(lines[0]))
    params, macs = sum(r.params for r in rows), sum(r.macs for r in rows)
    lines.append(f"parameters: {params:,} ({params / 1e6:.2f} M)")
    size = f"{macs / 1e9:.2f} G" if macs >= 1e9 else f"{macs / 1e6:.1f} M"
    lines.append(f"multiply-adds per image: {macs:,} ({size})")
    return "\n".join(lines)
