"""The paper's networks (the ImageNet stem, SKNet-26/50/101) and the shape-based counter behind
`skscratch summary`: its counts against the paper's, a forward pass's, and PyTorch's."""

from __future__ import annotations

import numpy as np
import pytest

from skscratch import cli
from skscratch.losses import softmax_cross_entropy
from skscratch.models import PRESETS, SKNetConfig, SKResNeXt, count_macs
from skscratch.summary import layers, table

# A small network with the ImageNet stem, for what the SKNets are too large to run in a test.
TINY_IMAGENET = SKNetConfig(
    stem=8, depths=(1, 2), mids=(8, 16), outs=(16, 32), groups=4, L=8, strides=(1, 2),
    stem_type="imagenet",
)  # fmt: skip


def _totals(model, shape):
    rows = layers(model, shape)
    return sum(r.params for r in rows), sum(r.macs for r in rows)


@pytest.mark.parametrize(
    "preset, params, macs",
    [
        # The official model definitions give 27.48 M and 4.46 G (the paper: 27.5 M, 4.47 G).
        ("sknet50", 27_479_784, 4_462_710_784),
        # max(C/r, L) = 32 in every SK unit of the third stage; the official SKNet-101 uses 16
        # there (48.69 M, 8.45 G; the paper: 48.9 M, 8.46 G).
        ("sknet101", 48_736_040, 8_448_724_992),
        ("sknet26", 16_746_408, 2_586_877_952),
    ],
)
def test_the_paper_networks_have_their_counts_at_224(preset, params, macs):
    model = SKResNeXt(PRESETS[preset], backend="reference")
    assert model.num_parameters() == params
    assert _totals(model, (3, 224, 224)) == (params, macs)


def test_sknet50_matches_the_papers_rounded_figures():
    params, macs = _totals(SKResNeXt(PRESETS["sknet50"], backend="reference"), (3, 224, 224))
    assert round(params / 1e6, 2) == 27.48 and 4.46e9 <= macs <= 4.47e9


@pytest.mark.parametrize(
    "config, shape",
    [
        (PRESETS["default"], (3, 32, 32)),
        (PRESETS["small"], (3, 32, 32)),
        (PRESETS["tiny"], (3, 32, 32)),
        (PRESETS["tiny"], (3, 21, 17)),
        (TINY_IMAGENET, (3, 64, 64)),
        (TINY_IMAGENET, (3, 37, 45)),
    ],
)
def test_the_counter_agrees_with_a_forward_pass(config, shape):
    model = SKResNeXt(config, backend="reference")
    assert _totals(model, shape) == (model.num_parameters(), count_macs(model, (1, *shape)))
    # and every layer's output shape is the one the forward pass gives
    x = np.zeros((1, *shape), np.float32)
    assert layers(model, shape)[-1].shape == model.eval().forward(x).shape[1:]


def test_the_imagenet_stem_is_7x7_stride_2_then_a_3x3_max_pool():
    rows = layers(SKResNeXt(PRESETS["sknet50"], backend="reference"), (3, 224, 224))
    stem = [(r.name, r.kind, r.shape) for r in rows[:3]]
    assert stem == [
        ("stem.0", "Conv2d", (64, 112, 112)),
        ("stem.1", "BatchNorm", (64, 112, 112)),
        ("stem.2", "MaxPool2d", (64, 56, 56)),
    ]
    assert rows[0].params == 64 * 3 * 7 * 7


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_a_network_with_the_imagenet_stem_trains(backend):
    model = SKResNeXt(TINY_IMAGENET, backend=backend)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 48, 48)).astype(np.float32)
    logits = model.forward(x)
    assert logits.shape == (4, 10)
    _, dlogits = softmax_cross_entropy(logits, rng.integers(0, 10, 4))
    dx = model.backward(dlogits)
    assert dx.shape == x.shape and np.isfinite(dx).all()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
def test_sknet50_runs_forward_and_backward_at_224_on_a_batch_of_2():
    model = SKResNeXt(PRESETS["sknet50"], backend="fast")
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    logits = model.forward(x)
    assert logits.shape == (2, 1000) and np.isfinite(logits).all()
    _, dlogits = softmax_cross_entropy(logits, np.array([1, 2]))
    model.backward(dlogits, input_grad=False)
    assert all(np.isfinite(p.grad).all() for p in model.parameters())


def test_depth_groups_layers_into_blocks():
    model = SKResNeXt(PRESETS["sknet50"], backend="reference")
    every = layers(model, (3, 224, 224))
    blocks = layers(model, (3, 224, 224), depth=3)
    assert [r.name for r in blocks if r.kind == "SKBottleneck"] == [
        f"stages.{s}.{b}" for s, depth in enumerate((3, 4, 6, 3)) for b in range(depth)
    ]
    assert sum(r.params for r in blocks) == sum(r.params for r in every)
    assert sum(r.macs for r in blocks) == sum(r.macs for r in every)
    text = table(blocks)
    assert "parameters: 27,479,784 (27.48 M)" in text
    assert "multiply-adds per image: 4,462,710,784 (4.46 G)" in text


def test_the_counter_agrees_with_hooks_on_the_pytorch_twin():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    from skscratch.interop.torch import to_torch

    model = SKResNeXt(PRESETS["sknet50"], backend="reference")
    net = to_torch(model).eval()
    counted = []

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            c_in_g, kh, kw = module.weight.shape[1:]
            counted.append(output[0].numel() * c_in_g * kh * kw)
        else:
            counted.append(module.weight.numel())

    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.zeros(1, 3, 224, 224))
    assert sum(counted) == _totals(model, (3, 224, 224))[1]
    assert sum(p.numel() for p in net.parameters()) == model.num_parameters()


def test_the_command_prints_the_table(capsys):
    assert cli.main(["summary", "sknet50", "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sknet50, one image of 3 x 224 x 224:")
    assert "stages.3 " in out and "27,479,784 (27.48 M)" in out and "(4.46 G)" in out
    assert cli.main(["summary", "tiny", "--input", "3x16x16"]) == 0
    assert "one image of 3 x 16 x 16" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["summary", "resnet"], "'resnet' is neither a preset"),
        (["summary", "nowhere.npz"], "nowhere.npz"),
    ],
)
def test_the_command_names_what_is_wrong(args, message, capsys):
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


def test_an_input_too_small_for_a_layer_is_named():
    from skscratch.nn import Conv2d, Sequential

    net = Sequential(Conv2d(3, 4, 5, rng=np.random.default_rng(0)))
    with pytest.raises(ValueError, match="0 would output 4 x -1 x 3"):
        layers(net, (3, 3, 7))


def test_an_image_shape_that_is_not_c_x_h_x_w_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["summary", "tiny", "--input", "3x32"])
    assert exc.value.code == 2
    assert "expected C x H x W such as 3x224x224, got '3x32'" in capsys.readouterr().err
