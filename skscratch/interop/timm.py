"""timm's `skresnext50_32x4d` weights in skscratch's SKNet-50, and back, by parameter name.

timm (pytorch-image-models) builds the paper's SKNet-50 as `skresnext50_32x4d`: the same stem,
stages, SK units (two paths, 3x3 convolutions with dilation 1 and 2, groups 32, attention width
max(C/16, 32)) and classifier, under other names, with the fuse and select layers as 1x1
convolutions. With its pretrained ImageNet weights loaded into `SKResNeXt(PRESETS["sknet50"])`,
the SK units of a trained SKNet-50 can be studied in NumPy:

    import timm, numpy as np
    from skscratch.interop.timm import state_dict_from_timm
    from skscratch.models import PRESETS, SKResNeXt

    net = timm.create_model("skresnext50_32x4d", pretrained=True)
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    model = SKResNeXt(PRESETS["sknet50"])
    model.load_state_dict(state_dict_from_timm(state))

Names, timm's -> skscratch's (blocks `layer{s+1}.{b}` -> `stages.{s}.{b}`):

    conv1, bn1                          stem.0, stem.1
    conv1.conv, conv1.bn                conv1, bn1
    conv2.paths.{m}.conv, .bn           sk.convs.{m}, sk.bns.{m}
    conv2.attn.fc_reduce                sk.fc         (d, C, 1, 1) -> (d, C)
    conv2.attn.bn                       sk.fc_bn
    conv2.attn.fc_select                sk.select     (2C, d, 1, 1) -> (2C, d)
    conv3.conv, conv3.bn                conv3, bn3
    downsample.0, downsample.1          shortcut.0, shortcut.1
    fc                                  fc

timm's select layer orders its 2C outputs path by path, as skscratch's does, so no reordering is
needed. PyTorch's `num_batches_tracked` counters have no counterpart and are dropped.
"""

from __future__ import annotations

import re

import numpy as np
from numpy.typing import NDArray

_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.(.+)")
_INSIDE = [  # (timm's name within a block, skscratch's), tried in order
    (re.compile(r"conv1\.conv\.(.+)"), r"conv1.\1"),
    (re.compile(r"conv1\.bn\.(.+)"), r"bn1.\1"),
    (re.compile(r"conv2\.paths\.(\d+)\.conv\.(.+)"), r"sk.convs.\1.\2"),
    (re.compile(r"conv2\.paths\.(\d+)\.bn\.(.+)"), r"sk.bns.\1.\2"),
    (re.compile(r"conv2\.attn\.fc_reduce\.(.+)"), r"sk.fc.\1"),
    (re.compile(r"conv2\.attn\.bn\.(.+)"), r"sk.fc_bn.\1"),
    (re.compile(r"conv2\.attn\.fc_select\.(.+)"), r"sk.select.\1"),
    (re.compile(r"conv3\.conv\.(.+)"), r"conv3.\1"),
    (re.compile(r"conv3\.bn\.(.+)"), r"bn3.\1"),
    (re.compile(r"downsample\.([01])\.(.+)"), r"shortcut.\1.\2"),
]
_OUTSIDE = {"conv1.": "stem.0.", "bn1.": "stem.1.", "fc.": "fc."}


def skscratch_name(timm_name: str) -> str:
    """skscratch's name for one of timm's; ValueError for a name with no counterpart."""
    block = _BLOCK.fullmatch(timm_name)
    if block:
        stage, index, rest = block.groups()
        for pattern, replacement in _INSIDE:
            if pattern.fullmatch(rest):
                return f"stages.{int(stage) - 1}.{index}." + pattern.sub(replacement, rest)
    else:
        for prefix, ours in _OUTSIDE.items():
            if timm_name.startswith(prefix):
                return ours + timm_name[len(prefix) :]
    raise ValueError(f"timm's {timm_name!r} has no counterpart in skscratch's SKNet-50")


def state_dict_from_timm(state: dict[str, NDArray]) -> dict[str, NDArray]:
    """timm's skresnext50_32x4d state (name -> array) under skscratch's names and shapes, ready
    for `SKResNeXt(PRESETS["sknet50"]).load_state_dict`, which checks every name and shape."""
    out = {}
    for name, value in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        ours = skscratch_name(name)
        value = np.asarray(value)
        if ".sk.fc.weight" in ours or ".sk.select.weight" in ours:
            value = value.reshape(value.shape[:2])  # a 1x1 convolution's weight is a matrix
        out[ours] = value
    return out
