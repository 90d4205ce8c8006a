"""The same SK-ResNeXt in PyTorch, and its weights copied both ways.

A network trained here can continue in PyTorch (on a GPU, or on many machines), and come back:

    from skscratch.interop.torch import to_torch, from_torch
    net = to_torch(model)            # a torch.nn.Module with model's weights and statistics
    ...                              # train net with PyTorch
    model = from_torch(net)          # an SKResNeXt with net's weights

The parameter names are the same on both sides (`stages.0.0.sk.convs.1.weight`, ...), because
skscratch names its parameters after this very module tree; only PyTorch's batch-norm counters
`num_batches_tracked` have no counterpart here (skscratch's momentum is fixed, so they are not
needed), and are dropped on the way back. Needs PyTorch (`pip install torch`): importing this
module without it raises an ImportError that says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "skscratch.interop.torch needs PyTorch; install it with `pip install torch`"
    ) from exc

from skscratch.models import SKNetConfig, SKResNeXt
from skscratch.sk import branch_dilations, branch_kernel_sizes, sk_hidden_size

_COUNTER = "num_batches_tracked"


def _branch_convs(channels, stride, branches, groups, kernel_sizes, dilations) -> nn.ModuleList:
    """The Split's M grouped convolutions, each padded to keep the size (by default 3x3 with
    dilation m + 1, as skscratch.sk's)."""
    kernels = branch_kernel_sizes(kernel_sizes, branches)
    dilations = branch_dilations(dilations, branches)
    return nn.ModuleList(
        nn.Conv2d(channels, channels, k, stride=stride, padding=d * (k - 1) // 2, dilation=d,
                  groups=groups, bias=False)
        for k, d in zip(kernels, dilations, strict=True)
    )  # fmt: skip


class TorchSKUnit(nn.Module):
    """skscratch.sk's SK unit: Split (M grouped convs, by default 3x3 of dilation m + 1, BN,
    ReLU), Fuse (sum, average pool, FC, BN, ReLU), Select (FC to M*C, softmax over M, weighted
    sum)."""

    def __init__(
        self,
        channels: int,
        *,
        stride: int = 1,
        branches: int = 2,
        groups: int = 32,
        r: int = 16,
        L: int = 32,
        kernel_sizes: Sequence[int] | None = None,
        dilations: Sequence[int] | None = None,
    ):
        super().__init__()
        d = sk_hidden_size(channels, r, L)
        self.branches = branches
        self.convs = _branch_convs(channels, stride, branches, groups, kernel_sizes, dilations)
        self.bns = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(branches))
        self.fc = nn.Linear(channels, d, bias=False)
        self.fc_bn = nn.BatchNorm1d(d)
        self.select = nn.Linear(d, branches * channels, bias=False)

    def forward(self, x):
        u = torch.stack(
            [torch.relu(bn(conv(x))) for conv, bn in zip(self.convs, self.bns, strict=True)], 1
        )  # (N, M, C, H', W')
        s = u.sum(dim=1).mean(dim=(2, 3))  # (N, C)
        z = torch.relu(self.fc_bn(self.fc(s)))
        a = torch.softmax(self.select(z).view(len(x), self.branches, -1), dim=1)  # (N, M, C)
        return (a[:, :, :, None, None] * u).sum(dim=1)


class TorchBranchSum(nn.Module):
    """skscratch.models.BranchSum: M grouped convs, BN, ReLU, summed."""

    def __init__(
        self, channels: int, *, stride: int, branches: int, groups: int,
        kernel_sizes: Sequence[int] | None = None, dilations: Sequence[int] | None = None,
    ):  # fmt: skip
        super().__init__()
        self.convs = _branch_convs(channels, stride, branches, groups, kernel_sizes, dilations)
        self.bns = nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(branches))

    def forward(self, x):
        return sum(torch.relu(bn(conv(x))) for conv, bn in zip(self.convs, self.bns, strict=True))


class TorchSKBottleneck(nn.Module):
    def __init__(self, c_in: int, c_mid: int, c_out: int, *, stride: int, config: SKNetConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_mid)
        split = dict(stride=stride, branches=config.branches, groups=config.groups,
                     kernel_sizes=config.kernel_sizes, dilations=config.dilations)  # fmt: skip
        if config.attention and config.branches > 1:
            self.sk = TorchSKUnit(c_mid, r=config.r, L=config.L, **split)
        else:
            self.sk = TorchBranchSum(c_mid, **split)
        self.conv3 = nn.Conv2d(c_mid, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = self.bn3(self.conv3(self.sk(torch.relu(self.bn1(self.conv1(x))))))
        return torch.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class TorchSKResNeXt(nn.Module):
    """skscratch.models.SKResNeXt as a torch.nn.Module, with the same parameter names."""

    def __init__(self, config: SKNetConfig = SKNetConfig()):
        super().__init__()
        self.config = config
        if config.stem_type == "cifar":
            conv = nn.Conv2d(3, config.stem, 3, padding=1, bias=False)
        else:
            conv = nn.Conv2d(3, config.stem, 7, stride=2, padding=3, bias=False)
        stem = [conv, nn.BatchNorm2d(config.stem), nn.ReLU()]
        if config.stem_type == "imagenet":
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)
        stages, c_in = [], config.stem
        for depth, mid, out, stride in zip(
            config.depths, config.mids, config.outs, config.strides, strict=True
        ):
            blocks = []
            for j in range(depth):
                blocks.append(
                    TorchSKBottleneck(c_in, mid, out, stride=stride if j == 0 else 1, config=config)
                )
                c_in = out
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, config.num_classes)

    def forward(self, x):
        return self.fc(self.stages(self.stem(x)).mean(dim=(2, 3)))


def state_dict_to_torch(state: dict[str, NDArray], reference: dict) -> dict:
    """skscratch's {name: array} as a PyTorch state_dict for a module whose own state_dict is
    `reference`: the same names plus PyTorch's `num_batches_tracked` counters, kept from
    `reference`. Raises ValueError naming any name that is missing or left over."""
    missing = sorted(k for k in reference if k not in state and not k.endswith(_COUNTER))
    unexpected = sorted(k for k in state if k not in reference)
    if missing or unexpected:
        raise ValueError(
            f"the skscratch state does not fit the PyTorch module: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    out = {}
    for key, ref in reference.items():
        if key.endswith(_COUNTER) and key not in state:
            out[key] = ref.clone()
        else:
            value = torch.from_numpy(np.ascontiguousarray(state[key]))
            out[key] = value.to(dtype=ref.dtype)
    return out


def state_dict_from_torch(state: dict) -> dict[str, NDArray]:
    """A PyTorch state_dict as skscratch's {name: array}, without `num_batches_tracked`."""
    return {
        key: value.detach().cpu().numpy().copy()
        for key, value in state.items()
        if not key.endswith(_COUNTER)
    }


def to_torch(model: SKResNeXt) -> TorchSKResNeXt:
    """A TorchSKResNeXt with `model`'s configuration, weights, running statistics, dtype and
    train/eval mode."""
    dtype = model.parameters()[0].data.dtype
    net = TorchSKResNeXt(model.config).to(dtype=getattr(torch, dtype.name))
    net.load_state_dict(state_dict_to_torch(model.state_dict(), net.state_dict()))
    return net.train(model.training)


def from_torch(net: TorchSKResNeXt) -> SKResNeXt:
    """An SKResNeXt with `net`'s configuration, weights, running statistics, dtype and mode."""
    if not isinstance(net, TorchSKResNeXt):
        raise TypeError(f"net must be a TorchSKResNeXt, got {type(net).__name__}")
    state = state_dict_from_torch(net.state_dict())
    model = SKResNeXt(net.config).astype(next(iter(state.values())).dtype)
    model.load_state_dict(state)
    return model.train(net.training)
