"""timm's skresnext50_32x4d names into skscratch's SKNet-50.

timm does not install beside this project's PyTorch build (it needs torchvision), so its state
dict is written out here from timm's own arithmetic: ResNet planes 64/128/256/512 with expansion
4, width = floor(planes * base_width / 64) * cardinality with base_width 4 and cardinality 32,
attention width make_divisible(width / 16, 32), BN layers with running statistics and a
num_batches_tracked counter, the fuse and select layers as 1x1 convolutions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from skscratch.interop.timm import skscratch_name, state_dict_from_timm
from skscratch.models import PRESETS, SKResNeXt


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    keys = ("weight", "bias", "running_mean", "running_var")
    return {f"{prefix}.{k}": (c,) for k in keys} | {f"{prefix}.num_batches_tracked": ()}


def timm_shapes() -> dict[str, tuple[int, ...]]:
    """Every name of timm's skresnext50_32x4d state dict and its shape."""
    shapes = {"conv1.weight": (64, 3, 7, 7)} | _bn("bn1", 64)
    inplanes = 64
    stages = zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True)
    for stage, (planes, blocks) in enumerate(stages, start=1):
        width = math.floor(planes * 4 / 64) * 32
        attn = max(32, int(width / 16 + 16) // 32 * 32)  # timm's make_divisible(width / 16, 32)
        out = planes * 4
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            shapes[f"{p}.conv1.conv.weight"] = (width, inplanes, 1, 1)
            shapes |= _bn(f"{p}.conv1.bn", width)
            for m in range(2):
                shapes[f"{p}.conv2.paths.{m}.conv.weight"] = (width, width // 32, 3, 3)
                shapes |= _bn(f"{p}.conv2.paths.{m}.bn", width)
            shapes[f"{p}.conv2.attn.fc_reduce.weight"] = (attn, width, 1, 1)
            shapes |= _bn(f"{p}.conv2.attn.bn", attn)
            shapes[f"{p}.conv2.attn.fc_select.weight"] = (2 * width, attn, 1, 1)
            shapes[f"{p}.conv3.conv.weight"] = (out, width, 1, 1)
            shapes |= _bn(f"{p}.conv3.bn", out)
            if b == 0:
                shapes[f"{p}.downsample.0.weight"] = (out, inplanes, 1, 1)
                shapes |= _bn(f"{p}.downsample.1", out)
            inplanes = out
    return shapes | {"fc.weight": (1000, 2048), "fc.bias": (1000,)}


def test_timms_state_loads_into_sknet50_with_every_value_in_its_place():
    rng = np.random.default_rng(0)
    timm_state = {
        name: rng.standard_normal(shape).astype(np.float32) if shape else np.array(7)
        for name, shape in timm_shapes().items()
    }
    model = SKResNeXt(PRESETS["sknet50"], backend="reference")
    model.load_state_dict(state_dict_from_timm(timm_state))  # checks every name and shape
    ours = model.state_dict()
    assert len(ours) == sum(not n.endswith("num_batches_tracked") for n in timm_state)
    pairs = {
        "conv1.weight": "stem.0.weight",
        "bn1.running_var": "stem.1.running_var",
        "layer1.0.conv1.conv.weight": "stages.0.0.conv1.weight",
        "layer2.3.conv2.paths.1.conv.weight": "stages.1.3.sk.convs.1.weight",
        "layer3.5.conv2.paths.0.bn.bias": "stages.2.5.sk.bns.0.bias",
        "layer4.0.conv2.attn.bn.running_mean": "stages.3.0.sk.fc_bn.running_mean",
        "layer4.2.conv3.bn.weight": "stages.3.2.bn3.weight",
        "layer1.0.downsample.0.weight": "stages.0.0.shortcut.0.weight",
        "fc.bias": "fc.bias",
    }
    for theirs, mine in pairs.items():
        np.testing.assert_array_equal(ours[mine], timm_state[theirs])
    # The 1x1 convolutions of the attention become the SK unit's matrices.
    fc = timm_state["layer4.0.conv2.attn.fc_reduce.weight"]
    select = timm_state["layer4.0.conv2.attn.fc_select.weight"]
    assert fc.shape == (64, 1024, 1, 1)
    np.testing.assert_array_equal(ours["stages.3.0.sk.fc.weight"], fc[:, :, 0, 0])
    np.testing.assert_array_equal(ours["stages.3.0.sk.select.weight"], select[:, :, 0, 0])


def test_a_name_without_counterpart_is_named():
    with pytest.raises(ValueError, match="'layer1.0.se.fc1.weight' has no counterpart"):
        skscratch_name("layer1.0.se.fc1.weight")
    with pytest.raises(ValueError, match="'head.weight' has no counterpart"):
        skscratch_name("head.weight")
