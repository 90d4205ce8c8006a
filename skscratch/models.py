"""The SK bottleneck block, and SK-ResNeXts: small ones for CIFAR, and the paper's SKNet-26/50/101.

Block (SKNet's, with the SK unit in place of ResNeXt's grouped 3x3 convolution):

    x -> 1x1 conv -> BN -> ReLU -> SK unit (stride) -> 1x1 conv -> BN --(+)--> ReLU -> y
       (conv1)     (bn1, with its ReLU)      (sk)       (conv3)   (bn3)        (relu)
    x -> identity, or 1x1 conv (stride) -> BN when the shape changes ---^

Network: a stem, stages of blocks (the first block of a stage may have stride 2), global
average pool, a fully connected classifier. The stem is CIFAR's (3x3 conv -> BN -> ReLU, at full
resolution) or ImageNet's (7x7 conv stride 2 -> BN -> ReLU -> 3x3 max pool stride 2: 224 -> 56).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from skscratch.backends import current_backend_name, use_backend
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
from skscratch.sk import branch_dilations, branch_kernel_sizes


class BranchSum(Module):
    """The SK unit's Split without its Fuse and Select: M grouped convolutions (by default 3x3,
    branch m with dilation m + 1, as in skscratch.sk), each with BN and ReLU, added with equal
    weight.

    With M >= 2 it is the paper's baseline without attention (the branches summed); with M = 1
    it is ResNeXt's grouped convolution, conv -> BN -> ReLU, which is what an SK unit of one
    branch computes (a softmax over one branch is 1) without the fc and select it cannot use.
    Its parameters are named as the SK unit's (convs.m.weight, bns.m.*)."""

    def __init__(
        self, channels: int, *, stride: int, branches: int, groups: int, rng,
        kernel_sizes: Sequence[int] | None = None, dilations: Sequence[int] | None = None,
    ):  # fmt: skip
        super().__init__()
        kernels = branch_kernel_sizes(kernel_sizes, branches)
        dilations = branch_dilations(dilations, branches)
        self.children["convs"] = Sequential(
            *(
                Conv2d(channels, channels, k, stride=stride, padding=d * (k - 1) // 2,
                       dilation=d, groups=groups, rng=rng)
                for k, d in zip(kernels, dilations, strict=True)
            )
        )  # fmt: skip
        self.children["bns"] = Sequential(
            *(BatchNorm(channels, relu=True) for _ in range(branches))
        )

    def forward(self, x):
        convs, bns = self.children["convs"], self.children["bns"]
        return sum(bns[m].forward(convs[m].forward(x)) for m in range(len(convs)))

    def backward(self, dout):
        # Every branch receives the whole gradient of the sum; their gradients of x add.
        convs, bns = self.children["convs"], self.children["bns"]
        return sum(convs[m].backward(bns[m].backward(dout)) for m in range(len(convs)))


class SKBottleneck(Module):
    def __init__(
        self,
        c_in: int,
        c_mid: int,
        c_out: int,
        *,
        stride: int = 1,
        branches: int = 2,
        groups: int = 32,
        r: int = 16,
        L: int = 32,
        kernel_sizes: Sequence[int] | None = None,
        dilations: Sequence[int] | None = None,
        attention_init: str = "kaiming",
        attention: bool = True,
        zero_init_residual: bool = True,
        rng: np.random.Generator,
    ):
        super().__init__()
        ch = self.children
        ch["conv1"] = Conv2d(c_in, c_mid, 1, rng=rng)
        ch["bn1"] = BatchNorm(c_mid, relu=True)
        split = dict(stride=stride, branches=branches, groups=groups, rng=rng,
                     kernel_sizes=kernel_sizes, dilations=dilations)  # fmt: skip
        if attention and branches > 1:
            ch["sk"] = SKUnit(c_mid, r=r, L=L, attention_init=attention_init, **split)
        else:  # the ablations: branches summed, or one branch (ResNeXt's block)
            ch["sk"] = BranchSum(c_mid, **split)
        ch["conv3"] = Conv2d(c_mid, c_out, 1, rng=rng)
        ch["bn3"] = BatchNorm(c_out)
        if zero_init_residual:
            # The last BN starts at zero, so every block starts as the identity on its shortcut
            # (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): deep nets train from the start.
            ch["bn3"].params["weight"].data[:] = 0
        if stride != 1 or c_in != c_out:
            ch["shortcut"] = Sequential(
                Conv2d(c_in, c_out, 1, stride=stride, rng=rng), BatchNorm(c_out)
            )
        ch["relu"] = ReLU()
        self._residual = ("conv1", "bn1", "sk", "conv3", "bn3")

    def forward(self, x):
        out = x
        for name in self._residual:
            out = self.children[name].forward(out)
        shortcut = self.children["shortcut"].forward(x) if "shortcut" in self.children else x
        return self.children["relu"].forward(out, residual=shortcut)  # ReLU(out + shortcut)

    def backward(self, dout):
        d = self.children["relu"].backward(dout)
        # The sum sends the same gradient down both paths; their gradients of x add.
        dx = d
        for name in reversed(self._residual):
            dx = self.children[name].backward(dx)
        if "shortcut" in self.children:
            return dx + self.children["shortcut"].backward(d)
        return dx + d


STEM_TYPES = ("cifar", "imagenet")


@dataclass(frozen=True)
class SKNetConfig:
    """The shape of an SK-ResNeXt. Stage i has depths[i] blocks of SK width mids[i] and output
    width outs[i]; its first block has stride strides[i].

    The defaults are the network `skscratch train` trains (the preset "default"): every stage
    starts with stride 2, so its four SK units work at 16 x 16, 8 x 8 (two blocks) and 4 x 4
    after a stem at full resolution; at about the cost per image of the "small" preset, whose
    first stage works at 32 x 32, it has 3.7 times its parameters. The SK units start with the
    authors' initialisation of their attention, and every block with its residual path switched
    on (README, "Result").
    """

    stem: int = 32
    depths: tuple[int, ...] = (1, 2, 1)
    mids: tuple[int, ...] = (64, 128, 256)
    outs: tuple[int, ...] = (128, 256, 512)
    branches: int = 2
    groups: int = 16
    r: int = 16
    L: int = 32
    num_classes: int = 10
    strides: tuple[int, ...] = field(default=(2, 2, 2))
    attention_init: str = "official"  # the SK units' fc and select weights (skscratch.nn.SKUnit)
    zero_init_residual: bool = False  # every block's last BN scale starts at 0 (SKBottleneck)
    stem_type: str = "cifar"  # or "imagenet" (the module's docstring)
    # False: every block's SK unit is replaced by its branches summed (BranchSum), the paper's
    # baseline without selection. branches=1 always builds ResNeXt's block (BranchSum of one).
    attention: bool = True
    # Each branch's kernel size and dilation (None: 3, and 1, 2, ..., M: the paper's SK unit).
    kernel_sizes: tuple[int, ...] | None = None
    dilations: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.stem_type not in STEM_TYPES:
            raise ValueError(f"stem_type must be one of {STEM_TYPES}, got {self.stem_type!r}")
        branch_kernel_sizes(self.kernel_sizes, self.branches)
        branch_dilations(self.dilations, self.branches)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SKNetConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model configuration keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# How the networks before the default one were built: first stage at full resolution, attention
# weights drawn as every other weight, every block starting as its shortcut.
_FIRST_STAGE_AT_32 = dict(strides=(1, 2, 2), attention_init="kaiming", zero_init_residual=True)

# The 535 k-parameter network that the benchmarks compare with PyTorch.
BENCH_535K = SKNetConfig(
    stem=64,
    depths=(1, 1, 1),
    mids=(64, 128, 256),
    outs=(128, 256, 512),
    groups=32,
    **_FIRST_STAGE_AT_32,
)


def _sknet(depths: tuple[int, ...]) -> SKNetConfig:
    """The paper's SKNet (Table 1; the official model definitions): four stages of SK widths
    128..1024 and outputs 256..2048, SK[M=2, G=32, r=16] with L=32, the ImageNet stem, 1000
    classes."""
    return SKNetConfig(
        stem=64,
        depths=depths,
        mids=(128, 256, 512, 1024),
        outs=(256, 512, 1024, 2048),
        groups=32,
        num_classes=1000,
        strides=(1, 2, 2, 2),
        stem_type="imagenet",
    )


# Named configurations for the command line (`--model`).
PRESETS = {
    "default": SKNetConfig(),
    # An earlier default: its first stage works at 32 x 32; at about the cost per image of
    # "default" it has a quarter of the parameters, and learns more slowly.
    "small": SKNetConfig(
        depths=(1, 1, 1), mids=(32, 64, 128), outs=(64, 128, 256), groups=8, **_FIRST_STAGE_AT_32
    ),
    "bench535k": BENCH_535K,
    # Small enough to train in seconds: for tests and quick trials.
    "tiny": SKNetConfig(
        stem=8,
        depths=(1, 1, 1),
        mids=(8, 16, 16),
        outs=(16, 32, 32),
        groups=4,
        L=8,
        **_FIRST_STAGE_AT_32,
    ),
    # The paper's ImageNet networks, for their counts and their SK units (`skscratch summary`).
    "sknet26": _sknet((2, 2, 2, 2)),
    "sknet50": _sknet((3, 4, 6, 3)),
    "sknet101": _sknet((3, 4, 23, 3)),
}


class SKResNeXt(Module):
    """backend: "fast" or "reference" (skscratch.backends); None takes the current default."""

    def __init__(
        self, config: SKNetConfig = SKNetConfig(), *, seed: int = 0, backend: str | None = None
    ):
        # Every module takes its backend when it is built: build them all inside the choice.
        with use_backend(current_backend_name() if backend is None else backend):
            super().__init__()
            n = len(config.depths)
            if not (len(config.mids) == len(config.outs) == len(config.strides) == n):
                raise ValueError("depths, mids, outs and strides must have one entry per stage")
            self.config = config
            rng = np.random.default_rng(seed)
            if config.stem_type == "cifar":
                stem = [Conv2d(3, config.stem, 3, padding=1, rng=rng)]
            else:
                stem = [Conv2d(3, config.stem, 7, stride=2, padding=3, rng=rng)]
            stem.append(BatchNorm(config.stem, relu=True))
            if config.stem_type == "imagenet":
                stem.append(MaxPool2d(3, stride=2, padding=1))
            self.children["stem"] = Sequential(*stem)
            stages, c_in = [], config.stem
            for depth, mid, out, stride in zip(
                config.depths, config.mids, config.outs, config.strides, strict=True
            ):
                blocks = []
                for j in range(depth):
                    blocks.append(
                        SKBottleneck(
                            c_in,
                            mid,
                            out,
                            stride=stride if j == 0 else 1,
                            branches=config.branches,
                            groups=config.groups,
                            r=config.r,
                            L=config.L,
                            kernel_sizes=config.kernel_sizes,
                            dilations=config.dilations,
                            attention_init=config.attention_init,
                            attention=config.attention,
                            zero_init_residual=config.zero_init_residual,
                            rng=rng,
                        )
                    )
                    c_in = out
                stages.append(Sequential(*blocks))
            self.children["stages"] = Sequential(*stages)
            self.children["pool"] = GlobalAvgPool()
            self.children["fc"] = Linear(c_in, config.num_classes, rng=rng)
            self._order = ("stem", "stages", "pool", "fc")

    def forward(self, x):
        for name in self._order:
            x = self.children[name].forward(x)
        return x

    def backward(self, dout, *, input_grad: bool = True):
        """Gradients of every parameter, and of the images, returned (N, 3, H, W). With
        input_grad=False the stem's convolution skips the images' gradient, which training
        never uses (as PyTorch does for inputs that do not require grad), and this returns None."""
        for name in reversed(self._order[1:]):  # all but the stem
            dout = self.children[name].backward(dout)
        stem = self.children["stem"]
        for i in reversed(range(1, len(stem))):  # BN (+ max pool), back to the convolution
            dout = stem[i].backward(dout)
        return stem[0].backward(dout, input_grad=input_grad)

    def sk_units(self) -> list[tuple[str, SKUnit]]:
        """(name, unit) of every SK unit, in order of depth."""
        return [(name.rstrip("."), m) for name, m in self.named_modules() if isinstance(m, SKUnit)]


def _conv_macs(cache) -> int:
    """Multiply-adds of the convolution whose forward left this cache (either backend's)."""
    c_out, c_in_g, kh, kw = cache.w.shape
    h_out, w_out = cache.out_size
    return c_out * c_in_g * kh * kw * h_out * w_out * cache.x.shape[0]


def count_macs(model: Module, input_shape: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Multiply-adds of one forward pass per image, of convolutions and FC layers (element-wise
    operations such as batch norm, ReLU and the softmax are not counted)."""
    training = model.training
    model.eval()
    x = np.zeros(input_shape, dtype=np.float32)
    model.forward(x)
    total = 0
    for _, m in model.named_modules():
        if isinstance(m, Conv2d):
            total += _conv_macs(m._cache)
        elif isinstance(m, Linear):
            total += m.params["weight"].data.size * input_shape[0]
        elif isinstance(m, SKUnit):
            total += sum(_conv_macs(caches[0]) for caches in m._cache.branch_caches)
            total += (
                m.params["fc.weight"].data.size + m.params["select.weight"].data.size
            ) * input_shape[0]
    model.train(training)
    return total // input_shape[0]
